"""Ctrl-C in the tools' CLIs (`converters.convert`, `infer.forward`, `wanjax.toyworld.evaluate` / `dataset` /
`vocab`) is one `interrupted: ...` line saying what was kept, and exit code 130 (README "Exit codes"); it was a
KeyboardInterrupt traceback."""

import os
import types

import pytest
from absl import flags

from converters import convert
from infer import forward
from wanjax.toyworld import dataset, evaluate, vocab, world


def _interrupted(capsys, cli_main):
  with pytest.raises((SystemExit, KeyboardInterrupt)) as e:   # a bare KeyboardInterrupt would stop pytest itself
    cli_main(["tool"])
  assert e.type is SystemExit and e.value.code == 130
  err = capsys.readouterr().err
  lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and "%|" not in ln]   # no tqdm bars
  assert len(lines) == 1 and lines[0].startswith("interrupted: ") and "Traceback" not in err, err
  return lines[0]


def _ctrl_c(*args, **kwargs):
  raise KeyboardInterrupt


@pytest.mark.parametrize("module, kept", [
    (convert, "--out holds its earlier model (or none), never a partial one"),
    (forward, "--out is written whole or not at all, so no partial file is left"),
    (evaluate, "--out was not written (an earlier report there is unchanged)"),
    (vocab, "tokenizer.json is written whole or not at all"),
])
def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys, module, kept):
  monkeypatch.setattr(module, "main", _ctrl_c)
  assert kept in _interrupted(capsys, module.cli_main)


def test_dataset_ctrl_c_says_the_written_clips_are_kept(monkeypatch, capsys, tmp_path):
  out = str(tmp_path / "data")
  monkeypatch.setattr(flags, "FLAGS", types.SimpleNamespace(out=out, n=5, seed=0, frames=17, size=64, format="npy"))
  real_render, calls = world.render, []

  def render_then_ctrl_c(*args):   # Ctrl-C while the third clip is drawn
    calls.append(1)
    if len(calls) == 3:
      raise KeyboardInterrupt
    return real_render(*args)

  monkeypatch.setattr(world, "render", render_then_ctrl_c)
  line = _interrupted(capsys, dataset.cli_main)
  assert line == (f"interrupted: the clips written so far are kept in {out} (each file whole), but the dataset is "
                  f"incomplete (scenes.json is written last); run the same command again to write all of it")
  assert sorted(os.listdir(out)) == ["000000.npy", "000000.txt", "000001.npy", "000001.txt"]


def test_make_ode_pairs_ctrl_c_says_the_shards_are_kept(monkeypatch, capsys):
  from train import make_ode_pairs
  monkeypatch.setattr(flags, "FLAGS", types.SimpleNamespace(
      config=object(), output="/tmp/pairs", num_steps=4, solver="euler", guidance=6.0, sample_shift=0.0,
      samples_per_shard=2, batch_size=1, num_samples=2, dtype="float32"))
  monkeypatch.setattr(make_ode_pairs, "run", _ctrl_c)
  with pytest.raises((SystemExit, KeyboardInterrupt)) as e:
    make_ode_pairs.main(["make_ode_pairs"])
  assert e.type is SystemExit and e.value.code == 130
  err = capsys.readouterr().err.strip()
  assert err == ("interrupted: the shards written so far are kept in /tmp/pairs; run the same command again to "
                 "resume"), err
