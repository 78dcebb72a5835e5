"""Weights for a rewritten net: fresh (Xavier) weights for regenerated layers, the rest carried over."""
from __future__ import annotations

import zlib

import numpy as np

from deeprebirth.caffe import netio
from deeprebirth.graph.dag import Graph, Node
from deeprebirth.graph.fillers import xavier


def init_layer(node: Node, seed: int = 0) -> list[np.ndarray]:
    """Fresh weights for a regenerated layer: Xavier for >= 2-D blobs, zeros for biases. The
    generator is seeded by ``seed`` and the layer's name, so a layer gets the same weights whoever
    initialises it and in whatever order."""
    rng = np.random.default_rng([seed, zlib.crc32(node.name.encode("utf-8"))])
    return [xavier(s, rng) if len(s) > 1 else np.zeros(s, dtype=np.float32) for s in node.param_shapes]


def transplant(src: netio.Weights, graph: Graph, regenerated: set[str], seed: int = 0) -> netio.Weights:
    """Weights for ``graph``: every layer not regenerated keeps its arrays from ``src`` (same objects,
    bit for bit); regenerated layers, and layers ``src`` lacks, are initialised fresh."""
    out: netio.Weights = {}
    for node in graph.nodes:
        if not node.param_shapes:
            continue
        if node.name not in regenerated and node.name in src:
            out[node.name] = src[node.name]
        else:
            out[node.name] = init_layer(node, seed)
    return out
