"""ONNX Runtime (CPU execution provider) running a model.onnx of runtime/export/to_onnx.py.

Threads: ``intra_op_num_threads`` (the threads one operator uses; default: ONNX Runtime's own, one
per physical core), ``inter_op_num_threads`` 1 with sequential execution; all graph optimisations on.
"""
from __future__ import annotations

import numpy as np

from deeprebirth.errors import RebirthError
from deeprebirth.runtime.engines.base import EngineDevice, Runner

FILE = "model.onnx"


def import_ort():
    """ONNX Runtime, imported so that it leaves nothing behind: at import it writes a ``.ses`` file
    (a session id) into the temporary folder, so the import sees a folder of ours, removed after."""
    import os  # noqa: PLC0415
    import sys  # noqa: PLC0415
    import tempfile  # noqa: PLC0415
    if "onnxruntime" in sys.modules:
        return sys.modules["onnxruntime"]
    previous = os.environ.get("TMPDIR")
    with tempfile.TemporaryDirectory(prefix="deeprebirth-ort-") as tmp:
        os.environ["TMPDIR"] = tmp
        try:
            import onnxruntime  # noqa: PLC0415
        except ImportError:
            raise RebirthError("this needs ONNX Runtime (make install, or pip install onnxruntime)") from None
        finally:
            if previous is None:
                os.environ.pop("TMPDIR", None)
            else:
                os.environ["TMPDIR"] = previous
    return onnxruntime


class OrtRunner(Runner):
    def __init__(self, files: dict[str, bytes], threads: int | None = None):
        ort = import_ort()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or 0
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(files[FILE], opts, providers=["CPUExecutionProvider"])
        self.all_outputs = [o.name for o in self.session.get_outputs()]
        self.outputs = list(self.all_outputs)

    def run(self, feeds: dict[str, np.ndarray], names: list[str] | None = None) -> dict[str, np.ndarray]:
        names = names or self.outputs
        values = self.session.run(names, feeds)
        return dict(zip(names, values))

    def close(self) -> None:
        self.session = None


class OrtDevice(EngineDevice):
    name = "onnxruntime"
    fmt = "onnx"
    runner_class = OrtRunner

    @property
    def description(self) -> str:
        ort = import_ort()
        return (f"ONNX Runtime {ort.__version__}, CPU execution provider, intra-op threads: "
                f"{self.threads or 'default'}; times from time.perf_counter around InferenceSession.run")
