"""Caffe's weight fillers (xavier, msra, constant, gaussian ...) applied to a layer's parameter shapes:
what Caffe would fill a layer with when a caffemodel lacks it."""
from __future__ import annotations

import numpy as np


def xavier(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Caffe's "xavier" filler (variance_norm FAN_IN): uniform in [-a, a], a = sqrt(3 / fan_in),
    with fan_in = count / shape[0]."""
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    a = np.sqrt(3.0 / max(1, fan_in))
    return rng.uniform(-a, a, size=shape).astype(np.float32)


def msra(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Caffe's "msra" filler (variance_norm FAN_IN): normal with std sqrt(2 / fan_in)."""
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return rng.normal(0.0, np.sqrt(2.0 / max(1, fan_in)), size=shape).astype(np.float32)


def _filled(filler, shape, rng: np.random.Generator, default) -> np.ndarray:
    """A blob from the layer's own FillerParameter when it names one Caffe has, else ``default``."""
    if filler is None or not filler.HasField("type"):
        return default(shape, rng)
    kind = filler.type
    if kind == "constant":
        return np.full(shape, filler.value, dtype=np.float32)
    if kind == "gaussian":
        return rng.normal(filler.mean, filler.std, size=shape).astype(np.float32)
    if kind == "uniform":
        return rng.uniform(filler.min, filler.max, size=shape).astype(np.float32)
    if kind == "xavier":
        return xavier(shape, rng)
    if kind == "msra":
        return msra(shape, rng)
    return default(shape, rng)


def _const(value: float):
    return lambda shape, rng: np.full(shape, value, dtype=np.float32)


def fresh(node, rng: np.random.Generator) -> list[np.ndarray]:
    """Weights a layer without trained ones starts from, as a training run would initialise it:
    the layer's own fillers where it names them, else msra for convolutions, Xavier for inner
    products, zero biases; BatchNorm as the identity (mean 0, variance 1, factor 1); Scale 1;
    PReLU 0.25 (Caffe's default); Normalize 1."""
    shapes = node.param_shapes
    layer = node.layer
    if node.type == "BatchNorm" and len(shapes) == 3:
        return [np.zeros(shapes[0], np.float32), np.ones(shapes[1], np.float32), np.ones(shapes[2], np.float32)]
    if node.type == "BN" and len(shapes) == 4:
        return [np.ones(shapes[0], np.float32), *(np.zeros(s, np.float32) for s in shapes[1:3]),
                np.ones(shapes[3], np.float32)]
    if node.type in ("Scale", "Normalize"):
        return [np.ones(shapes[0], np.float32), *(np.zeros(s, np.float32) for s in shapes[1:])]
    if node.type == "PReLU":
        return [np.full(shapes[0], 0.25, np.float32)]
    p = None
    if node.type == "InnerProduct":
        p, default = layer.inner_product_param, xavier
    elif layer.HasField("convolution_param") or node.kind == "tensor":
        p, default = layer.convolution_param, msra
    else:
        default = xavier
    out = []
    for i, shape in enumerate(shapes):
        if i == 0 and len(shape) > 1:
            out.append(_filled(p.weight_filler if p is not None else None, shape, rng, default))
        else:
            out.append(_filled(p.bias_filler if p is not None and i == 1 else None, shape, rng, _const(0.0)))
    return out
