"""`infer.serve` HTTP API on the tiny preset: happy path (mp4 equal to the CLI's), 422/400 naming the field, 413,
415, 429 with a paused worker, a failed job that leaves the server serving, the list endpoint, the schema."""

import json
import os

import numpy as np
import pytest

from tests.serve.conftest import MAX_BODY, MAX_FRAMES, MAX_QUEUE, wait_done
from wanjax import video


def _video(client, job):
  r = client.get(job["result"]["video_url"])
  assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
  return r.content


def _frames(tmp_path, data, name):
  path = tmp_path / name
  path.write_bytes(data)
  return video.read_video(path)[0]


def test_happy_path_matches_cli(client, service, tmp_path):
  """Default request → a job that runs both steps; its mp4 decodes to exactly what `infer.sample` writes."""
  r = client.post("/v1/videos", json={"prompt": "a red kite over a beach"})
  assert r.status_code == 202, r.text
  assert r.headers["location"] == f"/v1/videos/{r.json()['id']}"
  job = wait_done(client.get, r.json()["id"])
  assert job["status"] == "succeeded", job["error"]
  assert (job["step"], job["total_steps"], job["progress"]) == (2, 2, 1.0)
  res = job["result"]
  assert (res["width"], res["height"], res["frames"], res["seed"]) == (48, 32, 5, 42)
  served = _frames(tmp_path, _video(client, job), "served.mp4")
  assert served.shape == (5, 32, 48, 3) and served.std() > 1.0

  from configs.sample import tiny
  from infer import sample
  c = tiny.get_config("steps=2")
  c.prompt, c.output_dir, c.output_name = "a red kite over a beach", str(tmp_path / "cli"), "clip"
  sample.run(c)
  cli, _ = video.read_video(tmp_path / "cli" / "clip.mp4")
  assert np.array_equal(served, cli), "the server must produce the CLI's video for the same request"


def test_request_fields_are_honoured(client, tmp_path):
  """frames, seed and prompt each change the video; frames=9 gives a 9-frame mp4 (a newly compiled shape)."""
  ids = [client.post("/v1/videos", json=body).json()["id"] for body in (
      {"prompt": "a", "seed": 7}, {"prompt": "a", "seed": 8}, {"prompt": "b", "seed": 7},
      {"prompt": "a", "seed": 7, "frames": 9, "steps": 1})]
  jobs = [wait_done(client.get, i) for i in ids]
  assert all(j["status"] == "succeeded" for j in jobs), [j["error"] for j in jobs]
  f = [_frames(tmp_path, _video(client, j), f"{k}.mp4") for k, j in enumerate(jobs)]
  assert f[0].shape == (5, 32, 48, 3) and f[3].shape == (9, 32, 48, 3)
  assert jobs[3]["total_steps"] == 1 and jobs[3]["result"]["seed"] == 7
  diff = lambda a, b: np.abs(a.astype(int) - b.astype(int)).mean()   # noqa: E731
  assert diff(f[0], f[1]) > 1.0 and diff(f[0], f[2]) > 1.0


@pytest.mark.parametrize("body,field,message", [
    ({"prompt": "x", "frames": 8}, "frames", "frames=8 must be 4k+1"),
    ({"prompt": "x", "frames": 13}, "frames", f"exceeds this server's max_frames={MAX_FRAMES}"),
    ({"prompt": "x", "width": 40}, "width", "multiple of 16"),
    ({"prompt": "x", "width": 64, "height": 64}, "width", "exceeds this server's max_area=1536"),
    ({"prompt": "x", "steps": 0}, "steps", "greater than or equal to 1"),
    ({"prompt": "x", "steps": 150}, "steps", "exceeds this server's max_steps=100"),
    ({"prompt": "x", "seed": "abc"}, "seed", "valid integer"),
    ({"prompt": "x", "seed": 2**40}, "seed", "less than or equal to"),
    ({"prompt": ""}, "prompt", "at least 1 character"),
    ({"prompt": "x" * 2001}, "prompt", "at most 2000 characters"),
    ({}, "prompt", "Field required"),
    ({"prompt": "x", "lora_strength": 3}, "lora_strength", "less than or equal to 2"),
    ({"prompt": "x", "framez": 5}, "framez", "Extra inputs are not permitted"),
    ({"prompt": "x", "seed": True}, "seed", "valid integer"),          # JSON is typed: no bool -> 1
    ({"prompt": "x", "frames": "17"}, "frames", "valid integer"),      # nor str -> int (form fields are text)
])
def test_invalid_fields_422(client, service, body, field, message):
  queued = len(service.jobs)
  r = client.post("/v1/videos", json=body)
  assert r.status_code == 422, r.text
  errors = r.json()["detail"]
  assert any(e["loc"] == ["body", field] and message in e["msg"] for e in errors), errors
  assert len(service.jobs) == queued, "a refused request must not create a job"


