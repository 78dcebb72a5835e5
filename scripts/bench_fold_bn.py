#!/usr/bin/env python
"""Latency of a net before and after fold-bn, side by side in one process (not a test).

Both nets are built in pycaffe (CPU) and fed the same input; runs of the two are interleaved, and
the order alternates every round, so drift of the machine (frequency, other load) hits both alike.
Prints the best and median forward time of each and the ratio original / folded.

    .venv/bin/python scripts/bench_fold_bn.py                      # ResNet-50, random weights
    .venv/bin/python scripts/bench_fold_bn.py MODEL.prototxt --weights W.caffemodel --runs 50
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from deeprebirth.transforms import fold
from deeprebirth.caffe import netio  # noqa: E402
from deeprebirth.runtime.pycaffe import CaffeNet, random_weights  # noqa: E402
from deeprebirth.errors import RebirthError  # noqa: E402
from deeprebirth.graph.dag import Graph  # noqa: E402
from deeprebirth.graph.model import Model, resolve  # noqa: E402


def build(model: str, weights: str | None, seed: int) -> Model:
    if weights:
        return fold.load(model, weights)
    path = resolve(model)
    net = netio.strip_weights(netio.filter_phase(netio.read_net(path)))
    return Model(net, random_weights(Graph(net), seed), str(path), f"random weights (seed {seed})")


def timed(net: CaffeNet) -> float:
    t0 = time.perf_counter()
    net.forward()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="resnet50", help="prototxt or built-in name (default resnet50)")
    ap.add_argument("--weights", help="caffemodel (default: random weights with realistic BN statistics)")
    ap.add_argument("--runs", type=int, default=30, help="timed forward passes per net (default 30)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed passes per net first (default 3)")
    ap.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        original = build(args.model, args.weights, args.seed)
        t0 = time.perf_counter()
        folded = fold.fold_bn(original).model
        fold_s = time.perf_counter() - t0
        nets = {"original": CaffeNet(original.net, original.weights),
                "folded": CaffeNet(folded.net, folded.weights)}
    except RebirthError as exc:
        print(f"bench_fold_bn: error: {exc}", file=sys.stderr)
        return 1
    rng = np.random.default_rng(args.seed)
    first = nets["original"]
    inputs = {name: rng.uniform(-1, 1, size=(args.batch, *first.net.blobs[name].data.shape[1:])).astype(np.float32)
              for name in first.input_names}
    for net in nets.values():
        net.fill_inputs(inputs=inputs)
    for _ in range(args.warmup):
        for net in nets.values():
            net.forward()
    times: dict[str, list[float]] = {k: [] for k in nets}
    for i in range(args.runs):
        order = list(nets) if i % 2 == 0 else list(reversed(list(nets)))
        for key in order:
            times[key].append(timed(nets[key]))

    print(f"model: {original.source} ({original.weights_source}), batch {args.batch}, "
          f"{args.runs} interleaved runs each after {args.warmup} warm-up, CPU")
    print(f"layers: {len(original.net.layer)} -> {len(folded.net.layer)}; fold took {fold_s:.2f} s")
    print(f"{'net':10s} {'best ms':>9s} {'median ms':>10s}")
    for key, ts in times.items():
        print(f"{key:10s} {1e3 * min(ts):9.2f} {1e3 * statistics.median(ts):10.2f}")
    best = min(times["original"]) / min(times["folded"])
    med = statistics.median(times["original"]) / statistics.median(times["folded"])
    print(f"ratio original/folded: best {best:.3f}x, median {med:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
