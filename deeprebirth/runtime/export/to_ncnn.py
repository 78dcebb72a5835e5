"""A Caffe net as ncnn's ``model.param`` (text) + ``model.bin`` (weights), written from the Caffe net.

ncnn's layers descend from Caffe's, so most layers map one to one; what ncnn needs besides:

* one batch: ncnn's blobs are ``c x h x w`` (or ``w``); the net is exported at batch 1 and
  axes are counted without the batch (Caffe axis 1 is ncnn axis 0);
* a ``Split`` wherever a blob feeds several layers (ncnn blobs have exactly one consumer);
* in-place versions of a blob get the names ``NAME#V`` (the last one keeps ``NAME``), as in the ONNX export.

Parameters are ``id=value`` (floats always written with an exponent, arrays as ``-23300-id=n,v,...``).
In ``model.bin`` the weights of Convolution/InnerProduct-like layers start with a 4-byte zero tag
(raw float32, ncnn's ``ModelBin::load(n, 0)``); every other array is raw float32 (``load(n, 1)``).

Pooling: Caffe rounds up and drops a last window that starts in the padding. Written as ncnn's
``pad_mode=1`` (valid, rounding down) with explicit pads ``[pad, pad + extra]`` that give exactly
Caffe's output size (to_onnx.pool_pads), so ncnn never makes a window Caffe would not. Average:
Caffe divides by the window clipped to ``[-pad, H + pad)``: ncnn's ``avgpool_count_include_pad=1``
when no window reaches past ``H + pad`` (the divisor is the whole kernel in both), ``=0`` when there
is no padding (the divisor is the window's part inside the input in both); the remaining case (a
padded average pooling whose last window reaches past the padding) is refused. ncnn's own
``pad_mode=0`` ("full padding", Caffe's ceil) was measured wrong here on the DenseNet-style test
net's 2x2/2 average pooling of a 9x9 blob (with count_include_pad=1: 0.5 relative), so it is not used.
BatchNorm: mean = blob0 / s, var = blob1 / s (s = the moving-average factor blob2), slope 1, bias 0.
"""
from __future__ import annotations

import numpy as np

from deeprebirth.errors import RebirthError
from deeprebirth.graph.dag import Graph, Node
from deeprebirth.graph.geometry import canonical_axis, concat_axis, conv_geometry, pool_geometry
from deeprebirth.graph.model import Model
from deeprebirth.runtime.export import common
from deeprebirth.runtime.export.to_onnx import pool_pads

MAGIC = 7767517
PARAM, BIN = "model.param", "model.bin"
SKIP_TYPES = frozenset({"Silence"})


