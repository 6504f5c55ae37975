"""`python -m infer.serve` without its packages (the `serve` extra) is one `error:` line naming the package and the
install command, exit 2; it was a ModuleNotFoundError traceback."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("package", ["fastapi", "uvicorn", "pydantic"])
def test_missing_package_is_one_line_and_exit_2(tmp_path, package):
  fake = tmp_path / package   # shadows the installed package: importing it fails as if it were absent
  fake.mkdir()
  (fake / "__init__.py").write_text(f"raise ModuleNotFoundError(\"No module named '{package}'\", name='{package}')\n")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), REPO, os.environ.get("PYTHONPATH", "")]))
  r = subprocess.run([sys.executable, "-m", "infer.serve", "--port=1"], cwd=REPO, env=env, capture_output=True,
                     text=True, timeout=120)
  assert r.returncode == 2, r.stderr[-2000:]
  err = r.stderr.strip().splitlines()
  assert err == [f"error: python -m infer.serve needs the '{package}' package, which cannot be imported (No module "
                 f"named '{package}'); install the serve extra: pip install -e '.[serve]'"], r.stderr[-2000:]