@pytest.mark.parametrize("kwargs,status,field,message", [
    (dict(json={"prompt": "x", "lora_strength": 0.5}), 400, "lora_strength", "no LoRA is loaded"),
    (dict(data={"prompt": "x"}, files={"image": ("a.png", b"\x89PNG\r\n\x1a\n....", "image/png")}), 400, "image",
     "is text-to-video"),
    (dict(content=b"{not json", headers={"content-type": "application/json"}), 422, None, "not valid JSON"),
    (dict(content=b"[1, 2]", headers={"content-type": "application/json"}), 422, None, "must be a JSON object"),
    (dict(content=b"prompt=x", headers={"content-type": "text/plain"}), 415, None, "send application/json"),
    (dict(content=b'{"prompt": "x", "lora_strength": NaN}', headers={"content-type": "application/json"}), 422,
     "lora_strength", "finite number"),
])
def test_refused_requests_name_the_field(client, kwargs, status, field, message):
  r = client.post("/v1/videos", **kwargs)
  assert r.status_code == status, r.text
  (err,) = r.json()["detail"]
  assert err["loc"] == (["body", field] if field else ["body"]) and message in err["msg"], err


def test_multipart_form_fields(client, tmp_path):
  """The page's form encoding: string fields are parsed as the JSON ones; empty inputs take the defaults."""
  r = client.post("/v1/videos", data={"prompt": "form", "seed": "9", "width": "", "frames": "5"})
  assert r.status_code == 202, r.text
  job = wait_done(client.get, r.json()["id"])
  assert job["status"] == "succeeded" and job["result"]["seed"] == 9 and job["request"]["width"] is None
  r = client.post("/v1/videos", data={"prompt": "form", "frames": "6"})
  assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "frames"]


