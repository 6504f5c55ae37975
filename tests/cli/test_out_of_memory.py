"""An accelerator out-of-memory (XLA's RESOURCE_EXHAUSTED) in the sampling and training CLIs: one `error:` line
naming the device, the failed allocation and what to change, instead of XLA's screen of allocator statistics;
any other runtime error keeps its traceback."""

import os
import subprocess
import sys
import types

import jax
import pytest

from infer import sample
from wanjax.errors import out_of_memory_message

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The head of the error a 1.3B DMD step raised on an H100 (docs/bench/h100_dmd_step_1_3b_oom.txt), with a
# stand-in for the allocator dump XLA appends.
XLA_OOM = ("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 31.56GiB with allocator GPU_0_bfc on "
           "device 0. [executable_name='jit_dmd_step'] [tf-allocator-allocation-error='']\n"
           "Current allocation summary follows.\nBin (256): Total Chunks: 12, Chunks in use: 12. 3.0KiB")


def test_message_names_device_allocation_and_advice():
  msg = out_of_memory_message(jax.errors.JaxRuntimeError(XLA_OOM), "Try smaller frames.")
  assert "\n" not in msg
  devices = jax.local_devices()   # XLA_OOM names device 0; the tests' CPU backend may have several
  where = devices[0].device_kind + (" (device 0)" if len(devices) > 1 else "")
  assert msg.startswith(f"out of memory on {where}: XLA could not allocate 31.56GiB")
  assert msg.endswith("Try smaller frames.")
  assert "Bin (256)" not in msg


def test_message_survives_a_broken_backend(monkeypatch):
  def broken():
    raise RuntimeError("backend gone")
  monkeypatch.setattr(jax, "devices", broken)
  monkeypatch.setattr(jax, "local_devices", broken)
  msg = out_of_memory_message(jax.errors.JaxRuntimeError(XLA_OOM), "Advice.")
  assert msg == "out of memory on the device: XLA could not allocate 31.56GiB. Advice."


class FakeDevice:
  """What `out_of_memory_message` reads of a jax device: kind, id, local ordinal and memory statistics."""

  def __init__(self, i, hw=None, kind="FakeGPU 80GB"):
    self.id, self.local_hardware_id, self.device_kind = i, i if hw is None else hw, kind
    self.limit = (60 + i) * 2**30   # a different limit per device: the line shows whose it took

  def memory_stats(self):
    return {"bytes_limit": self.limit}


SHARE = "; XLA_PYTHON_CLIENT_MEM_FRACTION sets that share, 0.75 unless set). Advice."


def _oom_line(monkeypatch, devices, status):
  monkeypatch.setattr(jax, "local_devices", lambda: devices)
  monkeypatch.setattr(jax, "devices", lambda: devices)
  return out_of_memory_message(jax.errors.JaxRuntimeError(status + "\nBin (256): Total Chunks: 12"), "Advice.")


@pytest.mark.parametrize("status,device", [
    (XLA_OOM.splitlines()[0].replace("GPU_0_bfc on device 0", "GPU_2_bfc on device 2"), 2),
    ("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 31.56GiB with allocator GPU_3_bfc.", 3),
    ("RESOURCE_EXHAUSTED: Failed to allocate request for 31.56GiB (33891552768B) on device ordinal 1", 1),
    ("RESOURCE_EXHAUSTED: TPU_3: Out of memory while trying to allocate 31.56GiB.", 3),
    ("RESOURCE_EXHAUSTED: /device:GPU:2: Out of memory while trying to allocate 31.56GiB.", 2),
])
def test_message_names_the_device_xla_names(monkeypatch, status, device):
  msg = _oom_line(monkeypatch, [FakeDevice(i) for i in range(4)], status)
  assert msg == (f"out of memory on FakeGPU 80GB (device {device}): XLA could not allocate 31.56GiB (jax may use "
                 f"{60 + device}.0 GiB of it" + SHARE)


