"""Weight operations shared by rules: initialisation of regenerated layers and transplanting."""
from __future__ import annotations

import zlib

import numpy as np

from . import io
from .graph import Graph, Node


def xavier(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Caffe's "xavier" filler (variance_norm FAN_IN): uniform in [-a, a], a = sqrt(3 / fan_in),
    with fan_in = count / shape[0]."""
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    a = np.sqrt(3.0 / max(1, fan_in))
    return rng.uniform(-a, a, size=shape).astype(np.float32)


def init_layer(node: Node, seed: int = 0) -> list[np.ndarray]:
    """Fresh weights for a regenerated layer: Xavier for >= 2-D blobs, zeros for biases. The
    generator is seeded by ``seed`` and the layer's name, so a layer gets the same weights whoever
    initialises it and in whatever order."""
    rng = np.random.default_rng([seed, zlib.crc32(node.name.encode("utf-8"))])
    return [xavier(s, rng) if len(s) > 1 else np.zeros(s, dtype=np.float32) for s in node.param_shapes]


def transplant(src: io.Weights, graph: Graph, regenerated: set[str], seed: int = 0) -> io.Weights:
    """Weights for ``graph``: every layer not regenerated keeps its arrays from ``src`` (same objects,
    bit for bit); regenerated layers, and layers ``src`` lacks, are initialised fresh."""
    out: io.Weights = {}
    for node in graph.nodes:
        if not node.param_shapes:
            continue
        if node.name not in regenerated and node.name in src:
            out[node.name] = src[node.name]
        else:
            out[node.name] = init_layer(node, seed)
    return out
