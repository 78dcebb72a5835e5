"""runtime/kind_share.py: Table 2's non-tensor share by whole passes of one-kind nets (the check of
`bench --layers` that scripts/reproduce/speed.py reports beside it)."""
from __future__ import annotations

import pytest
from helpers import net_of, with_weights

from deeprebirth.graph.dag import Graph
from deeprebirth.runtime import kind_share

BODY = """
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1" convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "r1" type: "ReLU" bottom: "c1" top: "c1" }
layer { name: "p1" type: "Pooling" bottom: "c1" top: "p1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "p1" top: "fc" inner_product_param { num_output: 3 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def test_isolated_nets_hold_one_kind_each_fed_by_inputs_of_its_own():
    net = net_of(BODY, (1, 2, 10, 10))
    tensor = kind_share.isolated_net(net, "tensor")
    assert [lr.name for lr in tensor.layer] == ["c1", "fc"]
    assert list(tensor.input) == ["c1/in0", "fc/in0"]
    assert [list(s.dim) for s in tensor.input_shape] == [[1, 2, 10, 10], [1, 4, 4, 4]]
    non = kind_share.isolated_net(net, "non-tensor")
    assert [lr.name for lr in non.layer] == ["r1", "p1", "prob"]
    relu = non.layer[0]
    assert list(relu.bottom) == list(relu.top) == ["r1/in0"]          # in place, on its own input
    assert list(non.layer[1].top) == ["p1/out0"]
    Graph(tensor)                                                         # both are nets Caffe can shape
    Graph(non)
    with pytest.raises(ValueError, match="not 'data'"):
        kind_share.isolated_net(net, "data")


def test_shares_from_made_up_rounds():
    types = ["Convolution", "ReLU", "InnerProduct", "Pooling"]
    layers = [[0.004, 0.002, 0.002, 0.002]] * 3                 # 40 % in non-tensor layers
    got = kind_share.shares([0.010, 0.010, 0.010], layers, types, [0.007, 0.006, 0.0065], [0.004, 0.003, 0.005])
    assert got["A"]["percent"] == pytest.approx(40.0)
    assert got["B"]["percent"] == pytest.approx(35.0) and got["C"]["percent"] == pytest.approx(40.0)
    lo, hi = got["B"]["iqr"]
    assert lo <= 35.0 <= hi


@pytest.mark.caffe
def test_measure_a_small_net(caffe):
    model = with_weights(net_of(BODY, (1, 2, 32, 32)))
    got = kind_share.measure(model, runs=3, warmup=1)
    assert set(got) >= {"A", "B", "C", "full_ms", "tensor_only_ms", "non_tensor_only_ms"}
    assert 0 < got["A"]["percent"] < 100 and got["full_ms"] > 0 and got["runs"] == 3
