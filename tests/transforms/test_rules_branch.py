"""Branch slimming (rules/branch.py): inception-like blocks lose their pooling and 1x1 branches
and their 3x3 reducer shrinks, with the Concat's channel count (and everything after it) kept."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import GOOGLENET_MEMORY_B1, concat, conv, get_layer, googlenet, net_of, pool, relu, with_weights

from deeprebirth.graph.dag import Graph
from deeprebirth.graph.model import Model
from deeprebirth.runtime import pycaffe
from deeprebirth.transforms import runner
from deeprebirth.transforms.rules import branch, get
from deeprebirth.transforms.rules.branch import BranchRule, find_blocks

GOOGLENET_BLOCKS = ["inception_3a", "inception_3b", "inception_4a", "inception_4b", "inception_4c",
                    "inception_4d", "inception_4e", "inception_5a", "inception_5b"]
DIMS = (1, 8, 12, 12)   # the input of the small nets


# ----------------------------------------------------------------------------------------------
# Small nets, written as prototxt text


def inception(p, bottom, c1=8, c3r=6, c3=10, c5r=4, c5=6, cp=5, pool_k=3, order=("1x1", "3x3", "5x5", "pool")):
    """A GoogLeNet inception block named ``p``; returns (text, top)."""
    parts = {
        "1x1": (conv(f"{p}/1x1", bottom, c1) + relu(f"{p}/relu_1x1", f"{p}/1x1"), f"{p}/1x1"),
        "3x3": (conv(f"{p}/3x3_reduce", bottom, c3r) + relu(f"{p}/relu_3x3_reduce", f"{p}/3x3_reduce")
                + conv(f"{p}/3x3", f"{p}/3x3_reduce", c3, 3, 1) + relu(f"{p}/relu_3x3", f"{p}/3x3"), f"{p}/3x3"),
        "5x5": (conv(f"{p}/5x5_reduce", bottom, c5r) + relu(f"{p}/relu_5x5_reduce", f"{p}/5x5_reduce")
                + conv(f"{p}/5x5", f"{p}/5x5_reduce", c5, 5, 2) + relu(f"{p}/relu_5x5", f"{p}/5x5"), f"{p}/5x5"),
        "pool": (pool(f"{p}/pool", bottom, pool_k, 1, pool_k // 2) + conv(f"{p}/pool_proj", f"{p}/pool", cp)
                 + relu(f"{p}/relu_pool_proj", f"{p}/pool_proj"), f"{p}/pool_proj"),
    }
    text = "".join(parts[o][0] for o in order)
    return text + concat(f"{p}/output", [parts[o][1] for o in order]), f"{p}/output"


def stem_block_head(**kw):
    """data -> stem conv -> inception block 'inc' -> 1x1 conv 'after' -> global pooling."""
    text, top = inception("inc", "stem", **kw)
    body = conv("stem", "data", 12, 3, 1) + relu("stem_relu", "stem") + text
    body += conv("after", top, 7) + relu("after_relu", "after")
    body += 'layer { name: "gap" type: "Pooling" bottom: "after" top: "gap" pooling_param { pool: AVE global_pooling: true } }\n'
    return net_of(body, DIMS)


def num_output(net, name):
    return get_layer(net, name).convolution_param.num_output


def concat_channels(net, name, batch=None):
    g = Graph(net, batch=batch)
    return g.shapes[get_layer(net, name).top[0]][1]


# ----------------------------------------------------------------------------------------------
# One block


def test_rule_is_registered():
    assert get(["branch"]) == [branch.RULE]
    assert branch.RULE.reduce_ratio == 0.5 and branch.RULE.exact is False


def test_inception_block_is_slimmed_to_two_tensor_branches():
    model = with_weights(stem_block_head())
    before = Graph(model.net)
    result = runner.run(model, [branch.RULE])
    out = result.model
    assert [c.substructure for c in result.changes] == ["inc"] and not result.skips
    change = result.changes[0]
    assert change.exact is False
    assert sorted(change.removed) == sorted(["inc/pool", "inc/pool_proj", "inc/relu_pool_proj",
                                             "inc/1x1", "inc/relu_1x1"])
    assert sorted(change.regenerated) == sorted(["inc/3x3_reduce", "inc/3x3", "inc/5x5"])
    # (a) the pooling branch goes to the 5x5 branch, (b) the 1x1 branch to the 3x3 branch,
    # (c) the 3x3 reducer keeps half its outputs
    assert num_output(out.net, "inc/5x5") == 6 + 5
    assert num_output(out.net, "inc/3x3") == 10 + 8
    assert num_output(out.net, "inc/3x3_reduce") == 3
    assert num_output(out.net, "inc/5x5_reduce") == 4
    # the Concat joins the two branches, in the original channel order, with the same channels
    assert list(get_layer(out.net, "inc/output").bottom) == ["inc/3x3", "inc/5x5"]
    assert concat_channels(out.net, "inc/output") == concat_channels(model.net, "inc/output") == 29
    # everything after the block is untouched, layer for layer
    after = Graph(out.net)
    for name in ("after", "after_relu", "gap"):
        assert get_layer(out.net, name) == get_layer(model.net, name)
        assert after.node(name).top_shapes == before.node(name).top_shapes
    # weights: removed layers lose theirs, regenerated ones get fresh ones of the new shapes
    # (Xavier, zero bias), the others keep theirs bit for bit
    for name in change.removed:
        assert name not in out.weights
    for name in change.regenerated:
        arrays = out.weights[name]
        assert [a.shape for a in arrays] == list(after.node(name).param_shapes)
        assert not np.any(arrays[1]) and np.all(np.abs(arrays[0]) <= np.sqrt(3.0 / np.prod(arrays[0].shape[1:])))
    for name in ("stem", "inc/5x5_reduce", "after"):
        assert all(a is b for a, b in zip(out.weights[name], model.weights[name]))
    assert after.memory_bytes < before.memory_bytes
    # the input model is not modified
    assert num_output(model.net, "inc/3x3") == 10


def test_slimmed_net_runs_in_caffe(caffe):
    model = with_weights(stem_block_head())
    out = runner.run(model, [branch.RULE]).model
    net = pycaffe.CaffeNet(out.net, out.weights)
    net.fill_inputs(0)
    res = net.forward()
    assert res["gap"].shape == (1, 7, 1, 1) and np.all(np.isfinite(res["gap"]))
    assert net.blob_shapes()["inc/output"] == (1, 29, 12, 12)


def test_rule_is_idempotent():
    out = runner.run(Model(stem_block_head()), [branch.RULE]).model
    again = runner.run(out, [branch.RULE])
    assert not again.changes and not again.skips   # a slimmed block is not even matched
    assert again.model.net == out.net


def test_without_weights():
    out = runner.run(Model(stem_block_head()), [branch.RULE]).model
    assert out.weights is None and num_output(out.net, "inc/3x3") == 18


@pytest.mark.parametrize("ratio,want", [(0.25, 2), (1.0, 6), (0.01, 1)])
def test_reduce_ratio_is_an_option(ratio, want):
    out = runner.run(Model(stem_block_head(c3r=6)), [BranchRule(reduce_ratio=ratio)]).model
    assert num_output(out.net, "inc/3x3_reduce") == want
    assert num_output(out.net, "inc/5x5_reduce") == 4


def test_reduce_all_shrinks_every_reducer():
    result = runner.run(Model(stem_block_head(c3r=6, c5r=4)), [BranchRule(reduce_all=True)])
    assert num_output(result.model.net, "inc/3x3_reduce") == 3
    assert num_output(result.model.net, "inc/5x5_reduce") == 2
    assert "inc/5x5_reduce" in result.changes[0].regenerated


def test_bad_ratio_is_a_note():
    result = runner.run(Model(stem_block_head()), [BranchRule(reduce_ratio=1.5)])
    assert not result.changes and "reduce_ratio" in result.skips[0].reason


def test_absorbed_channels_stay_where_they_were():
    """Pooling branch first: it goes to the nearest branch that can take it (3x3), before that
    branch's own channels, and so does the 1x1 branch between them."""
    net = stem_block_head(order=("pool", "1x1", "3x3", "5x5"))
    result = runner.run(Model(net), [branch.RULE])
    out = result.model.net
    assert list(get_layer(out, "inc/output").bottom) == ["inc/3x3", "inc/5x5"]
    assert num_output(out, "inc/3x3") == 5 + 8 + 10 and num_output(out, "inc/5x5") == 6
    assert concat_channels(out, "inc/output") == 29
    assert not any("contiguous" in n for n in result.changes[0].notes)


