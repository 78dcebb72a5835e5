"""A Caffe net as an ONNX model (opset ``OPSET``), built with the ``onnx`` package's own helpers.

Names: every ONNX tensor that holds what a Caffe blob holds after a forward pass has the blob's
name. An in-place chain (conv -> ReLU -> BatchNorm on one blob) writes versions of one Caffe blob;
ONNX tensors are single-assignment, so every version but the last is called ``NAME#V`` and the last
one ``NAME``. Weights are initializers ``LAYER#w``, ``LAYER#b``, ... Shapes are static: the net's
input shapes with the batch set to ``batch``.

Caffe's semantics, carried over exactly (each checked against pycaffe by ``export --verify``):

* **Pooling** rounds its output size up (``ceil``; ``round_mode: FLOOR`` / ``ceil_mode: false`` round
  down) and drops a last window that would start in the bottom/right padding. Written as ONNX
  pooling with ``ceil_mode=0`` and explicit pads ``[pad, pad + extra]`` where ``extra`` makes ONNX's
  floor division give exactly Caffe's output size, so no extra window can appear.
  Average pooling: Caffe divides each window's sum by the window clipped to the *padded* input
  ``[-pad, H + pad)`` (padding inside ``pad`` counts, the extra ceil region does not). A padded
  average pooling is written as a zero ``Pad`` and an ``AveragePool`` without pads (dividing by the
  whole kernel in every engine: ``count_include_pad`` with asymmetric pads is where converters
  disagree), and where Caffe's divisor differs (only windows reaching beyond ``H + pad``) a
  constant ``Mul`` by ``kernel_area / caffe_area`` per output position follows.
  Global pooling is ``GlobalMaxPool`` / ``GlobalAveragePool``.
* **InnerProduct** flattens axes ``axis..`` (``Flatten(axis)``), computes ``x W^T + b`` (``Gemm``,
  ``transB=1``; Caffe's ``transpose: true`` stores W as K x N: ``transB=0``) and, for ``axis != 1``,
  reshapes to ``shape[:axis] + [N]``.
* **LRN** across channels: Caffe ``x / (k + alpha/n * sum x^2)^beta`` is ONNX ``LRN`` (same alpha/n
  convention). Within a channel: ``x / (1 + alpha * avgpool_n(x^2))^beta`` (Caffe builds it from an
  average pooling with pad (n-1)/2, which always divides by n^2 at stride 1).
* **BatchNorm**: mean = blob0 / s, var = blob1 / s with Caffe's moving-average factor s = blob2
  (s = 0 gives 0), ``BatchNormalization`` with scale 1, bias 0 and the layer's eps.
* **Scale/Bias** multiply/add a parameter (or the second bottom) of shape ``shape[axis:axis+num_axes]``,
  broadcast by reshaping it to that shape followed by ones.
* **Eltwise**: SUM with coefficients (``Mul`` by constants, ``Add``), PROD (``Mul``), MAX (``Max``).
* **Dropout** is the identity at inference (``Identity``, which keeps the blob's name).
* Power ``(shift + scale x)^power``; ReLU's ``negative_slope`` is ``LeakyRelu``; PReLU's slope is
  per channel (or shared); Flatten/Reshape are ``Reshape`` to Caffe's static top shape; Slice is
  ``Split``; Concat and Softmax keep their axis.
"""
from __future__ import annotations

import numpy as np

from deeprebirth.errors import RebirthError
from deeprebirth.graph.dag import Graph, Node
from deeprebirth.graph.geometry import canonical_axis, concat_axis, conv_geometry, pool_geometry, pool_out
from deeprebirth.graph.model import Model
from deeprebirth.runtime.export import common

OPSET = 13
IR_VERSION = 7  # ONNX 1.8's IR, which opset 13 came with: readable by every runtime here
SKIP_TYPES = frozenset({"Input", "Silence"})


def import_onnx():
    try:
        import onnx  # noqa: PLC0415
    except ImportError:
        raise RebirthError("exporting to ONNX needs the onnx package (make install, or pip install onnx)") from None
    return onnx


