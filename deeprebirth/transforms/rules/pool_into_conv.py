"""Pooling absorbed into the convolutions that read it (beyond the paper).

Streamline slimming absorbs a pooling into the convolution *before* it. This rule absorbs it into
the convolutions *after* it: a pooling whose output is read only by convolutions is removed; each
convolution now reads the pooling's input with its stride multiplied by the pooling's, and a
padding chosen so that its output keeps exactly its old size (the one closest to the old
receptive-field alignment). The convolutions are regenerated (Xavier weights, re-learned by
fine-tuning with a 10x learning rate), like streamline slimming. The pooling's output blob
disappears, which is where the runtime memory goes.

Left alone, with a note: a pooling whose output also feeds anything that is not a convolution
(a Concat, an InnerProduct, another pooling ...), a global pooling, a convolution that is not a
plain 2-D one (dilated, other axis), a convolution for which no padding keeps its output size,
and a stride-1 pooling wider than a convolution's kernel (its only job is to aggregate space,
which a smaller kernel cannot take over).

Substructures are named after the pooling: the part of its name before the first '/' (GoogLeNet
``pool3/3x3_s2`` -> ``pool3``; see ``edit.unit_names``).
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
from deeprebirth.graph.model import Model
from deeprebirth.transforms.edit import regenerate, remove_layers, unit_names
from deeprebirth.transforms.rules.base import Change, Match, Rule


class PoolIntoConvRule(Rule):
    name = "pool_into_conv"
    types = frozenset({"Pooling"})
    exact = False
    default = True
    order = 60
    absorbs_pooling = True   # and nothing else: --keep-pooling leaves it out

    def match(self, graph: Graph) -> list[Match]:
        pools = []
        for node in graph.nodes:
            if node.type != "Pooling" or len(node.bottoms) != 1 or len(node.tops) != 1:
                continue
            users = graph.consumers_of(node.tops[0])
            if any(u.type == "Convolution" for u in users):
                pools.append((node, users))
        names = unit_names([p.name for p, _ in pools], set(graph.by_name))
        return [Match(self.name, names[p.name], [p.name] + [u.name for u in users],
                      {"pool": p.name, "convs": [u.name for u in users]}) for p, users in pools]

    def guards(self, graph: Graph, match: Match, model: Model) -> str | None:
        plan = self.plan(graph, match)
        return plan if isinstance(plan, str) else None

    def plan(self, graph: Graph, match: Match) -> dict | str:
        pool = graph.node(match.data["pool"])
        users = graph.consumers_of(pool.tops[0])
        others = [u for u in users if u.type != "Convolution"]
        if others:
            o = others[0]
            return (f"'{pool.name}' also feeds '{o.name}' ({o.type}); only a pooling read by nothing but "
                    "convolutions is absorbed")
        source = pool.bottoms[0]
        rewriters = [c for c in graph.consumers_of(source) if c.in_place]
        if rewriters:
            return (f"'{pool.name}''s input '{source[0]}' is rewritten in place by '{rewriters[0].name}'; "
                    "the convolutions could not read it unchanged")
        in_shape = graph.version_shapes.get(source)
        if in_shape is None or len(in_shape) != 4:
            return f"the input shape of '{pool.name}' is unknown or not 4-D"
        pg = pool_geometry(pool.layer, in_shape[2:])
        if pg["global"]:
            return f"'{pool.name}' is a global pooling"
        convs = {}
        for conv in users:
            got = self._conv_plan(graph, pool, pg, in_shape, conv)
            if isinstance(got, str):
                return got
            convs[conv.name] = got
        return {"pool": pool, "source": source[0], "convs": convs}

    def _conv_plan(self, graph: Graph, pool: Node, pg: dict, in_shape, conv: Node) -> dict | str:
        out_shape = conv.top_shapes[0] if conv.top_shapes else None
        p = conv.layer.convolution_param
        if out_shape is None or len(out_shape) != 4 or p.axis not in (1, -3):
            return f"'{conv.name}' is not a 2-D convolution over NCHW with a known shape"
        if sum(1 for b in conv.bottoms if b == pool.tops[0]) != len(conv.bottoms):
            return f"'{conv.name}' has other bottoms besides '{pool.tops[0][0]}'"
        geo = conv_geometry(conv.layer, 2)
        if any(d != 1 for d in geo["dilation"]):
            return f"'{conv.name}' is dilated"
        kernel = geo["kernel"]
        if stride_one_too_wide(pg, kernel):
            return (f"'{pool.name}' has stride 1 and a {fmt(pg['kernel'])} window, wider than "
                    f"'{conv.name}''s {fmt(kernel)} kernel")
        stride, pad = [], []
        for ax in range(2):
            k, s, cp = kernel[ax], geo["stride"][ax], geo["pad"][ax]
            ps, pk, pp = pg["stride"][ax], pg["kernel"][ax], pg["pad"][ax]
            # Centre of output j in the pooling's input: ps * (s*j + (k-1)/2 - cp) + (pk-1)/2 - pp;
            # the new convolution's: ps*s*j + (k-1)/2 - pad.
            ideal = (k - 1) / 2 - ps * ((k - 1) / 2 - cp) - (pk - 1) / 2 + pp
            new_pad = choose_pad(in_shape[2 + ax], k, s * ps, out_shape[2 + ax], ideal)
            if new_pad is None:
                return (f"no padding makes '{conv.name}' with stride {s * ps} turn {in_shape[2 + ax]} into "
                        f"its output size {out_shape[2 + ax]}")
            stride.append(s * ps)
            pad.append(new_pad)
        return {"stride": stride, "pad": pad, "old_stride": geo["stride"], "old_pad": geo["pad"]}

    def rewrite(self, model: Model, graph: Graph, match: Match) -> Change:
        plan = self.plan(graph, match)
        assert not isinstance(plan, str), f"rewrite of a match the guards refuse: {plan}"
        pool, source = plan["pool"], plan["source"]
        layers = {layer.name: layer for layer in model.net.layer}
        change = Change(self.name, match.name, removed=[pool.name], exact=False)
        for name, geo in plan["convs"].items():
            layer = layers[name]
            for i, b in enumerate(layer.bottom):
                if b == pool.layer.top[0]:
                    layer.bottom[i] = source
            set_conv_stride_pad(layer, geo["stride"], geo["pad"])
            change.regenerated.append(name)
            regenerate(model, graph.node(name))
            change.notes.append(f"'{name}': reads '{source}', stride {fmt(geo['old_stride'])} -> "
                                f"{fmt(geo['stride'])}, pad {fmt(geo['old_pad'])} -> {fmt(geo['pad'])}")
        remove_layers(model, {pool.name})
        return change


RULE = PoolIntoConvRule()