def test_device_ordinal_is_the_local_one(monkeypatch):
  # The second process of a 2-host run: global ids 4..7, CUDA ordinals 0..3; XLA's "device 1" is id 5.
  devices = [FakeDevice(4 + k, hw=k) for k in range(4)]
  msg = _oom_line(monkeypatch, devices, XLA_OOM.splitlines()[0].replace("on device 0", "on device 1"))
  assert msg.startswith("out of memory on FakeGPU 80GB (device 5): XLA could not allocate 31.56GiB (jax may use "
                        "65.0 GiB of it;"), msg


def test_message_without_a_device_on_several_devices_says_one_of_them(monkeypatch):
  msg = _oom_line(monkeypatch, [FakeDevice(i) for i in range(8)],
                  "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.50GiB.")
  assert msg == ("out of memory on one of the 8 local FakeGPU 80GB devices: XLA could not allocate 1.50GiB (jax may "
                 "use 60.0 GiB of each" + SHARE)
  # A number that is no local device's ordinal names none of them.
  msg = _oom_line(monkeypatch, [FakeDevice(i) for i in range(2)], XLA_OOM.splitlines()[0].replace("0", "7"))
  assert msg.startswith("out of memory on one of the 2 local FakeGPU 80GB devices: "), msg


def test_message_on_one_device_is_unchanged(monkeypatch):
  msg = _oom_line(monkeypatch, [FakeDevice(0)], XLA_OOM.splitlines()[0])
  assert msg == "out of memory on FakeGPU 80GB: XLA could not allocate 31.56GiB (jax may use 60.0 GiB of it" + SHARE


def test_other_errors_are_not_taken_for_out_of_memory():
  assert out_of_memory_message(jax.errors.JaxRuntimeError("INTERNAL: cuDNN failed"), "x") is None
  assert out_of_memory_message(ValueError("shape mismatch"), "x") is None


def test_sample_cli_prints_one_line(monkeypatch, capsys):
  def run(config):
    raise jax.errors.JaxRuntimeError(XLA_OOM)
  monkeypatch.setattr(sample, "run", run)
  monkeypatch.setattr(sample, "flags", types.SimpleNamespace(FLAGS=types.SimpleNamespace(config=None)))
  with pytest.raises(SystemExit) as exit_info:
    sample.main(["sample"])
  assert exit_info.value.code == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: out of memory on ") and "--config.quant=int8" in err[0]


def test_sample_cli_keeps_other_tracebacks(monkeypatch):
  def run(config):
    raise RuntimeError("something else")
  monkeypatch.setattr(sample, "run", run)
  monkeypatch.setattr(sample, "flags", types.SimpleNamespace(FLAGS=types.SimpleNamespace(config=None)))
  with pytest.raises(RuntimeError, match="something else"):
    sample.main(["sample"])


_TRAINER = """
import os
import jax
from train import loop

def train_fn(config, workdir):
  raise jax.errors.JaxRuntimeError(os.environ["FAKE_XLA_ERROR"])

loop.run_cli(train_fn, "configs/train/dmd_smoke.py")
"""


@pytest.mark.parametrize("error", [XLA_OOM, "INTERNAL: something else"])
def test_trainer_cli(tmp_path, error):
  script = tmp_path / "trainer.py"
  script.write_text(_TRAINER)
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), FAKE_XLA_ERROR=error)
  r = subprocess.run([sys.executable, str(script), "--config", "configs/train/dmd_smoke.py", "--workdir",
                      str(tmp_path / "run")], cwd=ROOT, env=env, capture_output=True, text=True,
                     timeout=120)
  assert r.returncode == 1, r.stderr[-2000:]
  lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
  if error == XLA_OOM:
    assert "Traceback" not in r.stderr and "Bin (256)" not in r.stderr, r.stderr[-2000:]
    assert lines[-1].startswith("error: out of memory on ") and "31.56GiB" in lines[-1]
    assert "teacher_param_dtype=bfloat16" in lines[-1] and "XLA_PYTHON_CLIENT_MEM_FRACTION=0.98" in lines[-1]
    assert lines[-1].endswith("No checkpoint was written yet; rerun the same command to start again.")
  else:
    assert "Traceback" in r.stderr and "INTERNAL: something else" in lines[-1]
