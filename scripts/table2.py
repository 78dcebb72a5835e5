#!/usr/bin/env python
"""Reproduce the paper's Table 2 (share of forward time in non-tensor layers) on this machine,
with two independent estimates beside `rebirth bench --layers`.

For each model three nets run interleaved in one process, round after round:

* ``full``: the model itself. Its whole forward pass is timed (one C++ ``ForwardFromTo`` call),
  then one pass of per-layer ``net._forward(i, i)`` calls: method A, exactly what
  `rebirth bench --layers` reports (Eq. 1 over per-layer medians).
* ``tensor-only``: a net holding only the model's tensor layers (Convolution, InnerProduct, ...),
  each fed by its own input blob of the shape it sees in the model. Timed as one whole pass.
  Method B: non-tensor share = 1 - T(tensor-only) / T(full).
* ``non-tensor-only``: the same for the non-tensor layers (Pooling, LRN, ReLU, Concat, ...; an
  in-place layer stays in place on its own input). Method C: share = T(non-tensor-only) / T(full).

A is what `rebirth bench --layers` reports (Eq. 1 over the per-layer medians). B and C are the
median over rounds of the share measured within one round (nets timed side by side, so a change
of machine load between rounds cancels out). In brackets: the interquartile range over rounds of
the per-round share.

B and C never time a layer on its own from Python: they only compare whole passes of different
nets, so they check the per-layer attribution of A (its Python call per layer, its clock reads,
Caffe's auto-inserted Split layers). The isolated nets' inputs hold the activations each layer
reads in the model (copied from a layer-by-layer pass: max pooling branches on its data, and on
random input it runs 15-30 % slower). Their remaining bias: a layer's input is not the output its
predecessor has just written, so caches are colder than in the model (B under-, C over-estimates),
and an in-place layer (ReLU) sees its own output again from the second pass on.

    GLOG_minloglevel=2 .venv/bin/python scripts/table2.py [googlenet alexnet resnet50] [--runs 30]
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deeprebirth.runtime import bench  # noqa: E402
from deeprebirth.caffe import proto as pb  # noqa: E402
from deeprebirth.runtime.devices.cpu import CpuDevice  # noqa: E402
from deeprebirth.runtime.pycaffe import random_weights  # noqa: E402
from deeprebirth.graph.dag import Graph  # noqa: E402
from deeprebirth.graph.kinds import DATA_TYPES, kind_of  # noqa: E402
from deeprebirth.graph.model import Model  # noqa: E402

# Table 2 of the paper: % of forward time in non-tensor layers.
PAPER = {  # model: (Intel x86, Arm, Titan X)
    "alexnet": (32.08, 25.08, 22.37),
    "googlenet": (62.03, 37.81, 26.14),
    "resnet50": (55.66, 36.61, 47.87),
}


def isolated_net(net: "pb.NetParameter", kind: str) -> "pb.NetParameter":
    """The layers of ``kind`` ('tensor' or 'non-tensor') of ``net``, each reading its own input
    blobs (declared with the shapes they have in ``net``) instead of other layers' outputs."""
    g = Graph(net)
    out = pb.NetParameter(name=f"{net.name or 'net'} ({kind} layers only)")
    for node in g.nodes:
        if node.type in DATA_TYPES or node.kind != kind:
            continue
        layer = out.layer.add()
        layer.CopyFrom(node.layer)
        del layer.bottom[:]
        del layer.top[:]
        renamed = {}
        for j, ref in enumerate(node.bottoms):
            name = f"{node.name}/in{j}"
            out.input.append(name)
            out.input_shape.add().dim.extend(g.version_shapes[ref])
            layer.bottom.append(name)
            renamed.setdefault(ref[0], name)
        for k, ref in enumerate(node.tops):
            layer.top.append(renamed.get(ref[0], f"{node.name}/out{k}"))
    return out


def _session(device, net):
    return device.open(Model(net, random_weights(Graph(net, strict=False))))


