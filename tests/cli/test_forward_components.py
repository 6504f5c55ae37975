"""`python -m infer.forward --component t5|vae_encode|vae_decode|clip` end to end on tiny random torch models.

The references are the parity tests' models (transformers `UMT5EncoderModel`, diffusers `AutoencoderKLWan`,
transformers `CLIPVisionModel`, every parameter randomised), saved as torch-layout files (a transformers folder,
a diffusers folder, a bare `.safetensors`) and passed raw to the CLI, so each run goes through the on-the-fly
conversion into a cache. Outputs are compared in the torch (channels-first) layout of the CLI contract.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from infer import forward as fwd_cli
from infer.models import resolve_model
from tests.conftest import max_rel_err
from tests.parity import test_clip as clip_ref
from tests.parity import test_umt5 as t5_ref
from tests.parity import test_vae as vae_ref
from tests.parity.test_umt5 import hf  # noqa: F401  (fixture: the umT5 reference, its outputs and inputs)
from tests.parity.test_vae import torch_vae  # noqa: F401  (fixture: the diffusers VAE reference)
from wanjax.errors import UsageError

pytestmark = pytest.mark.torch
T5_TOL = 1e-4          # fp32: max|cli - transformers| <= tol * max|ref|
T5_BF16_TOL = t5_ref.BF16_TOL
CLIP_TOL = 1e-4        # fp32, relative as above
VAE_ABS_TOL = 1e-4     # fp32: max|cli - diffusers| on normalised latents and on pixels
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLIP_HEADS = clip_ref.SIZES["num_attention_heads"]   # width 24: not inferable from the weights


def _cli(*args, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "infer.forward", *map(str, args)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def _run(tmp_path, component, model, inputs, **options):
  np.savez(tmp_path / f"{component}_in.npz", **inputs)
  out = tmp_path / f"{component}_out.npz"
  fwd_cli.forward(component, str(model), str(tmp_path / f"{component}_in.npz"), str(out), **options)
  with np.load(out) as z:
    return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def raw(tmp_path_factory, hf, torch_vae):  # noqa: F811
  """The three references saved raw, plus a cache folder shared by the in-process runs."""
  from safetensors.torch import save_file
  d = tmp_path_factory.mktemp("raw")
  hf[0].save_pretrained(str(d / "umt5"))                       # transformers folder: model.safetensors
  torch_vae.save_pretrained(str(d / "vae"))                    # diffusers folder
  clip_model = clip_ref._hf_model()
  save_file({k: v.contiguous() for k, v in clip_model.state_dict().items()}, str(d / "clip.safetensors"))
  return dict(umt5=d / "umt5", vae=d / "vae", clip=d / "clip.safetensors", clip_model=clip_model,
              cache=d / "cache")


# ---------------------------------------------------------------------------------------------------------------
# t5

def test_t5_cli_converts_raw_folder_and_matches_transformers(raw, hf, tmp_path):  # noqa: F811
  _, _, ref, ids, mask = hf
  np.savez(tmp_path / "in.npz", ids=ids, mask=mask)
  p = _cli("--component", "t5", "--model", raw["umt5"], "--inputs", tmp_path / "in.npz", "--out",
           tmp_path / "out.npz", "--cache-dir", tmp_path / "cache")
  assert p.returncode == 0, p.stderr[-2000:]
  assert f"t5 forward: wrote out {ref.shape} to" in p.stdout
  assert "converted umt5 checkpoint (layout 'hf'" in p.stderr
  with np.load(tmp_path / "out.npz") as z:
    out = z["out"]
  assert out.dtype == np.float32 and out.shape == ref.shape == (2, t5_ref.SEQ_LEN, t5_ref.CFG.dim)
  err = max_rel_err(out, ref)
  print(f"t5 fp32 CLI vs transformers: {err:.2e}")
  assert err <= T5_TOL


def test_t5_bfloat16(raw, hf, tmp_path):  # noqa: F811
  _, _, ref, ids, mask = hf
  out = _run(tmp_path, "t5", raw["umt5"], {"ids": ids, "mask": mask}, dtype="bfloat16",
             cache_dir=str(raw["cache"]))["out"]
  err = max_rel_err(out, ref)
  print(f"t5 bf16 CLI vs fp32 transformers: {err:.2e}")
  assert out.dtype == np.float32
  assert 1e-4 < err <= T5_BF16_TOL   # the bf16 path really ran, and stays close


# ---------------------------------------------------------------------------------------------------------------
# VAE

def _vae_abs_err(got, want, what):
  assert got.shape == want.shape, (what, got.shape, want.shape)
  err = float(np.max(np.abs(got.astype(np.float64) - want)))
  print(f"{what}: max abs err {err:.2e} (max|ref| {np.max(np.abs(want)):.2f})")
  return err


@pytest.fixture(scope="module")
def vae_io(torch_vae):  # noqa: F811
  """Video [1, 3, 5, 16, 24] and the diffusers latent / decoded video, channels-first."""
  video_last = vae_ref._video(5, seed=21)                       # [B, T, H, W, 3]
  latent_last = vae_ref._torch_encode(torch_vae, video_last)    # [B, F, h, w, z], normalised
  decoded_last = vae_ref._torch_decode(torch_vae, latent_last)
  assert np.mean(np.abs(decoded_last) < 1.0) > 0.9   # the clamp hides little
  first = lambda a: np.ascontiguousarray(np.moveaxis(a, -1, 1))  # noqa: E731
  return dict(video=first(video_last), latent=first(latent_last), decoded=first(decoded_last))


def test_vae_encode_matches_diffusers(raw, vae_io, tmp_path):
  latent = _run(tmp_path, "vae_encode", raw["vae"], {"video": vae_io["video"]}, cache_dir=str(raw["cache"]))
  latent = latent["latent"]
  assert latent.dtype == np.float32 and latent.shape == (1, 16, 2, 2, 3)
  assert _vae_abs_err(latent, vae_io["latent"], "vae_encode fp32 CLI vs diffusers") <= VAE_ABS_TOL


def test_vae_decode_matches_diffusers(raw, vae_io, tmp_path):
  video = _run(tmp_path, "vae_decode", raw["vae"], {"latent": vae_io["latent"]}, cache_dir=str(raw["cache"]))
  video = video["video"]
  assert video.dtype == np.float32 and video.shape == (1, 3, 5, 16, 24)
  assert _vae_abs_err(video, vae_io["decoded"], "vae_decode fp32 CLI vs diffusers") <= VAE_ABS_TOL


# ---------------------------------------------------------------------------------------------------------------
# CLIP

def _torch_clip(model, image):
  """The reference `CLIPModel.visual` preprocessing (squash bicubic, x·0.5 + 0.5, CLIP mean/std) + the
  penultimate hidden states. image `[B, 3, H, W]` in [-1, 1]."""
  import torch
  import torch.nn.functional as F
  from wanjax.image.clip import CLIP_MEAN, CLIP_STD
  s = clip_ref.SIZES["image_size"]
  x = F.interpolate(torch.from_numpy(image), size=(s, s), mode="bicubic", align_corners=False).mul_(0.5).add_(0.5)
  x = (x - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
  return clip_ref._hf_penultimate(model, x.numpy().transpose(0, 2, 3, 1))


def test_clip_matches_transformers(raw, tmp_path):
  image = np.random.default_rng(5).uniform(-1, 1, (2, 3, 37, 45)).astype(np.float32)  # not square, not 28
  want = _torch_clip(raw["clip_model"], image)
  out = _run(tmp_path, "clip", raw["clip"], {"image": image}, cache_dir=str(raw["cache"]),
             num_heads=CLIP_HEADS)["out"]
  assert out.dtype == np.float32 and out.shape == want.shape == (2, 17, 24)
  err = max_rel_err(out, want)
  print(f"clip fp32 CLI vs transformers: {err:.2e}")
  assert err <= CLIP_TOL


def test_clip_raw_without_head_count_says_how_to_fix(raw, tmp_path):
  with pytest.raises(UsageError, match=r"CLIP head count for width 24"):
    fwd_cli.run_clip(str(raw["clip"]), {"image": np.zeros((1, 3, 28, 28), np.float32)},
                     cache_dir=str(tmp_path / "cache"))


# ---------------------------------------------------------------------------------------------------------------
# Errors

@pytest.fixture(scope="module")
def configs():
  from wanjax.vae.config import get_config
  return dict(t5=t5_ref.CFG, vae=get_config("tiny"))


def _t5_inputs():
  ids = np.arange(12, dtype=np.int32).reshape(2, 6) + 3
  return {"ids": ids, "mask": np.ones_like(ids)}


@pytest.mark.parametrize("edit,match", [
    (lambda i: i.pop("mask"), r"inputs have no 'mask'; --component t5 needs ids \[B, L\].*mask \[B, L\].*found "
                              r"\['ids'\]"),
    (lambda i: i.update(x=np.zeros(3)), r"unexpected inputs \['x'\] for --component t5"),
    (lambda i: i.update(ids=i["ids"][0]), r"'ids' has shape \(6,\) \(rank 1\); expected ids \[B, L\]"),
    (lambda i: i.update(ids=i["ids"].astype(np.float32)), r"'ids' has dtype float32; expected integer"),
    (lambda i: i.update(mask=i["mask"][:, :4]), r"'mask' has shape \(2, 4\); expected the shape of 'ids' \(2, 6\)"),
    (lambda i: i.update(ids=i["ids"] + 95), r"token ids in \[98, 109\]; valid: \[0, 101\)"),
    (lambda i: i.update(mask=2 * i["mask"]), r"'mask' holds values \[2\]"),
])
def test_t5_input_validation(configs, edit, match):
  inputs = _t5_inputs()
  edit(inputs)
  with pytest.raises(UsageError, match=match):
    fwd_cli.check_t5_inputs(configs["t5"], inputs)


def _video(t=5, h=16, w=24, c=3):
  return {"video": np.zeros((1, c, t, h, w), np.float32)}


@pytest.mark.parametrize("inputs,match", [
    (_video(t=6), r"'video' has 6 frames; the frame count must be 4k\+1 \(e\.g\. 5 or 9"),
    (_video(h=20), r"'video' is 20x24 \(H x W\); both must be positive multiples of 8 \(e\.g\. 16x24"),
    (_video(c=4), r"4 channels, expected 3 RGB"),
    ({"video": np.zeros((3, 5, 16, 24), np.float32)}, r"'video' has shape \(3, 5, 16, 24\) \(rank 4\); expected "
                                                      r"video \[B, 3, T, H, W\]"),
    ({"video": np.full((1, 3, 5, 16, 24), np.nan, np.float32)}, r"'video' has non-finite values"),
    ({"latent": np.zeros((1, 16, 2, 2, 3))}, r"inputs have no 'video'; --component vae_encode needs video "
                                             r"\[B, 3, T, H, W\] in \[-1, 1\]; found \['latent'\]"),
])
def test_video_input_validation(configs, inputs, match):
  with pytest.raises(UsageError, match=match):
    fwd_cli.check_video_input(configs["vae"], inputs)


@pytest.mark.parametrize("inputs,match", [
    ({"latent": np.zeros((1, 8, 2, 2, 3))}, r"8 channels, expected 16"),
    ({"latent": np.zeros((16, 2, 2, 3))}, r"rank 4\); expected latent \[B, 16, F, h, w\]"),
    ({"video": np.zeros((1, 3, 5, 16, 24))}, r"inputs have no 'latent'; --component vae_decode needs latent"),
])
def test_latent_input_validation(configs, inputs, match):
  with pytest.raises(UsageError, match=match):
    fwd_cli.check_latent_input(configs["vae"], inputs)


@pytest.mark.parametrize("inputs,match", [
    ({"image": np.zeros((3, 28, 28), np.float32)}, r"rank 3\); expected image \[B, 3, H, W\]"),
    ({"image": np.zeros((1, 1, 28, 28), np.float32)}, r"1 channels, expected 3 RGB"),
    ({"image": np.zeros((1, 3, 28, 28)), "mask": np.zeros(2)}, r"unexpected inputs \['mask'\] for --component clip"),
])
def test_image_input_validation(inputs, match):
  with pytest.raises(UsageError, match=match):
    fwd_cli.check_image_input(inputs)


def test_model_of_another_family_is_refused(raw, tmp_path):
  t5_dir = resolve_model(str(raw["umt5"]), family="umt5", cache_dir=str(raw["cache"]))
  with pytest.raises(UsageError, match=r"holds a converted 'umt5' model; --component vae_decode needs a 'vae'"):
    fwd_cli.run_vae_decode(t5_dir, {"latent": np.zeros((1, 16, 1, 2, 3), np.float32)})
  with pytest.raises(UsageError, match=r"matches no known model family.*umt5"):   # raw CLIP file as umT5
    fwd_cli.run_t5(str(raw["clip"]), _t5_inputs(), cache_dir=str(tmp_path / "cache"))
  with pytest.raises(UsageError, match=r"--num-heads only applies when converting a raw torch checkpoint"):
    fwd_cli.run_t5(t5_dir, _t5_inputs(), num_heads=4)
  with pytest.raises(UsageError, match=r"dtype='float16'; valid: float32, bfloat16"):
    fwd_cli.run_clip(str(raw["clip"]), {"image": np.zeros((1, 3, 28, 28), np.float32)}, dtype="float16")


@pytest.mark.parametrize("component,extra,inputs,match", [
    ("vae_encode", (), {"video": np.zeros((1, 3, 6, 16, 24), np.float32)}, "error: input 'video' has 6 frames"),
    ("t5", ("--causal",), _t5_inputs(), "error: --causal/--frames-per-block apply to --component dit, not 't5'"),
])
def test_cli_errors_are_one_line_and_write_nothing(raw, tmp_path, component, extra, inputs, match):
  family = fwd_cli.FAMILIES[component]
  model = resolve_model(str(raw[family]), family=family, cache_dir=str(raw["cache"]))  # converted: no conversion
  np.savez(tmp_path / "in.npz", **inputs)
  p = _cli("--component", component, "--model", model, "--inputs", tmp_path / "in.npz", "--out",
           tmp_path / "o.npz", *extra)
  assert p.returncode == 2
  assert p.stderr.strip().splitlines()[-1].startswith(match)
  assert not (tmp_path / "o.npz").exists()


@pytest.mark.parametrize("out,match", [
    ("{tmp}", "error: --out '{tmp}' is a folder; pass a file name such as"),
    ("{tmp}/file/o.npz", "error: --out folder '{tmp}/file' cannot be a folder: '{tmp}/file' is a file"),
])
def test_cli_unwritable_out_fails_before_running(tmp_path, out, match):
  """An `--out` that cannot be written is refused before the model runs (it used to fail in the final rename,
  with a traceback, after the whole forward)."""
  (tmp_path / "file").write_text("x")
  np.savez(tmp_path / "in.npz", latent=np.zeros((1, 16, 1, 2, 2), np.float32))
  vae = os.path.join(ROOT, "wanjax", "toyworld", "checkpoints", "vae")   # a converted VAE shipped in the repo
  p = _cli("--component", "vae_decode", "--model", vae, "--inputs", tmp_path / "in.npz", "--out",
           out.format(tmp=tmp_path))
  assert p.returncode == 2, p.stderr[-2000:]
  assert p.stderr.strip().splitlines()[-1].startswith(match.format(tmp=tmp_path)), p.stderr[-2000:]
  assert sorted(os.listdir(tmp_path)) == ["file", "in.npz"]
