"""What a net costs: the memory Caffe allocates for its blobs, the totals of its layers (parameters,
multiply-accumulates, tensor vs non-tensor) and the fitted cost of one more layer in MACs.

A layer's own MACs come with its shapes (``shapes``: each shape rule counts them); this module adds
them up over a graph (``dag.Graph``, read through its ``nodes`` and ``shapes``)."""
from __future__ import annotations

from typing import Iterable

from deeprebirth.graph.geometry import Shape
from deeprebirth.graph.shapes import count

# A layer's fixed cost in Caffe on a CPU, in multiply-accumulates: a line fitted to the convolutions'
# times of GoogLeNet-Slim and Slim-Tucker on Fashion-MNIST (`rebirth bench --layers`, one BLAS thread)
# gives 1.7-3.2 us a layer plus 0.05-0.09 ns a MAC, so one layer is worth 20,000-50,000 MACs.
# Used to predict whether a rewrite that adds or removes layers is faster (tucker --time, merge_concat_1x1).
LAYER_COST_MACS = 30_000
# Layers whose tops share their bottom's memory (Forward calls ShareData): not counted as memory.
SHARING_TYPES = frozenset({"Split", "Flatten", "Reshape"})
FLOAT_BYTES = 4


def blob_bytes(shapes: Iterable[Shape | None]) -> int:
    """Bytes of float blobs of ``shapes`` (unknown shapes count nothing)."""
    return sum(count(s) * FLOAT_BYTES for s in shapes if s is not None)


def memory_bytes(graph) -> int:
    """Bytes of the distinct blobs Caffe allocates for ``graph`` (in-place tops reuse a blob; Split,
    Flatten and Reshape tops share their bottom's memory)."""
    shared = {t[0] for n in graph.nodes if n.type in SHARING_TYPES for t in n.tops}
    return blob_bytes(shape for name, shape in graph.shapes.items() if name not in shared)


def totals(graph) -> dict[str, int | float]:
    """The net's layers, parameters, MACs and memory, with the tensor / non-tensor split."""
    nodes = graph.nodes
    macs = sum(n.macs for n in nodes)
    nt_macs = sum(n.macs for n in nodes if n.kind == "non-tensor")
    return {
        "layers": len(nodes),
        "tensor_layers": sum(n.kind == "tensor" for n in nodes),
        "non_tensor_layers": sum(n.kind == "non-tensor" for n in nodes),
        "params": sum(n.params for n in nodes),
        "macs": macs,
        "non_tensor_macs": nt_macs,
        "non_tensor_mac_percent": (100.0 * nt_macs / macs) if macs else 0.0,
        "memory_bytes": memory_bytes(graph),
    }