def test_non_adjacent_absorption_is_reported():
    # a 5x5 pooling: only the 5x5 branch can take it, and the 3x3 branch sits between them
    net = stem_block_head(order=("pool", "3x3", "5x5"), pool_k=5)
    result = runner.run(Model(net), [branch.RULE])
    out = result.model.net
    assert num_output(out, "inc/5x5") == 6 + 5 and num_output(out, "inc/3x3") == 10
    assert list(get_layer(out, "inc/output").bottom) == ["inc/5x5", "inc/3x3"]
    assert concat_channels(out, "inc/output") == 21
    assert any("no longer contiguous" in n for n in result.changes[0].notes)


def test_single_branch_collapse_when_allowed():
    text, _ = inception("inc", "stem", order=("1x1", "3x3", "pool"))
    body = conv("stem", "data", 12, 3, 1) + relu("stem_relu", "stem") + text + conv("after", "inc/output", 7)
    net = net_of(body, DIMS)
    # default: at least two branches stay (the paper's 4 -> 2); the 1x1 branch is kept
    result = runner.run(Model(net), [branch.RULE])
    out = result.model.net
    assert list(get_layer(out, "inc/output").bottom) == ["inc/1x1", "inc/3x3"]
    assert num_output(out, "inc/3x3") == 10 + 5
    assert any("fewer than 2 branches" in n for n in result.changes[0].notes)
    # min_branches=1: one branch left, the Concat (a copy) goes, the 3x3 conv writes its top
    model = with_weights(net)
    result = runner.run(model, [BranchRule(min_branches=1)])
    out = result.model
    assert "inc/output" not in [lr.name for lr in out.net.layer]
    assert list(get_layer(out.net, "inc/3x3").top) == ["inc/output"]
    assert list(get_layer(out.net, "inc/relu_3x3").bottom) == ["inc/output"]
    assert get_layer(out.net, "after") == get_layer(model.net, "after")
    assert concat_channels(model.net, "inc/output") == Graph(out.net).shapes["inc/output"][1] == 23
    assert Graph(out.net).memory_bytes < Graph(model.net).memory_bytes


