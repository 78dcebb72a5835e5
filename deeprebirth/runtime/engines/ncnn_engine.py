"""ncnn (its Python binding, the ``ncnn`` pip package) running model.param + model.bin of
runtime/export/to_ncnn.py. ncnn runs one image at a time: inputs and outputs are the Caffe blobs
without their batch axis of 1. fp16/bf16 storage and arithmetic are off (float32 throughout, as
Caffe); Winograd and packing stay as ncnn chooses. Any blob of the net can be extracted, so
``export --verify`` compares every intermediate blob too.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from deeprebirth.errors import RebirthError
from deeprebirth.runtime.engines.base import EngineDevice, Runner

PARAM, BIN = "model.param", "model.bin"


def import_ncnn():
    try:
        import ncnn  # noqa: PLC0415
    except ImportError:
        raise RebirthError("this needs ncnn's Python binding (make install, or pip install ncnn)") from None
    return ncnn


class NcnnRunner(Runner):
    def __init__(self, files: dict[str, bytes], threads: int | None = None):
        ncnn = import_ncnn()
        self.ncnn = ncnn
        self.net = ncnn.Net()
        opt = self.net.opt
        opt.use_fp16_packed = opt.use_fp16_storage = opt.use_fp16_arithmetic = False
        opt.use_bf16_storage = False
        opt.use_vulkan_compute = False
        opt.num_threads = threads or 1
        with tempfile.TemporaryDirectory(prefix="deeprebirth-ncnn-") as tmp:
            for name in (PARAM, BIN):
                (Path(tmp) / name).write_bytes(files[name])
            if self.net.load_param(str(Path(tmp) / PARAM)) != 0 or self.net.load_model(str(Path(tmp) / BIN)) != 0:
                raise RebirthError("ncnn could not load the exported model")
        self.inputs = list(self.net.input_names())
        self.outputs = list(self.net.output_names())

    def run(self, feeds: dict[str, np.ndarray], names: list[str] | None = None) -> dict[str, np.ndarray]:
        names = names or self.outputs
        ex = self.net.create_extractor()
        if set(names) - set(self.outputs):
            ex.set_light_mode(False)  # keep intermediate blobs: light mode recycles them once consumed
        for name in self.inputs:
            arr = feeds[name]
            if arr.shape[0] != 1:
                raise RebirthError("ncnn runs one image at a time (batch 1)")
            ex.input(name, self.ncnn.Mat(np.ascontiguousarray(arr[0], dtype=np.float32)))
        out = {}
        for name in names:
            ret, mat = ex.extract(name)
            if ret != 0:
                raise RebirthError(f"ncnn could not compute blob '{name}' (error {ret})")
            out[name] = np.array(mat)[None]
        return out

    def close(self) -> None:
        self.net = None


class NcnnDevice(EngineDevice):
    name = "ncnn"
    fmt = "ncnn"
    runner_class = NcnnRunner

    @property
    def description(self) -> str:
        ncnn = import_ncnn()
        return (f"ncnn {getattr(ncnn, '__version__', '?')} (Python binding), float32, threads: {self.threads or 1}; "
                "times from time.perf_counter around one extractor's input + extract")