class _Builder:
    """Collects nodes and initializers while walking the Caffe graph in topological order."""

    def __init__(self, model: Model, graph: Graph):
        self.onnx = import_onnx()
        from onnx import helper, numpy_helper  # noqa: PLC0415
        self.helper, self.numpy_helper = helper, numpy_helper
        self.model, self.graph = model, graph
        self.weights = model.weights or {}
        self.nodes, self.inits = [], []
        self.names_of = common.Names(graph)
        self._tmp = 0

    # -- names ---------------------------------------------------------------------------------
    def tensor(self, ref) -> str:
        return self.names_of(ref)

    def temp(self, layer: str, what: str) -> str:
        self._tmp += 1
        return f"{layer}#{what}{self._tmp}"

    def const(self, layer: str, what: str, value) -> str:
        name = f"{layer}#{what}"
        if any(i.name == name for i in self.inits):
            name = self.temp(layer, what)
        self.inits.append(self.numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def shape_const(self, layer: str, shape) -> str:
        return self.const(layer, "shape", np.asarray(list(shape), dtype=np.int64))

    def add(self, op: str, inputs, outputs, layer: str, **attrs) -> None:
        name = layer if not any(n.name == layer for n in self.nodes) else self.temp(layer, op)
        self.nodes.append(self.helper.make_node(op, list(inputs), list(outputs), name=name, **attrs))

    def blob(self, node: Node, i: int) -> np.ndarray:
        return common.weight(self.weights, node, i)

    def shape(self, ref) -> tuple[int, ...]:
        return tuple(self.graph.version_shapes[ref])


# ------------------------------------------------------------------------------------------------
# One function per Caffe layer type: (builder, node, inputs, outputs) -> None


def _conv(b: _Builder, node: Node, ins, outs) -> None:
    p = node.layer.convolution_param
    geo = conv_geometry(node.layer)
    w = b.blob(node, 0)
    depthwise = node.type in ("DepthwiseConvolution", "ConvolutionDepthwise")
    group = b.shape(node.bottoms[0])[1] if depthwise else p.group
    op = "ConvTranspose" if node.type == "Deconvolution" else "Conv"
    k = list(w.shape[2:])
    inputs = [ins[0], b.const(node.name, "w", w)]
    if p.bias_term:
        inputs.append(b.const(node.name, "b", b.blob(node, 1).reshape(-1)))
    b.add(op, inputs, outs, node.name, kernel_shape=k, pads=geo["pad"] + geo["pad"], strides=geo["stride"],
          dilations=geo["dilation"], group=group)


def pool_pads(size: int, kernel: int, pad: int, stride: int, ceil: bool) -> tuple[int, int]:
    """(Caffe's output size, the bottom/right pad that makes ONNX's floor give it)."""
    out = pool_out(size, kernel, pad, stride, ceil)
    end = (out - 1) * stride + kernel - size - pad
    if end < 0:  # floor of a span that is not a multiple of the stride: the remainder is dropped
        end = 0
    if (size + pad + end - kernel) // stride + 1 != out:
        raise ValueError("no pads express this pooling")
    return out, end


def _caffe_area(size: int, kernel: int, pad: int, stride: int, out: int) -> np.ndarray:
    """Per output position along one axis: the window length Caffe divides by (clipped to
    ``[-pad, size + pad)``)."""
    start = np.arange(out) * stride - pad
    return (np.minimum(start + kernel, size + pad) - start).astype(np.float64)


def _pool(b: _Builder, node: Node, ins, outs) -> None:
    p = node.layer.pooling_param
    shape = b.shape(node.bottoms[0])
    geo = pool_geometry(node.layer, shape[2:])
    avg = p.pool == p.AVE
    if p.pool not in (p.MAX, p.AVE):
        raise RebirthError(f"layer '{node.name}' (Pooling): STOCHASTIC pooling has no ONNX equivalent")
    if geo["global"]:
        b.add("GlobalAveragePool" if avg else "GlobalMaxPool", ins, outs, node.name)
        return
    dims = []
    for size, k, pad, s in zip(shape[2:], geo["kernel"], geo["pad"], geo["stride"]):
        try:
            dims.append(pool_pads(size, k, pad, s, geo["ceil"]))
        except ValueError:
            raise RebirthError(f"layer '{node.name}' (Pooling): its window geometry (kernel {k}, pad {pad}, stride {s} "
                               f"on {size}) has no ONNX equivalent") from None
    pads = list(geo["pad"]) + [end for _, end in dims]
    attrs = dict(kernel_shape=geo["kernel"], strides=geo["stride"], pads=pads, ceil_mode=0)
    if not avg:
        b.add("MaxPool", ins, outs, node.name, **attrs)
        return
    if not any(pads):
        b.add("AveragePool", ins, outs, node.name, **attrs)
        return
    # Padding made explicit (a zero Pad, then a pooling without pads): every engine then divides
    # by the whole kernel (engines differ on count_include_pad with asymmetric pads: MNN's
    # converter ignores it); a constant Mul turns that into Caffe's divisor where they differ.
    area = np.outer(*[_caffe_area(size, k, pad, s, out) for size, k, pad, s, (out, _)
                      in zip(shape[2:], geo["kernel"], geo["pad"], geo["stride"], dims)])
    ratio = (geo["kernel"][0] * geo["kernel"][1]) / area
    padded, pooled = b.temp(node.name, "padded"), b.temp(node.name, "sum")
    onnx_pads = [0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]]
    b.add("Pad", [ins[0], b.const(node.name, "pads", np.asarray(onnx_pads, np.int64))], [padded], node.name)
    attrs["pads"] = [0, 0, 0, 0]
    if np.all(ratio == 1):
        b.add("AveragePool", [padded], outs, node.name, **attrs)
        return
    b.add("AveragePool", [padded], [pooled], node.name, **attrs)
    b.add("Mul", [pooled, b.const(node.name, "area", ratio.astype(np.float32)[None, None])], outs, node.name)


