#!/usr/bin/env python
"""Why the plan times its table of candidates on ONNX Runtime with spinning off (issue 31).

    .venv/bin/python scripts/ort_crowd.py MODEL [--runs 15] [--turn 10]

Builds the nets `rebirth plan` times for its table (the original, the exact net and slim
everything twice each, and the exact net with each lossy candidate; ``plan.build_nets``), times
them in one session of rounds on ONNX Runtime as `plan` does (random weights, a child process),
once with its worker threads spinning (ONNX Runtime's default) and once not (``OrtDevice.
crowded``), and prints for each: the medians, each candidate's saving (the exact net's median
less its own) and their sum beside what the exact net and slim everything differ by. With the
savings right, the sum comes near that difference (savings of merges far apart add up).

Measured 2026-12-06 on the 2-core machine, BVLC GoogLeNet (``googlenet``, time alone), 15 rounds:
spinning, the original 68.3 ms, savings summing to -40.3 ms against a difference of 49.8;
not spinning, the original 33.3 ms, savings summing to 26.3 ms against 24.7. Run again the same
day: 64.6 ms, -58.3 against 42.8; not spinning 33.1 ms, 25.1 against 24.4. About a minute.
With ``--turn 10`` (spinning, in turns of 10 runs, as the plan's pairs are timed), twice, 22:02
UTC: the original 27.27 and 25.92 ms, but the two copies of slim everything 11.48/13.43 and
9.98/11.52 ms (15-17 % apart; not spinning, run by run, the same session: 8.66/8.69 and
8.14/8.11), savings summing to 19.0 and 16.7 ms against differences of 14.8 and 15.5. In a crowd
of 16 sessions, turns leave each net's first runs after the others' turns slow and uneven: the
table's savings are timed not spinning, where copies agree within 1 %.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from deeprebirth.caffe.folders import model_files
from deeprebirth.graph.dag import Graph
from deeprebirth.graph.model import Model, load_model
from deeprebirth.learning import plan
from deeprebirth.runtime import bench
from deeprebirth.runtime.engines.onnxruntime_engine import OrtDevice
from deeprebirth.runtime.pycaffe import random_weights


def prepared_nets(name: str) -> list:
    model = load_model(*model_files(name))
    nets = plan.build_nets(model)
    exact = nets.exact.deploy if nets.exact else model.net
    timing = {"original": model.net, "exact": exact, "exact again": exact,
              "slim everything": nets.full.deploy, "slim everything again": nets.full.deploy,
              **{f"+{k}": v.deploy for k, v in nets.variants.items()}}
    out = []
    for label, net in timing.items():
        net1 = bench.set_batch(net, 1)
        out.append(bench.Prepared(label, Model(net1, random_weights(Graph(net1, strict=False), seed=0),
                                                source=label), "random (seed 0)"))
    return out


def summary(times: dict[str, list[float]]) -> tuple[dict, dict, float]:
    """(median ms by net, each candidate's saving, what the exact net and slim everything differ by)."""
    med = {k: float(np.median(v)) for k, v in times.items()}
    exact = float(np.median(times["exact"] + times["exact again"]))
    full = float(np.median(times["slim everything"] + times["slim everything again"]))
    return med, {k[1:]: exact - v for k, v in med.items() if k.startswith("+")}, exact - full


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--turn", type=int, default=0,
                    help="also time the nets spinning in turns of this many runs (bench.measure's block)")
    a = ap.parse_args()
    prepared = prepared_nets(a.model)
    ways = [(True, 1), (False, 1)] + ([(True, a.turn)] if a.turn > 1 else [])
    for spinning, block in ways:
        dev = OrtDevice() if spinning else OrtDevice().crowded()
        res = bench.run_isolated(prepared, dev, a.runs, 3, layers=False, memory=False, seed=0, block=block)
        med, saved, differ = summary({m.label: [t * 1000.0 for t in m.forward_s] for m in res})
        how = "run by run" if block == 1 else f"in turns of {block}"
        print(f"spinning {'on ' if spinning else 'off'}, {how}: {len(prepared)} nets, "
              f"original {med['original']:.2f} ms, "
              f"exact {med['exact']:.2f}/{med['exact again']:.2f}, slim everything {med['slim everything']:.2f}/"
              f"{med['slim everything again']:.2f}; savings sum {sum(saved.values()):.2f} ms, exact - slim "
              f"everything {differ:.2f} ms")
        for k, v in saved.items():
            print(f"    {k:30s} {v:8.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
