"""HTTP generation service and web page: one process keeps a preset's models loaded and compiled.

Plays the role of LightX2V's API server and Gradio page (`lightx2v/api_server.py`, `gradio_demo.py`) in one
process: the models of a sampling preset (`configs/sample/<preset>.py`) are loaded, and the default request
shape compiled, once at start; requests become jobs in a bounded queue that one worker runs one at a time on
the device group (every device, the preset's mesh) through `infer.sample.Pipeline` — the CLI's code path.

  python -m infer.serve                                                     # CPU demo: the embedded toy world
  python -m infer.serve --config configs/sample/tiny.py --port 8000         # random tiny full-architecture models
  python -m infer.serve --config configs/sample/t2v_1_3b.py --config.weights=/ckpt/t2v_1_3b \
    --config.text_encoder=/ckpt/umt5 --config.tokenizer=/ckpt/tokenizer --config.vae=/ckpt/vae --max_queue=16

API (OpenAPI schema at /openapi.json):
  POST /v1/videos           JSON `VideoRequest`, or multipart/form-data with the same fields plus `image` (I2V)
                            → 202 job; 422/400 naming the field at fault; 413 oversized body; 429 queue full
  GET  /v1/videos           jobs, newest first (the page's gallery)
  GET  /v1/videos/{id}      status (queued | running | succeeded | failed), denoise progress, error, result
  GET  /v1/videos/{id}.mp4  the video (409 until the job succeeded)
  GET  /v1/info             preset, defaults and limits (the page's form)
  GET  /                    the web page (`infer/web/`)

Safety: binds 127.0.0.1 unless `--host` says otherwise; no path is built from request data (job ids are
server-made UUIDs, files live in a server-owned output dir); the body size is capped while it streams.
"""

import copy
import dataclasses
import json
import math
import os
import queue
import secrets
import shutil
import tempfile
import threading
import time
import uuid
from typing import Optional

from absl import app as absl_app, flags, logging

SERVE_EXTRA = "pip install -e '.[serve]'"   # pyproject.toml's `serve` extra: fastapi, uvicorn, python-multipart
SERVE_PACKAGES = ("fastapi", "uvicorn")


def missing_serve_package(name, e: ImportError) -> str:
  """One line for a server package that cannot be imported, naming it and the install command."""
  return (f"python -m infer.serve needs the {name!r} package, which cannot be imported ({e}); install the serve "
          f"extra: {SERVE_EXTRA}")


try:   # pydantic comes with fastapi: without it `python -m infer.serve` is one line and exit 2, not a traceback
  import pydantic
  from pydantic import Field
except ImportError as _e:
  if __name__ != "__main__":
    raise
  from infer import cli as _cli
  _cli.fail(missing_serve_package("pydantic", _e))

from wanjax.errors import UsageError, out_of_memory_message
from wanjax.video import frame_count_hint

