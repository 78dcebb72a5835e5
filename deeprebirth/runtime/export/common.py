"""What every writer shares: the names of blob versions and a layer's weight arrays."""
from __future__ import annotations

import numpy as np

from deeprebirth.caffe import netio
from deeprebirth.errors import RebirthError
from deeprebirth.graph.dag import Graph, Node


class Names:
    """Tensor names of a graph's blob versions: an in-place chain writes versions 0, 1, ... of one
    Caffe blob; the last version keeps the blob's name (what Caffe shows after a pass), every
    earlier one is ``NAME#V``."""

    def __init__(self, graph: Graph):
        self.last: dict[str, int] = {}
        for node in graph.nodes:
            for name, v in node.tops:
                self.last[name] = max(v, self.last.get(name, 0))

    def __call__(self, ref) -> str:
        name, v = ref
        return name if v == self.last.get(name, 0) else f"{name}#{v}"


def weight(weights: netio.Weights, node: Node, i: int) -> np.ndarray:
    """Blob ``i`` of ``node``'s weights as float32; a one-line error when it is missing."""
    arrays = weights.get(node.name)
    if arrays is None or len(arrays) <= i:
        raise RebirthError(f"layer '{node.name}' ({node.type}) has no weights; export needs every layer's weights "
                           "({opt:weights})")
    return np.asarray(arrays[i], dtype=np.float32)


def require_supported(model, graph: Graph, writers: dict, skip: frozenset, fmt: str) -> None:
    """A one-line error naming the first layer whose type has no writer for ``fmt``."""
    bad = [n for n in graph.nodes if n.type not in writers and n.type not in skip]
    if bad:
        n = bad[0]
        raise RebirthError(f"{model.source}: layer '{n.name}': type '{n.type}' has no {fmt} translation "
                           f"(supported: {', '.join(sorted(writers))})")
