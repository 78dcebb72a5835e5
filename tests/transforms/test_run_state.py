"""Rules keep no state: the run holds it. The same rule object run twice, or two runs in one
process, give identical results; the registry hands out fresh rule objects; tucker searches its
ranks once per layer; `slim --only` runs the rules once; warnings travel on results."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from helpers import STEM, text_model

from deeprebirth.caffe import netio
from deeprebirth.errors import RebirthError
from deeprebirth.transforms import rules, runner, slim
from deeprebirth.transforms import tucker as tucker_api
from deeprebirth.transforms.rules.tucker import TuckerRule

# Two convolutions and an InnerProduct with enough channels for VBMF, plus a pooling and an LRN
# for the slim rules.
NET = """name: "state"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 16 dim: 12 dim: 12 } } }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1" convolution_param { num_output: 24 kernel_size: 3 pad: 1 } }
layer { name: "r1" type: "ReLU" bottom: "c1" top: "c1" }
layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2" convolution_param { num_output: 32 kernel_size: 3 } }
layer { name: "fc" type: "InnerProduct" bottom: "c2" top: "fc" inner_product_param { num_output: 20 } }
"""


def _summary(result: runner.Result) -> dict:
    """Everything a run reports, and its weights, in comparable form."""
    return {
        "changes": json.dumps([c.as_dict() for c in result.changes], sort_keys=True, default=str),
        "candidates": [c.as_dict() for c in result.candidates],
        "skips": [(s.rule, s.substructure, s.reason) for s in result.skips],
        "net": netio.net_to_text(result.model.net),
        "weights": {k: [a.tobytes() for a in v] for k, v in (result.model.weights or {}).items()},
    }


def test_the_same_rule_object_twice_gives_identical_results():
    model = text_model(NET, "state.prototxt", seed=1)
    rule = TuckerRule(ratio=0.5)
    options = copy.deepcopy(vars(rule))
    first = runner.run(model, [rule])
    assert vars(rule) == options                         # the run left nothing on the rule
    second = runner.run(model, [rule])
    assert [c.substructure for c in first.changes] == ["c1", "c2", "fc"]
    assert _summary(first) == _summary(second)
    # the layers of a decomposition are not decomposed again in the run (the runner remembers them)
    assert not any(c.substructure.endswith(("_in", "_core", "_out")) for c in second.changes)


def test_two_slim_runs_in_one_process_are_identical():
    model = text_model(STEM, "stem.prototxt", seed=2)
    a, b = slim.slim(model), slim.slim(model)
    assert a.report() == b.report()
    assert _summary(a.result) == _summary(b.result)
    chosen, again = slim.select_rules(), slim.select_rules()
    assert all(x is not y for x, y in zip(chosen, again))   # fresh objects for every run
    assert [r.name for r in chosen] == [r.name for r in again]
    assert rules.get(["fold_bn"])[0] is not rules.get(["fold_bn"])[0]


def test_tucker_searches_the_ranks_once_per_layer(monkeypatch):
    calls: list[str] = []
    plan = TuckerRule.plan

    def counted(self, graph, match, model):
        calls.append(match.name)
        return plan(self, graph, match, model)

    monkeypatch.setattr(TuckerRule, "plan", counted)
    ticks: list[int] = []
    out = tucker_api.tucker(text_model(NET, "state.prototxt", seed=1), ratio=0.5, progress=ticks.append,
                          data_layer="dummy")
    assert sorted(calls) == ["c1", "c2", "fc"]            # once each: the guard's plan reaches rewrite
    assert [c.substructure for c in out.result.changes] == ["c1", "c2", "fc"]
    assert len(ticks) == len(tucker_api.candidates(out.model)) == 3
    # the replaced layer travels on the change, not on the rule, and stays out of the report
    assert all(c.check is not None and "check" not in c.as_dict() for c in out.result.changes)
    assert "check" not in json.dumps(out.report()["changes"])


def test_slim_only_runs_the_rules_once(monkeypatch):
    model = text_model(STEM, "stem.prototxt", seed=2)
    names = slim.substructures(model, slim.select_rules())
    calls = []
    real = runner.run

    def counted(*args, **kwargs):
        calls.append(kwargs.get("only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "run", counted)
    out = slim.slim(model, only=[names[0]])
    assert calls == [{names[0]}]                          # one run, restricted to the name
    assert out.result.changes and {c.substructure for c in out.result.changes} == {names[0]}
    calls.clear()
    with pytest.raises(RebirthError, match=r"no substructure named 'nope' \(substructures: " + names[0]):
        slim.slim(model, only=["nope"])
    assert len(calls) == 2                                # only to name the valid ones, on error


def test_warnings_are_carried_once_on_results():
    text = NET.replace('layer { name: "fc"', 'layer { name: "odd" type: "Mystery" bottom: "c2" top: "odd" }\n'
                                             'layer { name: "fc2"').replace('bottom: "c2" top: "fc"',
                                                                            'bottom: "odd" top: "fc"')
    model = text_model(text, "odd.prototxt", seed=1)
    result = runner.run(model, [TuckerRule(ratio=0.5)])
    assert result.warnings == ["layer 'odd': unknown layer type 'Mystery': carried through untouched, "
                               "shapes below it unknown"]
    assert result.graph is not None and result.graph.warnings == result.warnings
    assert np.isfinite(result.changes[0].after["macs"])
