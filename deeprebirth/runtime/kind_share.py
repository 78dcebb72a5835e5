"""The paper's Table 2 (share of forward time in non-tensor layers) measured a second way, by
whole passes only, as a check of what `rebirth bench --layers` attributes to each layer.

`bench --layers` (method A) times every layer in its own Python call and sums the non-tensor
layers' medians (the paper's Eq. 1). Here three nets run interleaved, round after round:

* the model itself, one whole forward pass (one C++ call), then one pass of per-layer calls (A);
* its *tensor-only* net: the model's tensor layers (Convolution, InnerProduct, ...), each fed by
  an input blob of its own, of the shape it sees in the model. Method B: share = 1 - T(tensor-only)
  / T(full);
* its *non-tensor-only* net, the same for the other layers (Pooling, LRN, ReLU, Concat, ...; an
  in-place layer stays in place on its own input). Method C: share = T(non-tensor-only) / T(full).

B and C are the median over rounds of the share within one round (nets timed side by side, so a
change of load between rounds cancels out), with the interquartile range over rounds. The isolated
nets' inputs hold the activations each layer reads in the model (copied from a layer-by-layer pass:
max pooling branches on its data). What remains biased: a layer's input is not what its predecessor
has just written, so caches are colder than in the model (B under-, C over-estimates), and an
in-place layer sees its own output again from the second pass on.

``isolated_net`` is pure (tested on small nets); ``measure`` needs pycaffe.
"""
from __future__ import annotations

import gc
import statistics

from deeprebirth.caffe import proto as pb
from deeprebirth.graph.dag import Graph
from deeprebirth.graph.kinds import DATA_TYPES, kind_of
from deeprebirth.graph.model import Model


def isolated_net(net: "pb.NetParameter", kind: str) -> "pb.NetParameter":
    """The layers of ``kind`` ("tensor" or "non-tensor") of ``net``, each reading input blobs of
    its own (``LAYER/inJ``, declared with the shapes they have in ``net``) instead of other layers'
    outputs; an in-place layer stays in place on its input."""
    if kind not in ("tensor", "non-tensor"):
        raise ValueError(f"kind is 'tensor' or 'non-tensor', not {kind!r}")
    g = Graph(net)
    out = pb.NetParameter(name=f"{net.name or 'net'} ({kind} layers only)")
    for node in g.nodes:
        if node.type in DATA_TYPES or node.kind != kind:
            continue
        layer = out.layer.add()
        layer.CopyFrom(node.layer)
        del layer.bottom[:]
        del layer.top[:]
        renamed: dict[str, str] = {}
        for j, ref in enumerate(node.bottoms):
            name = f"{node.name}/in{j}"
            out.input.append(name)
            out.input_shape.add().dim.extend(g.version_shapes[ref])
            layer.bottom.append(name)
            renamed.setdefault(ref[0], name)
        for k, ref in enumerate(node.tops):
            layer.top.append(renamed.get(ref[0], f"{node.name}/out{k}"))
    return out


def shares(full_s, layers_s, types, tensor_s, non_tensor_s) -> dict:
    """Methods A (per run: Eq. 1 over that run's per-layer times), B and C from the rounds' times
    (seconds): each the median over rounds, with its interquartile range (percent)."""
    kinds = [kind_of(t) for t in types]
    a = [100.0 * sum(t for t, k in zip(run, kinds) if k == "non-tensor") / sum(run) for run in layers_s]
    b = [100.0 * (1 - t / f) for t, f in zip(tensor_s, full_s)]
    c = [100.0 * n / f for n, f in zip(non_tensor_s, full_s)]

    def q(values):
        if len(values) < 2:
            return [values[0], values[0]]
        qs = statistics.quantiles(values, n=4)
        return [qs[0], qs[2]]
    return {key: {"percent": statistics.median(v), "iqr": q(v)} for key, v in (("A", a), ("B", b), ("C", c))}


def _feed(full, isolated) -> None:
    """The isolated net's inputs filled with what each of its layers reads in the model: the
    model run layer by layer, each layer's bottoms copied just before it runs."""
    net, iso = full.caffe_net.net, isolated.caffe_net.net
    for i, name in enumerate(net._layer_names):
        for j, bottom in enumerate(net.bottom_names[name]):
            key = f"{name}/in{j}"
            if key in iso.blobs:
                iso.blobs[key].data[...] = net.blobs[bottom].data
        net._forward(i, i)


def measure(model: Model, runs: int = 30, warmup: int = 3) -> dict:
    """Methods A, B and C of ``model`` (its weights set; batch as its net says) on this CPU in
    pycaffe: ``shares`` plus the median whole-pass times (ms) of the three nets."""
    from deeprebirth.runtime.devices.cpu import CpuDevice  # noqa: PLC0415  (pycaffe)
    from deeprebirth.runtime.pycaffe import random_weights  # noqa: PLC0415

    device = CpuDevice()
    full = device.open(model)
    parts = {}
    for kind in ("tensor", "non-tensor"):
        net = isolated_net(model.net, kind)
        parts[kind] = device.open(Model(net, random_weights(Graph(net, strict=False))))
        _feed(full, parts[kind])
    t_full, t_layers, t_tensor, t_non = [], [], [], []
    gc.collect()
    gc.disable()
    try:
        for r in range(warmup + runs):
            f, layers = full.time_forward(), full.time_layers()
            t, n = parts["tensor"].time_forward(), parts["non-tensor"].time_forward()
            if r >= warmup:
                t_full.append(f)
                t_layers.append(layers)
                t_tensor.append(t)
                t_non.append(n)
    finally:
        gc.enable()
        for s in (full, *parts.values()):
            s.close()
    out = shares(t_full, t_layers, full.layer_types, t_tensor, t_non)
    out.update(full_ms=1000 * statistics.median(t_full), tensor_only_ms=1000 * statistics.median(t_tensor),
               non_tensor_only_ms=1000 * statistics.median(t_non), runs=runs)
    return out
