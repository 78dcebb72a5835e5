"""Streamline slimming (paper, "Streamline Slimming"): a tensor layer and the non-tensor layers that
follow it become one slim layer.

A chain is a tensor layer followed, through element-wise layers, by non-tensor layers with a single
consumer each (``streamline_chains``). In it:

* Pooling is removed and its stride multiplied into the convolution's. Caffe pools round up and
  convolutions round down, so the new padding is chosen so that the slim convolution's output has
  exactly the pooled size (the one closest to the old receptive-field alignment). The convolution
  is *regenerated*: Xavier weights, re-learned by fine-tuning. When no padding gives the pooled
  size (AlexNet's conv1: 55 -> 27 needs stride 8 on 227, which gives 28 at best), or the pooling
  is global, or a stride-1 pooling is wider than the kernel that would absorb it, the pooling is
  kept, with a note.
* LRN and Dropout are pruned; the tensor layer keeps its weights (not exact: fine-tune).
* Element-wise activations (ReLU, ...) are kept, now applied to the slim layer's output.
* BatchNorm/Scale/Bias belong to the exact ``fold_bn`` rule, which runs first; a chain that still
  holds one is left alone with a note.

The blob downstream layers read (the chain's last top) keeps its name. A chain whose only
removable layer is Dropout is left alone: Dropout is the identity at inference, so pruning it
gains nothing and would only drop regularisation from fine-tuning.

Option ``absorb_pooling=False`` keeps every pooling (the paper's AlexNet experiment, Table 7:
"conv1+norm1 -> conv1"); the default follows the method section and the GoogLeNet experiment
(Tables 3-4: conv1 = conv1/7x7_s2 + pool1 + norm1).

Substructures are named after the head layer: the part of its name before the first '/'
(GoogLeNet ``conv1/7x7_s2`` -> ``conv1``, ``conv2/3x3`` -> ``conv2``; see ``edit.unit_names``).
"""
from __future__ import annotations

from deeprebirth.graph.dag import Graph, Node
from deeprebirth.graph.geometry import (
    choose_pad,
    conv_geometry,
    fmt,
    pool_geometry,
    set_conv_stride_pad,
    stride_one_too_wide,
)
from deeprebirth.graph.kinds import ELEMENTWISE
from deeprebirth.graph.model import Model
from deeprebirth.transforms.edit import regenerate, remove_layers, unit_names
from deeprebirth.transforms.rules.base import Change, Match, Rule

POOL = "Pooling"
PRUNED = frozenset({"LRN", "Dropout"})
FOLDED = frozenset({"BatchNorm", "Scale", "Bias"})
REMOVABLE = frozenset({POOL}) | PRUNED | FOLDED


def streamline_chains(graph: Graph) -> list[dict]:
    """A tensor layer followed by non-tensor layers it could absorb (through in-place activations):
    each next layer is the only reader of the one before; trailing activations are left out."""
    out = []
    for node in graph.nodes:
        if node.kind != "tensor" or len(node.tops) != 1:
            continue
        chain: list[Node] = []
        ref = node.tops[0]
        while True:
            users = graph.consumers_of(ref)
            if len(users) != 1:
                break
            nxt = users[0]
            if nxt.kind == "tensor" or len(nxt.bottoms) != 1 or len(nxt.tops) != 1 or \
                    nxt.type not in (REMOVABLE | ELEMENTWISE):
                break
            chain.append(nxt)
            ref = nxt.tops[0]
        if any(n.type in REMOVABLE for n in chain):
            while chain and chain[-1].type not in REMOVABLE:
                chain.pop()  # trailing activations are not part of the substructure
            out.append({"name": node.name, "head": node.name,
                        "layers": [node.name] + [n.name for n in chain],
                        "types": [node.type] + [n.type for n in chain]})
    return out


# ----------------------------------------------------------------------------------------------