WEB_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "web")
MAX_PROMPT_CHARS = 2000
MAX_SIDE = 4096            # hard cap of any size field; the server's `max_area` is the real limit
MAX_STEPS = 200
MAX_SEED = 2**31 - 1
LORA_STRENGTH_RANGE = (0.0, 2.0)
IMAGE_MAGIC = ((b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"))   # WebP below (RIFF....WEBP)
STATUSES = ("queued", "running", "succeeded", "failed")
OOM_ADVICE = "Ask for fewer frames or a smaller width x height."


# ============================================================================================ request models

class VideoRequest(pydantic.BaseModel):
  """One generation request; omitted fields take the preset's value."""
  model_config = pydantic.ConfigDict(extra="forbid")

  prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
  negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS,
                               description="'' = Wan's default negative prompt")
  steps: Optional[int] = Field(None, ge=1, le=MAX_STEPS, description="denoise steps (schedule presets)")
  seed: Optional[int] = Field(None, ge=-1, le=MAX_SEED, description="-1 draws a seed (reported in the result)")
  width: Optional[int] = Field(None, ge=16, le=MAX_SIDE, multiple_of=16)
  height: Optional[int] = Field(None, ge=16, le=MAX_SIDE, multiple_of=16,
                                description="I2V: width*height is the pixel area; the aspect comes from the image")
  frames: Optional[int] = Field(None, ge=1, le=4 * MAX_STEPS + 1, description="4k+1")
  lora_strength: Optional[float] = Field(None, ge=LORA_STRENGTH_RANGE[0], le=LORA_STRENGTH_RANGE[1],
                                         allow_inf_nan=False,
                                         description="strength of the server's LoRA(s); omitted = the preset's")

  @pydantic.field_validator("frames")
  @classmethod
  def _frames_4k_plus_1(cls, v):
    if v is not None and (v - 1) % 4:
      raise ValueError(f"frames={v} must be 4k+1 ({frame_count_hint(v)})")
    return v


class JobResult(pydantic.BaseModel):
  video_url: str
  width: int
  height: int
  frames: int
  seed: int
  timings: dict


class JobInfo(pydantic.BaseModel):
  id: str
  status: str = Field(description=" | ".join(STATUSES))
  step: int = Field(description="denoise steps done")
  total_steps: int
  progress: float = Field(description="denoise progress in [0, 1]")
  queue_position: Optional[int] = None
  error: Optional[str] = None
  request: dict
  result: Optional[JobResult] = None
  created_at: float
  started_at: Optional[float] = None
  finished_at: Optional[float] = None


class JobList(pydantic.BaseModel):
  jobs: list[JobInfo]


class RequestError(Exception):
  """A request the server refuses: HTTP status, the field at fault (or None) and one sentence."""

  def __init__(self, status, field, message, headers=None):
    super().__init__(message)
    self.status, self.field, self.message, self.headers = status, field, message, headers or {}

  def detail(self):
    return [{"loc": ["body", self.field] if self.field else ["body"], "msg": self.message, "type": "value_error"}]


# ============================================================================================ jobs and queue

@dataclasses.dataclass
class Job:
  id: str
  request: dict                 # the validated VideoRequest fields
  c: object                     # the preset config with this request's fields applied
  plan: object                  # infer.sample.Plan
  seed: int
  total_steps: int
  upload: str = ""              # server-owned copy of the I2V image (removed when the job ends)
  status: str = "queued"
  step: int = 0
  error: Optional[str] = None
  result: Optional[dict] = None
  created_at: float = dataclasses.field(default_factory=time.time)
  started_at: Optional[float] = None
  finished_at: Optional[float] = None


@dataclasses.dataclass
class ServeOptions:
  max_queue: int = 8                    # pending jobs; a full queue answers 429
  max_body_bytes: int = 16 * 2**20      # whole request body (413 beyond), checked while it streams
  max_area: int = 0                     # width*height limit; 0 = the preset's size
  max_frames: int = 0                   # 0 = the preset's frames
  max_steps: int = 100
  max_history: int = 200                # finished jobs kept (older ones and their files are dropped)
  output_dir: str = ""                  # '' = a fresh temporary directory
  warmup: bool = True                   # run the default request once at start (compiles its programs)


class Service:
  """The loaded pipeline, the job table and the worker thread that runs queued jobs one at a time."""

  def __init__(self, c, options=None):
    from infer import sample
    from wanjax import sharding
    self.options = o = options or ServeOptions()
    if c.get("sampler", "loop") != "loop":
      raise UsageError(f"sampler={c.sampler!r}: the server runs the one-program sampler presets only "
                       f"(not block-wise AR); use infer.sample for this preset")
    if o.max_queue < 1:
      raise UsageError(f"max_queue={o.max_queue} must be >= 1")
    if o.output_dir:
      sample.check_output_dir("output_dir", o.output_dir)
    self.base = copy.deepcopy(c)
    self.default_w, self.default_h = sample._parse_size(c.size)
    self.upload_dir = tempfile.mkdtemp(prefix="wanjax_uploads_")
    from wanjax.dit.config import get_config
    if get_config(c.model).model_type == "i2v" and not c.image:
      # The preset is checked (and warmed up) with a grey stand-in; every request brings its own image.
      import imageio.v3 as iio
      import numpy as np
      self.base.image = os.path.join(self.upload_dir, "warmup.png")
      iio.imwrite(self.base.image, np.full((self.default_h, self.default_w, 3), 128, np.uint8))
    self.plan = sample.check(self.base)            # the preset itself must pass the CLI's edge checks
    self.max_area = o.max_area or self.default_w * self.default_h
    self.max_frames = o.max_frames or c.frames
    self.i2v = self.plan.model_type == "i2v"
    self.output_dir = os.path.abspath(os.path.expanduser(o.output_dir)) if o.output_dir else tempfile.mkdtemp(
        prefix="wanjax_serve_")
    os.makedirs(self.output_dir, exist_ok=True)
    # LoRAs: merged per request strength into a copy of the params when the DiT stays float; with a quantised
    # DiT they are merged once at load (before quantising) and the strength is fixed.
    self.lora_tensors, self.fixed_lora = [], bool(self.plan.loras)
    pipe_c = copy.deepcopy(self.base)
    if self.plan.loras and c.quant == "none":
      from wanjax.lora import read_lora_file
      self.lora_tensors = [(read_lora_file(s.path), s.strength) for s in self.plan.loras]
      self.fixed_lora = False
      pipe_c.lora = ""
    mesh = sharding.make_mesh(c.mesh)
    sample.sharding_rules(c)   # a bad --config.sharding_overrides fails at start, before any model loads
    # Kernels merged per request are never rounded before the merge: only those the files store in bf16 are held
    # in bf16 (`load_dit(cast_kernels="exact")`), the others stay float32.
    self.pipeline = sample.Pipeline(pipe_c, mesh, keep_encoders=True, cast_kernels=not self.lora_tensors)
    self._lora_cache = {}
    self.jobs = {}
    self._lock = threading.Lock()
    self._queue = queue.Queue(maxsize=o.max_queue)
    self._gate = threading.Lock()      # held by the worker while taking a job; pause() holds it
    self._stop = threading.Event()
    self._durations = []
    self._worker = None

  # ---- lifecycle ----

  def start(self):
    """Loads every model, compiles the default request (warm-up), then starts the worker."""
    t0 = time.perf_counter()
    self.pipeline.load(self.plan)
    if self.options.warmup:
      c = self._request_config(VideoRequest(prompt=self.base.prompt or "warm-up"), self.base.image)
      from infer import sample
      self.pipeline.generate(c, sample.check(c), seed=max(c.seed, 0), params=self.params_for(None))
    logging.info("models loaded%s in %.1f s; serving preset %r", " and compiled" if self.options.warmup else "",
                 time.perf_counter() - t0, self.base.model)
    self._worker = threading.Thread(target=self._work, name="wanjax-serve-worker", daemon=True)
    self._worker.start()
    return self

  def stop(self):
    self._stop.set()
    if self._worker is not None:
      self._worker.join(timeout=60)
    shutil.rmtree(self.upload_dir, ignore_errors=True)   # outputs stay; uploads were only inputs

  def pause(self):
    """Stops the worker from taking further jobs (the running one finishes). For tests and maintenance."""
    self._gate.acquire()

  def resume(self):
    self._gate.release()

  # ---- requests ----

  def _request_config(self, req: VideoRequest, image_path=""):
    c = copy.deepcopy(self.base)
    c.prompt = req.prompt
    c.negative_prompt = req.negative_prompt
    if req.seed is not None:
      c.seed = req.seed
    w, h = req.width or self.default_w, req.height or self.default_h
    c.size = f"{w}*{h}"
    if req.frames is not None:
      c.frames = req.frames
    if req.steps is not None:
      c.num_steps = req.steps
    c.image = image_path
    return c

  def check_request(self, req: VideoRequest, image: Optional[bytes]):
    """The server's limits, then the CLI's own edge checks; raises RequestError naming the field."""
    w, h = req.width or self.default_w, req.height or self.default_h
    if w * h > self.max_area:
      field = "width" if req.width is not None else "height"
      raise RequestError(422, field, f"size {w}*{h} exceeds this server's max_area={self.max_area} pixels")
    frames = req.frames or self.base.frames
    if frames > self.max_frames:
      raise RequestError(422, "frames", f"frames={frames} exceeds this server's max_frames={self.max_frames}")
    if req.steps is not None:
      if self.base.timesteps:
        if req.steps != len(self.base.timesteps):
          raise RequestError(422, "steps", f"this preset samples the fixed step list {tuple(self.base.timesteps)}; "
                                           f"steps must be {len(self.base.timesteps)} or omitted")
      elif req.steps > self.options.max_steps:
        raise RequestError(422, "steps", f"steps={req.steps} exceeds this server's max_steps={self.options.max_steps}")
    if req.lora_strength is not None:
      if not self.plan.loras:
        raise RequestError(400, "lora_strength", "no LoRA is loaded; start the server with --config.lora=FILE")
      if self.fixed_lora:
        raise RequestError(400, "lora_strength", f"the LoRA is merged into the quantised DiT (quant="
                                                 f"{self.base.quant!r}); its strength is fixed, omit lora_strength")
    if self.i2v and image is None:
      raise RequestError(422, "image", f"model {self.base.model!r} is image-to-video; upload an image "
                                       f"(multipart/form-data field 'image')")
    if not self.i2v and image is not None:
      raise RequestError(400, "image", f"model {self.base.model!r} is text-to-video; send no image")
    if image is not None:
      image_suffix(image)

  def submit(self, req: VideoRequest, image: Optional[bytes] = None) -> Job:
    """Validates, plans and queues one request; raises RequestError (400/422/429)."""
    from infer import sample
    self.check_request(req, image)
    job_id = uuid.uuid4().hex
    upload = ""
    if image is not None:
      upload = os.path.join(self.upload_dir, job_id + image_suffix(image))
      with open(upload, "wb") as f:
        f.write(image)
    try:
      c = self._request_config(req, upload)
      try:
        plan = sample.check(c)
      except UsageError as e:
        field = "image" if upload and "image" in str(e) else "prompt" if str(e).startswith("prompt ") else None
        raise RequestError(400, field, str(e)) from None
      seed = c.seed if c.seed >= 0 else secrets.randbelow(MAX_SEED)
      job = Job(job_id, req.model_dump(), c, plan, seed, len(plan.timesteps), upload=upload)
      with self._lock:
        try:
          self._queue.put_nowait(job)
        except queue.Full:
          raise RequestError(429, None, f"the job queue is full ({self.options.max_queue} waiting); retry later",
                             headers={"Retry-After": str(self.retry_after())}) from None
        self.jobs[job_id] = job
        self._trim_history()
    except BaseException:
      if upload and os.path.exists(upload):
        os.remove(upload)
      raise
    return job

  def retry_after(self):
    """Seconds until a queue slot is likely free: the mean job time so far (5 s before any finished)."""
    mean = sum(self._durations[-20:]) / len(self._durations[-20:]) if self._durations else 5.0
    return max(1, math.ceil(mean))

  def _trim_history(self):
    done = [j for j in self.jobs.values() if j.status in ("succeeded", "failed")]
    for j in sorted(done, key=lambda j: j.created_at)[:max(0, len(done) - self.options.max_history)]:
      del self.jobs[j.id]
      for p in (self.video_path(j), self.video_path(j)[:-4] + ".json"):
        if os.path.exists(p):
          os.remove(p)

  def video_path(self, job):
    return os.path.join(self.output_dir, job.id + ".mp4")

  def params_for(self, strength):
    """DiT params with the LoRA(s) at `strength` (None = the preset's strengths); None = the loaded params."""
    if not self.lora_tensors:
      return None
    if strength not in self._lora_cache:
      from wanjax.lora import merge_loras
      items = [(t, s if strength is None else strength) for t, s in self.lora_tensors]
      params, rest = self.pipeline.params
      merged = merge_loras(params, items, allow_unmatched=self.base.lora_allow_unmatched)
      self._lora_cache = {strength: (merged, rest)}   # one strength cached: a merged copy costs memory
    return self._lora_cache[strength]

  # ---- the worker ----

  def _work(self):
    while not self._stop.is_set():
      with self._gate:
        try:
          job = self._queue.get(timeout=0.1)
        except queue.Empty:
          continue
      self._run(job)

  def _run(self, job):
    from infer import sample
    from wanjax import video
    job.status, job.started_at = "running", time.time()

    def tick(i):
      job.step = max(job.step, int(i) + 1)   # unordered callbacks: keep the highest

    try:
      timings = {}
      frames, _ = self.pipeline.generate(job.c, job.plan, seed=job.seed, progress=tick,
                                         params=self.params_for(job.request["lora_strength"]), timings=timings)
      t0 = time.perf_counter()
      path = self.video_path(job)
      video.write_video(path, frames, fps=job.c.fps)
      timings["write_s"] = time.perf_counter() - t0
      job.result = {"video_url": f"/v1/videos/{job.id}.mp4", "width": job.plan.width, "height": job.plan.height,
                    "frames": int(frames.shape[0]), "seed": job.seed,
                    "timings": {k: round(v, 4) for k, v in timings.items()}}
      sample.save_json(path[:-4] + ".json", {"request": job.request, **job.result})
      job.step, job.status = job.total_steps, "succeeded"
    except Exception as e:  # noqa: BLE001 - a failed job is reported; the worker keeps serving
      logging.exception("job %s failed", job.id)
      # An out-of-memory is one line (XLA's text is a screen of allocator statistics), with what a client can ask.
      job.error = out_of_memory_message(e, OOM_ADVICE) or f"{type(e).__name__}: {e}"
      job.status = "failed"
    finally:
      job.finished_at = time.time()
      job.c = job.plan = None   # the image and config are not needed any more
      self._durations.append(job.finished_at - job.started_at)
      if job.upload and os.path.exists(job.upload):
        os.remove(job.upload)

  # ---- views ----

  def info(self, job) -> JobInfo:
    pos = None
    if job.status == "queued":
      with self._queue.mutex:
        pending = list(self._queue.queue)
      pos = next((i for i, j in enumerate(pending) if j.id == job.id), None)
    return JobInfo(id=job.id, status=job.status, step=job.step, total_steps=job.total_steps,
                   progress=job.step / job.total_steps,
                   queue_position=pos, error=job.error, request=job.request, result=job.result,
                   created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at)

  def describe(self):
    c = self.base
    return {"model": c.model, "model_type": self.plan.model_type, "solver": c.solver,
            "defaults": {"width": self.default_w, "height": self.default_h, "frames": c.frames,
                         "steps": len(self.plan.timesteps), "seed": c.seed, "prompt": c.prompt},
            "limits": {"max_area": self.max_area, "max_frames": self.max_frames,
                       "max_steps": self.options.max_steps, "max_queue": self.options.max_queue,
                       "max_body_bytes": self.options.max_body_bytes, "max_prompt_chars": MAX_PROMPT_CHARS,
                       "lora_strength": list(LORA_STRENGTH_RANGE)},
            "fixed_steps": bool(c.timesteps), "lora": [s.path for s in self.plan.loras],
            "lora_strength_adjustable": bool(self.lora_tensors), "queued": self._queue.qsize(),
            "worker_alive": bool(self._worker and self._worker.is_alive())}


def image_suffix(data):
  """File suffix from the image's magic bytes; anything but PNG/JPEG/WebP is refused (field `image`)."""
  for magic, suffix in IMAGE_MAGIC:
    if data.startswith(magic):
      return suffix
  if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
    return ".webp"
  raise RequestError(422, "image", "image must be a PNG, JPEG or WebP file")


# ============================================================================================ HTTP

async def _read_body(request, limit):
  """The request body, read chunk by chunk and refused (413) as soon as it passes `limit` bytes."""
  declared = request.headers.get("content-length")
  if declared is not None and declared.isdigit() and int(declared) > limit:
    raise RequestError(413, None, f"request body of {int(declared)} bytes exceeds the {limit}-byte limit")
  chunks, size = [], 0
  async for chunk in request.stream():
    size += len(chunk)
    if size > limit:
      raise RequestError(413, None, f"request body exceeds the {limit}-byte limit")
    chunks.append(chunk)
  return b"".join(chunks)


async def _parse_request(request, limit):
  """(VideoRequest, image bytes or None) from a JSON or multipart body; RequestError / RequestValidationError."""
  from fastapi.exceptions import RequestValidationError
  from starlette.requests import Request
  body = await _read_body(request, limit)
  ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
  image = None
  if ctype == "application/json":
    try:
      data = json.loads(body)
    except ValueError as e:
      raise RequestError(422, None, f"body is not valid JSON ({e})") from None
    if not isinstance(data, dict):
      raise RequestError(422, None, "body must be a JSON object of VideoRequest fields")
  elif ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
    async def replay():
      return {"type": "http.request", "body": body, "more_body": False}
    try:
      form = await Request(request.scope, replay).form(max_files=1, max_fields=32)
    except Exception as e:  # noqa: BLE001 - a malformed form body is the client's
      raise RequestError(400, None, f"malformed form body ({e})") from None
    data = {}
    for key, value in form.multi_items():
      if key == "image":
        if isinstance(value, str):
          raise RequestError(422, "image", "image must be a file upload")
        image = await value.read()
      elif value != "":   # an empty form input means "use the default"
        data[key] = value
  else:
    raise RequestError(415, None, f"content type {ctype or 'none'!r}; send application/json or "
                                  f"multipart/form-data (application/x-www-form-urlencoded without an image)")
  try:
    # JSON carries types: strict there ("seed": true or "frames": "17" are errors, not 1 and 17). Form fields are
    # all text, so they are converted.
    return VideoRequest.model_validate(data, strict=ctype == "application/json"), image
  except pydantic.ValidationError as e:
    errors = e.errors(include_url=False, include_context=False, include_input=False)
    raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in errors]) from None


