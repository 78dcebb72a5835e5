"""Merge parallel convolutions (exact; the paper's Eq. 12, TensorRT's "horizontal fusion").

Convolutions that read the same blob with identical geometry (kernel, stride, pad, dilation,
group 1, the same bias_term and axis) compute one convolution whose filters are theirs stacked
along the output channels: W = [W1; W2; ...], B = [B1; B2; ...]. Their in-place activations must
match too (same types and parameters, e.g. one ReLU each): they become one activation on the
merged blob.

Two forms:

* *concat*: the convolutions feed one channel-axis Concat at consecutive positions (and nothing
  else). The merged convolution writes straight into the Concat in their place: no blob is
  added, layers go. When that leaves the Concat with one input, the Concat is dropped and the
  merged convolution writes the Concat's top.
* *slice*: otherwise a ``Slice`` (axis 1) after the merged convolution restores the original top
  names. A Slice's tops are copies, so this grows blob memory by the merged blob; it is done only
  when ``Graph.memory_bytes`` does not grow, or when ``allow_memory_growth`` is set (fewer, larger
  GEMMs can still pay off on some devices). On GoogLeNet the reducers of each inception block
  would need a Slice: they are left alone, with a note saying how many bytes it would cost.

Merged layers are named after their parts: ``inception_3a/3x3_reduce+5x5_reduce``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deeprebirth.caffe import proto as pb
from deeprebirth.graph.dag import Graph, Node
from deeprebirth.graph.geometry import canonical_axis, concat_axis, conv_geometry
from deeprebirth.graph.kinds import ACTIVATIONS
from deeprebirth.graph.model import Model
from deeprebirth.transforms.edit import group_name, joined_name, memory_growth, unique_name
from deeprebirth.transforms.rules.base import Change, Match, Rule


@dataclass
class ConvArm:
    """A convolution with the in-place activations after it: one of the parallel arms merged."""
    conv: Node
    acts: list[Node]
    out: tuple[str, int]      # the blob version the rest of the net reads

    @property
    def names(self) -> list[str]:
        return [self.conv.name] + [a.name for a in self.acts]


def signature(layer: "pb.LayerParameter") -> bytes:
    """A layer's type and parameters, without its name and blobs."""
    c = pb.LayerParameter()
    c.CopyFrom(layer)
    for f in ("name", "bottom", "top", "blobs", "param", "include", "exclude"):
        c.ClearField(f)
    return c.SerializeToString(deterministic=True)


def conv_arm(graph: Graph, conv: Node) -> tuple[ConvArm, tuple] | None:
    """The convolution with its in-place activations, and the key that must match to merge."""
    p = conv.layer.convolution_param
    if len(conv.bottoms) != 1 or len(conv.tops) != 1 or conv.in_place or p.group != 1:
        return None
    shape = graph.version_shapes.get(conv.bottoms[0])
    if shape is None or len(shape) < 3 or conv.top_shapes[0] is None:
        return None
    axis = canonical_axis(p.axis, len(shape))
    acts = []
    for n in graph.in_place_chain(conv):
        if n.type not in ACTIVATIONS or len(n.bottoms) != 1:
            break
        acts.append(n)
    refs = [conv.tops[0]] + [a.tops[0] for a in acts]
    for ref, nxt in zip(refs, acts):
        if graph.consumers_of(ref) != [nxt]:
            return None   # a pre-activation value is read elsewhere
    geo = conv_geometry(conv.layer, len(shape) - axis - 1)
    key = (conv.bottoms[0], axis, tuple(map(tuple, (geo["kernel"], geo["pad"], geo["stride"], geo["dilation"]))),
           bool(p.bias_term), tuple(signature(a.layer) for a in acts))
    return ConvArm(conv, acts, refs[-1]), key


