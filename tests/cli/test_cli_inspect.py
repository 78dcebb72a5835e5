"""`rebirth inspect` and the CLI's contract: --help, --version, one-line errors with exit code != 0."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from helpers import error_line, run

from deeprebirth.caffe import netio
from deeprebirth.cli import main

SMALL = """name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 5 } }
"""


def test_help_and_version():
    assert run("--version").output.startswith("rebirth, version")
    top = run("--help")
    assert top.exit_code == 0
    for name in main.commands:
        res = run(name, "--help")
        assert res.exit_code == 0 and "Usage:" in res.output, name


def test_inspect_builtin_models_json():
    for name, prob in (("googlenet", [10, 1000]), ("alexnet", [10, 1000]), ("resnet50", [1, 1000])):
        res = run("inspect", name, "--json")
        assert res.exit_code == 0, res.output
        info = json.loads(res.stdout)
        layer = info["layers"][-1]
        assert layer["name"] == "prob" and layer["top_shapes"] == {"prob": prob}
        for entry in info["layers"]:
            assert set(entry) >= {"name", "type", "kind", "bottoms", "tops", "top_shapes", "params", "macs"}
            assert entry["kind"] in ("tensor", "non-tensor")
        assert info["memory_bytes"] > 0 and info["candidates"]


@pytest.mark.slow
def test_inspect_batch_and_table():
    one = json.loads(run("inspect", "googlenet", "--batch", "1", "--json").stdout)
    ten = json.loads(run("inspect", "googlenet", "--json").stdout)
    assert ten["memory_bytes"] == 10 * one["memory_bytes"]
    table = run("inspect", "googlenet", "--batch", "1")
    assert table.exit_code == 0
    assert "inception_3a/5x5" in table.output and "non-tensor share of MACs" in table.output
    assert re.search(r"\bbranch +inception_3a: ", table.output)


def test_inspect_with_matching_weights(tmp_path, caffe):
    proto = tmp_path / "small.prototxt"
    proto.write_text(SMALL)
    net = caffe.Net(str(proto), caffe.TEST)
    net.save(str(tmp_path / "small.caffemodel"))
    res = run("inspect", proto, "--weights", tmp_path / "small.caffemodel", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["weights"].endswith("small.caffemodel")


def test_weights_shape_mismatch_names_layer_and_both_shapes(tmp_path):
    proto = tmp_path / "small.prototxt"
    proto.write_text(SMALL)
    other = netio.parse_net_text(SMALL.replace("num_output: 4", "num_output: 6"))
    weights = {"conv": [np.zeros((6, 3, 3, 3), np.float32), np.zeros(6, np.float32)]}
    netio.write_weights(netio.with_weights(other, weights), tmp_path / "w.caffemodel")
    line = error_line(run("inspect", proto, "--weights", tmp_path / "w.caffemodel"))
    assert "layer 'conv'" in line and "[6, 3, 3, 3]" in line and "[4, 3, 3, 3]" in line


@pytest.mark.parametrize("text,expect", [
    ('layer {\n  name: "x"\n  type: "ReLU"\n  oops: 1\n}\n', r"bad.prototxt:4:"),
    ('base_lr: 0.01\nlr_policy: "step"\n', "SolverParameter"),
    ('name: "no layers"\n', "no layers"),
    (SMALL.replace('bottom: "pool" top: "fc"', 'bottom: "poool" top: "fc"'), "bottom 'poool' is produced by no layer"),
])
def test_bad_input_gives_one_line_error(tmp_path, text, expect):
    import re
    path = tmp_path / "bad.prototxt"
    path.write_text(text)
    line = error_line(run("inspect", path))
    assert line.startswith("rebirth: error:")
    assert re.search(expect, line), line


def test_missing_file_and_unknown_builtin():
    assert "no such file" in error_line(run("inspect", "/nonexistent/net.prototxt"))
    assert "built-in models" in error_line(run("inspect", "vgg16"))
