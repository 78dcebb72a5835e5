"""`rebirth slim`: the files it writes, --only (Table 3's step by step), --rules, --keep-pooling,
and its errors: one line, exit code 1, nothing written."""
from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import STEM, error_line, run, write_random_weights

from deeprebirth.caffe import netio
from deeprebirth.graph.dag import Graph
from deeprebirth.graph.geometry import conv_geometry

PLAIN = """name: "plain"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc" inner_product_param { num_output: 5 } }
"""

OUTPUTS = {"deploy.prototxt", "train_val.prototxt", "solver.prototxt", "report.json"}


@pytest.fixture
def stem(tmp_path):
    path = tmp_path / "stem.prototxt"
    path.write_text(STEM)
    return path


@pytest.fixture
def stem_weights(tmp_path, stem):
    path = tmp_path / "stem.caffemodel"
    return path, write_random_weights(netio.read_net(stem), path, seed=5)


def test_writes_every_file_and_a_report(tmp_path, stem):
    out = tmp_path / "out"
    res = run("slim", stem, "-o", out)
    assert res.exit_code == 0, res.output
    assert {p.name for p in out.iterdir() if p.name != ".rebirth"} == OUTPUTS
    report = json.loads((out / "report.json").read_text())
    changes = {c["substructure"]: c for c in report["changes"]}
    assert list(changes) == ["conv1", "conv2"]
    c1 = changes["conv1"]
    assert c1["rule"] == "streamline" and c1["removed"] == ["pool1/3x3_s2", "pool1/norm1"]
    assert c1["regenerated"] == ["conv1/7x7_s2"] and c1["exact"] is False
    for key in ("params", "macs", "memory_bytes"):
        assert key in c1["before"] and key in c1["after"]
    assert c1["after"]["memory_bytes"] < c1["before"]["memory_bytes"]
    assert report["before"]["macs"] > report["after"]["macs"]
    assert report["regenerated"] == ["conv1/7x7_s2", "conv2/3x3"]
    # The summary is readable: units, rules, what went, the totals, where the files are.
    text = res.output
    for word in ("conv1", "conv2", "streamline", "pool1/norm1", "stride 2 -> 4", "blob memory", "deploy.prototxt"):
        assert word in text
    # The deploy net is a valid slim net with the same output.
    slim = netio.read_net(out / "deploy.prototxt")
    assert [layer.type for layer in slim.layer].count("Pooling") == 0
    assert Graph(slim).shapes["prob"] == Graph(netio.read_net(stem)).shapes["prob"]
    assert "init.caffemodel" not in {p.name for p in out.iterdir() if p.name != ".rebirth"}


def test_weights_give_init_caffemodel_bit_for_bit(tmp_path, stem, stem_weights, caffe):
    wpath, weights = stem_weights
    out = tmp_path / "out"
    res = run("slim", stem, "--weights", wpath, "-o", out)
    assert res.exit_code == 0, res.output
    init = netio.weights_of(netio.read_weights(out / "init.caffemodel"))
    assert init["fc"][0].tobytes() == weights["fc"][0].tobytes()
    assert init["fc"][1].tobytes() == weights["fc"][1].tobytes()
    for name in ("conv1/7x7_s2", "conv2/3x3"):
        assert init[name][0].shape == weights[name][0].shape
        assert not np.array_equal(init[name][0], weights[name][0]) and np.all(init[name][1] == 0)
    net = caffe.Net(str(out / "deploy.prototxt"), caffe.TEST, weights=str(out / "init.caffemodel"))
    assert net.blobs["prob"].data.shape == (1, 10)


def test_only_slims_the_named_units_step_by_step(tmp_path, stem, stem_weights):
    wpath, weights = stem_weights
    step1, step2 = tmp_path / "step1", tmp_path / "step2"
    assert run("slim", stem, "-w", wpath, "--only", "conv1", "-o", step1).exit_code == 0
    report = json.loads((step1 / "report.json").read_text())
    assert [c["substructure"] for c in report["changes"]] == ["conv1"] and report["only"] == ["conv1"]
    g = Graph(netio.read_net(step1 / "deploy.prototxt"))
    assert conv_geometry(g.node("conv2/3x3").layer)["stride"] == [1, 1]
    # Step 2 starts from step 1's (fine-tuned) output.
    res = run("slim", step1 / "deploy.prototxt", "-w", step1 / "init.caffemodel", "--only", "conv2", "-o", step2)
    assert res.exit_code == 0, res.output
    report = json.loads((step2 / "report.json").read_text())
    assert [c["substructure"] for c in report["changes"]] == ["conv2"]
    a = netio.weights_of(netio.read_weights(step1 / "init.caffemodel"))
    b = netio.weights_of(netio.read_weights(step2 / "init.caffemodel"))
    assert a["conv1/7x7_s2"][0].tobytes() == b["conv1/7x7_s2"][0].tobytes()


def test_only_with_an_unknown_name_lists_the_valid_ones(tmp_path, stem):
    out = tmp_path / "out"
    line = error_line(run("slim", stem, "--only", "conv1,inception_9z", "-o", out))
    assert "'inception_9z'" in line and "conv1, conv2" in line
    assert not out.exists()


def test_nothing_to_slim_writes_nothing(tmp_path):
    model = tmp_path / "plain.prototxt"
    model.write_text(PLAIN)
    out = tmp_path / "out"
    line = error_line(run("slim", model, "-o", out))
    assert "nothing to slim" in line and "nothing written" in line
    assert not out.exists()


