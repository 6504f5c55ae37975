"""Ctrl-C in `python -m infer.sample` is one `interrupted: ...` line and exit code 130 (README "Exit codes"), as in
the trainers; it was a KeyboardInterrupt traceback."""

import types

import pytest

from infer import sample


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
  def interrupted(config):
    raise KeyboardInterrupt

  monkeypatch.setattr(sample, "run", interrupted)
  monkeypatch.setattr(sample, "flags", types.SimpleNamespace(FLAGS=types.SimpleNamespace(config=None)))
  with pytest.raises((SystemExit, KeyboardInterrupt)) as e:   # a bare KeyboardInterrupt would stop pytest itself
    sample.main(["infer.sample"])
  assert e.type is SystemExit and e.value.code == 130
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 1 and err[0].startswith("interrupted: ") and "Traceback" not in err[0]
