"""A global average pooling absorbed into the InnerProduct that reads it (exact; beyond the paper).

Average pooling over the whole map and an InnerProduct are both linear, so they compose into one
InnerProduct. With the pooling's input x of C x H x W (P = H*W positions) and the classifier's
weights W (N x C) and bias b:

    y_n = b_n + sum_c W[n, c] * (1/P) sum_p x[c, p]  =  b_n + sum_{c,p} W'[n, c*P + p] x[c, p],
    W'[n, c*P + p] = W[n, c] / P.

Caffe's InnerProduct flattens its bottom from ``axis`` 1 in C, H, W order, so reading the
pooling's 4-D input directly gives exactly that index c*P + p. Caffe's AVE pooling divides a
window by its size clipped to the padded input; with no padding and a window that covers the
whole map (``global_pooling``, or ``kernel`` equal to the map with stride 1) that size is P, as
above. The output is unchanged up to float rounding.

Why: on a small net the pooling is one of the slowest layers for what it does (GoogLeNet-Slim on
Fashion-MNIST: 0.03 of 0.42 ms per image in Caffe, the single slowest layer, for a 2x2 map), and
a global pooling is a non-tensor layer no other rule removes. The price is a classifier P times
wider: the guard keeps that growth small, so ImageNet nets (7x7 maps, 1,000 classes: 49 M more
weights) are left alone.

Matched: an AVE pooling whose output is read by one InnerProduct, possibly through in-place
Dropouts (the identity at test time; they move onto the pooling's input, so training still drops
features, now per position). Left alone, with a note: a MAX or STOCHASTIC pooling (not linear), a
window that is not the whole map or has padding, a pooling input that other layers also read (an
in-place Dropout there would change what they see in training), any other layer on the pooling's
output, an InnerProduct with ``transpose`` or another ``axis``, and a classifier that would grow by
more than ``max_growth`` weights.
"""
from __future__ import annotations

import numpy as np

from deeprebirth.errors import RebirthError
from deeprebirth.graph.dag import Graph
from deeprebirth.graph.geometry import canonical_axis, pool_geometry
from deeprebirth.graph.model import Model
from deeprebirth.transforms.edit import remove_layers
from deeprebirth.transforms.rules.base import Change, Match, Rule

AVE = 1   # PoolingParameter.PoolMethod


class PoolIntoFc(Rule):
    name = "pool_into_fc"
    types = frozenset({"Pooling"})
    exact = True
    default = True
    order = 70

    def __init__(self, max_growth: int = 65536):
        self.max_growth = max_growth   # weights the classifier may gain (65,536: 256 KB)

    def match(self, graph: Graph) -> list[Match]:
        out = []
        for node in graph.nodes:
            if node.type != "Pooling" or len(node.bottoms) != 1 or len(node.tops) != 1:
                continue
            chain = graph.in_place_chain(node)
            end = chain[-1].tops[0] if chain else node.tops[0]
            readers = [c for c in graph.consumers_of(end) if c not in chain]
            if len(readers) == 1 and readers[0].type == "InnerProduct":
                out.append(Match(self.name, node.name, [node.name] + [c.name for c in chain] + [readers[0].name],
                                 {"pool": node.name, "fc": readers[0].name, "chain": [c.name for c in chain]}))
        return out

    def guards(self, graph: Graph, match: Match, model: Model) -> str | None:
        plan = self.plan(graph, match)
        return plan if isinstance(plan, str) else None

    def plan(self, graph: Graph, match: Match) -> dict | str:
        pool, fc = graph.node(match.data["pool"]), graph.node(match.data["fc"])
        p = pool.layer.pooling_param
        if p.pool != AVE:
            return f"'{pool.name}' is not an average pooling (a maximum is not linear)"
        shape = graph.version_shapes.get(pool.bottoms[0])
        if shape is None or len(shape) != 4:
            return f"the input shape of '{pool.name}' is unknown or not 4-D"
        geo = pool_geometry(pool.layer, shape[2:])
        if list(geo["kernel"]) != list(shape[2:]) or any(geo["pad"]):
            return (f"'{pool.name}''s window {geo['kernel'][0]}x{geo['kernel'][1]} (pad {geo['pad'][0]}) is not "
                    f"the whole {shape[2]}x{shape[3]} map")
        others = [c.name for c in graph.consumers_of(pool.bottoms[0]) if c is not pool]
        if others:
            return f"'{pool.name}''s input is also read by '{others[0]}'"
        chain = [graph.node(n) for n in match.data["chain"]]
        bad = [c for c in chain if c.type != "Dropout"]
        if bad:
            return f"'{bad[0].name}' ({bad[0].type}) works on '{pool.name}''s output in place; only Dropout may"
        q = fc.layer.inner_product_param
        if q.transpose or canonical_axis(q.axis, 4) != 1:
            return f"'{fc.name}' flattens from another axis or is transposed"
        if len(fc.bottoms) != 1:
            return f"'{fc.name}' has several bottoms"
        positions = shape[2] * shape[3]
        growth = int(q.num_output) * int(shape[1]) * (positions - 1)
        if growth > self.max_growth:
            return (f"'{fc.name}' would grow by {growth:,} weights ({q.num_output} x {shape[1]} x "
                    f"{positions - 1}), more than {self.max_growth:,}")
        return {"pool": pool, "fc": fc, "chain": chain, "positions": positions, "channels": int(shape[1])}

    @staticmethod
    def spread(weights: np.ndarray, channels: int, positions: int) -> np.ndarray:
        """W (N x C) -> W' (N x C*P), W'[n, c*P + p] = W[n, c] / P (the module docstring)."""
        if weights.shape[-1] != channels:
            raise RebirthError(f"InnerProduct weights of shape {weights.shape} do not read {channels} channels")
        flat = weights.reshape(-1, channels)
        return (np.repeat(flat, positions, axis=1) / positions).astype(np.float32)

    def rewrite(self, model: Model, graph: Graph, match: Match) -> Change:
        plan = self.plan(graph, match)
        assert not isinstance(plan, str), f"rewrite of a match the guards refuse: {plan}"
        pool, fc, chain = plan["pool"], plan["fc"], plan["chain"]
        source = pool.layer.bottom[0]
        layers = {layer.name: layer for layer in model.net.layer}
        top = pool.layer.top[0]
        for node in chain + [fc]:
            layer = layers[node.name]
            for i, b in enumerate(layer.bottom):
                if b == top:
                    layer.bottom[i] = source
            for i, t in enumerate(layer.top):
                if node is not fc and t == top:
                    layer.top[i] = source
        arrays = (model.weights or {}).get(fc.name)
        if arrays:      # without trained weights (a net to train from scratch) only the net changes
            model.weights[fc.name] = [self.spread(np.asarray(arrays[0]), plan["channels"], plan["positions"]),
                                      *arrays[1:]]
        remove_layers(model, {pool.name})
        return Change(self.name, match.name, removed=[pool.name], modified=[fc.name],
                      notes=[f"'{pool.name}' (average over {plan['positions']} positions) folded into "
                             f"'{fc.name}', which now reads '{source}' ({plan['channels']} x {plan['positions']} "
                             f"inputs; weights divided by {plan['positions']})"
                             + (f"; {', '.join(c.name for c in chain)} now in place on '{source}'" if chain else "")])


RULE = PoolIntoFc()