def _lrn(b: _Builder, node: Node, ins, outs) -> None:
    p = node.layer.lrn_param
    if p.norm_region == p.ACROSS_CHANNELS:
        b.add("LRN", ins, outs, node.name, size=p.local_size, alpha=p.alpha, beta=p.beta, bias=p.k)
        return
    n, half = p.local_size, (p.local_size - 1) // 2
    sq, avg, scaled, powd = (b.temp(node.name, w) for w in ("sq", "avg", "scaled", "pow"))
    b.add("Mul", [ins[0], ins[0]], [sq], node.name)
    b.add("AveragePool", [sq], [avg], node.name, kernel_shape=[n, n], strides=[1, 1], pads=[half] * 4,
          count_include_pad=1)
    b.add("Mul", [avg, b.const(node.name, "alpha", np.float32(p.alpha))], [scaled], node.name)
    b.add("Add", [scaled, b.const(node.name, "one", np.float32(1.0))], [powd + "in"], node.name)
    b.add("Pow", [powd + "in", b.const(node.name, "beta", np.float32(p.beta))], [powd], node.name)
    b.add("Div", [ins[0], powd], outs, node.name)


def _ip(b: _Builder, node: Node, ins, outs) -> None:
    p = node.layer.inner_product_param
    shape = b.shape(node.bottoms[0])
    axis = canonical_axis(p.axis, len(shape))
    k = int(np.prod(shape[axis:]))
    w = b.blob(node, 0)
    w = w.reshape((k, p.num_output) if p.transpose else (p.num_output, k))
    flat = b.temp(node.name, "flat")
    b.add("Flatten", ins, [flat], node.name, axis=axis)
    inputs = [flat, b.const(node.name, "w", w)]
    if p.bias_term:
        inputs.append(b.const(node.name, "b", b.blob(node, 1).reshape(-1)))
    out_shape = b.shape(node.tops[0])
    gemm_out = outs[0] if axis == 1 else b.temp(node.name, "gemm")
    b.add("Gemm", inputs, [gemm_out], node.name, transB=0 if p.transpose else 1)
    if axis != 1:
        b.add("Reshape", [gemm_out, b.shape_const(node.name, out_shape)], outs, node.name)


