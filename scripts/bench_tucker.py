#!/usr/bin/env python
"""The paper's Tables 4-6 on this machine: GoogLeNet, GoogLeNet-Tucker, GoogLeNet-Slim,
GoogLeNet-Slim-Tucker, SqueezeNet v1.0 and v1.1, side by side in one process.

    nice -n 10 .venv/bin/python scripts/bench_tucker.py [--runs 30] [--warmup 3] [--ratio 0.5 | --ranks vbmf]
        [--engines caffe[,onnxruntime,ncnn,mnn]] [--threads 1] [--json]

Every net runs at batch 1 on random input with random weights of realistic statistics
(engine.pycaffe.random_weights; the decomposed nets start from the decomposition of those). The
forward passes are interleaved (deeprebirth.runtime.bench.run: A B C ... A B C ..., each model's turn a
whole pass then a pass of per-layer calls), so load changes on the shared machine hit every model
alike. Reported per model: best and median latency and their ratios to GoogLeNet (Table 5), the
per-layer-group breakdown of GoogLeNet's variants (Table 4: conv1, conv2, inception_3a ... loss3,
each the median of its layers' per-layer times, poolings counted with the unit before them),
parameters, model file size (the deploy weights as a .caffemodel), blob memory and the measured peak
resident memory of each net (Table 6; engine/cpu.py says how).

Engines (issue 16): ``--engines`` (default: caffe alone, the report above) lists the engines to time
the six nets in, one after the other; in every engine but caffe each net is exported by
runtime/export and run by runtime/engines (``engines.get_device(engine, --threads)``), the six
interleaved in one process as in Caffe (whole passes only: the per-layer and memory columns are
Caffe's). Caffe uses its BLAS's default threads (set OPENBLAS_NUM_THREADS to change them). With any
engine besides caffe the report ends with a Markdown table, one column block per engine (best and
median ms, speed-up vs GoogLeNet best / median), and the JSON has one section per engine under
``engines``. A net an engine cannot run (its export refuses a layer, say) is a note in its cells.

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
import time
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deeprebirth.runtime import bench, engines  # noqa: E402
from deeprebirth.caffe import netio  # noqa: E402
from deeprebirth.transforms import slim as slim_api  # noqa: E402
from deeprebirth.transforms import tucker as tucker_api  # noqa: E402
from deeprebirth.runtime.devices.cpu import CpuDevice  # noqa: E402
from deeprebirth.runtime.pycaffe import random_weights  # noqa: E402
from deeprebirth.graph.dag import Graph  # noqa: E402
from deeprebirth.graph.model import Model, load_model  # noqa: E402
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


def static_row(label: str, model: Model) -> dict:
    """What a net is, whatever runs it: parameters, MACs, layers, file size."""
    totals = Graph(model.net).totals()
    return {"model": label, "params": totals["params"], "macs": totals["macs"], "layers": totals["layers"],
            "file_bytes": file_bytes(model)}


def latency_rows(labels: list[str], measurements: list[bench.Measurement], refused: dict[str, str]) -> list[dict]:
    """One row per net, in the order of ``labels``: best and median ms and speed-ups vs the first
    net (GoogLeNet), best / best and median / median; a net in ``refused`` (label -> reason) has
    None times and the reason as ``note``; without the first net, speed-ups are None."""
    timed = {m.label: bench.summarize(m) for m in measurements}
    ref = timed.get(labels[0])
    rows = []
    for label in labels:
        s = timed.get(label)
        if s is None:
            rows.append({"model": label, "best_ms": None, "median_ms": None, "speedup_best": None,
                         "speedup_median": None, "note": refused.get(label, "not run")})
            continue
        rows.append({"model": label, "best_ms": s["best_ms"], "median_ms": s["median_ms"],
                     "speedup_best": ref["best_ms"] / s["best_ms"] if ref else None,
                     "speedup_median": ref["median_ms"] / s["median_ms"] if ref else None, "note": None})
    return rows


def engine_block(device, prepared: list[bench.Prepared], runs: int, warmup: int) -> list[dict]:
    """The nets timed interleaved on ``device`` (whole passes, no memory), as ``latency_rows``."""
    refused: dict[str, str] = {}
    results = bench.run(prepared, device, runs, warmup, memory=False, refused=refused)  # a script: no abort to catch
    return latency_rows([p.label for p in prepared], results, refused)


def speed_targets(rows: list[dict]) -> dict:
    """Issue 9's speed targets from one engine's ``latency_rows`` (None where a net is missing)."""
    by = {r["model"]: r for r in rows}
    st, sq = by.get("GoogLeNet-Slim-Tucker", {}), by.get("SqueezeNet v1.0", {})

    def over(a, b, key):
        return a[key] / b[key] if a.get(key) and b.get(key) else None
    return {"slim_tucker_speedup_best": st.get("speedup_best"), "slim_tucker_speedup_median": st.get("speedup_median"),
            "speedup_target": TARGET_SPEEDUP,
            "slim_tucker_vs_squeezenet_best": over(sq, st, "best_ms"),
            "slim_tucker_vs_squeezenet_median": over(sq, st, "median_ms")}


def engine_title(engine: str, threads: int | None) -> str:
    return "Caffe" if engine == "caffe" else f"{engine}, {threads or 1} thread{'s' if (threads or 1) > 1 else ''}"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def markdown_table(static: list[dict], blocks: list[tuple[str, list[dict]]]) -> str:
    """The Tables 4-6 latency table: a row per net, one column block per engine (``blocks``:
    title and ``latency_rows``): best ms, median ms, speed-up vs GoogLeNet (best / median); then
    params, GMACs and file MB. A net an engine did not run shows its note in that block."""
    head = ["model"]
    for title, _ in blocks:
        head += [f"{title}: best ms", f"{title}: median ms", f"{title}: speed-up (best / median)"]
    head += ["params", "GMACs", "file MB"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for i, st in enumerate(static):
        cells = [st["model"]]
        for _, rows in blocks:
            r = rows[i]
            if r["model"] != st["model"]:
                raise ValueError(f"block row {i} is {r['model']}, not {st['model']}")
            if r["best_ms"] is None:
                cells += [_cell(f"not run: {r['note']}"), "-", "-"]
                continue
            if r["speedup_best"] is None:
                speed = "-"
            elif i == 0:
                speed = "1.00x"
            else:
                speed = f"{r['speedup_best']:.2f}x / {r['speedup_median']:.2f}x"
            cells += [f"{r['best_ms']:.1f}", f"{r['median_ms']:.1f}", speed]
        cells += [f"{st['params'] / 1e6:.2f} M", f"{st['macs'] / 1e9:.2f}", f"{st['file_bytes'] / MB:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets_line(title: str, t: dict) -> str:
    def x(v):
        return f"{v:.2f}x" if v is not None else "-"
    return (f"{title}: Slim-Tucker {x(t['slim_tucker_speedup_best'])} (best) / {x(t['slim_tucker_speedup_median'])} "
            f"(median) faster than GoogLeNet (target >= {TARGET_SPEEDUP}x); SqueezeNet v1.0 / Slim-Tucker "
            f"{x(t['slim_tucker_vs_squeezenet_best'])} (best) / {x(t['slim_tucker_vs_squeezenet_median'])} (median)")


def parse_engines(text: str) -> list[str]:
    out = []
    for name in text.split(","):
        key = engines.check_engine(name.strip())
        if key not in out:
            out.append(key)
    return out


def caffe_rows(models: list[tuple[str, Model]], static: list[dict], doc: dict) -> list[dict]:
    """Today's Caffe report rows: latency, speed-ups, memory and the per-group breakdown."""
    rows = []
    for (label, _), st, s in zip(models, static, doc["models"]):
        rows.append({"model": label, "best_ms": s["best_ms"], "median_ms": s["median_ms"],
                     "speedup_best": doc["ratios"]["models"][label]["speedup"],
                     "speedup_median": 1.0 / doc["ratios"]["models"][label]["median"],
                     "params": st["params"], "macs": st["macs"], "layers": st["layers"],
                     "file_bytes": st["file_bytes"], "blob_bytes": s["memory_bytes"],
                     "peak_rss_bytes": s["peak_rss_bytes"], "groups_ms": breakdown(s["layers"])})
    return rows


