#!/usr/bin/env python
"""How long does loading a ~100 MB caffemodel into numpy take? (Not a test: a measurement.)

Builds AlexNet-sized random weights (61 M floats, 244 MB) or a 100 MB subset, writes them as a
caffemodel with our writer, then times read_weights + weights_of and the write path.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deeprebirth.caffe import netio  # noqa: E402
from deeprebirth.graph.dag import Graph  # noqa: E402
from deeprebirth.graph.model import resolve  # noqa: E402


def main(target_mb: float = 100.0) -> None:
    net = netio.read_net(resolve("alexnet"))
    graph = Graph(net)
    rng = np.random.default_rng(0)
    weights, total = {}, 0
    for node in graph.nodes:  # fill layers until the target size is reached
        if not node.param_shapes or total >= target_mb * 1e6:
            continue
        weights[node.name] = [rng.standard_normal(s, dtype=np.float32) for s in node.param_shapes]
        total += sum(a.nbytes for a in weights[node.name])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "w.caffemodel"
        t0 = time.perf_counter()
        netio.write_weights(netio.with_weights(net, weights), path)
        t_write = time.perf_counter() - t0
        size = path.stat().st_size
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            arrays = netio.weights_of(netio.read_weights(path))
            best = min(best, time.perf_counter() - t0)
        assert all(np.array_equal(arrays[k][i], weights[k][i]) for k in weights for i in range(len(weights[k])))
    print(f"caffemodel {size / 1e6:.1f} MB: load into numpy {best:.3f} s (best of 3), write {t_write:.3f} s")


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 100.0)