def _bn(b: _Builder, node: Node, ins, outs) -> None:
    p = node.layer.batch_norm_param
    if p.HasField("use_global_stats") and not p.use_global_stats:
        raise RebirthError(f"layer '{node.name}' (BatchNorm): use_global_stats: false normalises by the batch's "
                           "own statistics, which an exported inference net cannot do")
    s = float(b.blob(node, 2).reshape(-1)[0])
    factor = 0.0 if s == 0 else 1.0 / s
    mean, var = b.blob(node, 0) * factor, b.blob(node, 1) * factor
    c = mean.size
    b.add("BatchNormalization", [ins[0], b.const(node.name, "gamma", np.ones(c, np.float32)),
                                 b.const(node.name, "beta", np.zeros(c, np.float32)),
                                 b.const(node.name, "mean", mean.reshape(-1)),
                                 b.const(node.name, "var", var.reshape(-1))],
          outs, node.name, epsilon=p.eps)


def _broadcast_shape(shape, axis: int, num_axes: int, ndim: int):
    return list(shape) + [1] * (ndim - axis - num_axes)


def _scale_like(b: _Builder, node: Node, ins, outs, param) -> tuple[str, int, int]:
    """(the factor tensor reshaped to broadcast, axis, num_axes) of a Scale/Bias layer."""
    shape = b.shape(node.bottoms[0])
    axis = canonical_axis(param.axis, len(shape))
    if len(ins) > 1:
        other = b.shape(node.bottoms[1])
        tgt = _broadcast_shape(other, axis, len(other), len(shape))
        name = b.temp(node.name, "bshape")
        b.add("Reshape", [ins[1], b.shape_const(node.name, tgt)], [name], node.name)
        return name, axis, len(other)
    num_axes = param.num_axes if param.num_axes >= 0 else len(shape) - axis
    w = b.blob(node, 0)
    broadcast = _broadcast_shape(shape[axis:axis + num_axes], axis, num_axes, len(shape))
    return b.const(node.name, "w", w.reshape(broadcast)), axis, num_axes


def _scale(b: _Builder, node: Node, ins, outs) -> None:
    p = node.layer.scale_param
    factor, axis, num_axes = _scale_like(b, node, ins, outs, p)
    if not p.bias_term:
        b.add("Mul", [ins[0], factor], outs, node.name)
        return
    shape = b.shape(node.bottoms[0])
    i = 1 if len(ins) == 1 else 0
    bias = b.blob(node, i).reshape(_broadcast_shape(shape[axis:axis + num_axes], axis, num_axes, len(shape)))
    tmp = b.temp(node.name, "scaled")
    b.add("Mul", [ins[0], factor], [tmp], node.name)
    b.add("Add", [tmp, b.const(node.name, "b", bias)], outs, node.name)


def _bias(b: _Builder, node: Node, ins, outs) -> None:
    factor, _, _ = _scale_like(b, node, ins, outs, node.layer.bias_param)
    b.add("Add", [ins[0], factor], outs, node.name)


def _eltwise(b: _Builder, node: Node, ins, outs) -> None:
    p = node.layer.eltwise_param
    if p.operation == p.PROD:
        op, terms = "Mul", list(ins)
    elif p.operation == p.MAX:
        op, terms = "Max", list(ins)
    else:
        op, terms = "Add", []
        coeffs = list(p.coeff) or [1.0] * len(ins)
        for i, (name, c) in enumerate(zip(ins, coeffs)):
            if c == 1.0:
                terms.append(name)
                continue
            t = b.temp(node.name, f"coeff{i}")
            b.add("Mul", [name, b.const(node.name, f"c{i}", np.float32(c))], [t], node.name)
            terms.append(t)
    if op == "Max" or len(terms) == 1:
        b.add("Max" if op == "Max" else "Identity", terms, outs, node.name)
        return
    acc = terms[0]
    for i, t in enumerate(terms[1:]):
        out = outs[0] if i == len(terms) - 2 else b.temp(node.name, "acc")
        b.add(op, [acc, t], [out], node.name)
        acc = out