def print_caffe(rows: list[dict], targets: dict, runs: int, warmup: int, ranks: str) -> None:
    print(f"batch 1, {runs} interleaved runs (+{warmup} warm-up), random weights; Tucker ranks: {ranks}")
    print(f"{'model':<22} {'best ms':>8} {'median':>8} {'x best':>7} {'x med':>6} {'params':>7} {'GMACs':>6} "
          f"{'layers':>6} {'file MB':>8} {'blob MB':>8} {'peak RSS MB':>11}")
    for r in rows:
        rss = f"{r['peak_rss_bytes'] / MB:.1f}" if r["peak_rss_bytes"] else "-"
        print(f"{r['model']:<22} {r['best_ms']:>8.1f} {r['median_ms']:>8.1f} {r['speedup_best']:>6.2f}x "
              f"{r['speedup_median']:>5.2f}x {r['params'] / 1e6:>6.2f}M {r['macs'] / 1e9:>6.2f} {r['layers']:>6} "
              f"{r['file_bytes'] / MB:>8.2f} {r['blob_bytes'] / MB:>8.1f} {rss:>11}")
    by = {r["model"]: r for r in rows}
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30, help="timed forward passes per model")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--ranks", default=None, help="vbmf, R or R3,R4 (default: --ratio 0.5)")
    ap.add_argument("--ratio", type=float, default=None, help="fraction of each layer's weights kept (default 0.5)")
    ap.add_argument("--engines", default="caffe", help="comma-separated, of: " + ", ".join(engines.ENGINES))
    ap.add_argument("--threads", type=int, default=1, help="threads of every engine but caffe (default 1)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    ranks = parse_ranks(args.ranks)
    ratio = args.ratio if args.ratio is not None or args.ranks is not None else 0.5
    names = parse_engines(args.engines)

    models = variants(ranks, ratio)
    static = [static_row(label, m) for label, m in models]
    prepared = [bench.Prepared(label, m, m.weights_source or "random (seed 0)") for label, m in models]
    labels = [p.label for p in prepared]
    settings = {"batch": 1, "runs": args.runs, "warmup": args.warmup, "ranks": args.ranks or f"ratio {ratio:g}"}
    sections, rows, targets = {}, static, None
    start = time.monotonic()
    for engine in names:
        if engine == "caffe":
            device = CpuDevice()
            results = bench.run(prepared, device, runs=args.runs, warmup=args.warmup, layers=True)
            doc = bench.build_json(results, settings)
            rows = caffe_rows(models, static, doc)
            by = {r["model"]: r for r in rows}
            targets = {**speed_targets(rows),
                       "slim_tucker_weights_vs_slim": by["GoogLeNet-Slim-Tucker"]["params"] / by["GoogLeNet-Slim"]["params"]}
            block = latency_rows(labels, results, {})
            threads = None
        else:
            device = engines.get_device(engine, args.threads)
            block = engine_block(device, prepared, args.runs, args.warmup)
            threads = args.threads
        sections[engine] = {"title": engine_title(engine, threads), "threads": threads or "BLAS default",
                            "device": device.description, "models": block, "targets": speed_targets(block)}
        if names != ["caffe"]:
            print(f"{engine}: timed ({time.monotonic() - start:.0f} s since the nets were built)", file=sys.stderr,
                  flush=True)
    if args.json:
        out = {"settings": settings, "models": rows}
        if targets is not None:
            out["targets"] = targets
        out["engines"] = sections
        print(json.dumps(out, indent=2))
        return 0
    if targets is not None:
        print_caffe(rows, targets, args.runs, args.warmup, settings["ranks"])
    if names != ["caffe"]:
        print(f"\nper engine, batch 1, {args.runs} interleaved runs (+{args.warmup} warm-up) each, random weights; "
              f"Tucker ranks: {settings['ranks']}\n")
        print(markdown_table(static, [(s["title"], s["models"]) for s in sections.values()]))
        print()
        for s in sections.values():
            print(targets_line(s["title"], s["targets"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