def create_app(service: Service):
  """The FastAPI app over a started (or to-be-started) `Service`."""
  from fastapi import FastAPI, HTTPException
  from fastapi.openapi.utils import get_openapi
  from fastapi.responses import FileResponse, JSONResponse
  from fastapi.staticfiles import StaticFiles
  from starlette.concurrency import run_in_threadpool
  from starlette.requests import Request

  app = FastAPI(title="wanjax video generation", version="1", docs_url=None, redoc_url=None)
  app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

  @app.exception_handler(RequestError)
  async def _request_error(_, e: RequestError):
    return JSONResponse({"detail": e.detail()}, status_code=e.status, headers=e.headers)

  def _job(job_id):
    job = service.jobs.get(job_id)
    if job is None:
      raise HTTPException(404, f"no job {job_id!r}")
    return job

  @app.post("/v1/videos", status_code=202, response_model=JobInfo, openapi_extra={"requestBody": {
      "required": True, "content": {
          "application/json": {"schema": {"$ref": "#/components/schemas/VideoRequest"}},
          "multipart/form-data": {"schema": {"$ref": "#/components/schemas/VideoUpload"}}}}})
  async def create_video(request: Request):
    """Queues a generation; poll `GET /v1/videos/{id}`, then fetch `GET /v1/videos/{id}.mp4`."""
    req, image = await _parse_request(request, service.options.max_body_bytes)
    job = await run_in_threadpool(service.submit, req, image)   # reads the image; keeps the loop free
    return JSONResponse(service.info(job).model_dump(), status_code=202,
                        headers={"Location": f"/v1/videos/{job.id}"})

  @app.get("/v1/videos", response_model=JobList)
  def list_videos(limit: int = 50):
    jobs = sorted(list(service.jobs.values()), key=lambda j: j.created_at, reverse=True)[:max(1, min(limit, 500))]
    return JobList(jobs=[service.info(j) for j in jobs])

  # Declared before `/v1/videos/{job_id}`, whose parameter would otherwise swallow `<id>.mp4`.
  @app.get("/v1/videos/{job_id}.mp4", response_class=FileResponse,
           responses={200: {"content": {"video/mp4": {}}}, 409: {"description": "not finished"}})
  def get_video_file(job_id: str):
    job = _job(job_id)
    if job.status != "succeeded":
      raise HTTPException(409, f"job {job_id} is {job.status}; the video exists once it has succeeded")
    return FileResponse(service.video_path(job), media_type="video/mp4")

  @app.get("/v1/videos/{job_id}", response_model=JobInfo)
  def get_video(job_id: str):
    return service.info(_job(job_id))

  @app.get("/v1/info")
  def info():
    return service.describe()

  @app.get("/", include_in_schema=False)
  def index():
    return FileResponse(os.path.join(WEB_DIR, "index.html"), media_type="text/html")

  def openapi():
    if app.openapi_schema is None:
      schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
      comps = schema.setdefault("components", {}).setdefault("schemas", {})
      comps["VideoRequest"] = VideoRequest.model_json_schema(ref_template="#/components/schemas/{model}")
      upload = copy.deepcopy(comps["VideoRequest"])
      upload["title"] = "VideoUpload"
      upload["properties"]["image"] = {"type": "string", "format": "binary", "description": "I2V input image"}
      comps["VideoUpload"] = upload
      app.openapi_schema = schema
    return app.openapi_schema

  app.openapi = openapi
  return app


