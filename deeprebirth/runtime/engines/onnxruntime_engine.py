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

Turns: with spinning on, the first runs of a session after another session's run are slowed by
the other's spinning threads, so two nets timed beside each other run in turns of ``ORT_TURN``
(``OrtDevice.turn``, bench.measure's ``block``: untimed runs for bench.SETTLE_S first). Measured
2026-12-06 on 2 cores: the exact Fashion-MNIST GoogLeNet opened twice in one process and run
A B A B read 0.54-0.71 ms, the two sessions up to 1.31x apart, where in turns of 10 both read
0.48 and each alone 0.474-0.478 ms (the runs of a turn, by position: 0.83, 0.71, 0.58, then 0.47-0.48);
`rebirth bench googlenet SLIM --engine onnxruntime --runs 60` read the original at 44.6-50.5 ms
A B A B (3.62-3.68x) and at 25.9-30.4 ms in turns of 10 (3.36-3.44x), alone 30.4-30.7 ms.
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


#: Runs of one net in a row when two spinning sessions take turns (the module doc).
ORT_TURN = 10


class OrtDevice(EngineDevice):
    name = "onnxruntime"
    fmt = "onnx"
    runner_class = OrtRunner
    #: Worker threads spin after a run (ONNX Runtime's default); off in ``crowded``.
    spinning = True
    crowded_note = ("more than two nets timed in turn ran with ONNX Runtime's worker threads not spinning, so that "
                    "no session's spinning slows the others' runs; one net beside another (a plan's checks, "
                    f"`rebirth bench A B`) runs as deployed, spinning, in turns of {ORT_TURN} runs")

    @property
    def turn(self) -> int:
        """Turns of ORT_TURN runs while sessions spin (the module doc); run by run when they do not."""
        return ORT_TURN if self.spinning else 1

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
