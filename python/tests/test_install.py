"""`pip install ./python` with no network (--no-index): the in-tree backend's wheel installs the package with
liblasp.so beside it, and the installed package runs the op from any directory."""
import os
import subprocess
import sys

import pytest

PYTHON_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def test_pip_install_offline(tmp_path):
    venv = tmp_path / "venv"
    r = subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip("no venv here (hint: apt-get install python3-venv): %s" % r.stderr.strip()[-200:])
    py = str(venv / "bin" / "python")
    r = subprocess.run([py, "-m", "pip", "install", "--no-index", "--no-cache-dir", "-q", PYTHON_DIR],
                       capture_output=True, text=True, cwd=str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    code = ("import lasp, torch; q = torch.randn(1, 8, 2, 16); o = lasp.linear_attention(q, q, q, "
            "torch.tensor([0.1, 0.2])); print(lasp.LIB_PATH); print(tuple(o.shape))")
    # PyTorch from where this interpreter finds it (a virtual environment's packages are not the system's)
    import torch
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(torch.__file__)))
    r = subprocess.run([py, "-c", code], capture_output=True, text=True, cwd=str(tmp_path), env=env)
    assert r.returncode == 0, r.stderr
    lib, shape = r.stdout.split("\n")[:2]
    assert lib.startswith(str(venv)) and lib.endswith("lasp/liblasp.so"), lib
    assert shape == "(1, 8, 2, 16)"
