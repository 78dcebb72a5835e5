#!/usr/bin/env python
"""What is one layer worth in MACs on this device? (Not a test: a measurement; it backs
``graph.dag.LAYER_COST_MACS``, the default of `rebirth tucker --layer-cost`.)

Times every layer of the given nets with `rebirth bench --layers --json` (side by side, one
process) and fits time = a + b * MACs over their convolutions and InnerProducts (least squares on
each layer's fastest run). a / b is one layer's fixed cost in MACs. Default nets: the shipped
GoogLeNet-Slim and Slim-Tucker on Fashion-MNIST, whose layers are small enough for a to show.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python scripts/bench_layer_cost.py [MODEL ...] [--runs N]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deeprebirth.caffe import folders, netio  # noqa: E402
from deeprebirth.graph.model import resolve  # noqa: E402
from deeprebirth.graph.dag import Graph  # noqa: E402

TENSOR = ("Convolution", "InnerProduct")


def fit_layer_cost(macs: np.ndarray, seconds: np.ndarray) -> dict:
    """Least squares of seconds = a + b * macs: a (s a layer), b (s a MAC), a / b (MACs a layer)."""
    A = np.stack([np.ones_like(macs, dtype=float), macs.astype(float)], axis=1)
    (a, b), *_ = np.linalg.lstsq(A, seconds, rcond=None)
    rms = float(np.sqrt(np.mean((A @ np.array([a, b]) - seconds) ** 2)))
    return {"us_per_layer": a * 1e6, "ns_per_mac": b * 1e9, "layer_cost_macs": a / b, "rms_us": rms * 1e6,
            "layers": int(len(macs))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=[str(ROOT / "models" / "fmnist_googlenet_slim"),
                                                  str(ROOT / "models" / "fmnist_googlenet_slim_tucker")])
    ap.add_argument("--runs", type=int, default=100)
    args = ap.parse_args()
    proc = subprocess.run([sys.executable, "-m", "deeprebirth.cli", "bench", *args.models, "--layers",
                           "--runs", str(args.runs), "--json"], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr.strip())
    doc = json.loads(proc.stdout)
    macs, seconds = [], []
    for model in doc["models"]:
        deploy = resolve(folders.model_files(model["model"])[0])
        by_name = {n.name: n.macs for n in Graph(netio.read_net(deploy), strict=False).nodes}
        for layer in model["layers"]:
            if layer["type"] in TENSOR:
                macs.append(by_name[layer["name"]])
                seconds.append(layer["min_ms"] / 1000)
    fit = fit_layer_cost(np.array(macs), np.array(seconds))
    print(json.dumps({"models": args.models, "runs": args.runs, "device": doc.get("device_description"), **fit},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
