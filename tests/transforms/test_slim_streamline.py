"""Streamline slimming (rules/streamline.py) and pooling absorption into the next convolutions
(rules/pool_into_conv.py): structure, stride/pad arithmetic, guards, names, weights, and the
paper's units on AlexNet (Table 7) and ResNet-50 (Table 8)."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import conv, dropout, input_layer, ip, layer, lrn, pool, relu, text_model, types

from deeprebirth.graph.dag import Graph
from deeprebirth.graph.geometry import conv_geometry, conv_out, pool_out
from deeprebirth.graph.model import Model, load_model
from deeprebirth.runtime import pycaffe
from deeprebirth.transforms import runner
from deeprebirth.transforms.rules import available, get
from deeprebirth.transforms.rules.pool_into_conv import PoolIntoConvRule
from deeprebirth.transforms.rules.streamline import StreamlineRule, choose_pad, unit_names

STREAMLINE = StreamlineRule()
POOL_INTO_CONV = PoolIntoConvRule()


# ----------------------------------------------------------------------------------------------
# Small nets as prototxt text


INPUT = input_layer((1, 3, 32, 32))   # of the small nets


def model_of(text: str, weights: bool = False) -> Model:
    return text_model(text, "<test>", seed=3 if weights else None)


def run(m: Model, *rules, only=None) -> runner.Result:
    return runner.run(m, list(rules) or [STREAMLINE], only=only)


def final_shape(net, blob="out"):
    return Graph(net).shapes[blob]


def caffe_shapes(caffe, net) -> dict:
    return pycaffe.CaffeNet(net).blob_shapes()


# A GoogLeNet-like stem: conv1/7x7_s2 + relu + pool1 + norm1, conv2/3x3 + relu + norm2 + pool2.
STEM = (input_layer((1, 3, 224, 224))
        + conv("conv1/7x7_s2", "data", 8, 7, 3, 2) + relu("conv1/relu_7x7", "conv1/7x7_s2")
        + pool("pool1/3x3_s2", "conv1/7x7_s2") + lrn("pool1/norm1", "pool1/3x3_s2")
        + conv("conv2/3x3_reduce", "pool1/norm1", 8, 1, 0) + relu("conv2/relu_3x3_reduce", "conv2/3x3_reduce")
        + conv("conv2/3x3", "conv2/3x3_reduce", 12, 3, 1) + relu("conv2/relu_3x3", "conv2/3x3")
        + lrn("conv2/norm2", "conv2/3x3") + pool("pool2/3x3_s2", "conv2/norm2")
        + conv("out", "pool2/3x3_s2", 4, 1, 0))


# ----------------------------------------------------------------------------------------------
# The chain: structure, blob names, shapes


def test_googlenet_like_stem_becomes_two_slim_convolutions(caffe):
    m = model_of(STEM)
    res = run(m)
    assert [(c.substructure, c.removed, c.regenerated) for c in res.changes] == [
        ("conv1", ["pool1/3x3_s2", "pool1/norm1"], ["conv1/7x7_s2"]),
        ("conv2", ["conv2/norm2", "pool2/3x3_s2"], ["conv2/3x3"]),
    ]
    net = res.model.net
    assert "Pooling" not in types(net) and "LRN" not in types(net)
    g = Graph(net)
    c1 = conv_geometry(g.node("conv1/7x7_s2").layer)
    assert c1["stride"] == [4, 4] and c1["pad"] == [2, 2]
    c2 = conv_geometry(g.node("conv2/3x3").layer)
    assert c2["stride"] == [2, 2] and c2["pad"] == [1, 1]
    # The blobs downstream layers read keep their names and their shapes; ReLUs are kept.
    before = Graph(m.net).shapes
    assert g.node("conv1/7x7_s2").layer.top[0] == "pool1/norm1"
    assert g.node("conv1/relu_7x7").layer.bottom[0] == "pool1/norm1"
    assert g.shapes["pool1/norm1"] == before["pool1/norm1"] == (1, 8, 56, 56)
    assert g.shapes["pool2/3x3_s2"] == before["pool2/3x3_s2"] == (1, 12, 28, 28)
    assert g.shapes["out"] == before["out"]
    # Real Caffe agrees, and the original output shape is unchanged.
    got = caffe_shapes(caffe, net)
    assert got["out"] == before["out"] and got["pool1/norm1"] == (1, 8, 56, 56)


def test_rewrite_keeps_layer_order_and_leaves_the_input_alone():
    m = model_of(STEM)
    res = run(m)
    assert [layer.name for layer in res.model.net.layer] == [
        "data", "conv1/7x7_s2", "conv1/relu_7x7", "conv2/3x3_reduce", "conv2/relu_3x3_reduce",
        "conv2/3x3", "conv2/relu_3x3", "out"]
    assert len(m.net.layer) == 12  # the input model is untouched


def test_out_of_place_activation_is_kept_and_rewired(caffe):
    text = (INPUT + conv("c", "data", 4, 3, 1) + relu("r", "c", top="r") + pool("p", "r")
            + lrn("n", "p") + conv("out", "n", 2, 1, 0))
    res = run(model_of(text))
    net = res.model.net
    names = {layer.name: layer for layer in net.layer}
    assert list(names["c"].top) == ["c"] and list(names["r"].bottom) == ["c"] and list(names["r"].top) == ["n"]
    assert caffe_shapes(caffe, net)["out"] == final_shape(model_of(text).net)


def test_lrn_and_dropout_only_keep_the_weights():
    text = (INPUT + conv("c", "data", 4, 3, 1) + relu("r", "c") + lrn("n", "c") + dropout("d", "n")
            + conv("out", "n", 2, 1, 0))
    m = model_of(text, weights=True)
    res = run(m)
    (c,) = res.changes
    assert c.removed == ["n", "d"] and c.regenerated == [] and not c.exact
    assert any("keeps its weights" in note for note in c.notes)
    assert res.model.weights["c"][0] is m.weights["c"][0]
    assert conv_geometry(Graph(res.model.net).node("c").layer)["stride"] == [1, 1]


def test_regenerated_conv_gets_fresh_xavier_weights_and_zero_bias():
    m = model_of(STEM, weights=True)
    res = run(m, only={"conv1"})
    w, b = res.model.weights["conv1/7x7_s2"]
    assert w.shape == m.weights["conv1/7x7_s2"][0].shape and not np.array_equal(w, m.weights["conv1/7x7_s2"][0])
    assert np.all(b == 0)
    limit = np.sqrt(3.0 / (3 * 7 * 7))
    assert np.abs(w).max() <= limit + 1e-6
    assert res.model.weights["conv2/3x3"][0] is m.weights["conv2/3x3"][0]


# ----------------------------------------------------------------------------------------------
# Stride and pad arithmetic: pooling rounds up, convolution rounds down


@pytest.mark.parametrize("size,k,pad,stride,pk,ps,ppad,want_pad", [
    (224, 7, 3, 2, 3, 2, 0, 2),   # GoogLeNet conv1: 112 -> pool 56 (floor would give 55); pad 1 gives 55
    (56, 3, 1, 1, 3, 2, 0, 1),    # GoogLeNet conv2: 56 -> 28 (floor: 27)
    (27, 5, 2, 1, 3, 2, 0, 1),    # AlexNet conv2: 27 -> 13
    (13, 3, 1, 1, 3, 2, 0, 0),    # AlexNet conv5: 13 -> 6
    (32, 3, 1, 1, 2, 2, 0, 1),    # even pooling, no rounding: 32 -> 16 (pad 0 would give 15)
    (33, 3, 1, 1, 2, 2, 0, 1),    # 33 -> pool 17 (ceil), conv stride 2 needs pad 1
    (30, 5, 2, 1, 3, 3, 1, 3),    # padded pooling, stride 3: 30 -> 11
    (16, 1, 0, 1, 3, 2, 0, 0),    # 1x1 kernel: 16 -> 8
    (40, 3, 1, 2, 3, 2, 1, 2),    # strided conv and padded pooling: 40 -> 20 -> 11 (ceil)
])
def test_pad_makes_the_slim_conv_output_the_pooled_size(size, k, pad, stride, pk, ps, ppad, want_pad):
    text = (input_layer((1, 2, size, size)) + conv("c", "data", 3, k, pad, stride) + relu("r", "c")
            + pool("p", "c", pk, ps, ppad) + conv("out", "p", 2, 1, 0))
    m = model_of(text)
    conv_size = conv_out(size, k, pad, stride)
    pooled = pool_out(conv_size, pk, ppad, ps)
    assert final_shape(m.net, "p")[2:] == (pooled, pooled)
    res = run(m)
    (c,) = res.changes
    geo = conv_geometry(Graph(res.model.net).node("c").layer)
    assert geo["stride"] == [stride * ps] * 2 and geo["pad"] == [want_pad] * 2
    assert conv_out(size, k, want_pad, stride * ps) == pooled
    assert final_shape(res.model.net, "p") == final_shape(m.net, "p")
    assert final_shape(res.model.net) == final_shape(m.net)


def test_choose_pad_prefers_the_aligned_pad_and_reports_impossible_sizes():
    assert choose_pad(224, 7, 4, 56, ideal=1) == 2        # 2 and 3 fit; 2 is closest to 1
    assert choose_pad(224, 7, 4, 56, ideal=2.6) == 3
    assert choose_pad(227, 11, 8, 27, ideal=0) is None    # AlexNet conv1 + pool1: 28 at best
    assert choose_pad(10, 1, 2, 6, ideal=0) is None       # would need pad >= kernel extent
    assert choose_pad(11, 3, 1, 11, ideal=1, dilation=1) == 1


def test_non_square_geometry_uses_per_axis_stride_and_pad(caffe):
    text = (input_layer((1, 2, 32, 20)) + conv("c", "data", 3, 3, 1, extra="")
            + 'layer { name: "p" type: "Pooling" bottom: "c" top: "p" '
              'pooling_param { pool: MAX kernel_size: 3 stride_h: 2 stride_w: 1 pad_h: 0 pad_w: 1 } }\n'
            + conv("out", "p", 2, 1, 0))
    m = model_of(text)
    res = run(m)
    layer = {x.name: x for x in res.model.net.layer}["c"].convolution_param
    assert (layer.stride_h, layer.stride_w) == (2, 1) and list(layer.stride) == []
    assert final_shape(res.model.net, "p") == final_shape(m.net, "p") == (1, 3, 16, 20)
    assert caffe_shapes(caffe, res.model.net)["out"] == final_shape(m.net)


def test_pooling_that_cannot_be_matched_is_kept_and_the_lrn_still_pruned():
    # AlexNet's conv1: 227 -> 55 -> LRN -> pool 27; stride 8 on 227 gives 28 with any pad >= 0.
    text = (input_layer((1, 3, 227, 227)) + conv("conv1", "data", 4, 11, 0, 4) + relu("relu1", "conv1")
            + lrn("norm1", "conv1") + pool("pool1", "norm1") + conv("out", "pool1", 2, 1, 0))
    m = model_of(text)
    res = run(m)
    (c,) = res.changes
    assert c.removed == ["norm1"] and c.regenerated == []
    assert any("pooling kept" in n and "27" in n for n in c.notes)
    assert types(res.model.net).count("Pooling") == 1
    assert final_shape(res.model.net) == final_shape(m.net)


def test_global_and_wide_stride_one_poolings_are_kept():
    text = (input_layer((1, 3, 8, 8)) + conv("c", "data", 4, 1, 0) + pool("p", "c", 3, 1, 1)
            + conv("c2", "p", 4, 3, 1) + pool("g", "c2", extra="global_pooling: true").replace(
                "kernel_size: 3 stride: 2 pad: 0 ", "") + conv("out", "g", 2, 1, 0))
    res = run(model_of(text))
    assert res.changes == []
    reasons = {s.substructure: s.reason for s in res.skips}
    assert "stride 1" in reasons["c"] and "global" in reasons["c2"]


# ----------------------------------------------------------------------------------------------
# Guards and options


def test_chain_with_batchnorm_is_left_to_fold_bn():
    text = (INPUT + conv("c", "data", 4, 3, 1)
            + layer("bn", "BatchNorm", ["c"], "c") + layer("sc", "Scale", ["c"], "c", "scale_param { bias_term: true }")
            + relu("r", "c") + pool("p", "c") + conv("out", "p", 2, 1, 0))
    res = run(model_of(text))
    assert res.changes == []
    (skip,) = res.skips
    assert skip.substructure == "c" and "fold_bn" in skip.reason
    assert "slim with {opt:weights} and {opt:only} c" in skip.reason          # no weights: give them
    (skip,) = run(model_of(text, weights=True)).skips
    assert "slim with {opt:only} c" in skip.reason and "{opt:weights}" not in skip.reason   # weights: the fold only


def test_batchnorm_only_chain_is_not_a_streamline_match():
    text = INPUT + conv("c", "data", 4, 3, 1) + layer("bn", "BatchNorm", ["c"], "c") + conv("out", "c", 2, 1, 0)
    assert STREAMLINE.match(Graph(model_of(text).net)) == []


def test_dropout_alone_is_kept_for_fine_tuning():
    text = (INPUT + conv("c", "data", 4, 3, 1) + ip("fc", "c") + relu("r", "fc") + dropout("drop", "fc")
            + ip("out", "fc"))
    res = run(model_of(text))
    assert res.changes == []
    assert [s.substructure for s in res.skips] == ["fc"] and "Dropout" in res.skips[0].reason


def test_keep_pooling_option_only_prunes_lrn():
    res = run(model_of(STEM), StreamlineRule(absorb_pooling=False))
    assert [(c.substructure, c.removed, c.regenerated) for c in res.changes] == [
        ("conv1", ["pool1/norm1"], []), ("conv2", ["conv2/norm2"], [])]
    assert types(res.model.net).count("Pooling") == 2
    assert final_shape(res.model.net) == final_shape(model_of(STEM).net)


def test_pooling_feeding_two_branches_is_still_absorbed_into_the_conv_before_it(caffe):
    # The chain's last top is what both branches read: it keeps its name and shape.
    text = (INPUT + conv("c", "data", 4, 3, 1) + relu("r", "c") + pool("p", "c")
            + conv("a", "p", 2, 1, 0) + conv("b", "p", 2, 3, 1)
            + layer("out", "Concat", ["a", "b"]))
    m = model_of(text)
    res = run(m)
    assert [c.removed for c in res.changes] == [["p"]]
    assert caffe_shapes(caffe, res.model.net)["out"] == final_shape(m.net)


def test_only_restricts_to_named_units_and_names_come_from_layer_names():
    res = run(model_of(STEM), only={"conv2"})
    assert [c.substructure for c in res.changes] == ["conv2"]
    assert unit_names(["conv1/7x7_s2", "conv2/3x3", "fc6"], {"conv1/7x7_s2", "conv2/3x3", "fc6", "x/y"}) == {
        "conv1/7x7_s2": "conv1", "conv2/3x3": "conv2", "fc6": "fc6"}
    # A prefix that is another layer's name, or one shared by the whole net, is not used.
    assert unit_names(["conv2/3x3"], {"conv2", "conv2/3x3"}) == {"conv2/3x3": "conv2/3x3"}
    assert unit_names(["net/a", "net/b"], {"net/a", "net/b", "net/c"}) == {"net/a": "net/a", "net/b": "net/b"}
    # Parts of one unit share its name.
    assert set(unit_names(["inc/1x1", "inc/3x3"], {"inc/1x1", "inc/3x3", "x"}).values()) == {"inc"}


# ----------------------------------------------------------------------------------------------
# pool_into_conv


def test_pooling_read_only_by_convolutions_goes_into_their_strides(caffe):
    text = (input_layer((1, 3, 28, 28)) + conv("c", "data", 4, 3, 1) + layer("cat", "Concat", ["c", "data"])
            + pool("pool3/3x3_s2", "cat") + conv("a/1x1", "pool3/3x3_s2", 4, 1, 0)
            + conv("a/3x3", "pool3/3x3_s2", 4, 3, 1) + layer("out", "Concat", ["a/1x1", "a/3x3"]))
    m = model_of(text, weights=True)
    res = run(m, POOL_INTO_CONV)
    (c,) = res.changes
    assert c.substructure == "pool3" and c.removed == ["pool3/3x3_s2"] and c.regenerated == ["a/1x1", "a/3x3"]
    g = Graph(res.model.net)
    for name, pad in (("a/1x1", 0), ("a/3x3", 1)):
        geo = conv_geometry(g.node(name).layer)
        assert geo["stride"] == [2, 2] and geo["pad"] == [pad, pad]
        assert list(g.node(name).layer.bottom) == ["cat"]
        assert g.shapes[name] == Graph(m.net).shapes[name] == (1, 4, 14, 14)
    assert caffe_shapes(caffe, res.model.net)["out"] == final_shape(m.net)
    assert not np.array_equal(res.model.weights["a/3x3"][0], m.weights["a/3x3"][0])
    assert res.model.weights["c"][0] is m.weights["c"][0]


def test_pooling_that_also_feeds_a_concat_or_another_branch_is_not_absorbed():
    text = (input_layer((1, 3, 28, 28)) + layer("cat", "Concat", ["data", "data"])
            + pool("p", "cat") + conv("a", "p", 4, 1, 0) + pool("q", "p", 3, 1, 1)
            + layer("out", "Concat", ["a", "q"]))
    res = run(model_of(text), POOL_INTO_CONV)
    assert res.changes == []
    (skip,) = res.skips
    assert skip.rule == "pool_into_conv" and "also feeds 'q' (Pooling)" in skip.reason
    text2 = (input_layer((1, 3, 28, 28)) + layer("cat", "Concat", ["data", "data"]) + pool("p", "cat")
             + conv("a", "p", 4, 1, 0) + layer("out", "Concat", ["a", "p"]))
    res2 = run(model_of(text2), POOL_INTO_CONV)
    assert res2.changes == [] and "(Concat)" in res2.skips[0].reason


def test_pool_into_conv_guards_wide_stride_one_pooling_and_impossible_sizes():
    text = (input_layer((1, 3, 28, 28)) + layer("cat", "Concat", ["data", "data"]) + pool("p", "cat", 3, 1, 1)
            + conv("a", "p", 4, 1, 0))
    res = run(model_of(text), POOL_INTO_CONV)
    assert res.changes == [] and "stride 1" in res.skips[0].reason
    # 3x3 stride-2 pooling on 27 -> 13; a 1x1 conv with stride 2 gives 14 with pad 0: no fit.
    text2 = (input_layer((1, 3, 27, 27)) + layer("cat", "Concat", ["data", "data"]) + pool("p", "cat")
             + conv("a", "p", 4, 1, 0))
    res2 = run(model_of(text2), POOL_INTO_CONV)
    assert res2.changes == [] and "no padding" in res2.skips[0].reason


# ----------------------------------------------------------------------------------------------
# The paper's units on the public reference nets


def test_alexnet_units(shared_models, caffe):
    m = load_model(shared_models / "bvlc_alexnet" / "deploy.prototxt")
    res = run(m)
    got = {c.substructure: (c.removed, c.regenerated) for c in res.changes}
    # conv1: pool1 cannot be absorbed (227 -> 27 at stride 8 is impossible), LRN pruned (Table 7).
    assert got == {"conv1": (["norm1"], []), "conv2": (["norm2", "pool2"], ["conv2"]),
                   "conv5": (["pool5"], ["conv5"])}
    assert {s.substructure for s in res.skips} >= {"fc6", "fc7"}
    assert caffe_shapes(caffe, res.model.net)["prob"] == Graph(m.net).shapes["prob"]
    # Table 7 literally: conv1+norm1 -> conv1, conv2+norm2 -> conv2, poolings kept.
    lit = run(m, StreamlineRule(absorb_pooling=False))
    assert [(c.substructure, c.removed) for c in lit.changes] == [("conv1", ["norm1"]), ("conv2", ["norm2"])]


@pytest.mark.slow
def test_resnet50_conv1(shared_models, caffe):
    m = load_model(shared_models / "resnet50" / "deploy.prototxt")
    res = run(m)
    assert res.changes == []
    assert [s.substructure for s in res.skips] == ["conv1"] and "fold_bn" in res.skips[0].reason
    if "fold_bn" not in available():
        pytest.skip("rule fold_bn not available")
    m.weights = pycaffe.random_weights(Graph(m.net), seed=0)
    res = runner.run(m, get(["fold_bn", "streamline"]))
    slim = [c for c in res.changes if c.rule == "streamline"]
    assert [(c.substructure, c.removed, c.regenerated) for c in slim] == [("conv1", ["pool1"], ["conv1"])]
    g = Graph(res.model.net)
    geo = conv_geometry(g.node("conv1").layer)
    assert geo["stride"] == [4, 4] and geo["pad"] == [2, 2]
    assert g.shapes["pool1"] == (1, 64, 56, 56)
    assert list(g.node("res2a_branch1").layer.bottom) == ["pool1"]
    assert caffe_shapes(caffe, res.model.net)["prob"] == (1, 1000)


def test_googlenet_paper_units(shared_models):
    m = load_model(shared_models / "bvlc_googlenet" / "deploy.prototxt")
    res = run(m)
    assert [c.substructure for c in res.changes] == ["conv1", "conv2"]
    g = Graph(res.model.net, batch=1)
    assert g.shapes["pool1/norm1"] == (1, 64, 56, 56) and g.shapes["pool2/3x3_s2"] == (1, 192, 28, 28)
