"""The built-in SqueezeNets (scripts/gen_models.py) against the published facts: parameter counts
(Iandola et al. 2016: 1,248,424 for v1.0; 1,235,496 for v1.1) and multiply-accumulates (about
0.87 G and 0.39 G; we count 0.871 G and 0.394 G: convolutions only, 227x227, batch 1)."""
from __future__ import annotations

import pytest

from deeprebirth.graph.dag import Graph
from deeprebirth.graph.model import load_model


@pytest.mark.parametrize("name, params, gmacs, conv1, pools", [
    ("squeezenet", 1_248_424, 0.87, (96, 3, 7, 7), ["pool1", "pool4", "pool8", "pool10"]),
    ("squeezenet11", 1_235_496, 0.39, (64, 3, 3, 3), ["pool1", "pool3", "pool5", "pool10"]),
])
def test_published_parameters_and_macs(name, params, gmacs, conv1, pools):
    g = Graph(load_model(name).net, batch=1)
    t = g.totals()
    assert t["params"] == params
    assert abs(t["macs"] / 1e9 - gmacs) / gmacs < 0.03
    assert g.node("conv1").param_shapes[0] == conv1
    assert [n.name for n in g.nodes if n.type == "Pooling"] == pools
    assert g.shapes["data"] == (1, 3, 227, 227) and g.shapes["prob"] == (1, 1000, 1, 1)


def test_fire_module_shape():
    g = Graph(load_model("squeezenet").net, batch=1)
    assert [n.name for n in g.successors(g.node("fire2/squeeze1x1"))] == [
        "fire2/relu_squeeze1x1"]
    concat = g.node("fire9/concat")
    assert [b[0] for b in concat.bottoms] == ["fire9/expand1x1", "fire9/expand3x3"]
    assert concat.top_shapes[0] == (1, 512, 13, 13)
    assert sum(n.type == "Convolution" for n in g.nodes) == 26   # conv1, 8 fires x 3, conv10