# ----------------------------------------------------------------------------------------------
# Guards


def test_pooling_read_outside_the_block_is_not_absorbed():
    text, top = inception("inc", "stem")
    body = conv("stem", "data", 12, 3, 1) + text + conv("after", top, 7)
    body += conv("side", "inc/pool", 3)   # the pooling's output is also read elsewhere
    net = net_of(body, DIMS)
    assert not [g for g in branch.branch_groups(Graph(net)) if g["concat"] == "inc/output"]
    result = runner.run(with_weights(net), [branch.RULE])
    out = result.model.net
    change = result.changes[0]
    assert change.substructure == "inc"
    for name in ("inc/pool", "inc/pool_proj", "inc/relu_pool_proj", "side"):
        assert get_layer(out, name) == get_layer(net, name)
    assert "inc/pool" not in change.removed and "inc/1x1" in change.removed
    assert any("'inc/pool'" in n and "also read by 'side'" in n for n in change.notes)
    assert num_output(out, "inc/5x5") == 6 and num_output(out, "inc/3x3") == 18
    assert list(get_layer(out, "inc/output").bottom) == ["inc/3x3", "inc/5x5", "inc/pool_proj"]
    assert concat_channels(out, "inc/output") == 29
    # a second run finds nothing more to do, and says why
    again = runner.run(result.model, [branch.RULE])
    assert not again.changes and "also read by 'side'" in again.skips[0].reason


