"""ONNX Runtime (CPU execution provider) running a model.onnx of runtime/export/to_onnx.py.

Threads: ``intra_op_num_threads`` (the threads one operator uses; default: ONNX Runtime's own, one
per physical core), ``inter_op_num_threads`` 1 with sequential execution; all graph optimisations on.

Spinning: after a run each session's worker threads spin for a while waiting for more work
(``session.intra_op.allow_spinning``, on by default), and every session has its own pool. A
session timed alone or beside one other (`bench`, the plan's checks) runs as deployed, spinning
on. Many sessions timed in turn (the plan's table of candidates, ``OrtDevice.crowded``) run with
spinning off: there each run shares the cores with every other session's spinning threads, and on
BVLC GoogLeNet (16 nets in turn, 2 cores, 2026-12-06) the original's median went from 33 ms with
spinning off to 65-68 ms with it on, and the candidates' savings, each the exact net's time less
its own, summed to -40 and -58 ms against the 50 and 43 ms the exact net and slim everything differed
by (spinning off: 26 and 25 ms against 25 and 24; two runs of ``scripts/ort_crowd.py``);
``scripts/ort_spinning.py`` times a pair both ways.
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
    def __init__(self, files: dict[str, bytes], threads: int | None = None, spinning: bool = True):
        ort = import_ort()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or 0
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        if not spinning:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
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
    #: Worker threads spin after a run (ONNX Runtime's default); off in ``crowded``.
    spinning = True
    crowded_note = ("more than two nets timed in turn ran with ONNX Runtime's worker threads not spinning, so that "
                    "no session's spinning slows the others' runs; one net beside another (a plan's checks, "
                    "`rebirth bench A B`) runs as deployed, spinning")

    def crowded(self) -> "OrtDevice":
        """A copy whose sessions do not spin (the module doc says why)."""
        other = OrtDevice(self.threads)
        other.spinning = False
        return other

    def load(self, files: dict[str, bytes]) -> Runner:
        return OrtRunner(files, self.threads, self.spinning)

    @property
    def description(self) -> str:
        ort = import_ort()
        return (f"ONNX Runtime {ort.__version__}, CPU execution provider, intra-op threads: "
                f"{self.threads or 'default'}" + ("" if self.spinning else ", spinning off")
                + "; times from time.perf_counter around InferenceSession.run")