def feed_activations(full, isolated) -> None:
    """Fill the isolated net's inputs with what each layer really reads in the model: the model
    is run layer by layer and every layer's bottoms are copied just before it runs (max pooling
    branches on its data, so random input would time it differently)."""
    net, iso = full.caffe_net.net, isolated.caffe_net.net
    for i, name in enumerate(net._layer_names):
        for j, bottom in enumerate(net.bottom_names[name]):
            key = f"{name}/in{j}"
            if key in iso.blobs:
                iso.blobs[key].data[...] = net.blobs[bottom].data
        net._forward(i, i)


def measure_model(name: str, runs: int, warmup: int, stat: str) -> dict:
    prepared = bench.prepare([name], batch=1)[0]
    device = CpuDevice()
    full = device.open(prepared.model)
    tensor = _session(device, isolated_net(prepared.model.net, "tensor"))
    non_tensor = _session(device, isolated_net(prepared.model.net, "non-tensor"))
    feed_activations(full, tensor)
    feed_activations(full, non_tensor)
    t_full, t_tensor, t_non, per_layer = [], [], [], []
    gc.collect()
    gc.disable()
    try:
        for r in range(warmup + runs):
            a = full.time_forward()
            layers = full.time_layers()
            b = tensor.time_forward()
            c = non_tensor.time_forward()
            if r >= warmup:
                t_full.append(a)
                per_layer.append(layers)
                t_tensor.append(b)
                t_non.append(c)
    finally:
        gc.enable()
    kinds = [kind_of(t) for t in full.layer_types]
    a_runs = [100.0 * sum(t for t, k in zip(run, kinds) if k == "non-tensor") / sum(run) for run in per_layer]
    b_runs = [100.0 * (1 - t / f) for t, f in zip(t_tensor, t_full)]
    c_runs = [100.0 * n / f for n, f in zip(t_non, t_full)]
    pick = min if stat == "best" else statistics.median
    rows = bench.layer_table(full.layer_names, full.layer_types, per_layer)
    agree = bench.agreement(t_full, per_layer)
    return {
        "model": name,
        "A": bench.non_tensor_percent(rows),
        "A_paired": statistics.median(a_runs),
        "B": statistics.median(b_runs),
        "C": statistics.median(c_runs),
        "spread": {k: bench.quartiles(v) for k, v in (("A", a_runs), ("B", b_runs), ("C", c_runs))},
        "full_ms": 1000 * pick(t_full),
        "tensor_only_ms": 1000 * pick(t_tensor),
        "non_tensor_only_ms": 1000 * pick(t_non),
        "layer_sum_diff_percent": agree["diff_percent"],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", default=["googlenet", "alexnet", "resnet50"])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--stat", choices=("median", "best"), default="median",
                    help="how the full-pass ms column is summarised (for the shares, see the docstring)")
    args = ap.parse_args(argv)
    threads = os.environ.get("OPENBLAS_NUM_THREADS", "default")
    print(f"batch 1, {args.runs} runs ({args.stat}), {os.cpu_count()} CPUs, OPENBLAS_NUM_THREADS={threads}")
    print()
    print("| model | paper x86 | paper Arm | A: per-layer calls, Eq. 1 | B: 1 - tensor-only / full "
          "| C: non-tensor-only / full | full pass ms | layer sum vs full |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.models:
        r = measure_model(name, args.runs, args.warmup, args.stat)
        paper = PAPER.get(name)
        x86, arm = (f"{paper[0]:.2f} %", f"{paper[1]:.2f} %") if paper else ("-", "-")
        cells = [f"{r[k]:.1f} % ({r['spread'][k][0]:.0f}-{r['spread'][k][1]:.0f})" for k in "ABC"]
        print(f"| {name} | {x86} | {arm} | {' | '.join(cells)} | {r['full_ms']:.1f} | "
              f"{r['layer_sum_diff_percent']:+.1f} % |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
