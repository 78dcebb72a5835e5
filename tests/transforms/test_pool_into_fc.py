"""pool_into_fc: a global average pooling folded into the InnerProduct after it, checked against
real Caffe; and every guard's plain reason."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import conv, dropout, get_layer, googlenet, ip, names, net_of, pool, relu, with_weights
from test_rules_exact import assert_same_outputs

from deeprebirth.transforms import runner
from deeprebirth.transforms.rules import get
from deeprebirth.transforms.rules.pool_into_fc import PoolIntoFc

DIMS = (2, 3, 9, 9)


def head(pooling: str, between: str = "", n: int = 7, blob: str = "gap") -> str:
    return (conv("c1", "data", 6, 3, 0, 2) + relu("r1", "c1") + pooling + between + ip("fc", blob, n)
            + 'layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }\n')


GLOBAL_AVE = 'layer { name: "gap" type: "Pooling" bottom: "c1" top: "gap" pooling_param { pool: AVE global_pooling: true } }\n'


def slimmed(body: str, **options):
    model = with_weights(net_of(body, DIMS), seed=3)
    rule = PoolIntoFc(**options)
    return model, runner.run(model, [rule])


def test_registered_as_a_default_exact_rule():
    rule = get(["pool_into_fc"])[0]
    assert rule.exact and rule.default and not rule.needs_weights


def test_without_weights_only_the_net_changes():
    model = net_of(head(GLOBAL_AVE), DIMS)
    from deeprebirth.graph.model import Model
    result = runner.run(Model(model), [PoolIntoFc()])
    assert [c.rule for c in result.changes] == ["pool_into_fc"] and result.model.weights is None


@pytest.mark.parametrize("pooling,between", [
    (GLOBAL_AVE, ""),
    (GLOBAL_AVE, dropout("drop", "gap")),
    # the window written out: 4x4 is c1's whole map (9 -> 4 at stride 2)
    (pool("gap", "c1", 4, 1, 0, "AVE"), ""),
])
def test_same_outputs_in_caffe(pooling, between):
    before, result = slimmed(head(pooling, between))
    after = result.model
    assert [c.rule for c in result.changes] == ["pool_into_fc"]
    assert "gap" not in names(after.net)
    assert list(get_layer(after.net, "fc").bottom) == ["c1"]
    assert after.weights["fc"][0].shape == (7, 6 * 16)
    if between:
        drop = get_layer(after.net, "drop")
        assert list(drop.bottom) == list(drop.top) == ["c1"]
    assert_same_outputs(before, after, tol=1e-5)


def test_weights_spread_over_positions():
    W = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = PoolIntoFc.spread(W, channels=3, positions=4)
    assert out.shape == (2, 12)
    assert np.allclose(out[1, 4:8], W[1, 1] / 4) and np.isclose(out.sum(), W.sum())


@pytest.mark.parametrize("body,reason", [
    (head('layer { name: "gap" type: "Pooling" bottom: "c1" top: "gap" pooling_param { pool: MAX global_pooling: true } }\n'),
     "not an average pooling"),
    (head(pool("gap", "c1", 2, 2, 0, "AVE")), "is not the whole 4x4 map"),
    (head(GLOBAL_AVE, relu("r2", "gap")), "works on 'gap''s output in place; only Dropout may"),
    (head(GLOBAL_AVE, n=3000), "would grow by 270,000 weights"),
    (head(GLOBAL_AVE) + ip("fc2", "c1", 2), "input is also read by 'fc2'"),
])
def test_guards_say_why(body, reason):
    _, result = slimmed(body)
    assert not result.changes
    notes = [s.reason for s in result.skips]
    assert len(notes) == 1 and reason in notes[0], notes


def test_imagenet_googlenet_is_left_alone(shared_models):
    """BVLC GoogLeNet's pool5 (7x7 average, 1,000 classes) would add 49 M weights: refused."""
    result = runner.run(googlenet(shared_models, batch=1, weights=True), [PoolIntoFc()])
    assert not result.changes
    assert any("pool5/7x7_s1" in s.substructure and "would grow by" in s.reason for s in result.skips)
