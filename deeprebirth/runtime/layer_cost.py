"""What one layer is worth in MACs on a device: the fit behind `rebirth bench --fit-layer-cost`
and the default of `rebirth tucker --layer-cost` (``graph.dag.LAYER_COST_MACS``).

A tensor layer's time is taken to be a fixed cost plus a cost per multiply-accumulate:
time = a + b * MACs. Over the convolutions and InnerProducts of the timed nets (each layer's
fastest run in `bench --layers`, the least disturbed by a busy machine), a least-squares line gives
a (µs a layer) and b (ns a MAC); a / b is one layer's fixed cost in MACs, what ``--time`` adds to
every layer it predicts. Small nets show a best: their layers are short enough for a to matter.

``fit`` is pure (tested on made-up points); ``points`` pairs the per-layer rows of a bench JSON
document with the MACs of the nets that were timed. The line bench prints is the cli's
(``cli.reports.layer_cost_line``).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from deeprebirth.errors import RebirthError
from deeprebirth.graph.dag import Graph

TENSOR_TYPES = ("Convolution", "InnerProduct")


def fit(macs: Sequence[float], seconds: Sequence[float]) -> dict:
    """Least squares of seconds = a + b * macs over the given layers: ``us_per_layer`` (a),
    ``ns_per_mac`` (b), ``layer_cost_macs`` (a / b, rounded; None when b is not positive: the
    times do not grow with the MACs), ``rms_us`` (the residual) and ``layers`` (how many)."""
    x = np.asarray(macs, dtype=float)
    y = np.asarray(seconds, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"{x.shape} MAC counts for {y.shape} times")
    if len(x) < 2 or np.ptp(x) == 0:
        raise RebirthError(f"fitting a layer's cost needs tensor layers of at least two sizes; the timed nets have "
                           f"{len(x)} Convolution/InnerProduct layer(s)" + (" of one size" if len(x) >= 2 else ""))
    design = np.stack([np.ones_like(x), x], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
    rms = float(np.sqrt(np.mean((design @ np.array([a, b]) - y) ** 2)))
    return {"us_per_layer": float(a) * 1e6, "ns_per_mac": float(b) * 1e9,
            "layer_cost_macs": int(round(a / b)) if b > 0 else None, "rms_us": rms * 1e6, "layers": int(len(x))}


def points(models: Sequence[dict], nets: Sequence) -> tuple[list[int], list[float]]:
    """(MACs, fastest run in seconds) of every Convolution and InnerProduct of the timed nets:
    ``models`` are the ``models`` entries of a `bench --json` document made with per-layer times,
    ``nets`` the NetParameters that were timed (in the same order, at the batch they ran at)."""
    macs, seconds = [], []
    for model, net in zip(models, nets):
        if not model.get("layers"):
            raise RebirthError(f"{model.get('model')}: no per-layer times to fit a layer's cost to")
        by_name = {n.name: n.macs for n in Graph(net, strict=False).nodes}
        for row in model["layers"]:
            if row["type"] in TENSOR_TYPES and row["name"] in by_name:
                macs.append(by_name[row["name"]])
                seconds.append(row["min_ms"] / 1000.0)
    return macs, seconds