def test_pooling_shared_by_two_branches_is_not_absorbed():
    text, _ = inception("inc", "stem")
    # a fifth branch reads the same pooling
    text = text.replace('bottom: "inc/pool_proj" top: "inc/output"',
                        'bottom: "inc/pool_proj" bottom: "inc/pool_proj2" top: "inc/output"')
    text = text.replace(relu("inc/relu_pool_proj", "inc/pool_proj"),
                        relu("inc/relu_pool_proj", "inc/pool_proj") + conv("inc/pool_proj2", "inc/pool", 3))
    net = net_of(conv("stem", "data", 12, 3, 1) + text + conv("after", "inc/output", 7), DIMS)
    (block,) = find_blocks(Graph(net))
    assert [b.kind for b in block.branches] == ["1x1", "tensor", "tensor", "pool", "pool"]
    assert [b.pinned is not None for b in block.branches] == [False, False, False, True, True]
    result = runner.run(Model(net), [branch.RULE])
    out = result.model.net
    assert "inc/pool" not in result.changes[0].removed
    for name in ("inc/pool", "inc/pool_proj", "inc/pool_proj2"):
        assert get_layer(out, name) == get_layer(net, name)
    assert num_output(out, "inc/3x3") == 18 and num_output(out, "inc/5x5") == 6
    assert concat_channels(out, "inc/output") == concat_channels(net, "inc/output") == 32


def test_kernels_that_do_not_allow_absorption_leave_the_block_alone():
    # a 5x5 pooling, but the largest convolution is 3x3
    text, _ = inception("inc", "stem", order=("1x1", "3x3", "pool"), pool_k=5)
    net = net_of(conv("stem", "data", 12, 3, 1) + text + conv("after", "inc/output", 7), DIMS)
    result = runner.run(Model(net), [branch.RULE])
    assert not result.changes and result.model.net == net
    (skip,) = result.skips
    assert skip.rule == "branch" and skip.substructure == "inc"
    assert "left alone" in skip.reason and "'inc/pool'" in skip.reason and "5x5" in skip.reason


def test_two_branch_units_are_left_alone():
    """SqueezeNet's fire module (1x1 and 3x3 expand): slimming would leave one branch."""
    body = (conv("squeeze", "data", 4) + relu("squeeze_relu", "squeeze") + conv("e1", "squeeze", 8)
            + conv("e3", "squeeze", 8, 3, 1) + concat("fire", ["e1", "e3"]))
    result = runner.run(Model(net_of(body, DIMS)), [branch.RULE])
    assert not result.changes and "fewer than 2 branches" in result.skips[0].reason


def test_no_match_for_concats_that_are_not_blocks():
    # a Concat of blobs with no common source (through single-input layers), and a
    # DenseNet-style Concat of a blob with a layer reading it (no branch on one side)
    body = (conv("a", "data", 4) + conv("b", "a", 4, 3, 1)
            + 'layer { name: "e" type: "Eltwise" bottom: "a" bottom: "b" top: "e" }\n'
            + concat("cat", ["b", "e"]) + conv("f", "e", 4) + concat("dense", ["e", "f"]))
    graph = Graph(net_of(body, DIMS))
    assert find_blocks(graph) == [] and branch.RULE.match(graph) == []


def test_channel_axis_only():
    text, _ = inception("inc", "stem", c1=6, c3=6, c5=6, cp=6)
    text = text.replace('top: "inc/output" }', 'top: "inc/output" concat_param { axis: 2 } }')
    net = net_of(conv("stem", "data", 12, 3, 1) + text, DIMS)
    assert Graph(net).shapes["inc/output"] == (1, 6, 48, 12)
    result = runner.run(Model(net), [branch.RULE])
    assert not result.changes and "channel axis" in result.skips[0].reason


# ----------------------------------------------------------------------------------------------
# GoogLeNet


