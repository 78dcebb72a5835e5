#!/usr/bin/env python
"""Slim GoogLeNet and measure what it buys: latency and blob memory, side by side in one process.

    .venv/bin/python scripts/bench_slim.py [--runs 30] [--batch 1] [--model PATH] [--rules LIST]

Both nets (random weights, same input) are built in pycaffe; forward passes alternate between
them (original, slim, original, ...) so that machine noise hits both alike. Best and median times
are reported, with the ratios, and the blob memory ratio two ways: Graph.memory_bytes (what the
prototxt implies) and CaffeNet.allocated_bytes (the distinct buffers pycaffe really holds).

Issue targets: >= 3x faster at batch 1, >= 2.5x less blob memory (paper: 3.09x-3.87x, 2.5x).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from deeprebirth.runtime.bench import set_batch  # noqa: E402
from deeprebirth.transforms import slim as slim_api  # noqa: E402
from deeprebirth.runtime.pycaffe import CaffeNet, random_weights  # noqa: E402
from deeprebirth.graph.dag import Graph  # noqa: E402
from deeprebirth.graph.model import load_model  # noqa: E402

TARGET_SPEEDUP, TARGET_MEMORY = 3.0, 2.5


def default_model() -> Path:
    ours = ROOT / "models" / "googlenet.prototxt"
    return ours if ours.exists() else ROOT.parent / "shared" / "models" / "bvlc_googlenet" / "deploy.prototxt"


def timed(net: CaffeNet) -> float:
    t0 = time.perf_counter()
    net.net.forward()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(default_model()))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--runs", type=int, default=30, help="timed forward passes per net")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rules", default=None, help="comma-separated rules (default: all available)")
    ap.add_argument("--only", default=None, help="comma-separated substructures")
    ap.add_argument("--keep-pooling", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    model = load_model(args.model)
    out = slim_api.slim(model, args.rules.split(",") if args.rules else None,
                        only=args.only.split(",") if args.only else None, keep_pooling=args.keep_pooling)
    nets = {"original": set_batch(model.net, args.batch), "slim": set_batch(out.deploy, args.batch)}

    graphs = {k: Graph(v) for k, v in nets.items()}
    engines = {k: CaffeNet(v, random_weights(graphs[k], seed=0)) for k, v in nets.items()}
    first = engines["original"]
    x = np.random.default_rng(0).uniform(-1, 1, size=first.net.blobs[first.input_names[0]].data.shape)
    for name, eng in engines.items():
        eng.fill_inputs(inputs={eng.input_names[0]: x.astype(np.float32)})
        for _ in range(args.warmup):
            eng.net.forward()
    times: dict[str, list[float]] = {k: [] for k in engines}
    for i in range(args.runs):
        order = list(engines) if i % 2 == 0 else list(reversed(engines))
        for name in order:
            times[name].append(timed(engines[name]))

    res = {
        "model": args.model, "batch": args.batch, "runs": args.runs, "rules": out.rules,
        "changes": len(out.result.changes),
        "layers": {k: len(v.layer) for k, v in nets.items()},
        "best_ms": {k: 1e3 * min(v) for k, v in times.items()},
        "median_ms": {k: 1e3 * statistics.median(v) for k, v in times.items()},
        "graph_memory_bytes": {k: g.memory_bytes for k, g in graphs.items()},
        "allocated_bytes": {k: e.allocated_bytes() for k, e in engines.items()},
        "macs": {k: g.totals()["macs"] for k, g in graphs.items()},
    }
    res["speedup_best"] = res["best_ms"]["original"] / res["best_ms"]["slim"]
    res["speedup_median"] = res["median_ms"]["original"] / res["median_ms"]["slim"]
    res["memory_ratio_graph"] = res["graph_memory_bytes"]["original"] / res["graph_memory_bytes"]["slim"]
    res["memory_ratio_allocated"] = res["allocated_bytes"]["original"] / res["allocated_bytes"]["slim"]
    res["mac_ratio"] = res["macs"]["original"] / res["macs"]["slim"]
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    mb = 1024 * 1024
    print(f"{args.model} at batch {args.batch}, {args.runs} interleaved runs; rules: {', '.join(out.rules)} "
          f"({res['changes']} rewrites)")
    print(f"  layers          {res['layers']['original']:>10} -> {res['layers']['slim']}")
    print(f"  MACs            {res['macs']['original'] / 1e9:>9.2f}G -> {res['macs']['slim'] / 1e9:.2f}G "
          f"({res['mac_ratio']:.2f}x)")
    print(f"  best            {res['best_ms']['original']:>8.1f}ms -> {res['best_ms']['slim']:.1f}ms "
          f"({res['speedup_best']:.2f}x faster)")
    print(f"  median          {res['median_ms']['original']:>8.1f}ms -> {res['median_ms']['slim']:.1f}ms "
          f"({res['speedup_median']:.2f}x faster)")
    print(f"  blob memory     {res['graph_memory_bytes']['original'] / mb:>8.1f}MB -> "
          f"{res['graph_memory_bytes']['slim'] / mb:.1f}MB ({res['memory_ratio_graph']:.2f}x less, Graph)")
    print(f"  allocated       {res['allocated_bytes']['original'] / mb:>8.1f}MB -> "
          f"{res['allocated_bytes']['slim'] / mb:.1f}MB ({res['memory_ratio_allocated']:.2f}x less, pycaffe)")
    ok_speed = res["speedup_median"] >= TARGET_SPEEDUP
    ok_mem = min(res["memory_ratio_graph"], res["memory_ratio_allocated"]) >= TARGET_MEMORY
    print(f"  issue targets (GoogLeNet): >= {TARGET_SPEEDUP}x faster: {'met' if ok_speed else 'NOT met'}; "
          f">= {TARGET_MEMORY}x less memory: {'met' if ok_mem else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