class StreamlineRule(Rule):
    name = "streamline"
    types = REMOVABLE   # a chain holds at least one of them
    exact = False
    default = True
    order = 30
    after = ("fold_bn",)   # BatchNorm/Scale/Bias in a chain must be folded first
    absorbs_pooling = True
    keep_pooling_options = {"absorb_pooling": False}

    def __init__(self, absorb_pooling: bool = True):
        self.absorb_pooling = absorb_pooling

    # -- matching ---------------------------------------------------------------------------
    def match(self, graph: Graph) -> list[Match]:
        chains = []
        for c in streamline_chains(graph):
            kinds = set(c["types"][1:]) & REMOVABLE
            if kinds <= FOLDED:
                continue  # BatchNorm/Scale/Bias only: the fold_bn rule's business
            if not self.absorb_pooling and not (kinds - {POOL}):
                continue  # nothing but pooling, which is kept
            chains.append(c)
        names = unit_names([c["head"] for c in chains], set(graph.by_name))
        return [Match(self.name, names[c["head"]], list(c["layers"]), {"head": c["head"]}) for c in chains]

    def guards(self, graph: Graph, match: Match, model: Model) -> str | None:
        plan = self.plan(graph, match)
        if isinstance(plan, str) and model.weights is not None:     # the hint asks for the fold only
            plan = plan.replace("slim with {opt:weights} and {opt:only}", "slim with {opt:only}")
        return plan if isinstance(plan, str) else None

    # -- planning ---------------------------------------------------------------------------
    def plan(self, graph: Graph, match: Match) -> dict | str:
        """What the rewrite does, or a note saying why the chain is left alone."""
        head = graph.node(match.data["head"])
        chain = [graph.node(n) for n in match.layers[1:]]
        folded = [n for n in chain if n.type in FOLDED]
        if folded:
            return (f"{folded[0].type} '{folded[0].name}' sits between '{head.name}' and the layers to slim: "
                    f"it must be folded into '{head.name}' first (rule fold_bn): slim with {{opt:weights}} and "
                    f"{{opt:only}} {','.join(dict.fromkeys([head.name, match.name]))}")
        pools = [n for n in chain if n.type == POOL]
        notes: list[str] = []
        geometry = None
        if pools and self.absorb_pooling:
            geometry = self._absorb(graph, head, pools, chain[-1])
            if isinstance(geometry, str):
                notes.append(f"pooling kept: {geometry}")
                geometry = None
        elif pools:
            notes.append("pooling kept (absorb_pooling off)")
        keep_pools = geometry is None
        removed = [n for n in chain if n.type in PRUNED or (n.type == POOL and not keep_pools)]
        if not removed:
            return notes[0] if notes else f"'{head.name}': nothing to slim"
        if all(n.type == "Dropout" for n in removed):
            return (f"only Dropout to remove after '{head.name}': it is the identity at inference and "
                    "regularises fine-tuning, so it is kept")
        kept = [head] + [n for n in chain if n not in removed]
        return {"head": head, "removed": removed, "kept": kept, "last": chain[-1],
                "geometry": geometry, "notes": notes}

    def _absorb(self, graph: Graph, head: Node, pools: list[Node], last: Node) -> dict | str:
        """New stride and pad for ``head`` so that it replaces ``pools``; or why it cannot."""
        if head.type != "Convolution":
            return f"'{head.name}' is a {head.type}, only a Convolution can take a pooling's stride"
        in_shape = graph.version_shapes.get(head.bottoms[0])
        out_shape = graph.version_shapes.get(last.tops[0])
        if in_shape is None or out_shape is None:
            return f"the shapes around '{head.name}' are unknown"
        if len(in_shape) != 4 or len(out_shape) != 4 or head.layer.convolution_param.axis not in (1, -3):
            return f"'{head.name}' is not a 2-D convolution over NCHW"
        geo = conv_geometry(head.layer, 2)
        kernel, dil = geo["kernel"], geo["dilation"]
        extent = [d * (k - 1) + 1 for k, d in zip(kernel, dil)]
        stride = list(geo["stride"])
        offset = [(e - 1) / 2 - p for e, p in zip(extent, geo["pad"])]  # centre of output 0, input coords
        for pool in pools:
            pshape = graph.version_shapes.get(pool.bottoms[0])
            pg = pool_geometry(pool.layer, pshape[2:] if pshape else None) if pshape else None
            if pg is None:
                return f"the input shape of '{pool.name}' is unknown"
            if pg["global"]:
                return f"'{pool.name}' is a global pooling"
            if stride_one_too_wide(pg, extent):
                return (f"'{pool.name}' has stride 1 and a {fmt(pg['kernel'])} window, wider than "
                        f"'{head.name}''s {fmt(kernel)} kernel")
            for ax in range(2):
                offset[ax] += stride[ax] * ((pg["kernel"][ax] - 1) / 2 - pg["pad"][ax])
                stride[ax] *= pg["stride"][ax]
        pad = []
        for ax in range(2):
            ideal = (extent[ax] - 1) / 2 - offset[ax]
            p = choose_pad(in_shape[2 + ax], kernel[ax], stride[ax], out_shape[2 + ax], ideal, dil[ax])
            if p is None:
                return (f"no padding makes '{head.name}' with stride {stride[ax]} turn {in_shape[2 + ax]} "
                        f"into the pooled size {out_shape[2 + ax]}")
            pad.append(p)
        return {"stride": stride, "pad": pad, "old_stride": list(geo["stride"]), "old_pad": list(geo["pad"])}

    # -- rewriting --------------------------------------------------------------------------
    def rewrite(self, model: Model, graph: Graph, match: Match) -> Change:
        plan = self.plan(graph, match)
        assert not isinstance(plan, str), f"rewrite of a match the guards refuse: {plan}"
        head, removed, kept = plan["head"], plan["removed"], plan["kept"]
        layers = {layer.name: layer for layer in model.net.layer}
        # Blob names: the last kept layer writes the chain's last top (what downstream reads);
        # walking back, an in-place layer's bottom is its top, otherwise the previous layer keeps
        # its own top name.
        final = plan["last"].layer.top[0]
        tops: list[str] = [""] * len(kept)
        current = final
        for i in range(len(kept) - 1, -1, -1):
            tops[i] = current
            if i and not kept[i].in_place:
                current = kept[i - 1].layer.top[0]
        for i, node in enumerate(kept):
            layer = layers[node.name]
            layer.top[0] = tops[i]
            if i:
                layer.bottom[0] = tops[i - 1]
        change = Change(self.name, match.name, removed=[n.name for n in removed], exact=False,
                        notes=list(plan["notes"]))
        geo = plan["geometry"]
        if geo is not None:
            set_conv_stride_pad(layers[head.name], geo["stride"], geo["pad"])
            change.notes.insert(0, f"'{head.name}': stride {fmt(geo['old_stride'])} -> {fmt(geo['stride'])}, "
                                   f"pad {fmt(geo['old_pad'])} -> {fmt(geo['pad'])}")
            if geo["stride"] != geo["old_stride"] or geo["pad"] != geo["old_pad"]:
                change.regenerated.append(head.name)
                regenerate(model, head)
        if head.name not in change.regenerated:
            change.notes.append(f"'{head.name}' keeps its weights; the output changes: fine-tune")
        remove_layers(model, {n.name for n in removed})
        return change


RULE = StreamlineRule()