def _power(b: _Builder, node: Node, ins, outs) -> None:
    p = node.layer.power_param
    x = ins[0]
    steps = []
    if p.scale != 1.0:
        steps.append(("Mul", "scale", p.scale))
    if p.shift != 0.0:
        steps.append(("Add", "shift", p.shift))
    if p.power != 1.0:
        steps.append(("Pow", "power", p.power))
    if not steps:
        b.add("Identity", [x], outs, node.name)
        return
    for i, (op, what, value) in enumerate(steps):
        out = outs[0] if i == len(steps) - 1 else b.temp(node.name, what)
        b.add(op, [x, b.const(node.name, what, np.float32(value))], [out], node.name)
        x = out


def _relu(b: _Builder, node: Node, ins, outs) -> None:
    slope = node.layer.relu_param.negative_slope
    if slope:
        b.add("LeakyRelu", ins, outs, node.name, alpha=slope)
    else:
        b.add("Relu", ins, outs, node.name)


def _prelu(b: _Builder, node: Node, ins, outs) -> None:
    slope = b.blob(node, 0).reshape(-1)
    ndim = len(b.shape(node.bottoms[0]))
    slope = slope.reshape([slope.size] + [1] * (ndim - 2)) if slope.size > 1 else slope.reshape([1] * (ndim - 1))
    b.add("PRelu", [ins[0], b.const(node.name, "slope", slope)], outs, node.name)


def _reshape_to_top(b: _Builder, node: Node, ins, outs) -> None:
    b.add("Reshape", [ins[0], b.shape_const(node.name, b.shape(node.tops[0]))], outs, node.name)


def _slice(b: _Builder, node: Node, ins, outs) -> None:
    shape = b.shape(node.bottoms[0])
    p = node.layer.slice_param
    axis = canonical_axis(p.slice_dim if p.HasField("slice_dim") else p.axis, len(shape))
    sizes = [b.shape(t)[axis] for t in node.tops]
    b.add("Split", [ins[0], b.const(node.name, "split", np.asarray(sizes, np.int64))], outs, node.name, axis=axis)


def _simple(op: str, **fixed):
    def write(b: _Builder, node: Node, ins, outs) -> None:
        b.add(op, ins, outs, node.name, **fixed)
    return write


def _concat(b: _Builder, node: Node, ins, outs) -> None:
    axis = canonical_axis(concat_axis(node.layer), len(b.shape(node.bottoms[0])))
    b.add("Concat", ins, outs, node.name, axis=axis)


def _softmax(b: _Builder, node: Node, ins, outs) -> None:
    axis = canonical_axis(node.layer.softmax_param.axis, len(b.shape(node.bottoms[0])))
    b.add("Softmax", ins, outs, node.name, axis=axis)


def _split(b: _Builder, node: Node, ins, outs) -> None:
    for i, out in enumerate(outs):
        b.add("Identity", ins, [out], node.name if i == 0 else b.temp(node.name, "split"))


def _clip(lo: str, hi: str | None = None, fixed: tuple[float, float] | None = None):
    def write(b: _Builder, node: Node, ins, outs) -> None:
        if fixed is not None:
            low, high = fixed
        else:
            p = node.layer.clip_param
            low, high = p.min, p.max
        b.add("Clip", [ins[0], b.const(node.name, "min", np.float32(low)), b.const(node.name, "max", np.float32(high))],
              outs, node.name)
    return write


def _elu(b: _Builder, node: Node, ins, outs) -> None:
    b.add("Elu", ins, outs, node.name, alpha=node.layer.elu_param.alpha)


def _permute(b: _Builder, node: Node, ins, outs) -> None:
    order = list(node.layer.permute_param.order)
    ndim = len(b.shape(node.bottoms[0]))
    order += [i for i in range(ndim) if i not in order]
    b.add("Transpose", ins, outs, node.name, perm=order)


