"""Parallel 1x1 convolutions feeding one Concat become one 1x1 convolution after it (exact;
beyond the paper).

A Concat along channels of k 1x1 convolutions, the i-th reading x_i (S_i channels) and writing
T_i channels, y_i = W_i x_i + b_i (then the same in-place activation f on each), is one 1x1
convolution on the Concat of their *inputs*:

    concat_i f(W_i x_i + b_i) = f(W [x_1; ...; x_k] + [b_1; ...; b_k]),
    W = diag(W_1, ..., W_k)    (sum T_i x sum S_i, zero off the diagonal blocks),

because a 1x1 convolution with stride 1 and no padding acts on each position alone, and an
element-wise activation commutes with stacking channels. The zero blocks contribute exact zeros,
so the output is unchanged up to float rounding (tested in Caffe).

Why: a Tucker-2 decomposition (``rebirth tucker``) ends every branch of an inception block with a
1x1 ``_out`` convolution and its ReLU, and branch slimming leaves only such branches. On a small
net a layer costs as much as tens of thousands of MACs (``graph.dag.LAYER_COST_MACS``), so k
convolutions and k activations become one of each, and the Concat now joins the few channels of
the cores (sum S_i) instead of the wide outputs (sum T_i). The price is the zero blocks' MACs,
out_hw (sum S_i sum T_i - sum S_i T_i): the guard leaves a Concat alone when they are worth more
than the layers removed (on ImageNet-sized maps, where MACs dominate, that is the usual answer).

Matched: a channel-axis Concat whose every input is written by a 1x1 convolution (kernel 1,
stride 1, pad 0, group 1, one bottom), directly or through in-place activations that are the same
type with the same parameters on every input, and read by nothing else. Left alone, with a note:
convolutions whose bias_term differ, two of them reading the same blob (``merge_parallel`` stacks
those instead), inputs of different spatial size, missing weights, and a merge predicted slower.
The merged layer is named after its parts (``inception_3a/3x3_out+5x5_out``); the Concat keeps its
name and writes ``<its top>/parts``.
"""
from __future__ import annotations

import numpy as np
from scipy.linalg import block_diag

from deeprebirth.caffe import proto as pb
from deeprebirth.graph.costs import LAYER_COST_MACS
from deeprebirth.graph.dag import Graph
from deeprebirth.graph.geometry import canonical_axis, concat_axis, conv_geometry
from deeprebirth.graph.model import Model
from deeprebirth.graph.shapes import count
from deeprebirth.transforms.edit import joined_name, remove_layers, unique_name
from deeprebirth.transforms.rules.base import Change, Match, Rule
from deeprebirth.transforms.rules.merge_parallel import conv_arm, signature


