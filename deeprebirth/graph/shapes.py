"""Caffe's shape rules, one function per layer type (about 60: the upstream layers and the forks'
in proto/caffe.proto): a layer's top shapes, its parameter shapes and its multiply-accumulates from
its bottoms' shapes, with the settings Caffe CHECKs raised as one-line errors instead of aborts.

Shapes follow Caffe's own Reshape() code: convolutions round down, pooling rounds up (unless
``round_mode: FLOOR``) and drops a last window that starts in the padding. The DAG (``dag``) looks a
layer's rule up in ``SHAPE_FNS``; a type without one is a barrier there.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

from deeprebirth.caffe import proto as pb
from deeprebirth.errors import RebirthError
from deeprebirth.graph.geometry import (
    Shape,
    canonical_axis,
    concat_axis,
    conv_geometry,
    conv_out,
    pool_geometry,
    pool_out,
)
from deeprebirth.graph.kinds import DEPTHWISE_TYPES, LOSS_TYPES


def count(shape: Iterable[int]) -> int:
    """The number of values in a blob of ``shape``."""
    return int(math.prod(shape))


# ----------------------------------------------------------------------------------------------
# Axis helper of the shape functions (convolution/pooling geometry: geometry.py).


def _canon_axis(axis: int, ndim: int, layer: "pb.LayerParameter") -> int:
    a = canonical_axis(axis, ndim)
    if not 0 <= a < ndim:
        raise RebirthError(f"layer '{layer.name}' ({layer.type}): axis {axis} is out of range for a "
                           f"{ndim}-D input")
    return a


# ----------------------------------------------------------------------------------------------
# Shape functions: (graph, layer, bottom shapes) -> (top shapes, param shapes, macs). The graph is
# the Graph being built; a rule reads only its ``batch`` (the data layers' batch override).

ShapeFn = Callable[[Any, "pb.LayerParameter", list[Shape]], tuple[list[Shape], list[Shape], int]]
SHAPE_FNS: dict[str, ShapeFn] = {}


def shape_fn(*types: str):
    def register(fn: ShapeFn) -> ShapeFn:
        for t in types:
            SHAPE_FNS[t] = fn
        return fn
    return register


def _need_bottoms(layer, bottoms, n: int | None = None, at_least: int = 1):
    if (n is not None and len(bottoms) != n) or len(bottoms) < at_least:
        want = n if n is not None else f"at least {at_least}"
        raise RebirthError(f"layer '{layer.name}' ({layer.type}): expected {want} bottom(s), "
                           f"got {len(bottoms)}")


def _positive(layer, **values) -> None:
    """Caffe's CHECK_GT(x, 0) on layer settings, as a one-line error instead of an abort."""
    for name, value in values.items():
        bad = [v for v in (value if isinstance(value, (list, tuple)) else [value]) if not v > 0]
        if bad:
            raise RebirthError(f"layer '{layer.name}' ({layer.type}): {name} must be positive, got "
                               f"{bad[0] if not isinstance(value, (list, tuple)) else list(value)}")


