"""merge_concat_1x1: parallel 1x1 convolutions feeding one Concat become one block-diagonal 1x1
convolution after it, checked against real Caffe; and every guard's plain reason."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import concat, conv, get_layer, googlenet, names, net_of, relu, with_weights
from test_rules_exact import assert_same_outputs

from deeprebirth.transforms import runner
from deeprebirth.transforms.rules import get
from deeprebirth.transforms.rules.merge_concat_1x1 import MergeConcat1x1

DIMS = (2, 3, 8, 8)


def block(arm_a: str = "", arm_b: str = "", k_b: int = 1, bias_b: bool = True, extra: str = "") -> str:
    """Two 'cores' (3x3) and a 1x1 '_out' after each, with ReLUs, into one Concat: a Tucker'd inception."""
    return (conv("core_a", "data", 3, 3, 1) + conv("core_b", "data", 2, 3, 1)
            + conv("out_a", "core_a", 5, 1) + (arm_a if arm_a is not None else "")
            + conv("out_b", "core_b", 4, k_b, (k_b - 1) // 2, bias=bias_b) + (arm_b if arm_b is not None else "")
            + extra + concat("cat", ["out_a", "out_b"])
            + conv("head", "cat", 2, 1))


def merged(body: str, **options):
    model = with_weights(net_of(body, DIMS), seed=5)
    return model, runner.run(model, [MergeConcat1x1(**options)])


def test_registered_as_a_default_exact_rule():
    rule = get(["merge_concat_1x1"])[0]
    assert rule.exact and rule.default and not rule.needs_weights


@pytest.mark.parametrize("arm_a,arm_b", [("", ""), (relu("ra", "out_a"), relu("rb", "out_b")),
                                         (relu("ra", "out_a", slope=0.1), relu("rb", "out_b", slope=0.1))])
def test_same_outputs_in_caffe(arm_a, arm_b):
    before, result = merged(block(arm_a, arm_b))
    after = result.model
    assert [c.rule for c in result.changes] == ["merge_concat_1x1"]
    assert not {"out_a", "out_b", "ra", "rb"} & set(names(after.net))
    cat = get_layer(after.net, "cat")
    assert list(cat.bottom) == ["core_a", "core_b"] and list(cat.top) == ["cat/parts"]
    W = after.weights["out_a+out_b"][0]
    assert W.shape == (9, 5, 1, 1) and not W[:5, 3:].any() and not W[5:, :3].any()     # block diagonal
    assert len(names(after.net)) == len(names(before.net)) - (2 if arm_a else 1)
    assert_same_outputs(before, after, tol=1e-5)


def test_block_diagonal():
    a, b = np.ones((2, 3, 1, 1)), 2 * np.ones((1, 2, 1, 1))
    W = MergeConcat1x1.block_diagonal([a, b])
    assert W.shape == (3, 5, 1, 1) and W.sum() == 6 + 4 and W[2, 3:, 0, 0].tolist() == [2, 2]


@pytest.mark.parametrize("body,reason", [
    (block(relu("ra", "out_a"), ""), "not followed by the same in-place activations"),
    (block(relu("ra", "out_a"), relu("rb", "out_b", slope=0.2)), "not followed by the same in-place activations"),
    (block("", "", bias_b=False), "differ in bias_term"),
])
def test_guards_say_why(body, reason):
    _, result = merged(body)
    assert not result.changes
    notes = [s.reason for s in result.skips]
    assert len(notes) == 1 and reason in notes[0], notes


def test_not_matched_when_an_input_is_not_a_plain_1x1():
    _, result = merged(block("", "", k_b=3))
    assert not result.changes and not result.skips
    # an output also read by another layer is no match either
    _, result = merged(block("", "", extra=conv("peek", "out_b", 2, 1)))
    assert not result.changes and not result.skips


def test_a_merge_predicted_slower_is_refused():
    _, result = merged(block("", ""), layer_cost=10)
    assert not result.changes and "zero blocks would add" in result.skips[0].reason


def test_imagenet_googlenet_is_untouched(shared_models):
    """BVLC GoogLeNet's inception outputs mix 1x1, 3x3 and 5x5 convolutions and a pooling branch:
    no match, nothing changes."""
    result = runner.run(googlenet(shared_models, batch=1, weights=True), [MergeConcat1x1()])
    assert not result.changes