WRITERS = {
    "Convolution": _conv, "Deconvolution": _conv, "DepthwiseConvolution": _conv, "ConvolutionDepthwise": _conv,
    "Pooling": _pool, "LRN": _lrn, "InnerProduct": _ip, "BatchNorm": _bn, "Scale": _scale, "Bias": _bias,
    "Eltwise": _eltwise, "Power": _power, "ReLU": _relu, "PReLU": _prelu, "ELU": _elu,
    "Sigmoid": _simple("Sigmoid"), "TanH": _simple("Tanh"), "AbsVal": _simple("Abs"), "BNLL": _simple("Softplus"),
    "Dropout": _simple("Identity"), "Split": _split, "Concat": _concat, "Softmax": _softmax,
    "Flatten": _reshape_to_top, "Reshape": _reshape_to_top, "Slice": _slice, "Permute": _permute,
    "Clip": _clip("min"), "ReLU6": _clip("min", fixed=(0.0, 6.0)),
}


def caffe_outputs(graph: Graph) -> list[tuple[str, int]]:
    """The blobs no layer reads (Caffe's net outputs), in the order their producers run."""
    consumed = {ref for node in graph.nodes for ref in node.bottoms}
    outs = []
    for node in graph.topological_order():
        if node.type in SKIP_TYPES and node.type != "Input":
            continue
        for ref in node.tops:
            if ref not in consumed and ref not in outs and node.type != "Input":
                outs.append(ref)
    return outs


def to_onnx(model: Model, batch: int | None = 1, extra_outputs: bool = False):
    """``model`` (net and weights) as an ``onnx.ModelProto`` at batch ``batch`` (None: the net's own),
    checked by ``onnx.checker`` and with shapes inferred. With ``extra_outputs`` every other tensor
    that carries a Caffe blob's final value is a graph output too (for ``export --verify``)."""
    graph = Graph(model.net, batch=batch)
    common.require_supported(model, graph, WRITERS, SKIP_TYPES, "ONNX")
    b = _Builder(model, graph)
    helper, TP = b.helper, b.onnx.TensorProto
    inputs = []
    for name in graph.input_blobs:
        shape = graph.version_shapes[(name, 0)]
        inputs.append(helper.make_tensor_value_info(name, TP.FLOAT, list(shape)))
    for node in graph.topological_order():
        if node.type in SKIP_TYPES:
            continue
        WRITERS[node.type](b, node, [b.tensor(r) for r in node.bottoms], [b.tensor(r) for r in node.tops])
    out_refs = caffe_outputs(graph)
    outputs = [helper.make_tensor_value_info(b.tensor(r), TP.FLOAT, list(b.shape(r))) for r in out_refs]
    if extra_outputs:
        have = {o.name for o in outputs} | set(graph.input_blobs)
        for node in graph.topological_order():
            for ref in node.tops:
                name = b.tensor(ref)
                if name == ref[0] and name not in have and node.type not in SKIP_TYPES:
                    have.add(name)
                    outputs.append(helper.make_tensor_value_info(name, TP.FLOAT, list(b.shape(ref))))
    proto = _checked_model(b, inputs, outputs, model)
    return proto


def _checked_model(b: _Builder, inputs, outputs, model: Model):
    """The ONNX model, after ``onnx.checker`` (full check) and strict shape inference passed on
    its skeleton (weights as typed graph inputs instead of their data: the same graph to check,
    without serialising hundreds of MB twice); the inferred shapes go into the real model."""
    helper, onnx = b.helper, b.onnx
    name = model.net.name or "net"
    opset = [helper.make_operatorsetid("", OPSET)]
    weights = [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in b.inits]
    skeleton = helper.make_model(helper.make_graph(b.nodes, name, inputs + weights, outputs),
                                 producer_name="deeprebirth", opset_imports=opset)
    skeleton.ir_version = IR_VERSION
    try:
        onnx.checker.check_model(skeleton, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(skeleton, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RebirthError(f"{model.source}: the ONNX model does not check: {first}") from None
    graph = helper.make_graph(b.nodes, name, inputs, outputs, b.inits, value_info=list(inferred.graph.value_info))
    proto = helper.make_model(graph, producer_name="deeprebirth", opset_imports=opset)
    proto.ir_version = IR_VERSION
    return proto