@shape_fn("Convolution", "Deconvolution", *DEPTHWISE_TYPES)
def _conv(g, layer, bottoms):
    _need_bottoms(layer, bottoms, at_least=1)
    if len(layer.top) != len(bottoms):
        raise RebirthError(f"layer '{layer.name}' ({layer.type}): {len(bottoms)} bottom(s) but "
                           f"{len(layer.top)} top(s); Caffe needs one top per bottom")
    p = layer.convolution_param
    shape = bottoms[0]
    if any(b != shape for b in bottoms[1:]):
        raise RebirthError(f"layer '{layer.name}' ({layer.type}): all bottoms must have the same shape, got "
                           f"{[list(b) for b in bottoms]}")
    axis = _canon_axis(p.axis, len(shape), layer)
    n_sp = len(shape) - axis - 1
    geo = conv_geometry(layer, n_sp)
    if n_sp < 1 or any(k <= 0 for k in geo["kernel"]) or len(geo["kernel"]) != n_sp:
        raise RebirthError(f"layer '{layer.name}' ({layer.type}): kernel size must be given (positive) for "
                           f"{max(n_sp, 0)} spatial axes")
    for what in ("pad", "stride", "dilation"):
        if len(geo[what]) != n_sp:
            raise RebirthError(f"layer '{layer.name}' ({layer.type}): {what} must be given once or once per "
                               f"spatial axis ({n_sp}), got {len(geo[what])} values")
    _positive(layer, num_output=p.num_output, group=p.group, stride=geo["stride"], dilation=geo["dilation"])
    cin, group, cout = shape[axis], p.group, p.num_output
    if cin % group or cout % group:
        raise RebirthError(f"layer '{layer.name}' ({layer.type}): channels in {cin} and out {cout} "
                           f"must both be divisible by group {group}")
    if layer.type != "Deconvolution":
        spatial = [conv_out(s, k, pd, st, d) for s, k, pd, st, d in
                   zip(shape[axis + 1:], geo["kernel"], geo["pad"], geo["stride"], geo["dilation"])]
        weight = (cout, cin // group, *geo["kernel"])
    else:
        spatial = [st * (s - 1) + d * (k - 1) + 1 - 2 * pd for s, k, pd, st, d in
                   zip(shape[axis + 1:], geo["kernel"], geo["pad"], geo["stride"], geo["dilation"])]
        weight = (cin, cout // group, *geo["kernel"])
    if any(s <= 0 for s in spatial):
        raise RebirthError(f"layer '{layer.name}' ({layer.type}): output size {spatial} is not positive "
                           f"for input {list(shape)}")
    out = (*shape[:axis], cout, *spatial)
    params = [weight] + ([(cout,)] if p.bias_term else [])
    if layer.type != "Deconvolution":
        macs = count(out) * (cin // group) * count(geo["kernel"])
    else:
        macs = count(shape) * (cout // group) * count(geo["kernel"])
    return [out] * len(bottoms), params, macs * len(bottoms)


def _need_4d(layer, shape: Shape, what: str = "input") -> None:
    if len(shape) != 4:
        raise RebirthError(f"layer '{layer.name}' ({layer.type}): expected a 4-D {what}, got {list(shape)}")


@shape_fn("Pooling")
def _pool(g, layer, bottoms):
    _need_bottoms(layer, bottoms, n=1)
    shape = bottoms[0]
    _need_4d(layer, shape)
    geo = pool_geometry(layer, shape[2:])
    if any(k <= 0 for k in geo["kernel"]):
        raise RebirthError(f"layer '{layer.name}' (Pooling): kernel size must be given")
    _positive(layer, stride=geo["stride"])
    if geo["global"] and (any(geo["pad"]) or any(st != 1 for st in geo["stride"])):
        raise RebirthError(f"layer '{layer.name}' (Pooling): with global_pooling only pad 0 and stride 1 "
                           "are allowed")
    if any(geo["pad"]) and layer.pooling_param.pool == pb.PoolingParameter.STOCHASTIC:
        raise RebirthError(f"layer '{layer.name}' (Pooling): padding is implemented only for MAX and AVE pooling")
    if any(pd >= k for pd, k in zip(geo["pad"], geo["kernel"])):
        raise RebirthError(f"layer '{layer.name}' (Pooling): pad {geo['pad']} must be smaller than the "
                           f"kernel {geo['kernel']}")
    if len(layer.top) > (2 if layer.pooling_param.pool == pb.PoolingParameter.MAX else 1):
        raise RebirthError(f"layer '{layer.name}' (Pooling): too many tops ({len(layer.top)}); only MAX "
                           "pooling has a second (mask) top")
    hw = [pool_out(s, k, pd, st, geo["ceil"]) for s, k, pd, st in
          zip(shape[2:], geo["kernel"], geo["pad"], geo["stride"])]
    out = (*shape[:2], *hw)
    return [out] * max(1, len(layer.top)), [], count(out) * count(geo["kernel"])


@shape_fn("LRN")
def _lrn(g, layer, bottoms):
    _need_bottoms(layer, bottoms, n=1)
    p = layer.lrn_param
    if p.local_size % 2 != 1:
        raise RebirthError(f"layer '{layer.name}' (LRN): local_size must be odd, got {p.local_size}")
    size = p.local_size if p.norm_region == 0 else p.local_size ** 2
    return [bottoms[0]], [], count(bottoms[0]) * size


@shape_fn("ReLU", "ELU", "Sigmoid", "TanH", "AbsVal", "Power", "BNLL", "Exp", "Log", "Threshold",
          "Clip", "Swish", "Dropout", "MVN", "Softmax")
def _same(g, layer, bottoms):
    _need_bottoms(layer, bottoms, n=1)
    if layer.type == "Dropout":
        # Training draws a Bernoulli mask with p = 1 - dropout_ratio: caffe_rng_bernoulli CHECKs
        # 0 <= p <= 1 (a NaN fails too) and aborts the process at the first TRAIN step.
        ratio = layer.dropout_param.dropout_ratio
        if not 0.0 <= ratio <= 1.0:
            raise RebirthError(f"layer '{layer.name}' (Dropout): dropout_ratio must be in [0, 1], got {ratio}")
    ops = 0 if layer.type == "Dropout" else count(bottoms[0])
    return [bottoms[0]], [], ops


@shape_fn("PReLU")
def _prelu(g, layer, bottoms):
    _need_bottoms(layer, bottoms, n=1)
    shape = bottoms[0]
    channels = 1 if layer.prelu_param.channel_shared else (shape[1] if len(shape) > 1 else 1)
    return [shape], [(channels,)], count(shape)


@shape_fn("BatchNorm")
def _bn(g, layer, bottoms):
    _need_bottoms(layer, bottoms, n=1)
    shape = bottoms[0]
    channels = shape[1] if len(shape) > 1 else 1
    return [shape], [(channels,), (channels,), (1,)], 2 * count(shape)


def _scale_like_param_shape(layer, p, shape, bottoms) -> Shape:
    axis = _canon_axis(p.axis, len(shape), layer)
    if len(bottoms) > 1:
        return tuple(bottoms[1])
    end = len(shape) if p.num_axes == -1 else axis + p.num_axes
    if end > len(shape):
        raise RebirthError(f"layer '{layer.name}' ({layer.type}): num_axes {p.num_axes} from axis "
                           f"{p.axis} exceeds the input's {len(shape)} axes")
    return tuple(shape[axis:end])


@shape_fn("Scale")
def _scale(g, layer, bottoms):
    _need_bottoms(layer, bottoms, at_least=1)
    p = layer.scale_param
    shape = bottoms[0]
    pshape = _scale_like_param_shape(layer, p, shape, bottoms)
    params = [] if len(bottoms) > 1 else [pshape]
    if p.bias_term:
        params.append(pshape)
    return [shape], params, count(shape) * (2 if p.bias_term else 1)


@shape_fn("Bias")
def _bias(g, layer, bottoms):
    _need_bottoms(layer, bottoms, at_least=1)
    shape = bottoms[0]
    pshape = _scale_like_param_shape(layer, layer.bias_param, shape, bottoms)
    return [shape], ([] if len(bottoms) > 1 else [pshape]), count(shape)


@shape_fn("InnerProduct")
def _ip(g, layer, bottoms):
    _need_bottoms(layer, bottoms, n=1)
    p = layer.inner_product_param
    shape = bottoms[0]
    axis = _canon_axis(p.axis, len(shape), layer)
    k, n = count(shape[axis:]), p.num_output
    _positive(layer, num_output=n)
    weight = (k, n) if p.transpose else (n, k)
    params = [weight] + ([(n,)] if p.bias_term else [])
    return [(*shape[:axis], n)], params, count(shape[:axis]) * k * n


@shape_fn("Embed")
def _embed(g, layer, bottoms):
    _need_bottoms(layer, bottoms, n=1)
    p = layer.embed_param
    params = [(p.input_dim, p.num_output)] + ([(p.num_output,)] if p.bias_term else [])
    return [(*bottoms[0], p.num_output)], params, count(bottoms[0]) * p.num_output


@shape_fn("Eltwise")
def _eltwise(g, layer, bottoms):
    _need_bottoms(layer, bottoms, at_least=2)
    p = layer.eltwise_param
    if len(p.coeff) and len(p.coeff) != len(bottoms):
        raise RebirthError(f"layer '{layer.name}' (Eltwise): {len(p.coeff)} coefficients for {len(bottoms)} "
                           "bottoms (give one per bottom, or none)")
    if len(p.coeff) and p.operation != pb.EltwiseParameter.SUM:
        raise RebirthError(f"layer '{layer.name}' (Eltwise): coefficients are only for SUM")
    for b in bottoms[1:]:
        if b != bottoms[0]:
            raise RebirthError(f"layer '{layer.name}' (Eltwise): bottoms must have equal shapes, got "
                               f"{[list(s) for s in bottoms]}")
    return [bottoms[0]], [], count(bottoms[0]) * (len(bottoms) - 1)


@shape_fn("Concat")
def _concat(g, layer, bottoms):
    _need_bottoms(layer, bottoms, at_least=1)
    axis = _canon_axis(concat_axis(layer), len(bottoms[0]), layer)
    for b in bottoms[1:]:
        if len(b) != len(bottoms[0]) or any(x != y for i, (x, y) in enumerate(zip(b, bottoms[0])) if i != axis):
            raise RebirthError(f"layer '{layer.name}' (Concat): bottoms must agree except on axis {axis}, "
                               f"got {[list(s) for s in bottoms]}")
    out = list(bottoms[0])
    out[axis] = sum(b[axis] for b in bottoms)
    return [tuple(out)], [], 0


@shape_fn("Slice")
def _slice(g, layer, bottoms):
    _need_bottoms(layer, bottoms, n=1)
    p = layer.slice_param
    shape = bottoms[0]
    axis = _canon_axis(p.slice_dim if p.HasField("slice_dim") else p.axis, len(shape), layer)
    n_tops = len(layer.top)
    if len(p.slice_point):
        if len(p.slice_point) != n_tops - 1:
            raise RebirthError(f"layer '{layer.name}' (Slice): {len(p.slice_point)} slice points for "
                               f"{n_tops} tops")
        bounds = [0, *p.slice_point, shape[axis]]
        sizes = [b - a for a, b in zip(bounds, bounds[1:])]
    else:
        if shape[axis] % n_tops:
            raise RebirthError(f"layer '{layer.name}' (Slice): axis size {shape[axis]} does not split "
                               f"evenly into {n_tops} tops")
        sizes = [shape[axis] // n_tops] * n_tops
    if any(s <= 0 for s in sizes):
        raise RebirthError(f"layer '{layer.name}' (Slice): slice points {list(p.slice_point)} do not fit "
                           f"axis size {shape[axis]}")
    return [tuple(s if i == axis else d for i, d in enumerate(shape)) for s in sizes], [], 0


@shape_fn("Split")
def _split(g, layer, bottoms):
    _need_bottoms(layer, bottoms, n=1)
    if layer.bottom[0] in layer.top:   # SplitLayer::Reshape CHECKs top[i] != bottom[0]
        raise RebirthError(f"layer '{layer.name}' (Split): cannot compute in place (top '{layer.bottom[0]}' is "
                           "its bottom)")
    return [bottoms[0]] * len(layer.top), [], 0


@shape_fn("Flatten")
def _flatten(g, layer, bottoms):
    _need_bottoms(layer, bottoms, n=1)
    shape = bottoms[0]
    p = layer.flatten_param
    start = _canon_axis(p.axis, len(shape), layer)
    end = _canon_axis(p.end_axis, len(shape), layer)
    return [(*shape[:start], count(shape[start:end + 1]), *shape[end + 1:])], [], 0


@shape_fn("Reshape")
def _reshape(g, layer, bottoms):
    _need_bottoms(layer, bottoms, n=1)
    shape = bottoms[0]
    p = layer.reshape_param
    start = p.axis + len(shape) + 1 if p.axis < 0 else p.axis
    end = len(shape) if p.num_axes == -1 else start + p.num_axes
    if not 0 <= start <= end <= len(shape):
        raise RebirthError(f"layer '{layer.name}' (Reshape): axis {p.axis}, num_axes {p.num_axes} do not "
                           f"fit a {len(shape)}-D input")
    dims = []
    for i, d in enumerate(p.shape.dim):
        dims.append(shape[start + i] if d == 0 else d)
    new = [*shape[:start], *dims, *shape[end:]]
    if sum(d == -1 for d in new) > 1:
        raise RebirthError(f"layer '{layer.name}' (Reshape): at most one -1 dimension")
    if -1 in new:
        known = count(d for d in new if d != -1)
        if known == 0 or count(shape) % known:
            raise RebirthError(f"layer '{layer.name}' (Reshape): cannot infer -1 for {list(shape)} -> {dims}")
        new[new.index(-1)] = count(shape) // known
    if count(new) != count(shape):
        raise RebirthError(f"layer '{layer.name}' (Reshape): {list(shape)} has {count(shape)} values, "
                           f"the new shape {new} has {count(new)}")
    return [tuple(new)], [], 0


@shape_fn("Crop")
def _crop(g, layer, bottoms):
    _need_bottoms(layer, bottoms, n=2)
    axis = _canon_axis(layer.crop_param.axis, len(bottoms[0]), layer)
    offsets = list(layer.crop_param.offset)
    for i in range(axis, len(bottoms[0])):
        off = 0 if not offsets else (offsets[0] if len(offsets) == 1 else offsets[i - axis])
        if bottoms[0][i] - off < bottoms[1][i]:
            raise RebirthError(f"layer '{layer.name}' (Crop): crop of axis {i} is out of bounds: size "
                               f"{bottoms[0][i]}, offset {off}, wanted {bottoms[1][i]}")
    return [(*bottoms[0][:axis], *bottoms[1][axis:])], [], 0


@shape_fn("Tile")
def _tile(g, layer, bottoms):
    _need_bottoms(layer, bottoms, n=1)
    shape = list(bottoms[0])
    axis = _canon_axis(layer.tile_param.axis, len(shape), layer)
    shape[axis] *= layer.tile_param.tiles
    return [tuple(shape)], [], 0


@shape_fn("Reduction")
def _reduction(g, layer, bottoms):
    _need_bottoms(layer, bottoms, n=1)
    axis = _canon_axis(layer.reduction_param.axis, len(bottoms[0]), layer)
    return [tuple(bottoms[0][:axis])], [], count(bottoms[0])


@shape_fn("ArgMax")
def _argmax(g, layer, bottoms):
    _need_bottoms(layer, bottoms, n=1)
    p = layer.argmax_param
    shape = list(bottoms[0])
    if p.HasField("axis"):
        shape[_canon_axis(p.axis, len(shape), layer)] = p.top_k
    else:
        shape = [shape[0], 2 if p.out_max_val else 1, p.top_k] + [1] * max(0, len(shape) - 3)
    return [tuple(shape)], [], count(bottoms[0])


@shape_fn("Silence")
def _silence(g, layer, bottoms):
    return [], [], 0


@shape_fn(*LOSS_TYPES)
def _loss(g, layer, bottoms):
    _need_bottoms(layer, bottoms, at_least=1)
    tops: list[Shape] = [()]
    if len(layer.top) > 1:  # SoftmaxWithLoss can expose its probabilities
        tops.append(bottoms[0])
    return tops, ([(1,)] if layer.type == "InfogainLoss" and len(bottoms) < 3 else []), count(bottoms[0])


@shape_fn("Accuracy")
def _accuracy(g, layer, bottoms):
    _need_bottoms(layer, bottoms, n=2)
    tops: list[Shape] = [()]
    if len(layer.top) > 1:
        axis = _canon_axis(layer.accuracy_param.axis, len(bottoms[0]), layer)
        tops.append((bottoms[0][axis],))
    return tops, [], count(bottoms[0])


@shape_fn("Parameter")
def _parameter(g, layer, bottoms):
    shape = tuple(int(d) for d in layer.parameter_param.shape.dim)
    return [shape], [shape], 0


# Fork layers (see proto/caffe.proto's header for which fork each comes from). Shapes follow each
# fork's Reshape(); settings its LayerSetUp CHECKs are checked here.


@shape_fn("ReLU6", "HardSigmoid", "HardSwish")
def _same_activation(g, layer, bottoms):
    _need_bottoms(layer, bottoms, n=1)
    return [bottoms[0]], [], count(bottoms[0])


@shape_fn("BN")
def _bn_fork(g, layer, bottoms):
    """brocolli-caffe's BN: slope, bias, mean, variance, each of shape (1, C, 1, 1)."""
    _need_bottoms(layer, bottoms, n=1)
    shape = bottoms[0]
    if len(shape) < 2:
        raise RebirthError(f"layer '{layer.name}' (BN): expected an N x C x ... input, got {list(shape)}")
    return [shape], [(1, shape[1], 1, 1)] * 4, 2 * count(shape)


@shape_fn("Normalize")
def _normalize(g, layer, bottoms):
    """SSD's L2 normalisation (across channels, or channels and space), then a learned scale: one
    value (a 0-d blob, ``channel_shared``) or one per channel."""
    _need_bottoms(layer, bottoms, n=1)
    shape = bottoms[0]
    if len(shape) < 2:
        raise RebirthError(f"layer '{layer.name}' (Normalize): needs at least a 2-D input, got {list(shape)}")
    scale: Shape = () if layer.norm_param.channel_shared else (shape[1],)
    return [shape], [scale], 3 * count(shape)


@shape_fn("Permute")
def _permute(g, layer, bottoms):
    """SSD's Permute: the axes in ``order``, then the axes it does not name, in their order."""
    _need_bottoms(layer, bottoms, n=1)
    shape = bottoms[0]
    order = list(layer.permute_param.order)
    if any(o >= len(shape) for o in order):
        raise RebirthError(f"layer '{layer.name}' (Permute): order {order} names an axis beyond the input's "
                           f"{len(shape)} axes")
    if len(set(order)) != len(order):
        raise RebirthError(f"layer '{layer.name}' (Permute): order {order} repeats an axis")
    order += [i for i in range(len(shape)) if i not in order]
    return [tuple(shape[i] for i in order)], [], 0


def _prior_count(layer) -> int:
    """Priors per location, as SSD's PriorBoxLayer::LayerSetUp counts them (aspect ratio 1 always;
    each new ratio, and with ``flip`` its inverse; one more per max_size)."""
    p = layer.prior_box_param
    if not len(p.min_size):
        raise RebirthError(f"layer '{layer.name}' (PriorBox): min_size must be given")
    _positive(layer, min_size=list(p.min_size))
    ratios = [1.0]
    for ar in p.aspect_ratio:
        if not any(abs(ar - r) < 1e-6 for r in ratios):
            ratios.append(ar)
            if p.flip:
                ratios.append(1.0 / ar if ar else math.inf)
    n = len(ratios) * len(p.min_size)
    if len(p.max_size):
        if len(p.max_size) != len(p.min_size):
            raise RebirthError(f"layer '{layer.name}' (PriorBox): {len(p.max_size)} max_size values for "
                               f"{len(p.min_size)} min_size values")
        if any(mx <= mn for mx, mn in zip(p.max_size, p.min_size)):
            raise RebirthError(f"layer '{layer.name}' (PriorBox): max_size must be greater than min_size")
        n += len(p.max_size)
    if len(p.variance) > 1 and len(p.variance) != 4:
        raise RebirthError(f"layer '{layer.name}' (PriorBox): give 1 or 4 variance values, got {len(p.variance)}")
    _positive(layer, variance=list(p.variance))
    return n


@shape_fn("PriorBox")
def _prior_box(g, layer, bottoms):
    """Top (1, 2, H * W * priors * 4): the boxes, then their variances."""
    _need_bottoms(layer, bottoms, n=2)
    shape = bottoms[0]
    _need_4d(layer, shape, "feature map")
    return [(1, 2, shape[2] * shape[3] * _prior_count(layer) * 4)], [], 0


@shape_fn("DetectionOutput")
def _detection_output(g, layer, bottoms):
    """Top (1, 1, kept, 7), with kept set to 1 at reshape time (known only after NMS)."""
    _need_bottoms(layer, bottoms, at_least=3)
    p = layer.detection_output_param
    if not p.HasField("num_classes"):
        raise RebirthError(f"layer '{layer.name}' (DetectionOutput): num_classes must be given")
    loc, conf, prior = bottoms[:3]
    if loc[0] != conf[0]:
        raise RebirthError(f"layer '{layer.name}' (DetectionOutput): location batch {loc[0]} differs from "
                           f"confidence batch {conf[0]}")
    if len(prior) < 3 or len(loc) < 2 or len(conf) < 2:
        raise RebirthError(f"layer '{layer.name}' (DetectionOutput): expected location, confidence and "
                           "prior blobs")
    priors = prior[2] // 4
    loc_classes = 1 if p.share_location else p.num_classes
    if priors * loc_classes * 4 != loc[1] or priors * p.num_classes != conf[1]:
        raise RebirthError(f"layer '{layer.name}' (DetectionOutput): {priors} priors do not match "
                           f"{loc[1]} location and {conf[1]} confidence values for {p.num_classes} classes")
    return [(1, 1, 1, 7)], [], 0


@shape_fn("Upsample")
def _upsample(g, layer, bottoms):
    """brocolli-caffe's nearest-neighbour Upsample: the last 2 (dims_num 4) or 1 (dims_num 3) axes
    times ``scale``."""
    _need_bottoms(layer, bottoms, n=1)
    p = layer.upsample_param
    shape = list(bottoms[0])
    axes = {4: 2, 3: 1}.get(p.dims_num)
    if axes is None or len(shape) < axes:
        raise RebirthError(f"layer '{layer.name}' (Upsample): dims_num must be 3 or 4, got {p.dims_num}")
    _positive(layer, scale=p.scale)
    for i in range(len(shape) - axes, len(shape)):
        shape[i] *= p.scale
    return [tuple(shape)], [], count(shape)


@shape_fn("Interp")
def _interp(g, layer, bottoms):
    """DeepLab v2 / PSPNet bilinear Interp: the size of a second bottom, or height/width, or the padded
    input shrunk and/or zoomed (``(s - 1) / shrink + 1``, then ``s + (s - 1) * (zoom - 1)``)."""
    _need_bottoms(layer, bottoms, at_least=1)
    shape = bottoms[0]
    _need_4d(layer, shape)
    p = layer.interp_param
    h, w = shape[2] + p.pad_beg + p.pad_end, shape[3] + p.pad_beg + p.pad_end
    if len(bottoms) > 1:
        h, w = bottoms[1][2], bottoms[1][3]
    elif p.HasField("height") or p.HasField("width"):
        h, w = p.height, p.width
    else:
        shrink, zoom = p.shrink_factor, p.zoom_factor
        _positive(layer, shrink_factor=shrink, zoom_factor=zoom)
        if p.HasField("shrink_factor"):
            h, w = (h - 1) // shrink + 1, (w - 1) // shrink + 1
        if p.HasField("zoom_factor"):
            h, w = h + (h - 1) * (zoom - 1), w + (w - 1) * (zoom - 1)
    _positive(layer, height=h, width=w)
    out = (*shape[:2], h, w)
    return [out], [], 4 * count(out)


@shape_fn("ShuffleChannel")
def _shuffle_channel(g, layer, bottoms):
    """ShuffleNet's channel shuffle: same shape; ``group`` must divide the channels."""
    _need_bottoms(layer, bottoms, n=1)
    shape = bottoms[0]
    group = layer.shuffle_channel_param.group
    _positive(layer, group=group)
    if len(shape) < 2 or shape[1] % group:
        raise RebirthError(f"layer '{layer.name}' (ShuffleChannel): group {group} does not divide the "
                           f"channels of {list(shape)}")
    return [shape], [], 0


@shape_fn("PixelShuffle")
def _pixel_shuffle(g, layer, bottoms):
    """brocolli-caffe's PixelShuffle: (N, C, H, W) -> (N, C / r^2, H r, W r)."""
    _need_bottoms(layer, bottoms, n=1)
    shape = list(bottoms[0])
    r = layer.pixelshuffle_param.upscale_factor
    _positive(layer, upscale_factor=r)
    if len(shape) < 3 or shape[-3] % (r * r):
        raise RebirthError(f"layer '{layer.name}' (PixelShuffle): channels of {list(shape)} are not a "
                           f"multiple of upscale_factor^2 = {r * r}")
    shape[-3] //= r * r
    shape[-2] *= r
    shape[-1] *= r
    return [tuple(shape)], [], 0


# Data layers: their shapes come from parameters (and a batch override).


def _batch(g, n: int) -> int:
    return g.batch if g.batch else n


@shape_fn("Input")
def _input(g, layer, bottoms):
    shapes = [tuple(int(d) for d in s.dim) for s in layer.input_param.shape]
    if len(shapes) == 1:
        shapes = shapes * len(layer.top)
    if len(shapes) != len(layer.top):
        raise RebirthError(f"layer '{layer.name}' (Input): {len(layer.top)} tops but "
                           f"{len(layer.input_param.shape)} shapes")
    return [(_batch(g, s[0]), *s[1:]) if s else s for s in shapes], [], 0


def _image_tops(g, layer, n, c, h, w):
    tops = [(_batch(g, n), c, h, w)]
    if len(layer.top) > 1:
        tops.append((_batch(g, n),))
    return tops, [], 0


@shape_fn("Data", "AnnotatedData")
def _data(g, layer, bottoms):
    crop = layer.transform_param.crop_size
    if not crop:
        raise RebirthError(f"layer '{layer.name}' ({layer.type}): its image size comes from the database; "
                           "give the deploy prototxt (its Input layer has the shape), or set transform_param.crop_size")
    return _image_tops(g, layer, layer.data_param.batch_size, 3, crop, crop)


@shape_fn("ImageData")
def _image_data(g, layer, bottoms):
    p = layer.image_data_param
    c = 3 if p.is_color else 1
    crop = layer.transform_param.crop_size
    if crop:
        h = w = crop
    elif p.new_height and p.new_width:
        h, w = p.new_height, p.new_width
    else:
        raise RebirthError(f"layer '{layer.name}' (ImageData): its image size comes from the files; "
                           "give the deploy prototxt (its Input layer has the shape), or set new_height/new_width "
                           "or crop_size")
    return _image_tops(g, layer, p.batch_size, c, h, w)


@shape_fn("WindowData")
def _window_data(g, layer, bottoms):
    crop = layer.transform_param.crop_size or layer.window_data_param.crop_size
    if not crop:
        raise RebirthError(f"layer '{layer.name}' (WindowData): set crop_size")
    return _image_tops(g, layer, layer.window_data_param.batch_size, 3, crop, crop)


@shape_fn("MemoryData")
def _memory_data(g, layer, bottoms):
    p = layer.memory_data_param
    return _image_tops(g, layer, p.batch_size, p.channels, p.height, p.width)


@shape_fn("DummyData")
def _dummy(g, layer, bottoms):
    p = layer.dummy_data_param
    if len(p.shape):
        shapes = [tuple(int(d) for d in s.dim) for s in p.shape]
    else:
        shapes = [tuple(int(x) for x in dims) for dims in zip(p.num, p.channels, p.height, p.width)]
    if len(shapes) == 1:
        shapes = shapes * len(layer.top)
    return [(_batch(g, s[0]), *s[1:]) for s in shapes], [], 0


# ----------------------------------------------------------------------------------------------
# Caffe's limits on any blob


INT_MAX = 2 ** 31 - 1


def check_blob(layer: "pb.LayerParameter", what: str, shape: Shape | None) -> None:
    """Caffe's Blob::Reshape CHECKs on a blob of ``layer`` (``what``: a top's name or "parameter"): no
    negative dimension, at most INT_MAX values."""
    if shape is None:
        return
    if any(d < 0 for d in shape):
        raise RebirthError(f"layer '{layer.name}' ({layer.type}): {what} blob would have the negative shape "
                           f"{list(shape)}")
    if count(shape) > INT_MAX:
        raise RebirthError(f"layer '{layer.name}' ({layer.type}): {what} blob would hold {count(shape)} values "
                           f"({list(shape)}), more than Caffe's limit of {INT_MAX}")
