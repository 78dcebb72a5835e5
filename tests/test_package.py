"""An installed package works from any folder: the wheel carries the built-in models and the
compiled schema (setup.py's build step), and reads nothing from the source tree."""
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_works_from_another_folder(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(dist), str(ROOT)], check=True, capture_output=True, cwd=tmp_path)
    wheel = next(dist.glob("deeprebirth-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("googlenet.prototxt", "squeezenet.prototxt", "fmnist_googlenet.prototxt",
              "fmnist_googlenet.caffemodel", "fmnist_googlenet_train_val.prototxt"):
        assert f"deeprebirth/caffe/builtin/{f}" in names, f
    assert "deeprebirth/caffe/proto/caffe.desc" in names and "deeprebirth/caffe/proto/caffe.proto" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    work = tmp_path / "elsewhere"
    work.mkdir()
    # -S: no site-packages .pth files, so the editable install cannot point back at the source
    # tree; this venv's packages (numpy, click, ...) come after the unpacked wheel on the path.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join([str(site), sysconfig.get_paths()["purelib"]])
    prog = "import sys; from deeprebirth.cli import main; sys.argv[0] = 'rebirth'; main()"

    def rebirth(*args):
        return subprocess.run([sys.executable, "-S", "-P", "-c", prog, *args], capture_output=True, text=True,
                              cwd=work, env=env, timeout=300)

    where = subprocess.run([sys.executable, "-S", "-P", "-c", "import deeprebirth; print(deeprebirth.__file__)"],
                           capture_output=True, text=True, cwd=work, env=env).stdout
    assert where.startswith(str(site)), where
    res = rebirth("inspect", "squeezenet")
    assert res.returncode == 0, res.stderr
    assert "fire2" in res.stdout
    res = rebirth("slim", "alexnet", "-o", "OUT")
    assert res.returncode == 0, res.stderr
    assert (work / "OUT" / "deploy.prototxt").is_file()
    res = rebirth("inspect", "fmnist_googlenet")
    assert res.returncode == 0, res.stderr
    assert "inception_3a" in res.stdout
