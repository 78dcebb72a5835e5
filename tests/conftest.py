"""Shared fixtures (functions and constants the tests share are in helpers.py).

``caffe``: the pycaffe module. Without it a test is skipped, except when CI=true, where a missing
pycaffe is a failure (CI must exercise the real engine).
``shared_models``: the public reference prototxts in ../shared/models (never copied into the repo).

Temporary files: the session runs with its own temporary folder (TMPDIR and ``tempfile.tempdir``,
inherited by every child process) inside the system one; at the end anything left in it other
than pytest's own ``pytest-of-*`` fails the run (no command, child or test may leave a
temporary file behind), and the folder is removed, so the system temp folder gains nothing.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from helpers import IN_CI, SHARED_MODELS


def _need(what: str, why: str):
    if IN_CI:
        pytest.fail(f"{what} is required in CI: {why}")
    pytest.skip(f"{what} not available: {why}")


@pytest.fixture(scope="session")
def caffe():
    os.environ.setdefault("GLOG_minloglevel", "2")
    try:
        import caffe as _caffe
    except Exception as exc:  # noqa: BLE001  (ImportError, or a broken build)
        _need("pycaffe", f"import caffe failed ({exc}); run `make caffe`")
    _caffe.set_mode_cpu()
    return _caffe


@pytest.fixture(scope="session")
def shared_models() -> Path:
    if not (SHARED_MODELS / "bvlc_googlenet" / "deploy.prototxt").exists():
        _need("../shared/models", f"{SHARED_MODELS} is missing")
    return SHARED_MODELS


_SESSION_TMP: dict = {}


def pytest_configure(config):
    system = tempfile.gettempdir()
    private = tempfile.mkdtemp(prefix="rebirth-tests-", dir=system)
    _SESSION_TMP.update(system=system, private=private, previous=os.environ.get("TMPDIR"))
    os.environ["TMPDIR"] = private
    tempfile.tempdir = private


def leftovers(folder: str) -> list[str]:
    """What is in ``folder`` besides pytest's own tmp_path tree."""
    return sorted(n for n in os.listdir(folder) if not n.startswith("pytest-of-"))


def pytest_sessionfinish(session, exitstatus):
    private = _SESSION_TMP.get("private")
    if not private or not os.path.isdir(private):
        return
    left = leftovers(private)
    if left:
        session.config.get_terminal_writer().line(
            f"FAILED: the tests left {len(left)} temporary file(s): {', '.join(left[:10])}", red=True)
        session.exitstatus = 1


def pytest_unconfigure(config):
    private = _SESSION_TMP.pop("private", None)
    if private:
        shutil.rmtree(private, ignore_errors=True)
        tempfile.tempdir = None
        if _SESSION_TMP.get("previous") is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = _SESSION_TMP["previous"]