class MergeConcat1x1(Rule):
    name = "merge_concat_1x1"
    types = frozenset({"Concat"})
    exact = True
    default = True
    order = 80

    def __init__(self, layer_cost: int = LAYER_COST_MACS):
        self.layer_cost = layer_cost   # MACs one layer removed is worth (the guard's trade)

    def match(self, graph: Graph) -> list[Match]:
        out = []
        for node in graph.nodes:
            if node.type != "Concat" or len(node.bottoms) < 2 or len(node.tops) != 1:
                continue
            shape = node.top_shapes[0]
            if shape is None or len(shape) != 4 or canonical_axis(concat_axis(node.layer), 4) != 1:
                continue
            arms = [self._arm_of(graph, ref, node) for ref in node.bottoms]
            if all(a is not None for a in arms) and len({a.conv.name for a in arms}) == len(arms):
                out.append(Match(self.name, node.name, [n for a in arms for n in a.names] + [node.name],
                                 {"concat": node.name, "convs": [a.conv.name for a in arms]}))
        return out

    @staticmethod
    def _arm_of(graph: Graph, ref, concat):
        """The 1x1 convolution (with its in-place activations) whose output is ``ref``, read by
        ``concat`` alone, or None."""
        if graph.consumers_of(ref) != [concat]:
            return None
        node = graph.producer_of(ref)
        while node is not None and node.in_place and node.type != "Convolution":
            node = graph.producer_of(node.bottoms[0])
        if node is None or node.type != "Convolution":
            return None
        got = conv_arm(graph, node)
        if got is None or got[0].out != ref:
            return None
        geo = conv_geometry(node.layer)
        if set(geo["kernel"]) != {1} or set(geo["stride"]) != {1} or set(geo["pad"]) != {0}:
            return None
        return got[0]

    def guards(self, graph: Graph, match: Match, model: Model) -> str | None:
        plan = self.plan(graph, match, model)
        return plan if isinstance(plan, str) else None

    def plan(self, graph: Graph, match: Match, model: Model) -> dict | str:
        concat = graph.node(match.data["concat"])
        arms = [self._arm_of(graph, ref, concat) for ref in concat.bottoms]
        if any(a is None for a in arms):
            return "its inputs are no longer all 1x1 convolutions"
        first = arms[0]
        if len({bool(a.conv.layer.convolution_param.bias_term) for a in arms}) > 1:
            return "the convolutions differ in bias_term"
        if len({tuple(signature(x.layer) for x in a.acts) for a in arms}) > 1:
            return "the convolutions are not followed by the same in-place activations"
        inputs = [a.conv.bottoms[0] for a in arms]
        if len(set(inputs)) < len(inputs):
            return "two of its convolutions read the same blob (merge_parallel stacks those)"
        shapes = [graph.version_shapes.get(r) for r in inputs]
        if any(s is None or len(s) != 4 for s in shapes) or len({tuple(s[2:]) for s in shapes}) > 1:
            return "the convolutions' inputs are not 4-D maps of one size"
        if model.weights is not None:
            missing = [a.conv.name for a in arms if a.conv.name not in model.weights]
            if missing:
                return f"no weights for '{missing[0]}'"
        S = [int(s[1]) for s in shapes]
        T = [int(a.conv.top_shapes[0][1]) for a in arms]
        hw = count(shapes[0][2:])
        added = hw * (sum(S) * sum(T) - sum(s * t for s, t in zip(S, T)))
        worth = (len(arms) - 1) * (1 + len(first.acts)) * self.layer_cost
        if added > worth:
            return (f"the merged 1x1 convolution's zero blocks would add {added:,} MACs, more than "
                    f"the {(len(arms) - 1) * (1 + len(first.acts))} layers it removes are worth (about "
                    f"{self.layer_cost:,} MACs a layer); left alone")
        return {"concat": concat, "arms": arms, "inputs": inputs, "S": S, "T": T, "added": added}

    @staticmethod
    def block_diagonal(blocks: list[np.ndarray]) -> np.ndarray:
        """diag(W_1, ..., W_k) of 1x1 kernels W_i (T_i x S_i x 1 x 1): (sum T) x (sum S) x 1 x 1."""
        W = block_diag(*(b.reshape(b.shape[0], b.shape[1]) for b in blocks))
        return W.reshape(*W.shape, 1, 1).astype(np.float32)

    def rewrite(self, model: Model, graph: Graph, match: Match) -> Change:
        plan = self.plan(graph, match, model)
        assert not isinstance(plan, str), f"rewrite of a match the guards refuse: {plan}"
        concat, arms = plan["concat"], plan["arms"]
        layers = {layer.name: layer for layer in model.net.layer}
        taken = set(layers) | set(graph.shapes)
        top = concat.layer.top[0]
        parts = unique_name(f"{top}/parts", taken)
        name = unique_name(joined_name([a.conv.name for a in arms]), taken)
        merged = pb.LayerParameter()
        merged.CopyFrom(layers[arms[0].conv.name])
        merged.name = name
        del merged.bottom[:], merged.top[:]
        merged.bottom.append(parts)
        merged.top.append(top)
        merged.convolution_param.num_output = sum(plan["T"])
        new = [merged]
        for j, act in enumerate(arms[0].acts):
            layer = pb.LayerParameter()
            layer.CopyFrom(layers[act.name])
            layer.name = unique_name(joined_name([a.acts[j].name for a in arms]), taken | {name})
            del layer.bottom[:], layer.top[:]
            layer.bottom.append(top)
            layer.top.append(top)
            new.append(layer)
        c = layers[concat.name]
        del c.bottom[:], c.top[:]
        c.bottom.extend(ref[0] for ref in plan["inputs"])
        c.top.append(parts)
        at = list(model.net.layer).index(c) + 1
        ordered = list(model.net.layer)
        ordered[at:at] = new
        del model.net.layer[:]
        model.net.layer.extend(ordered)
        if model.weights is not None:
            arrays = [model.weights[a.conv.name] for a in arms]
            model.weights[name] = [self.block_diagonal([np.asarray(x[0]) for x in arrays])] + \
                ([np.concatenate([np.asarray(x[1]).ravel() for x in arrays]).astype(np.float32)]
                 if len(arrays[0]) > 1 else [])
        gone = [n for a in arms for n in a.names]
        remove_layers(model, gone)
        shapes = " + ".join(f"{s}->{t}" for s, t in zip(plan["S"], plan["T"]))
        return Change(self.name, match.name, removed=gone, added=[layer.name for layer in new], modified=[concat.name],
                      notes=[f"{len(arms)} 1x1 convolutions ({shapes}) merged into '{name}' after Concat "
                             f"'{concat.name}', which now joins their inputs ({sum(plan['S'])} channels instead of "
                             f"{sum(plan['T'])}); {len(gone) - len(new)} layers fewer, {plan['added']:,} MACs of "
                             "zero blocks"])


RULE = MergeConcat1x1()