def _conv_outputs(net):
    return {lr.name: lr.convolution_param.num_output for lr in net.layer if lr.type == "Convolution"}


def test_googlenet_all_nine_blocks_slimmed(shared_models):
    model = googlenet(shared_models)
    orig = _conv_outputs(model.net)
    result = runner.run(model, [branch.RULE])
    out = result.model.net
    assert [c.substructure for c in result.changes] == GOOGLENET_BLOCKS
    assert not result.skips
    new = _conv_outputs(out)
    g0, g1 = Graph(model.net, batch=1), Graph(out, batch=1)
    for b in GOOGLENET_BLOCKS:
        assert new[f"{b}/3x3"] == orig[f"{b}/3x3"] + orig[f"{b}/1x1"]
        assert new[f"{b}/5x5"] == orig[f"{b}/5x5"] + orig[f"{b}/pool_proj"]
        assert new[f"{b}/3x3_reduce"] == orig[f"{b}/3x3_reduce"] // 2
        assert new[f"{b}/5x5_reduce"] == orig[f"{b}/5x5_reduce"]
        for gone in ("1x1", "relu_1x1", "pool", "pool_proj", "relu_pool_proj"):
            assert f"{b}/{gone}" not in g1.by_name
        assert list(get_layer(out, f"{b}/output").bottom) == [f"{b}/3x3", f"{b}/5x5"]
        assert g1.shapes[f"{b}/output"] == g0.shapes[f"{b}/output"]
    # the paper's numbers for inception_3a (Figure 4): 5x5 32 -> 64, 3x3 128 -> 192, reducer 96 -> 48
    assert (new["inception_3a/5x5"], new["inception_3a/3x3"], new["inception_3a/3x3_reduce"]) == (64, 192, 48)
    # layers outside the blocks are untouched
    for name in ("conv1/7x7_s2", "conv2/3x3", "pool3/3x3_s2", "loss3/classifier", "prob"):
        assert get_layer(out, name) == get_layer(model.net, name)
    assert g1.shapes["prob"] == (1, 1000)
    assert len(g1.nodes) == len(g0.nodes) - 9 * 5
    assert g0.memory_bytes == GOOGLENET_MEMORY_B1
    assert g1.memory_bytes == 22_980_160      # -4,362,176 bytes at batch 1
    assert g1.totals()["macs"] < g0.totals()["macs"]


def test_googlenet_after_pushing_poolings(shared_models):
    """push_pool_concat runs first in the default order: the blocks whose output was pooled now
    end in per-branch poolings, and are still slimmed the same way."""
    model = googlenet(shared_models)
    rules = get(["push_pool_concat", "branch"])
    result = runner.run(model, rules)
    slimmed = [c for c in result.changes if c.rule == "branch"]
    assert len(slimmed) == 9 and not result.skips
    new, orig = _conv_outputs(result.model.net), _conv_outputs(model.net)
    for b in GOOGLENET_BLOCKS:
        assert new[f"{b}/3x3"] == orig[f"{b}/3x3"] + orig[f"{b}/1x1"]
        assert new[f"{b}/5x5"] == orig[f"{b}/5x5"] + orig[f"{b}/pool_proj"]
    g = Graph(result.model.net, batch=1)
    assert g.shapes["pool5/7x7_s1"] == (1, 1024, 1, 1) and g.shapes["prob"] == (1, 1000)
    assert g.memory_bytes == 21_165_376


def test_googlenet_slimmed_runs_in_caffe(caffe, shared_models):
    model = googlenet(shared_models)
    model.net.layer[0].input_param.shape[0].dim[0] = 1
    model.weights = pycaffe.random_weights(Graph(model.net), 0)
    out = runner.run(model, [branch.RULE]).model
    net = pycaffe.CaffeNet(out.net, out.weights)
    net.fill_inputs(0)
    prob = net.forward()["prob"]
    assert prob.shape == (1, 1000) and abs(float(prob.sum()) - 1.0) < 1e-4
    assert net.blob_shapes()["inception_3a/3x3"] == (1, 192, 28, 28)
