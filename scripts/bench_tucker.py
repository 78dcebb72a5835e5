#!/usr/bin/env python
"""The paper's Tables 4-6 on this machine: GoogLeNet, GoogLeNet-Tucker, GoogLeNet-Slim,
GoogLeNet-Slim-Tucker, SqueezeNet v1.0 and v1.1, side by side in one process.

    nice -n 10 .venv/bin/python scripts/bench_tucker.py [--runs 30] [--warmup 3] [--ratio 0.5 | --ranks vbmf] [--json]

Every net runs at batch 1 on random input with random weights of realistic statistics
(engine.pycaffe.random_weights; the decomposed nets start from the decomposition of those). The
forward passes are interleaved (deeprebirth.runtime.bench.run: A B C ... A B C ..., each model's turn a
whole pass then a pass of per-layer calls), so load changes on the shared machine hit every model
alike. Reported per model: best and median latency and their ratios to GoogLeNet (Table 5), the
per-layer-group breakdown of GoogLeNet's variants (Table 4: conv1, conv2, inception_3a ... loss3,
each the median of its layers' per-layer times, poolings counted with the unit before them),
parameters, model file size (the deploy weights as a .caffemodel), blob memory and the measured peak
resident memory of each net (Table 6; engine/cpu.py says how).

Ranks: ``--ratio 0.5`` by default (the paper halves the weights). VBMF (``--ranks vbmf``) finds
nothing in random weights (rank 0) and falls back to the same ratio, so it is only meaningful with
trained weights. Targets (issue 9): Slim-Tucker >= 6x faster than GoogLeNet and faster than
SqueezeNet v1.0; about half of Slim's weights.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deeprebirth.runtime import bench
from deeprebirth.caffe import netio  # noqa: E402
from deeprebirth.transforms import slim as slim_api  # noqa: E402
from deeprebirth.transforms import tucker as tucker_api  # noqa: E402
from deeprebirth.runtime.devices.cpu import CpuDevice  # noqa: E402
from deeprebirth.runtime.pycaffe import random_weights  # noqa: E402
from deeprebirth.graph.dag import Graph  # noqa: E402
from deeprebirth.caffe.model import Model, load_model  # noqa: E402
from deeprebirth.transforms.rules.tucker import parse_ranks  # noqa: E402

MB = 1024 * 1024
GROUPS = ["conv1", "conv2", "inception_3a", "inception_3b", "inception_4a", "inception_4b", "inception_4c",
          "inception_4d", "inception_4e", "inception_5a", "inception_5b", "loss3"]
# Layers outside a unit of their own belong to the unit before them (Table 4's rows).
JOINS = {"pool1": "conv1", "pool2": "conv2", "pool3": "inception_3b", "pool4": "inception_4e",
         "pool5": "loss3", "prob": "loss3"}
TARGET_SPEEDUP = 6.0


def group_of(layer: str) -> str:
    prefix = layer.split("/", 1)[0]
    return JOINS.get(prefix, prefix if prefix in GROUPS else "other")


def breakdown(rows: list[dict]) -> dict[str, float]:
    out = {g: 0.0 for g in GROUPS + ["other"]}
    for r in rows:
        out[group_of(r["name"])] += r["ms"]
    return out


def variants(ranks, ratio: float | None) -> list[tuple[str, Model]]:
    """The six models at batch 1, each with its weights."""
    base = load_model("googlenet")
    base.net = bench.set_batch(base.net, 1)
    base.weights = random_weights(Graph(base.net), seed=0)
    base.weights_source = "random (seed 0)"
    out = [("GoogLeNet", base)]
    tucker = tucker_api.tucker(base, ranks, ratio)
    out.append(("GoogLeNet-Tucker", Model(tucker.deploy, tucker.weights, "googlenet + tucker")))
    slim = slim_api.slim(base)
    out.append(("GoogLeNet-Slim", Model(slim.deploy, slim.weights, "googlenet + slim")))
    both = tucker_api.slim_tucker(base, ranks=ranks, ratio=ratio)
    out.append(("GoogLeNet-Slim-Tucker", Model(both.deploy, both.weights, "googlenet + slim + tucker")))
    for label, name in (("SqueezeNet v1.0", "squeezenet"), ("SqueezeNet v1.1", "squeezenet11")):
        m = load_model(name)
        m.net = bench.set_batch(m.net, 1)
        m.weights = random_weights(Graph(m.net), seed=0)
        out.append((label, m))
    return out


def file_bytes(model: Model) -> int:
    """Size of the deploy weights as a .caffemodel (the paper's storage)."""
    names = {layer.name for layer in model.net.layer}
    return len(netio.with_weights(model.net, {k: v for k, v in model.weights.items() if k in names}).SerializeToString())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30, help="timed forward passes per model")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--ranks", default=None, help="vbmf, R or R3,R4 (default: --ratio 0.5)")
    ap.add_argument("--ratio", type=float, default=None, help="fraction of each layer's weights kept (default 0.5)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    ranks = parse_ranks(args.ranks)
    ratio = args.ratio if args.ratio is not None or args.ranks is not None else 0.5

    models = variants(ranks, ratio)
    prepared = [bench.Prepared(label, m, m.weights_source or "random (seed 0)") for label, m in models]
    results = bench.run(prepared, CpuDevice(), runs=args.runs, warmup=args.warmup, layers=True)
    doc = bench.build_json(results, {"batch": 1, "runs": args.runs, "warmup": args.warmup,
                                     "ranks": args.ranks or f"ratio {ratio:g}"})
    rows = []
    for (label, m), s in zip(models, doc["models"]):
        totals = Graph(m.net).totals()
        rows.append({"model": label, "best_ms": s["best_ms"], "median_ms": s["median_ms"],
                     "speedup_best": doc["ratios"]["models"][label]["speedup"],
                     "speedup_median": 1.0 / doc["ratios"]["models"][label]["median"],
                     "params": totals["params"], "macs": totals["macs"], "layers": totals["layers"],
                     "file_bytes": file_bytes(m), "blob_bytes": s["memory_bytes"],
                     "peak_rss_bytes": s["peak_rss_bytes"], "groups_ms": breakdown(s["layers"])})
    by = {r["model"]: r for r in rows}
    st, sq, sl = by["GoogLeNet-Slim-Tucker"], by["SqueezeNet v1.0"], by["GoogLeNet-Slim"]
    targets = {
        "slim_tucker_speedup_best": st["speedup_best"], "slim_tucker_speedup_median": st["speedup_median"],
        "speedup_target": TARGET_SPEEDUP,
        "slim_tucker_vs_squeezenet_best": sq["best_ms"] / st["best_ms"],
        "slim_tucker_vs_squeezenet_median": sq["median_ms"] / st["median_ms"],
        "slim_tucker_weights_vs_slim": st["params"] / sl["params"],
    }
    if args.json:
        print(json.dumps({"settings": {k: doc[k] for k in ("batch", "runs", "warmup", "ranks")},
                          "models": rows, "targets": targets}, indent=2))
        return 0
    print(f"batch 1, {args.runs} interleaved runs (+{args.warmup} warm-up), random weights; Tucker ranks: "
          f"{doc['ranks']}")
    print(f"{'model':<22} {'best ms':>8} {'median':>8} {'x best':>7} {'x med':>6} {'params':>7} {'GMACs':>6} "
          f"{'layers':>6} {'file MB':>8} {'blob MB':>8} {'peak RSS MB':>11}")
    for r in rows:
        rss = f"{r['peak_rss_bytes'] / MB:.1f}" if r["peak_rss_bytes"] else "-"
        print(f"{r['model']:<22} {r['best_ms']:>8.1f} {r['median_ms']:>8.1f} {r['speedup_best']:>6.2f}x "
              f"{r['speedup_median']:>5.2f}x {r['params'] / 1e6:>6.2f}M {r['macs'] / 1e9:>6.2f} {r['layers']:>6} "
              f"{r['file_bytes'] / MB:>8.2f} {r['blob_bytes'] / MB:>8.1f} {rss:>11}")
    names = [r["model"] for r in rows if r["model"].startswith("GoogLeNet")]
    print("\nper-layer-group time (ms, median per layer, summed; Table 4)")
    print(f"{'group':<14}" + "".join(f"{n.replace('GoogLeNet', 'G'):>16}" for n in names))
    for g in GROUPS + ["other"]:
        print(f"{g:<14}" + "".join(f"{by[n]['groups_ms'][g]:>16.2f}" for n in names))
    print(f"{'total':<14}" + "".join(f"{sum(by[n]['groups_ms'].values()):>16.2f}" for n in names))
    print(f"\ntargets: Slim-Tucker {targets['slim_tucker_speedup_best']:.2f}x (best) / "
          f"{targets['slim_tucker_speedup_median']:.2f}x (median) faster than GoogLeNet (target >= {TARGET_SPEEDUP}x); "
          f"SqueezeNet v1.0 / Slim-Tucker = {targets['slim_tucker_vs_squeezenet_best']:.2f} (best), "
          f"{targets['slim_tucker_vs_squeezenet_median']:.2f} (median) (target > 1); "
          f"Slim-Tucker has {targets['slim_tucker_weights_vs_slim']:.2f} of Slim's weights (target about 0.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