# ============================================================================================ CLI

def check_serve_packages():
  """Imports the server's packages before any model is loaded: a missing one is one line and exit 2 (the
  environment the user set up is input)."""
  import importlib
  from infer import cli
  for name in SERVE_PACKAGES:
    try:
      importlib.import_module(name)
    except ImportError as e:
      cli.fail(missing_serve_package(name, e))


def main(argv):
  from infer import cli
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}; settings go through flags")
  check_serve_packages()
  import uvicorn
  f = flags.FLAGS
  c = f.config
  try:
    from infer.models import use_compilation_cache
    use_compilation_cache(c.compilation_cache)
    options = ServeOptions(max_queue=f.max_queue, max_body_bytes=int(f.max_upload_mb * 2**20),
                           max_area=f.max_area, max_frames=f.max_frames, max_steps=f.max_steps,
                           output_dir=f.output_dir, warmup=f.warmup)
    service = Service(c, options).start()
  except UsageError as e:
    cli.fail(e)
  except Exception as e:   # noqa: BLE001  (an out-of-memory while loading or warming up is one line, exit 1)
    from infer import sample
    msg = out_of_memory_message(e, sample.OOM_ADVICE)
    if msg is None:
      raise
    cli.fail(msg, exit_code=1)
  logging.info("outputs in %s; listening on http://%s:%d", service.output_dir, f.host, f.port)
  try:
    uvicorn.run(create_app(service), host=f.host, port=f.port, log_level="info")
  finally:
    service.stop()


if __name__ == "__main__":
  from infer import cli
  cli.define_config_flag(
      os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "sample", "toyworld.py"),
      "Sampling preset (configs/sample/<preset>.py[:arg]).")
  flags.DEFINE_string("host", "127.0.0.1", "Interface to bind (loopback by default).")
  flags.DEFINE_integer("port", 8000, "TCP port.")
  flags.DEFINE_integer("max_queue", 8, "Pending jobs before the server answers 429.")
  flags.DEFINE_float("max_upload_mb", 16.0, "Request body limit in MiB (413 beyond).")
  flags.DEFINE_integer("max_area", 0, "Largest width*height a request may ask for; 0 = the preset's size.")
  flags.DEFINE_integer("max_frames", 0, "Largest frame count a request may ask for; 0 = the preset's frames.")
  flags.DEFINE_integer("max_steps", 100, "Largest step count a request may ask for.")
  flags.DEFINE_string("output_dir", "", "Where videos are written; '' = a fresh temporary directory.")
  flags.DEFINE_bool("warmup", True, "Run the default request once at start so its programs are compiled.")
  absl_app.run(main, flags_parser=cli.parse_flags)
