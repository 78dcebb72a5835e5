"""Shared fixtures (functions and constants the tests share are in helpers.py).

``caffe``: the pycaffe module. Without it a test is skipped, except when CI=true, where a missing
pycaffe is a failure (CI must exercise the real engine).
``shared_models``: the public reference prototxts in ../shared/models (never copied into the repo).
"""
from __future__ import annotations

import os
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
        import caffe as _caffe  # noqa: PLC0415
    except Exception as exc:  # ImportError, or a broken build
        _need("pycaffe", f"import caffe failed ({exc}); run `make caffe`")
    _caffe.set_mode_cpu()
    return _caffe


@pytest.fixture(scope="session")
def shared_models() -> Path:
    if not (SHARED_MODELS / "bvlc_googlenet" / "deploy.prototxt").exists():
        _need("../shared/models", f"{SHARED_MODELS} is missing")
    return SHARED_MODELS
