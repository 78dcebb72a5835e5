"""Net-editing helpers shared by the rules: deleting layers, fresh weights for regenerated layers,
names for new layers and substructures, and the memory an edit would cost."""
from __future__ import annotations

from typing import Callable, Iterable

from deeprebirth.caffe import proto as pb
from deeprebirth.graph.dag import Graph, Node
from deeprebirth.graph.model import Model
from deeprebirth.transforms.transplant import init_layer

# ----------------------------------------------------------------------------------------------
# Layers and weights


def remove_layers(model: Model, names: Iterable[str]) -> None:
    """Delete the named layers from ``model.net`` (in place, keeping the others' order) and their
    weights."""
    names = set(names)
    for i in range(len(model.net.layer) - 1, -1, -1):
        if model.net.layer[i].name in names:
            del model.net.layer[i]
    if model.weights is not None:
        for name in names:
            model.weights.pop(name, None)


def regenerate(model: Model, node: Node, seed: int = 0) -> None:
    """Give a regenerated layer fresh weights (``transplant.init_layer``: Xavier, zero bias, seeded by
    ``seed`` and the layer's name) when the model has weights. ``node`` must carry the layer's new
    parameter shapes (a node of a Graph built after the edit, or one whose shapes did not change)."""
    if model.weights is not None and node.param_shapes:
        model.weights[node.name] = init_layer(node, seed)


def memory_growth(graph: Graph, model: Model, edit: Callable[["pb.NetParameter"], object]) -> int:
    """Bytes of blob memory an edit would add (negative: save), tried on a copy of the net."""
    trial = pb.NetParameter()
    trial.CopyFrom(model.net)
    edit(trial)
    return Graph(trial, batch=graph.batch, strict=False).memory_bytes - graph.memory_bytes


# ----------------------------------------------------------------------------------------------
# Names


def unique_name(name: str, taken: set[str]) -> str:
    """``name``, or ``name_2``, ``name_3``, ... if taken; the result is added to ``taken``."""
    out, i = name, 1
    while out in taken:
        i += 1
        out = f"{name}_{i}"
    taken.add(out)
    return out


def common_prefix(names: list[str]) -> str:
    """The longest string every name starts with."""
    prefix = names[0]
    for n in names[1:]:
        while not n.startswith(prefix):
            prefix = prefix[:-1]
    return prefix


def group_name(names: list[str], fallback: str) -> str:
    """The common prefix of a group's layer names, cut at a separator (``inception_3a``)."""
    return common_prefix(names).rstrip("/_-.") or fallback


def joined_name(names: list[str]) -> str:
    """``a/x`` + ``a/y`` -> ``a/x+y``; no common ``/`` prefix -> ``x+y``."""
    cut = common_prefix(names).rfind("/") + 1
    return names[0][:cut] + "+".join(n[cut:] for n in names)


def unit_names(heads: list[str], layer_names: set[str]) -> dict[str, str]:
    """Head layer name -> substructure name: the part before the first '/'.

    Heads that share the prefix share the name: a substructure is a unit of the net (GoogLeNet's
    ``inception_3b``), and names stay the same while its parts are rewritten one by one. The full
    name is kept when the prefix is another layer's name, or when every layer of the net shares
    one prefix (it names the net, not a unit)."""
    prefixes = {n.split("/", 1)[0] for n in layer_names}
    out = {}
    for h in heads:
        prefix = h.split("/", 1)[0]
        ok = prefix and len(prefixes) > 1 and (prefix == h or prefix not in layer_names)
        out[h] = prefix if ok else h
    return out
