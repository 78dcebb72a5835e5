"""`rebirth bench --fit-layer-cost` (runtime/layer_cost.py): what one layer is worth in MACs, the
default of `rebirth tucker --layer-cost`. The fit is checked on made-up points; the option on
real nets in Caffe."""
from __future__ import annotations

import json

import pytest
from helpers import ROOT, error_line, net_of, run

from deeprebirth.cli import reports
from deeprebirth.errors import RebirthError
from deeprebirth.runtime import layer_cost

CONVS = """
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1" convolution_param { num_output: 8 kernel_size: 3 } }
layer { name: "r1" type: "ReLU" bottom: "c1" top: "c1" }
layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2" convolution_param { num_output: 16 kernel_size: 3 } }
layer { name: "fc" type: "InnerProduct" bottom: "c2" top: "fc" inner_product_param { num_output: 10 } }
"""


def test_fit_recovers_a_line_and_its_layer_cost():
    macs = [1e4, 5e4, 2e5, 1e6]
    seconds = [2e-6 + 5e-11 * m for m in macs]          # 2 µs a layer + 0.05 ns a MAC: 40,000 MACs
    got = layer_cost.fit(macs, seconds)
    assert got["us_per_layer"] == pytest.approx(2.0) and got["ns_per_mac"] == pytest.approx(0.05)
    assert got["layer_cost_macs"] == 40_000 and got["layers"] == 4 and got["rms_us"] == pytest.approx(0, abs=1e-6)
    assert "40,000 MACs" in reports.layer_cost_line(got) and "--layer-cost 40000" in reports.layer_cost_line(got)


def test_fit_without_a_slope_or_with_too_few_layers():
    flat = layer_cost.fit([1e4, 1e5, 1e6], [3e-6, 2.9e-6, 2.8e-6])       # faster with more MACs: no cost
    assert flat["layer_cost_macs"] is None and "no layer cost" in reports.layer_cost_line(flat)
    with pytest.raises(RebirthError, match="at least two sizes"):
        layer_cost.fit([1e4], [1e-6])
    with pytest.raises(RebirthError, match="of one size"):
        layer_cost.fit([1e4, 1e4], [1e-6, 2e-6])
    with pytest.raises(ValueError):
        layer_cost.fit([1, 2, 3], [1, 2])


def test_points_pair_the_layer_rows_with_their_macs():
    net = net_of(CONVS, (1, 3, 12, 12))
    rows = [{"name": "c1", "type": "Convolution", "min_ms": 0.01}, {"name": "r1", "type": "ReLU", "min_ms": 0.5},
            {"name": "c2", "type": "Convolution", "min_ms": 0.02}, {"name": "fc", "type": "InnerProduct",
                                                                   "min_ms": 0.003}]
    macs, seconds = layer_cost.points([{"model": "n", "layers": rows}], [net])
    assert macs == [8 * 27 * 100, 16 * 72 * 64, 16 * 64 * 10]           # the ReLU is not a tensor layer
    assert seconds == pytest.approx([1e-5, 2e-5, 3e-6])
    with pytest.raises(RebirthError, match="no per-layer times"):
        layer_cost.points([{"model": "n", "layers": []}], [net])


def test_the_option_is_refused_where_layers_are_not_timed():
    res = run("bench", "googlenet", "--engine", "onnxruntime", "--fit-layer-cost")
    assert "whole passes only" in error_line(res)


@pytest.mark.caffe
def test_bench_fits_the_layer_cost_of_the_shipped_slim_nets(caffe):
    nets = [ROOT / "models" / "fmnist_googlenet_slim", ROOT / "models" / "fmnist_googlenet_slim_tucker"]
    res = run("bench", *nets, "--fit-layer-cost", "--runs", "3", "--warmup", "1", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    fit = doc["layer_cost"]
    tensor = sum(1 for m in doc["models"] for r in m["layers"] if r["type"] in layer_cost.TENSOR_TYPES)
    assert fit["layers"] == tensor > 50 and fit["ns_per_mac"] > 0
    text = run("bench", nets[0], "--fit-layer-cost", "--runs", "2", "--warmup", "0")
    assert text.exit_code == 0 and "layer cost: " in text.stdout and "Convolution/InnerProduct layers" in text.stdout
