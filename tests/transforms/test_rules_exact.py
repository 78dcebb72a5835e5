"""The exact rules: merge_parallel (parallel convolutions -> one, Eq. 12) and push_pool_concat
(pool(concat(a, b)) == concat(pool(a), pool(b))). Outputs are checked against real Caffe."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import GOOGLENET_MEMORY_B1, concat, conv, get_layer, googlenet, names, net_of, pool, relu, with_weights

from deeprebirth.caffe import netio
from deeprebirth.graph.dag import Graph
from deeprebirth.graph.model import Model
from deeprebirth.runtime import pycaffe
from deeprebirth.transforms import runner
from deeprebirth.transforms.rules import branch, get, merge_parallel, push_pool_concat
from deeprebirth.transforms.rules.merge_parallel import MergeParallel, joined_name

DIMS = (2, 6, 13, 13)   # the input of the small nets


def caffe_outputs(model, seed=1, blobs=()):
    net = pycaffe.CaffeNet(model.net, model.weights)
    net.fill_inputs(seed)
    out = net.forward()
    out.update({b: net.net.blobs[b].data.copy() for b in blobs})
    return out


def assert_same_outputs(before: Model, after: Model, blobs=(), tol=1e-5):
    a, b = caffe_outputs(before, blobs=blobs), caffe_outputs(after, blobs=blobs)
    assert set(a) == set(b)
    for k in a:
        assert a[k].shape == b[k].shape, k
        scale = max(float(np.max(np.abs(a[k]))), 1e-12)
        assert float(np.max(np.abs(a[k] - b[k]))) / scale <= tol, k


# ==============================================================================================
# push_pool_concat


def branches_then_pool(method="MAX", k=3, stride=2, pad=0, extra="", axis=None):
    body = (conv("stem", "data", 8, 3, 1) + relu("stem_relu", "stem")
            + conv("b1", "stem", 4) + relu("b1_relu", "b1")
            + conv("b2r", "stem", 3) + conv("b2", "b2r", 5, 3, 1) + relu("b2_relu", "b2")
            + pool("b3p", "stem", 3, 1, 1) + conv("b3", "b3p", 2)
            + concat("cat", ["b1", "b2", "b3"], axis=axis)
            + pool("pool", "cat", k, stride, pad, method, extra=extra)
            + conv("after", "pool", 3) + relu("after_relu", "after"))
    return net_of(body, DIMS)


def test_push_rule_registered():
    assert get(["push_pool_concat"]) == [push_pool_concat.RULE] and push_pool_concat.RULE.exact


@pytest.mark.parametrize("method,k,stride,pad,extra", [
    ("MAX", 3, 2, 0, ""),              # GoogLeNet's pool3/pool4 (13 -> 6 with ceil rounding)
    ("AVE", 3, 2, 1, ""),              # padding: Caffe's "last window starts in the image" rule
    ("AVE", 13, 1, 0, ""),             # GoogLeNet's pool5 (to 1x1)
    ("MAX", 2, 2, 0, ""),                # (this pycaffe build has no round_mode)
    ("AVE", 0, 1, 0, " global_pooling: true"),
])
def test_push_pool_is_exact(caffe, method, k, stride, pad, extra):
    text = branches_then_pool(method, k or 1, stride, pad, extra)
    if k == 0:
        get_layer(text, "pool").pooling_param.ClearField("kernel_size")
    model = with_weights(text)
    # A global pooling is pushed only when asked (streamline keeps it: several would remain).
    rule = push_pool_concat.RULE.with_options(push_global=True) if extra else push_pool_concat.RULE
    result = runner.run(model, [rule])
    out = result.model
    (change,) = result.changes
    assert change.exact and change.removed == ["pool"] and change.modified == ["cat"]
    assert change.added == ["b1/pool", "b2/pool", "b3/pool"]
    assert names(out.net) == ["data", "stem", "stem_relu", "b1", "b1_relu", "b2r", "b2", "b2_relu", "b3p",
                              "b3", "b1/pool", "b2/pool", "b3/pool", "cat", "after", "after_relu"]
    cat = get_layer(out.net, "cat")
    assert list(cat.bottom) == ["b1/pool", "b2/pool", "b3/pool"] and list(cat.top) == ["pool"]
    for name in change.added:
        new = get_layer(out.net, name)
        assert new.type == "Pooling" and new.pooling_param == get_layer(model.net, "pool").pooling_param
    g0, g1 = Graph(model.net), Graph(out.net)
    assert g1.shapes["pool"] == g0.shapes["pool"]
    assert g1.memory_bytes <= g0.memory_bytes
    assert out.weights == model.weights
    assert_same_outputs(model, out, blobs=("pool",), tol=1e-6)


def test_push_guard_global_pooling_by_default():
    model = with_weights(branches_then_pool("AVE", 1, 1, 0, " global_pooling: true"))
    get_layer(model.net, "pool").pooling_param.ClearField("kernel_size")
    result = runner.run(model, [push_pool_concat.RULE])
    assert not result.changes and "a global pooling" in result.skips[0].reason


def test_push_guard_concat_read_elsewhere():
    net = branches_then_pool()
    net.layer.append(get_layer(netio.parse_net_text(conv("side", "cat", 2)), "side"))
    result = runner.run(Model(net), [push_pool_concat.RULE])
    assert not result.changes and not result.skips   # not even a match: the Concat must stay
    assert result.model.net == net


def test_push_guard_two_poolings():
    net = branches_then_pool()
    net.layer.append(get_layer(netio.parse_net_text(pool("pool_b", "cat", 2, 2, method="AVE")), "pool_b"))
    result = runner.run(Model(net), [push_pool_concat.RULE])
    assert not result.changes and result.model.net == net
    assert {s.substructure for s in result.skips} == {"pool", "pool_b"}
    assert all("also read by" in s.reason for s in result.skips)


def test_push_guard_not_channel_axis():
    net = branches_then_pool(axis=3)
    for name, n in (("b1", 4), ("b2", 4), ("b3", 4)):
        get_layer(net, name).convolution_param.num_output = n
    result = runner.run(Model(net), [push_pool_concat.RULE])
    assert not result.changes and "channel axis" in result.skips[0].reason


def test_push_guard_memory():
    # a padded 2x2 pooling with stride 1 makes each blob larger: pushing it would add memory
    # (Caffe refuses a pad as large as the kernel, so 1x1 with pad 1 is not a net)
    net = branches_then_pool("MAX", 2, 1, 1)
    g = Graph(net)
    assert g.shapes["pool"][2] > g.shapes["cat"][2]
    result = runner.run(Model(net), [push_pool_concat.RULE])
    assert not result.changes and "grow blob memory" in result.skips[0].reason


def test_push_googlenet_memory(shared_models):
    model = googlenet(shared_models, batch=1)
    result = runner.run(model, [push_pool_concat.RULE])
    assert [c.substructure for c in result.changes] == ["pool3/3x3_s2", "pool4/3x3_s2", "pool5/7x7_s1"]
    assert not result.skips   # inception blocks read their input Concat: no match, no noise
    g0, g1 = Graph(model.net, batch=1), Graph(result.model.net, batch=1)
    assert g0.memory_bytes == GOOGLENET_MEMORY_B1
    assert g1.memory_bytes == GOOGLENET_MEMORY_B1 - 1_814_784
    for c in result.changes:
        assert c.after["memory_bytes"] < c.before["memory_bytes"]
    for blob in ("pool3/3x3_s2", "pool4/3x3_s2", "pool5/7x7_s1", "prob"):
        assert g1.shapes[blob] == g0.shapes[blob]
    assert "inception_3b/output" not in g1.shapes
    assert "inception_3b/1x1/pool3/3x3_s2" in g1.by_name
    # the block keeps its name for branch slimming
    assert "inception_3b" in {g["name"] for g in branch.branch_groups(g1)}


def test_push_googlenet_is_exact(caffe, shared_models):
    model = googlenet(shared_models, batch=1, weights=True)
    out = runner.run(model, [push_pool_concat.RULE]).model
    assert_same_outputs(model, out, blobs=("pool3/3x3_s2", "pool4/3x3_s2", "pool5/7x7_s1", "loss3/classifier"))


# ==============================================================================================
# merge_parallel


def test_joined_name():
    assert joined_name(["inception_3a/3x3_reduce", "inception_3a/5x5_reduce"]) == "inception_3a/3x3_reduce+5x5_reduce"
    assert joined_name(["a", "b"]) == "a+b"
    assert joined_name(["x/a1", "x/a2"]) == "x/a1+a2"


def test_merge_rule_registered():
    assert get(["merge_parallel"]) == [merge_parallel.RULE] and merge_parallel.RULE.exact
    assert merge_parallel.RULE.allow_memory_growth is False


def parallel_into_concat(extra_input=True):
    """Three 1x1 convolutions (+ReLU) on one blob feeding a Concat next to each other, and a 3x3
    branch: the three merge into one writing straight into the Concat."""
    body = (conv("stem", "data", 8, 3, 1) + relu("stem_relu", "stem")
            + conv("blk/a", "stem", 4) + relu("blk/relu_a", "blk/a")
            + conv("blk/b", "stem", 6) + relu("blk/relu_b", "blk/b")
            + conv("blk/c", "stem", 3) + relu("blk/relu_c", "blk/c")
            + (conv("blk/d", "stem", 5, 3, 1) + relu("blk/relu_d", "blk/d") if extra_input else "")
            + concat("blk/out", ["blk/d", "blk/a", "blk/b", "blk/c"] if extra_input else ["blk/a", "blk/b", "blk/c"])
            + conv("after", "blk/out", 3))
    return net_of(body, DIMS)


def test_merge_into_concat_is_exact(caffe):
    model = with_weights(parallel_into_concat())
    result = runner.run(model, [merge_parallel.RULE])
    out = result.model
    (change,) = result.changes
    assert change.exact and change.substructure == "blk" and not result.skips
    merged = "blk/a+b+c"
    assert change.added == [merged, "blk/relu_a+relu_b+relu_c"]
    assert sorted(change.removed) == sorted(["blk/a", "blk/relu_a", "blk/b", "blk/relu_b", "blk/c", "blk/relu_c"])
    assert "Slice" not in {lr.type for lr in out.net.layer}
    assert list(get_layer(out.net, "blk/out").bottom) == ["blk/d", merged]
    m = get_layer(out.net, merged)
    assert m.convolution_param.num_output == 13 and list(m.top) == [merged]
    assert list(get_layer(out.net, "blk/relu_a+relu_b+relu_c").top) == [merged]
    w = out.weights[merged]
    assert w[0].shape == (13, 8, 1, 1) and w[1].shape == (13,)
    np.testing.assert_array_equal(w[0][4:10], model.weights["blk/b"][0])
    g0, g1 = Graph(model.net), Graph(out.net)
    assert g1.memory_bytes == g0.memory_bytes and len(g1.nodes) == len(g0.nodes) - 4
    assert "unchanged" in change.notes[0]
    assert_same_outputs(model, out)


def test_merge_whole_concat_drops_it(caffe):
    model = with_weights(parallel_into_concat(extra_input=False))
    result = runner.run(model, [merge_parallel.RULE])
    out = result.model
    assert "blk/out" not in names(out.net) and "blk/out" in result.changes[0].removed
    assert list(get_layer(out.net, "blk/a+b+c").top) == ["blk/out"]
    assert list(get_layer(out.net, "after").bottom) == ["blk/out"]
    assert Graph(out.net).memory_bytes < Graph(model.net).memory_bytes
    assert_same_outputs(model, out)


def parallel_elsewhere(slope_c=None, bias_c=True):
    """1x1 convolutions on one blob whose outputs go to different layers: merging needs a Slice."""
    body = (conv("stem", "data", 8, 3, 1)
            + conv("r1", "stem", 4) + relu("relu1", "r1")
            + conv("r2", "stem", 3) + relu("relu2", "r2")
            + conv("r3", "stem", 2, bias=bias_c) + relu("relu3", "r3", slope=slope_c)
            + conv("x1", "r1", 5, 3, 1) + conv("x2", "r2", 5, 5, 2) + conv("x3", "r3", 2, 3, 1)
            + concat("out", ["x1", "x2", "x3"]))
    return net_of(body, DIMS)


def test_merge_needing_a_slice_is_left_alone_by_default():
    net = parallel_elsewhere()
    result = runner.run(with_weights(net), [merge_parallel.RULE])
    assert not result.changes and result.model.net == net
    (skip,) = result.skips
    assert "Slice" in skip.reason and "grow by" in skip.reason and "left alone" in skip.reason


def test_merge_with_slice_is_exact(caffe):
    model = with_weights(parallel_elsewhere())
    result = runner.run(model, [MergeParallel(allow_memory_growth=True)])
    out = result.model
    (change,) = result.changes
    sl = next(lr for lr in out.net.layer if lr.type == "Slice")
    assert list(sl.top) == ["r1", "r2", "r3"] and list(sl.slice_param.slice_point) == [4, 7]
    assert sl.slice_param.axis == 1
    assert names(out.net)[:5] == ["data", "stem", "r1+r2+r3", "relu1+relu2+relu3", sl.name]
    assert "memory grows" in change.notes[-1]
    assert Graph(out.net).memory_bytes > Graph(model.net).memory_bytes
    assert_same_outputs(model, out, blobs=("r1", "r2", "r3"))


def test_merge_needs_identical_geometry_and_activations():
    # r3 has another ReLU slope: only r1 and r2 group together
    graph = Graph(parallel_elsewhere(slope_c=0.1))
    (m,) = merge_parallel.RULE.match(graph)
    assert m.data["convs"] == ["r1", "r2"]
    # r3 has no bias
    (m,) = merge_parallel.RULE.match(Graph(parallel_elsewhere(bias_c=False)))
    assert m.data["convs"] == ["r1", "r2"]
    # different kernels / strides / pads never group
    body = (conv("a", "data", 4, 3, 1) + conv("b", "data", 4, 3, 0) + conv("c", "data", 4, 1)
            + conv("d", "data", 4, 3, 1, stride=2))
    assert merge_parallel.RULE.match(Graph(net_of(body, DIMS))) == []


def test_merge_skips_convs_whose_pre_activation_is_read():
    # 'peek' reads a before its in-place ReLU: a must stay a blob of its own
    peek = 'layer { name: "peek" type: "Pooling" bottom: "a" top: "peek" pooling_param { pool: MAX kernel_size: 2 } }\n'
    net = net_of(conv("a", "data", 4) + peek + relu("relu_a", "a") + conv("b", "data", 4)
                 + relu("relu_b", "b") + concat("cat", ["a", "b"]), DIMS)
    assert merge_parallel.RULE.match(Graph(net)) == []
    net = net_of(conv("a", "data", 4) + relu("relu_a", "a") + conv("b", "data", 4)
                 + relu("relu_b", "b") + concat("cat", ["a", "b"]), DIMS)
    assert len(merge_parallel.RULE.match(Graph(net))) == 1


def test_merge_googlenet_leaves_memory_alone(shared_models):
    model = googlenet(shared_models, batch=1)
    result = runner.run(model, [merge_parallel.RULE])
    assert not result.changes
    assert [s.substructure for s in result.skips] == [
        "inception_3a", "inception_3b", "inception_4a", "inception_4b", "inception_4c", "inception_4d",
        "inception_4e", "inception_5a", "inception_5b"]
    assert all("Slice" in s.reason for s in result.skips)
    assert Graph(result.model.net, batch=1).memory_bytes == GOOGLENET_MEMORY_B1
    # after branch slimming there is nothing new either
    slim = runner.run(model, get(["branch", "merge_parallel"]))
    assert not [c for c in slim.changes if c.rule == "merge_parallel"]
    assert Graph(slim.model.net, batch=1).memory_bytes == 22_980_160