def _concat_slot(graph: Graph, arm: ConvArm) -> tuple[Node, int] | None:
    """(Concat, position) when the arm's output is read only by one channel-axis Concat."""
    users = graph.consumers_of(arm.out)
    if len(users) != 1 or users[0].type != "Concat":
        return None
    c = users[0]
    axis = concat_axis(c.layer)
    shape = graph.version_shapes.get(arm.out)
    if shape is None or canonical_axis(axis, len(shape)) != 1:
        return None
    slots = [i for i, b in enumerate(c.bottoms) if b == arm.out]
    return (c, slots[0]) if len(slots) == 1 else None


class MergeParallel(Rule):
    name = "merge_parallel"
    types = frozenset({"Convolution"})
    exact = True
    default = True
    order = 50

    def __init__(self, allow_memory_growth: bool = False):
        self.allow_memory_growth = allow_memory_growth

    # -- match -------------------------------------------------------------------------------
    def match(self, graph: Graph) -> list[Match]:
        groups: dict[tuple, list[ConvArm]] = {}
        for node in graph.nodes:
            if node.type == "Convolution":
                got = conv_arm(graph, node)
                if got is not None:
                    groups.setdefault(got[1], []).append(got[0])
        out = []
        for arms in groups.values():
            if len(arms) < 2:
                continue
            runs = self._runs(graph, arms)
            in_runs = {u.conv.name for run, _ in runs for u in run}
            rest = [u for u in arms if u.conv.name not in in_runs]
            for run, concat in runs:
                out.append(self._match(run, "concat", concat.name))
            if len(rest) >= 2:
                out.append(self._match(rest, "slice", None))
        return out

    def _runs(self, graph: Graph, arms: list[ConvArm]) -> list[tuple[list[ConvArm], Node]]:
        """Maximal runs (>= 2) of arms feeding one Concat at consecutive positions."""
        by_concat: dict[str, list[tuple[int, ConvArm, Node]]] = {}
        for u in arms:
            slot = _concat_slot(graph, u)
            if slot is not None:
                by_concat.setdefault(slot[0].name, []).append((slot[1], u, slot[0]))
        runs = []
        for items in by_concat.values():
            items.sort(key=lambda t: t[0])
            run = [items[0]]
            for item in items[1:] + [None]:
                if item is not None and item[0] == run[-1][0] + 1:
                    run.append(item)
                    continue
                if len(run) >= 2:
                    runs.append(([u for _, u, _ in run], run[0][2]))
                if item is not None:
                    run = [item]
        return runs

    def _match(self, arms: list[ConvArm], mode: str, concat: str | None) -> Match:
        names = [u.conv.name for u in arms]
        layers = [n for u in arms for n in u.names] + ([concat] if concat else [])
        return Match(self.name, group_name(names, arms[0].conv.bottoms[0][0]), layers,
                     {"mode": mode, "convs": names, "concat": concat})

    def _arms(self, graph: Graph, match: Match) -> list[ConvArm] | None:
        arms = []
        for name in match.data["convs"]:
            got = conv_arm(graph, graph.node(name)) if name in graph.by_name else None
            if got is None:
                return None
            arms.append(got[0])
        return arms

    # -- guards ------------------------------------------------------------------------------
    def guards(self, graph: Graph, match: Match, model: Model) -> str | None:
        arms = self._arms(graph, match)
        if arms is None:
            return f"{match.name}: the convolutions {match.data['convs']} can no longer be merged"
        if model.weights is not None:
            missing = [u.conv.name for u in arms if u.conv.name not in model.weights]
            if missing:
                return f"{match.name}: no weights for '{missing[0]}'"
        growth = memory_growth(graph, model, lambda net: self._edit(net, graph, arms, match))
        if growth > 0 and not self.allow_memory_growth:
            return (f"{match.name}: merging {', '.join(repr(n) for n in match.data['convs'])} needs a Slice "
                    f"whose tops are copies: blob memory would grow by {growth} bytes "
                    f"(+{100.0 * growth / max(1, graph.memory_bytes):.1f}%); left alone")
        return None

    # -- rewrite -----------------------------------------------------------------------------
    def _edit(self, net: "pb.NetParameter", graph: Graph, arms: list[ConvArm], match: Match) -> dict:
        mode = match.data["mode"]
        layers = {layer.name: layer for layer in net.layer}
        taken = set(layers) | set(graph.shapes)
        first = arms[0].conv.layer
        name = unique_name(joined_name([u.conv.name for u in arms]), taken)
        blob = name
        concat = layers[match.data["concat"]] if mode == "concat" else None
        collapse = concat is not None and len(concat.bottom) == len(arms)
        if collapse:
            blob = concat.top[0]

        conv = pb.LayerParameter()
        conv.CopyFrom(layers[first.name])
        conv.name = name
        del conv.bottom[:]
        del conv.top[:]
        conv.bottom.append(first.bottom[0])
        conv.top.append(blob)
        counts = [u.conv.top_shapes[0][1] for u in arms]
        conv.convolution_param.num_output = sum(counts)
        new = [conv]
        for j in range(len(arms[0].acts)):
            act = pb.LayerParameter()
            act.CopyFrom(layers[arms[0].acts[j].name])
            act.name = unique_name(joined_name([u.acts[j].name for u in arms]), taken)
            del act.bottom[:]
            del act.top[:]
            act.bottom.append(blob)
            act.top.append(blob)
            new.append(act)
        if mode == "slice":
            sl = pb.LayerParameter(name=unique_name(f"{name}/slice", taken), type="Slice")
            sl.bottom.append(blob)
            sl.top.extend(u.out[0] for u in arms)
            sl.slice_param.axis = 1
            sl.slice_param.slice_point.extend(int(x) for x in np.cumsum(counts)[:-1])
            new.append(sl)

        gone = {n for u in arms for n in u.names}
        if collapse:
            gone.add(concat.name)
        start = min(u.conv.index for u in arms)
        out = []
        for i, layer in enumerate(net.layer):
            if i == start:
                out += new
            if layer.name in gone:
                continue
            if concat is not None and not collapse and layer.name == concat.name:
                outs = [u.out[0] for u in arms]
                at = list(layer.bottom).index(outs[0])
                bottoms = list(layer.bottom)
                bottoms[at:at + len(arms)] = [blob]
                del layer.bottom[:]
                layer.bottom.extend(bottoms)
            out.append(layer)
        del net.layer[:]
        net.layer.extend(out)
        return {"name": name, "layers": [layer.name for layer in new], "counts": counts, "collapse": collapse}

    def rewrite(self, model: Model, graph: Graph, match: Match) -> Change:
        arms = self._arms(graph, match)
        before_mem, before_layers = graph.memory_bytes, len(graph.nodes)
        info = self._edit(model.net, graph, arms, match)
        removed = [n for u in arms for n in u.names] + ([match.data["concat"]] if info["collapse"] else [])
        if model.weights is not None:
            arrays = [model.weights.pop(u.conv.name) for u in arms]
            model.weights[info["name"]] = [np.concatenate([a[k] for a in arrays], axis=0)
                                           for k in range(len(arrays[0]))]
        after = Graph(model.net, batch=graph.batch, strict=False)
        delta = after.memory_bytes - before_mem
        how = {"concat": f"writing straight into Concat '{match.data['concat']}'",
               "slice": "followed by a Slice restoring the original tops"}[match.data["mode"]]
        notes = [f"{len(arms)} convolutions ({'+'.join(map(str, info['counts']))} outputs) merged into "
                 f"'{info['name']}' {how}; layers {before_layers} -> {len(after.nodes)}, blob memory "
                 + (f"{delta:+d} bytes" if delta else "unchanged")]
        if info["collapse"]:
            notes.append(f"Concat '{match.data['concat']}' dropped: the merged convolution writes its top")
        if delta > 0:
            notes.append("memory grows (allow_memory_growth is set)")
        return Change(self.name, match.name, removed=removed, added=info["layers"], notes=notes)


RULE = MergeParallel()