def test_oversized_body_413(client, service):
  big = json.dumps({"prompt": "x" * (MAX_BODY + 10)}).encode()
  r = client.post("/v1/videos", content=big, headers={"content-type": "application/json"})
  assert r.status_code == 413 and "exceeds" in r.json()["detail"][0]["msg"]

  def chunks():   # no Content-Length: the limit is enforced while the body streams
    for _ in range(8):
      yield b"x" * (MAX_BODY // 4)
  r = client.post("/v1/videos", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
  assert r.status_code == 413, r.text
  files = {"image": ("big.png", b"\x89PNG\r\n\x1a\n" + bytes(MAX_BODY), "image/png")}
  assert client.post("/v1/videos", data={"prompt": "x"}, files=files).status_code == 413


def test_full_queue_429_then_all_jobs_finish(client, service):
  service.pause()
  try:
    ids = []
    for i in range(MAX_QUEUE):
      r = client.post("/v1/videos", json={"prompt": f"queued {i}"})
      assert r.status_code == 202, r.text
      ids.append(r.json()["id"])
    assert [client.get(f"/v1/videos/{i}").json()["queue_position"] for i in ids] == list(range(MAX_QUEUE))
    r = client.post("/v1/videos", json={"prompt": "one too many"})
    assert r.status_code == 429 and "queue is full" in r.json()["detail"][0]["msg"]
    assert int(r.headers["retry-after"]) >= 1
  finally:
    service.resume()
  assert [wait_done(client.get, i)["status"] for i in ids] == ["succeeded"] * MAX_QUEUE


def test_failed_job_is_reported_and_server_keeps_serving(client, service, tmp_path):
  """A job whose output cannot be written fails with its error; the next job succeeds."""
  blocker = tmp_path / "not_a_dir"
  blocker.write_text("a file where the output directory should be")
  saved, service.output_dir = service.output_dir, str(blocker)
  try:
    r = client.post("/v1/videos", json={"prompt": "doomed"})
    assert r.status_code == 202
    job = wait_done(client.get, r.json()["id"])
  finally:
    service.output_dir = saved
  assert job["status"] == "failed" and job["result"] is None
  assert job["error"].startswith(("NotADirectoryError", "FileExistsError")), job["error"]
  assert client.get(f"/v1/videos/{job['id']}.mp4").status_code == 409
  r = client.post("/v1/videos", json={"prompt": "after the failure"})
  assert wait_done(client.get, r.json()["id"])["status"] == "succeeded"
  assert client.get("/v1/info").json()["worker_alive"] is True


def test_out_of_memory_job_fails_with_one_line(client, service, monkeypatch):
  """A device out of memory fails the job with one line (not XLA's allocator dump); the server keeps serving."""
  import jax
  from wanjax import video

  def oom(*args, **kwargs):
    raise jax.errors.JaxRuntimeError(
        "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 12.00GiB with allocator GPU_0_bfc.\n"
        "Current allocation summary follows.\nBin (256): Total Chunks: 12")

  with monkeypatch.context() as m:
    m.setattr(video, "write_video", oom)
    job = wait_done(client.get, client.post("/v1/videos", json={"prompt": "too big"}).json()["id"])
  assert job["status"] == "failed"
  assert job["error"].startswith("out of memory on ") and "12.00GiB" in job["error"], job["error"]
  assert "\n" not in job["error"] and "Bin (256)" not in job["error"] and "fewer frames" in job["error"]
  r = client.post("/v1/videos", json={"prompt": "after the failure"})
  assert wait_done(client.get, r.json()["id"])["status"] == "succeeded"


def test_unknown_ids_404(client, service):
  assert client.get("/v1/videos/0123456789abcdef0123456789abcdef").status_code == 404
  assert client.get("/v1/videos/..%2F..%2Fetc%2Fpasswd.mp4").status_code == 404
  assert client.get("/v1/videos/nope.mp4").status_code == 404
  assert all(f.endswith((".mp4", ".json")) for f in os.listdir(service.output_dir))


def test_list_newest_first(client):
  ids = [client.post("/v1/videos", json={"prompt": f"list {i}"}).json()["id"] for i in range(2)]
  for i in ids:
    wait_done(client.get, i)
  jobs = client.get("/v1/videos").json()["jobs"]
  assert [j["id"] for j in jobs[:2]] == ids[::-1]
  assert all(j["status"] in ("succeeded", "failed") for j in jobs)


def test_openapi_schema_from_typed_models(client):
  schema = client.get("/openapi.json").json()
  req = schema["components"]["schemas"]["VideoRequest"]
  assert req["required"] == ["prompt"] and req["additionalProperties"] is False
  steps = req["properties"]["steps"]["anyOf"][0]
  assert (steps["minimum"], steps["maximum"]) == (1, 200)
  assert req["properties"]["width"]["anyOf"][0]["multipleOf"] == 16
  body = schema["paths"]["/v1/videos"]["post"]["requestBody"]["content"]
  assert set(body) == {"application/json", "multipart/form-data"}
  assert schema["components"]["schemas"]["VideoUpload"]["properties"]["image"]["format"] == "binary"
  assert "JobInfo" in schema["components"]["schemas"]
  assert "/v1/videos/{job_id}.mp4" in schema["paths"]
