"""A Caffe net as an MNN model: our ONNX export (to_onnx.py) converted by MNN's converter.

The converter is the compiled binding ``_tools.mnnconvert(argv)`` that the MNN wheel ships; it is
called directly. The wheel's ``mnnconvert`` script and ``MNN.tools`` Python modules are never
imported: ``MNN/tools/mnnconvert.py`` imports ``MNN/tools/utils/log.py``, which runs ``pip install``
at import time and posts the machine's id to a remote service. The binding prints its progress on
file descriptor 1; that goes to stderr here, so ``--json`` output stays clean.
"""
from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from deeprebirth.errors import RebirthError

FILE = "model.mnn"


@contextmanager
def stdout_to_stderr():
    """File descriptor 1 pointed at stderr for the duration (C++ code printing on stdout)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def import_converter():
    try:
        with stdout_to_stderr():
            import _tools  # noqa: PLC0415  (MNN's compiled converter; not MNN.tools, see above)
    except ImportError:
        raise RebirthError("exporting to MNN needs the MNN package (make install, or pip install MNN)") from None
    return _tools


def onnx_to_mnn(onnx_bytes: bytes, source: str = "<model>") -> bytes:
    """MNN's converter on an ONNX model: the .mnn file's bytes."""
    tools = import_converter()
    with tempfile.TemporaryDirectory(prefix="deeprebirth-mnn-") as tmp:
        src, dst = Path(tmp) / "model.onnx", Path(tmp) / FILE
        src.write_bytes(onnx_bytes)
        argv = ["mnnconvert", "-f", "ONNX", "--modelFile", str(src), "--MNNModel", str(dst), "--bizCode", "deeprebirth"]
        with stdout_to_stderr():
            ok = tools.mnnconvert(argv)
        if not ok or not dst.exists():
            raise RebirthError(f"{source}: MNN's converter refused the model (its messages are above)")
        return dst.read_bytes()