def _fmt(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join([str(len(value))] + [_fmt(v) for v in value])
    if isinstance(value, (float, np.floating)):
        return f"{float(value):e}"
    return str(int(value))


class _Writer:
    def __init__(self, model: Model, graph: Graph):
        self.model, self.graph = model, graph
        self.weights = model.weights or {}
        self.lines: list[str] = []
        self.blobs: list[np.ndarray | bytes] = []
        self.names: set[str] = set()
        self.names_of = common.Names(graph)

    def tensor(self, ref) -> str:
        return self.names_of(ref)

    def layer(self, kind: str, name: str, ins, outs, params: dict | None = None) -> None:
        parts = [kind, name.replace(" ", "_"), str(len(ins)), str(len(outs)), *ins, *outs]
        for key, value in (params or {}).items():
            parts.append(f"{-23300 - key if isinstance(value, (list, tuple)) else key}={_fmt(value)}")
        self.lines.append(" ".join(parts))
        self.names.update(outs)

    def weight(self, node: Node, i: int) -> np.ndarray:
        return common.weight(self.weights, node, i)

    def data(self, arr: np.ndarray, tagged: bool = False) -> None:
        if tagged:
            self.blobs.append(b"\0\0\0\0")
        self.blobs.append(np.ascontiguousarray(arr, dtype="<f4").tobytes())

    def shape(self, ref) -> tuple[int, ...]:
        return tuple(self.graph.version_shapes[ref])

    def refuse(self, node: Node, why: str):
        return RebirthError(f"{self.model.source}: layer '{node.name}' ({node.type}): {why}; ncnn cannot run it as "
                            "Caffe does")


def _conv(w: _Writer, node: Node, ins, outs) -> None:
    p = node.layer.convolution_param
    geo = conv_geometry(node.layer)
    if len(geo["kernel"]) != 2:
        raise w.refuse(node, "only 2-D convolutions")
    weight = w.weight(node, 0)
    c_in = w.shape(node.bottoms[0])[1]
    depthwise = node.type in ("DepthwiseConvolution", "ConvolutionDepthwise")
    group = c_in if depthwise else p.group
    deconv = node.type == "Deconvolution"
    if deconv:  # Caffe: (in, out/g, kh, kw); ncnn: per group (out/g, in/g, kh, kw)
        ci, co_g, kh, kw = weight.shape
        weight = weight.reshape(group, ci // group, co_g, kh, kw).transpose(0, 2, 1, 3, 4)
    (kh, kw), (ph, pw), (sh, sw), (dh, dw) = geo["kernel"], geo["pad"], geo["stride"], geo["dilation"]
    params = {0: p.num_output, 1: kw, 11: kh, 2: dw, 12: dh, 3: sw, 13: sh, 4: pw, 14: ph, 15: pw, 16: ph,
              5: int(p.bias_term), 6: weight.size}
    kind = "Deconvolution" if deconv else "Convolution"
    if group > 1:
        kind += "DepthWise"
        params[7] = group
    w.layer(kind, node.name, ins, outs, params)
    w.data(weight, tagged=True)
    if p.bias_term:
        w.data(w.weight(node, 1))


def _pool(w: _Writer, node: Node, ins, outs) -> None:
    p = node.layer.pooling_param
    shape = w.shape(node.bottoms[0])
    geo = pool_geometry(node.layer, shape[2:])
    if p.pool not in (p.MAX, p.AVE):
        raise w.refuse(node, "STOCHASTIC pooling")
    kind = 0 if p.pool == p.MAX else 1
    if geo["global"]:
        w.layer("Pooling", node.name, ins, outs, {0: kind, 4: 1})
        return
    (kh, kw), (ph, pw), (sh, sw) = geo["kernel"], geo["pad"], geo["stride"]
    ends = []
    for size, k, pad, s in ((shape[2], kh, ph, sh), (shape[3], kw, pw, sw)):
        out, end = pool_pads(size, k, pad, s, geo["ceil"])
        ends.append((end, (out - 1) * s - pad + k > size + pad))  # (bottom/right pad, a window reaches past H + pad)
    include_pad = 1
    if kind == 1 and (ends[0][1] or ends[1][1]):
        if ph or pw:
            raise w.refuse(node, "an average pooling with padding whose last window reaches past the padding "
                                 "(Caffe counts the padding but not the rest in its divisor)")
        include_pad = 0  # no padding: Caffe divides by the window's part inside the input
    params = {0: kind, 1: kw, 11: kh, 2: sw, 12: sh, 3: pw, 13: ph, 14: ends[1][0], 15: ends[0][0], 5: 1,
              6: include_pad}
    w.layer("Pooling", node.name, ins, outs, params)


def _ip(w: _Writer, node: Node, ins, outs) -> None:
    p = node.layer.inner_product_param
    shape = w.shape(node.bottoms[0])
    if canonical_axis(p.axis, len(shape)) != 1:
        raise w.refuse(node, f"axis {p.axis} (ncnn's InnerProduct flattens everything after the batch)")
    k = int(np.prod(shape[1:]))
    weight = w.weight(node, 0)
    weight = weight.reshape(k, p.num_output).T if p.transpose else weight.reshape(p.num_output, k)
    w.layer("InnerProduct", node.name, ins, outs, {0: p.num_output, 1: int(p.bias_term), 2: weight.size})
    w.data(weight, tagged=True)
    if p.bias_term:
        w.data(w.weight(node, 1))


def _bn(w: _Writer, node: Node, ins, outs) -> None:
    p = node.layer.batch_norm_param
    if p.HasField("use_global_stats") and not p.use_global_stats:
        raise w.refuse(node, "use_global_stats: false")
    s = float(w.weight(node, 2).reshape(-1)[0])
    factor = 0.0 if s == 0 else 1.0 / s
    mean, var = w.weight(node, 0).reshape(-1) * factor, w.weight(node, 1).reshape(-1) * factor
    c = mean.size
    w.layer("BatchNorm", node.name, ins, outs, {0: c, 1: float(p.eps)})
    for arr in (np.ones(c), mean, var, np.zeros(c)):
        w.data(arr)


def _scale(w: _Writer, node: Node, ins, outs) -> None:
    p = node.layer.scale_param if node.type == "Scale" else node.layer.bias_param
    shape = w.shape(node.bottoms[0])
    axis = canonical_axis(p.axis, len(shape))
    if len(ins) != 1 or axis != 1 or (p.num_axes != 1 and not (p.num_axes == -1 and len(shape) == 2)):
        raise w.refuse(node, "only a learned per-channel factor (axis 1, num_axes 1, one bottom)")
    data = w.weight(node, 0).reshape(-1)
    if node.type == "Bias":
        w.layer("Bias", node.name, ins, outs, {0: data.size})
        w.data(data)
        return
    w.layer("Scale", node.name, ins, outs, {0: data.size, 1: int(p.bias_term)})
    w.data(data)
    if p.bias_term:
        w.data(w.weight(node, 1).reshape(-1))


def _eltwise(w: _Writer, node: Node, ins, outs) -> None:
    p = node.layer.eltwise_param
    op = {p.PROD: 0, p.SUM: 1, p.MAX: 2}[p.operation]
    params = {0: op}
    if op == 1 and list(p.coeff):
        params[1] = [float(c) for c in p.coeff]
    w.layer("Eltwise", node.name, ins, outs, params)


def _reshape(w: _Writer, node: Node, ins, outs) -> None:
    top = w.shape(node.tops[0])[1:]
    if len(top) > 3:
        raise w.refuse(node, "more than 3 axes after the batch")
    w.layer("Reshape", node.name, ins, outs, dict(zip((0, 1, 2), reversed(top))))


def _axis_layer(kind: str, extra: dict | None = None):
    def write(w: _Writer, node: Node, ins, outs) -> None:
        ndim = len(w.shape(node.bottoms[0]))
        raw = concat_axis(node.layer) if kind == "Concat" else node.layer.softmax_param.axis
        axis = canonical_axis(raw, ndim)
        if axis == 0:
            raise w.refuse(node, "axis 0 (the batch)")
        w.layer(kind, node.name, ins, outs, {0: axis - 1, **(extra or {})})
    return write


def _slice(w: _Writer, node: Node, ins, outs) -> None:
    p = node.layer.slice_param
    ndim = len(w.shape(node.bottoms[0]))
    axis = canonical_axis(p.slice_dim if p.HasField("slice_dim") else p.axis, ndim)
    if axis == 0:
        raise w.refuse(node, "axis 0 (the batch)")
    sizes = [w.shape(t)[axis] for t in node.tops]
    w.layer("Slice", node.name, ins, outs, {0: sizes, 1: axis - 1})


def _fixed(kind: str, params_of=None, weights_of=None):
    def write(w: _Writer, node: Node, ins, outs) -> None:
        w.layer(kind, node.name, ins, outs, params_of(node) if params_of else None)
        if weights_of:
            for arr in weights_of(w, node):
                w.data(arr)
    return write


def _prelu_params(node):
    return {0: int(np.prod(node.param_shapes[0]))}


WRITERS = {
    "Convolution": _conv, "Deconvolution": _conv, "DepthwiseConvolution": _conv, "ConvolutionDepthwise": _conv,
    "Pooling": _pool, "InnerProduct": _ip, "BatchNorm": _bn, "Scale": _scale, "Bias": _scale,
    "Eltwise": _eltwise, "Flatten": _reshape, "Reshape": _reshape, "Slice": _slice,
    "Concat": _axis_layer("Concat"), "Softmax": _axis_layer("Softmax", {1: 1}),
    "LRN": _fixed("LRN", lambda n: {0: int(n.layer.lrn_param.norm_region), 1: n.layer.lrn_param.local_size,
                                    2: float(n.layer.lrn_param.alpha), 3: float(n.layer.lrn_param.beta),
                                    4: float(n.layer.lrn_param.k)}),
    "ReLU": _fixed("ReLU", lambda n: {0: float(n.layer.relu_param.negative_slope)}),
    "PReLU": _fixed("PReLU", _prelu_params, lambda w, n: [w.weight(n, 0).reshape(-1)]),
    "ELU": _fixed("ELU", lambda n: {0: float(n.layer.elu_param.alpha)}),
    "Sigmoid": _fixed("Sigmoid"), "TanH": _fixed("TanH"), "AbsVal": _fixed("AbsVal"), "BNLL": _fixed("BNLL"),
    "Dropout": _fixed("Dropout"),
    "Power": _fixed("Power", lambda n: {0: float(n.layer.power_param.power), 1: float(n.layer.power_param.scale),
                                        2: float(n.layer.power_param.shift)}),
    "Clip": _fixed("Clip", lambda n: {0: float(n.layer.clip_param.min), 1: float(n.layer.clip_param.max)}),
    "ReLU6": _fixed("Clip", lambda n: {0: 0.0, 1: 6.0}),
}


def _consumers(graph: Graph) -> dict:
    uses: dict = {}
    for node in graph.topological_order():
        if node.type in SKIP_TYPES:
            continue
        for ref in node.bottoms:
            uses.setdefault(ref, []).append(node.name)
    return uses


def to_ncnn(model: Model, batch: int | None = 1) -> dict[str, bytes]:
    """``model`` as ncnn's param and bin files (name -> bytes). ncnn runs one image at a time."""
    if batch not in (None, 1):
        raise RebirthError(f"ncnn runs one image at a time: export at batch 1, not {batch}")
    graph = Graph(model.net, batch=1)
    common.require_supported(model, graph, WRITERS, SKIP_TYPES | {"Input", "Split"}, "ncnn")
    w = _Writer(model, graph)
    uses = _consumers(graph)
    # Which name each consumer reads: a blob read by k > 1 layers goes through a Split into k copies.
    feed: dict = {}

    def emit_split(ref, name: str) -> None:
        readers = uses.get(ref, [])
        if len(readers) > 1:
            copies = [f"{name}#split{i}" for i in range(len(readers))]
            w.layer("Split", f"{name}#split", [name], copies)
            for reader, copy_ in zip(readers, copies):
                feed[(ref, reader)] = copy_

    for name in graph.input_blobs:
        shape = graph.version_shapes[(name, 0)][1:]
        if len(shape) > 3:
            raise RebirthError(f"{model.source}: input '{name}' has more than 3 axes after the batch")
        w.layer("Input", name, [], [name], dict(zip((0, 1, 2), reversed(shape))))
        emit_split((name, 0), name)
    for node in graph.topological_order():
        if node.type in SKIP_TYPES or node.type == "Input":
            continue
        ins = [feed.get((ref, node.name), w.tensor(ref)) for ref in node.bottoms]
        outs = [w.tensor(ref) for ref in node.tops]
        if node.type == "Split":
            w.layer("Split", node.name, ins, outs)
        else:
            WRITERS[node.type](w, node, ins, outs)
        for ref, name in zip(node.tops, outs):
            emit_split(ref, name)
    blob_count = len(w.names)
    param = "\n".join([str(MAGIC), f"{len(w.lines)} {blob_count}", *w.lines]) + "\n"
    return {PARAM: param.encode(), BIN: b"".join(w.blobs)}
