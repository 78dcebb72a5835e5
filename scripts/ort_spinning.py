#!/usr/bin/env python
"""How ONNX Runtime's spinning worker threads move a side-by-side speed-up (issue 31).

    .venv/bin/python scripts/ort_spinning.py ORIGINAL.onnx OTHER.onnx [--rounds 300] [--repeats 3]

Times the two nets in one process, interleaved round by round, in four ways, ``--repeats``
times each: as a pair, and among four sessions (each net twice), each with ONNX Runtime's
default ``session.intra_op.allow_spinning`` 1 and with 0. Prints the ratio of the medians
(ORIGINAL / OTHER) and both medians. Make the files with ``rebirth export MODEL --to onnx -o DIR``
(an `accelerate` folder holds its model.onnx). About a minute for sub-millisecond nets.

Measured 2026-12-05 on the 2-core machine, the Fashion-MNIST GoogLeNet against its 9-of-11
recovered plan: 2.87-2.99x as a pair, 3.24-3.30x among four, 2.39-2.45x without spinning
either way (docs/accelerate.md): why the plan's check times each net in a pair with the original.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from deeprebirth.runtime.engines.onnxruntime_engine import import_ort


def session(ort, data: bytes, spinning: bool):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 0           # as the engine opens it: one thread per physical core
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def trial(ort, original: bytes, other: bytes, spinning: bool, copies: int, rounds: int, warmup: int = 5):
    """Medians (ms) of the original's and the other's runs, ``copies`` sessions of each taking turns."""
    sessions = [("original", session(ort, original, spinning)) for _ in range(copies)] + \
               [("other", session(ort, other, spinning)) for _ in range(copies)]
    inp = sessions[0][1].get_inputs()[0]
    x = np.random.default_rng(0).standard_normal([d if isinstance(d, int) else 1 for d in inp.shape])
    feed = {inp.name: x.astype(np.float32)}
    times: dict[str, list[float]] = {"original": [], "other": []}
    for r in range(warmup + rounds):
        for label, s in sessions:
            t0 = time.perf_counter()
            s.run(None, feed)
            if r >= warmup:
                times[label].append(time.perf_counter() - t0)
    return 1000 * float(np.median(times["original"])), 1000 * float(np.median(times["other"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("original", type=Path)
    ap.add_argument("other", type=Path)
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    ort = import_ort()
    a, b = args.original.read_bytes(), args.other.read_bytes()
    for rep in range(args.repeats):
        for spinning in (True, False):
            for copies in (1, 2):
                o, t = trial(ort, a, b, spinning, copies, args.rounds)
                print(f"repeat {rep}, spinning {'on ' if spinning else 'off'}, {2 * copies} sessions: "
                      f"{o / t:.2f}x ({o:.3f} / {t:.3f} ms)", flush=True)


if __name__ == "__main__":
    main()
