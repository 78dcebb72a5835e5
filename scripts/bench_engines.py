#!/usr/bin/env python
"""GoogLeNet, GoogLeNet-Slim and GoogLeNet-Slim-Tucker on every engine (issue 16), side by side.

    nice -n 10 .venv/bin/python scripts/bench_engines.py [--runs 20] [--warmup 3] [--threads 1,2] [--json]

The three nets are those of scripts/bench_tucker.py (batch 1, random weights of realistic
statistics, Slim-Tucker at ratio 0.5). For each engine (onnxruntime, ncnn, mnn: each net exported
by runtime/export and run in that engine in one process) and each thread count, the three nets are
timed interleaved (runtime/bench.run: A B C A B C ...), so load changes on a shared machine hit every
net alike; one column block per engine and thread count. Caffe (pycaffe, its BLAS's default
threads) is timed the same way as the reference.
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
sys.path.insert(0, str(ROOT / "scripts"))

from bench_tucker import engine_block, variants  # noqa: E402
from deeprebirth.runtime import bench, engines  # noqa: E402
from deeprebirth.runtime.devices.cpu import CpuDevice  # noqa: E402

NETS = ("GoogLeNet", "GoogLeNet-Slim", "GoogLeNet-Slim-Tucker")
TARGET_SLIM = 2.5


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts for the engines")
    ap.add_argument("--engines", default="caffe,onnxruntime,ncnn,mnn")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    nets = [(label, m) for label, m in variants(None, 0.5) if label in NETS]
    prepared = [bench.Prepared(label, m, "random (seed 0)") for label, m in nets]
    out = []
    for engine in args.engines.split(","):
        counts = [None] if engine == "caffe" else [int(t) for t in args.threads.split(",")]
        for threads in counts:
            device = CpuDevice() if engine == "caffe" else engines.get_device(engine, threads)
            rows = engine_block(device, prepared, args.runs, args.warmup)
            out.append({"engine": engine, "threads": threads or "BLAS default", "nets": rows})
            if not args.json:
                print(f"\n{engine}, threads: {threads or 'BLAS default'}  ({args.runs} runs, interleaved)")
                for r in rows:
                    if r["best_ms"] is None:
                        print(f"  {r['model']:<24} not run: {r['note']}")
                        continue
                    speed = (f"{r['speedup_best']:5.2f}x (best) {r['speedup_median']:5.2f}x (median)"
                             if r["speedup_best"] is not None else "-")
                    print(f"  {r['model']:<24} best {r['best_ms']:8.2f} ms  median {r['median_ms']:8.2f} ms  "
                          f"speed-up {speed}")
                sys.stdout.flush()
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print("\nSlim speed-up (best) per engine/threads (target >= %.1fx):" % TARGET_SLIM)
        for b in out:
            slim = b["nets"][1]["speedup_best"]
            print(f"  {b['engine']:<12} {str(b['threads']):<13} " + (f"{slim:.2f}x" if slim is not None else "-"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
