"""Engines that run exported nets (``bench --engine``, ``export --verify``): one module each.

``caffe`` is the reference (pycaffe, runtime/devices/cpu.py); ``onnxruntime``, ``ncnn`` and ``mnn``
load what runtime/export writes for them.
"""
from __future__ import annotations

from deeprebirth.errors import RebirthError

ENGINES = {
    "caffe": "pycaffe in this process (the reference)",
    "onnxruntime": "ONNX Runtime's CPU provider on the ONNX export",
    "ncnn": "ncnn's Python binding on the ncnn export",
    "mnn": "MNN's Python binding on the MNN export",
}
#: The export format each engine loads.
FORMAT_OF = {"onnxruntime": "onnx", "ncnn": "ncnn", "mnn": "mnn"}


def check_engine(name: str) -> str:
    key = (name or "").lower()
    if key not in ENGINES:
        raise RebirthError(f"unknown engine '{name}' (known: {', '.join(ENGINES)})")
    return key


def get_device(name: str, threads: int | None = None):
    """The bench Device that runs models in engine ``name`` (not caffe: that is devices.cpu)."""
    key = check_engine(name)
    if key == "onnxruntime":
        from deeprebirth.runtime.engines.onnxruntime_engine import OrtDevice  # noqa: PLC0415
        return OrtDevice(threads)
    if key == "ncnn":
        from deeprebirth.runtime.engines.ncnn_engine import NcnnDevice  # noqa: PLC0415
        return NcnnDevice(threads)
    if key == "mnn":
        from deeprebirth.runtime.engines.mnn_engine import MnnDevice  # noqa: PLC0415
        return MnnDevice(threads)
    raise RebirthError("engine caffe is the cpu device")


def load(fmt: str, files: dict[str, bytes], threads: int | None = None, keep: tuple[str, ...] = ()):
    """A Runner for exported ``files`` of format ``fmt`` (``keep``: intermediate blobs MNN should
    keep readable)."""
    if fmt == "onnx":
        from deeprebirth.runtime.engines.onnxruntime_engine import OrtRunner  # noqa: PLC0415
        return OrtRunner(files, threads)
    if fmt == "ncnn":
        from deeprebirth.runtime.engines.ncnn_engine import NcnnRunner  # noqa: PLC0415
        return NcnnRunner(files, threads)
    from deeprebirth.runtime.engines.mnn_engine import MnnRunner  # noqa: PLC0415
    return MnnRunner(files, threads, keep)
