#!/usr/bin/env python
"""Two ONNX Runtime sessions timed run by run, in turns, and each alone (issue 31).

    .venv/bin/python scripts/ort_turns.py A.onnx [B.onnx] [--runs 300] [--turn 10] [--repeats 3]

Opens A and B (B defaults to A: two copies of one net, which should read alike) with ONNX
Runtime's defaults (spinning on) and prints the median ms of each: run by run (A B A B), in
turns of ``--turn`` runs each after untimed runs for bench.SETTLE_S (what `rebirth bench` and the
plan's checks do on ONNX Runtime), and each alone (one session open, its runs in a row). Then the
median time of each run of a turn by its position, in turns of 30 without settling: how long the
other session's spinning slows a turn's first runs. Fresh sessions for every trial, ``--repeats``
times. Make the files with ``rebirth export MODEL --to onnx -o DIR``. About a minute for
sub-millisecond nets.

Measured 2026-12-06 on the 2-core machine (docs/export.md): two copies of the exact Fashion-MNIST
GoogLeNet read 0.54-0.71 ms run by run, up to 1.31x apart, and 0.48 ms each in turns of 10 and
alone; by position in a turn 0.83, 0.71, 0.58, then 0.47-0.48 ms.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from deeprebirth.runtime.bench import SETTLE_S
from deeprebirth.runtime.engines.onnxruntime_engine import import_ort


def opened(ort, data: bytes):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 0           # as the engine opens it
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def feed_for(session) -> dict:
    inp = session.get_inputs()[0]
    x = np.random.default_rng(0).standard_normal([d if isinstance(d, int) else 1 for d in inp.shape])
    return {inp.name: x.astype(np.float32)}


def one(session, feed) -> float:
    began = time.perf_counter()
    session.run(None, feed)
    return time.perf_counter() - began


def in_turns(sessions: list, feed: dict, runs: int, turn: int, settle: float, warmup: int = 5) -> list[list[float]]:
    """Each session's timed runs (s), the sessions taking turns of ``turn`` runs; a turn of more
    than one run begins with untimed runs for ``settle`` seconds (one at least)."""
    for _ in range(warmup):
        for s in sessions:
            s.run(None, feed)
    times: list[list[float]] = [[] for _ in sessions]
    while len(times[0]) < runs:
        n = min(turn, runs - len(times[0]))
        for s, out in zip(sessions, times):
            if turn > 1:
                began = time.perf_counter()
                s.run(None, feed)
                while time.perf_counter() - began < settle:
                    s.run(None, feed)
            out.extend(one(s, feed) for _ in range(n))
    return times


def by_position(sessions: list, feed: dict, turns: int = 40, length: int = 30) -> np.ndarray:
    """Median ms of the second session's runs by their position in a turn, no settling."""
    grid = np.zeros((turns, length))
    for t in range(turns):
        for k, s in enumerate(sessions):
            row = [one(s, feed) for _ in range(length)]
            if k == 1:
                grid[t] = row
    return 1000.0 * np.median(grid[2:], axis=0)


def ms(times: list[float]) -> float:
    return 1000.0 * float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path, nargs="?")
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--turn", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--settle", type=float, default=SETTLE_S, help="seconds of untimed runs a turn begins with")
    args = ap.parse_args()
    ort = import_ort()
    data = [args.a.read_bytes(), (args.b or args.a).read_bytes()]
    for rep in range(args.repeats):
        for turn in (1, args.turn):
            pair = [opened(ort, d) for d in data]
            a, b = in_turns(pair, feed_for(pair[0]), args.runs, turn, args.settle)
            how = "run by run" if turn == 1 else f"turns of {turn}"
            print(f"repeat {rep}, {how:12s}: A {ms(a):.3f} ms, B {ms(b):.3f} ms, A/B {ms(a) / ms(b):.2f}x", flush=True)
        alone = []
        for d in data:
            s = opened(ort, d)
            alone.append(ms(in_turns([s], feed_for(s), args.runs, 1, 0.0)[0]))
        print(f"repeat {rep}, {'each alone':12s}: A {alone[0]:.3f} ms, B {alone[1]:.3f} ms, "
              f"A/B {alone[0] / alone[1]:.2f}x", flush=True)
    pair = [opened(ort, d) for d in data]
    pos = by_position(pair, feed_for(pair[0]))
    print("B's runs by position in a turn of 30 after A's (ms): " + " ".join(f"{v:.2f}" for v in pos))


if __name__ == "__main__":
    main()
