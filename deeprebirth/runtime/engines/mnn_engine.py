"""MNN (its Python binding's Interpreter/Session API) running the model.mnn of
runtime/export/to_mnn.py. Only the compiled engine is used (``MNN.Interpreter``, ``MNN.Tensor``);
the wheel's ``MNN.tools`` wrappers are never imported (see to_mnn.py). Threads: the session's
``numThread`` (default 1), precision "high" (float32), and Winograd convolution off (session hint
``WINOGRAD_MEMORY_LEVEL`` = 0): with MNN's default Winograd, AlexNet's grouped 5x5 ``conv2``
differs from Caffe by 2.5e-4 relative (measured here; 1.4e-6 without), above `export --verify`'s
1e-4. The configuration that is verified is the one `bench --engine mnn` times.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from deeprebirth.errors import RebirthError
from deeprebirth.runtime.engines.base import EngineDevice, Runner

FILE = "model.mnn"
WINOGRAD_MEMORY_LEVEL = 3  # MNN::Interpreter::HintMode; value 0 turns Winograd off


def import_mnn():
    from deeprebirth.runtime.export.to_mnn import stdout_to_stderr  # noqa: PLC0415
    try:
        with stdout_to_stderr():
            import MNN  # noqa: PLC0415
    except ImportError:
        raise RebirthError("this needs MNN's Python binding (make install, or pip install MNN)") from None
    return MNN


class MnnRunner(Runner):
    def __init__(self, files: dict[str, bytes], threads: int | None = None, keep: tuple[str, ...] = ()):
        """``keep``: intermediate blobs to keep readable after a pass (MNN's ``saveTensors``)."""
        from deeprebirth.runtime.export.to_mnn import stdout_to_stderr  # noqa: PLC0415
        self.quiet = stdout_to_stderr
        self.mnn = MNN = import_mnn()
        with tempfile.TemporaryDirectory(prefix="deeprebirth-mnn-") as tmp, self.quiet():
            path = Path(tmp) / FILE
            path.write_bytes(files[FILE])
            self.interp = MNN.Interpreter(str(path))
            self.interp.setSessionHint(WINOGRAD_MEMORY_LEVEL, 0)
            config = {"numThread": threads or 1, "precision": "high"}
            if keep:
                config["saveTensors"] = tuple(keep)
            self.session = self.interp.createSession(config)
        self.inputs = list(self.interp.getSessionInputAll(self.session))
        self.outputs = list(self.interp.getSessionOutputAll(self.session))

    def run(self, feeds: dict[str, np.ndarray], names: list[str] | None = None) -> dict[str, np.ndarray]:
        MNN = self.mnn
        for name in self.inputs:
            arr = np.ascontiguousarray(feeds[name], dtype=np.float32)
            tmp = MNN.Tensor(arr.shape, MNN.Halide_Type_Float, arr, MNN.Tensor_DimensionType_Caffe)
            self.interp.getSessionInput(self.session, name).copyFrom(tmp)
        self.interp.runSession(self.session)
        out = {}
        for name in names or self.outputs:
            try:
                with self.quiet():
                    t = self.interp.getSessionOutput(self.session, name)
            except Exception:
                if name in self.outputs:
                    raise
                continue  # an intermediate blob MNN fused away
            shape = t.getShape()
            host = MNN.Tensor(shape, MNN.Halide_Type_Float, np.zeros(shape, np.float32), MNN.Tensor_DimensionType_Caffe)
            t.copyToHostTensor(host)
            out[name] = np.array(host.getData(), dtype=np.float32).reshape(shape)
        return out

    def close(self) -> None:
        self.session = self.interp = None


class MnnDevice(EngineDevice):
    name = "mnn"
    fmt = "mnn"
    runner_class = MnnRunner

    @property
    def description(self) -> str:
        return (f"MNN {getattr(import_mnn(), 'version', lambda: '?')()} (Python Interpreter API), CPU, float32, "
                f"Winograd off, threads: {self.threads or 1}; times from time.perf_counter around input copy + "
                "runSession")
