"""Preset-dependent parts of `infer.serve`: I2V image upload (tiny_i2v) and per-request LoRA strength."""

import io

import numpy as np
import pytest

from tests.conftest import max_rel_err
from tests.serve.conftest import wait_done

LORA_LINEARITY_TOL = 1e-5   # float32 merges: W(s) - W(0) = s * (W(1) - W(0))


def _png(h, w):
  import imageio.v3 as iio
  rng = np.random.default_rng(1)
  buf = io.BytesIO()
  iio.imwrite(buf, rng.integers(0, 256, (h, w, 3), dtype=np.uint8), extension=".png")
  return buf.getvalue()


@pytest.fixture(scope="module")
def i2v_client():
  from fastapi.testclient import TestClient
  from configs.sample import tiny
  from infer import serve
  svc = serve.Service(tiny.get_config("i2v,steps=1"), serve.ServeOptions(warmup=False)).start()
  with TestClient(serve.create_app(svc)) as client:
    yield client
  svc.stop()


@pytest.mark.slow   # ~45 s on 2 CPU cores: compiles CLIP, the VAE encoder and the I2V DiT
def test_i2v_upload(i2v_client, tmp_path):
  from wanjax import video
  from wanjax.image.i2v import latent_size_for
  r = i2v_client.post("/v1/videos", data={"prompt": "the cat walks"}, files={"image": ("c.png", _png(40, 72))})
  assert r.status_code == 202, r.text
  job = wait_done(i2v_client.get, r.json()["id"], timeout=300)
  assert job["status"] == "succeeded", job["error"]
  want = latent_size_for(40, 72, 48 * 32)        # the aspect comes from the image, the area from the preset
  assert (job["result"]["width"], job["result"]["height"]) == (want.width, want.height)
  (tmp_path / "v.mp4").write_bytes(i2v_client.get(job["result"]["video_url"]).content)
  frames, _ = video.read_video(tmp_path / "v.mp4")
  assert frames.shape == (5, want.height, want.width, 3)


@pytest.mark.parametrize("kwargs,status,message", [
    (dict(json={"prompt": "no image"}), 422, "is image-to-video; upload an image"),
    (dict(data={"prompt": "x"}, files={"image": ("c.gif", b"GIF89a....")}), 422, "must be a PNG, JPEG or WebP"),
    (dict(data={"prompt": "x"}, files={"image": ("c.png", b"\x89PNG\r\n\x1a\nbroken")}), 400, "cannot read image"),
])
def test_i2v_bad_images(i2v_client, kwargs, status, message):
  r = i2v_client.post("/v1/videos", **kwargs)
  assert r.status_code == status, r.text
  (err,) = r.json()["detail"]
  assert err["loc"] == ["body", "image"] and message in err["msg"], err


def test_lora_strength_is_linear_and_zero_is_the_base(tmp_path):
  """The server keeps the float DiT unmerged and merges the LoRA per request strength (wanjax.lora)."""
  import jax
  from configs.sample import tiny
  from infer import serve
  from wanjax.checkpoint import flat_params
  from wanjax.lora import save_lora
  rng = np.random.default_rng(0)
  path = str(tmp_path / "lora.safetensors")
  save_lora(path, {"blocks.self_attn.q.kernel": (rng.standard_normal((3, 4, 24)), rng.standard_normal((3, 24, 4))),
                   "blocks.cross_attn.o.kernel":
                   (rng.standard_normal((3, 2, 24)), rng.standard_normal((3, 24, 2)))}, alpha=2.0)
  c = tiny.get_config("steps=1")
  c.lora, c.dtype = path, "bf16"   # bf16 matmuls: their kernels must still stay float32 for per-request merges
  svc = serve.Service(c, serve.ServeOptions(warmup=False))
  assert svc.describe()["lora_strength_adjustable"]
  svc.pipeline.load(svc.plan)
  get = lambda s: {k: np.asarray(jax.device_get(v.get_value()))            # noqa: E731
                   for k, v in flat_params(svc.params_for(s)[0]).items()}
  base = {k: np.asarray(jax.device_get(v.get_value())) for k, v in flat_params(svc.pipeline.params[0]).items()}
  assert base["blocks.self_attn.q.kernel"].dtype == np.float32   # not `wanjax.nn.cast_kernels`'d
  w0, w1, w05 = get(0.0), get(1.0), get(0.5)
  changed = sorted(k for k in base if not np.array_equal(w1[k], base[k]))
  assert changed == ["blocks.cross_attn.o.kernel", "blocks.self_attn.q.kernel"]
  for k in base:
    assert np.array_equal(w0[k], base[k]), k
  for k in changed:
    assert max_rel_err(w05[k] - base[k], 0.5 * (w1[k] - base[k])) < LORA_LINEARITY_TOL
  with pytest.raises(serve.RequestError, match="no LoRA is loaded"):
    svc2 = serve.Service(tiny.get_config("steps=1"), serve.ServeOptions(warmup=False))
    svc2.check_request(serve.VideoRequest(prompt="x", lora_strength=0.5), None)


def test_toyworld_prompt_outside_grammar_names_the_prompt_field():
  """The toy-world preset refuses prompts its 32-word text encoder cannot read (400 on `prompt`), before queueing."""
  from configs.sample import toyworld
  from infer import serve
  svc = serve.Service(toyworld.get_config(), serve.ServeOptions(warmup=False))   # not started: nothing loaded
  try:
    with pytest.raises(serve.RequestError) as e:
      svc.submit(serve.VideoRequest(prompt="a cat surfing a wave"))
    assert (e.value.status, e.value.field) == (400, "prompt")
    assert "outside the toy-world vocabulary: cat, surfing, wave" in e.value.message
    assert svc._queue.qsize() == 0 and not svc.jobs
    assert svc.submit(serve.VideoRequest(prompt="a small red circle moves left")).status == "queued"
  finally:
    svc.stop()


def test_startup_errors_are_one_line(tmp_path):
  """A typo'd --config field or an output_dir that is a file: `error: ...` and exit 2, before any model loads."""
  import os
  import subprocess
  import sys
  from configs.sample import tiny
  from infer import serve
  from wanjax.errors import UsageError
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(UsageError, match=f"output_dir '{blocker}' cannot be a folder"):
    serve.Service(tiny.get_config("steps=1"), serve.ServeOptions(output_dir=str(blocker), warmup=False))
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  r = subprocess.run([sys.executable, "-m", "infer.serve", "--config.fames=5"], cwd=root, capture_output=True,
                     text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=root))
  assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
  assert r.stderr.strip().splitlines()[-1] == ("error: --config.fames: the preset has no field 'fames'; did you "
                                               "mean 'frames'?")