def test_outputs_never_overwrite_inputs(tmp_path, stem, stem_weights):
    out = tmp_path / "out"
    out.mkdir()
    model = out / "deploy.prototxt"
    model.write_text(STEM)
    assert "rebirth did not write" in error_line(run("slim", model, "-o", out))   # not ours, and ...
    line = error_line(run("slim", model, "-o", out, "--force"))                  # ... even --force never
    assert "refusing to overwrite an input" in line
    assert model.read_text() == STEM and {p.name for p in out.iterdir() if p.name != ".rebirth"} == {"deploy.prototxt"}
    # The same for weights and a given train_val.
    wpath, _ = stem_weights
    moved = out / "init.caffemodel"
    moved.write_bytes(wpath.read_bytes())
    line = error_line(run("slim", stem, "-w", moved, "-o", out, "--force"))
    assert "init.caffemodel" in line and moved.read_bytes() == wpath.read_bytes()
    tv = out / "train_val.prototxt"
    tv.write_text('layer { name: "data" type: "DummyData" top: "data" top: "label" '
                  'dummy_data_param { shape { dim: 1 dim: 3 dim: 64 dim: 64 } shape { dim: 1 } } }')
    assert "train_val.prototxt" in error_line(run("slim", stem, "--train-val", tv, "-o", out, "--force"))
    assert {p.name for p in out.iterdir() if p.name != ".rebirth"} == {"deploy.prototxt", "init.caffemodel", "train_val.prototxt"}


def test_outdir_that_is_a_file(tmp_path, stem):
    out = tmp_path / "out"
    out.write_text("x")
    assert "is not a directory" in error_line(run("slim", stem, "-o", out))


def test_rules_option(tmp_path, stem):
    line = error_line(run("slim", stem, "--rules", "streamline,bogus", "-o", tmp_path / "x"))
    assert "unknown rule 'bogus'" in line and "streamline" in line
    res = run("slim", stem, "--rules", "streamline", "-o", tmp_path / "a", "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["rules"] == ["streamline"]
    assert {c["rule"] for c in report["changes"]} == {"streamline"}


def test_keep_pooling_reproduces_alexnet_table_7_style(tmp_path, stem):
    res = run("slim", stem, "--keep-pooling", "-o", tmp_path / "k", "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert [(c["substructure"], c["removed"], c["regenerated"]) for c in report["changes"]] == [
        ("conv1", ["pool1/norm1"], []), ("conv2", ["conv2/norm2"], [])]
    assert "pool_into_conv" not in report["rules"]
    line = error_line(run("slim", stem, "--keep-pooling", "--rules", "pool_into_conv", "-o", tmp_path / "x"))
    assert "--keep-pooling" in line


def test_given_train_val_and_dummy_data(tmp_path, stem):
    out = tmp_path / "d"
    assert run("slim", stem, "--data-layer", "dummy", "-o", out).exit_code == 0
    tv = netio.read_net(out / "train_val.prototxt")
    assert [layer.type for layer in tv.layer[:2]] == ["DummyData", "DummyData"]
    line = error_line(run("slim", stem, "--train-val", tmp_path / "missing.prototxt", "-o", tmp_path / "m"))
    assert "missing.prototxt: no such file" in line


def test_builtin_googlenet_only_conv1_and_conv2(tmp_path):
    res = run("slim", "googlenet", "--only", "conv1,conv2", "-o", tmp_path / "g", "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert [c["substructure"] for c in report["changes"]] == ["conv1", "conv2"]
    assert report["changes"][0]["removed"] == ["pool1/3x3_s2", "pool1/norm1"]
    assert report["changes"][1]["removed"] == ["conv2/norm2", "pool2/3x3_s2"]


def test_summary_says_more_when_a_rewrite_adds_macs():
    """A merge with zero blocks adds MACs: the summary says "more", never "0.93x fewer"."""
    from deeprebirth.cli.reports import _change

    assert _change(1.14e6, 1.23e6, "fewer") == "1.08x more"
    assert _change(3.63e6, 1.14e6, "fewer") == "3.18x fewer"
    assert _change(2.0, 2.0, "less") == "the same"
    assert _change(0, 5, "less") == "-"


def test_a_builtin_with_shipped_weights_brings_them_and_its_train_val(tmp_path):
    """`slim fmnist_googlenet -o D` alone slims the trained teacher, framed by its shipped train_val,
    as `eval fmnist_googlenet` evaluates it: the same files as naming both, and it says which it used."""
    from deeprebirth.caffe import builtin

    if builtin.weights("fmnist_googlenet") is None:
        pytest.skip("models/fmnist_googlenet.caffemodel is not built")
    alone = run("slim", "fmnist_googlenet", "-o", tmp_path / "alone")
    assert alone.exit_code == 0, alone.stderr
    assert f"using the weights shipped with it ({builtin.weights('fmnist_googlenet')})" in alone.stderr
    named = run("slim", "fmnist_googlenet", "-w", builtin.weights("fmnist_googlenet"), "--train-val",
                builtin.train_val("fmnist_googlenet"), "-o", tmp_path / "named")
    assert named.exit_code == 0 and "shipped with it" not in named.stderr
    for f in ("init.caffemodel", "train_val.prototxt", "deploy.prototxt"):
        assert (tmp_path / "alone" / f).read_bytes() == (tmp_path / "named" / f).read_bytes(), f
    assert "stand-in weights" not in alone.output           # the shipped weights were folded, not stand-ins
    bvlc = run("slim", "googlenet", "-o", tmp_path / "bvlc")     # no weights shipped: nothing said
    assert bvlc.exit_code == 0 and "shipped with it" not in bvlc.stderr
