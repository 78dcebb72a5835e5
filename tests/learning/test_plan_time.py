"""The plan within its time (plan.Clock, pace_of, fit_runs) and the lossless rules it keeps
(exact_rules_that_pay judged at both ends). No engine: the timings are stand-ins."""
from __future__ import annotations

import math
import time

import pytest

from deeprebirth.graph.model import load_model
from deeprebirth.learning import plan as plan_api


def test_the_pace_separates_setting_up_from_the_turns():
    # 2 nets set up in 1 s, then a turn every 0.1 s: 6 turns
    ticks = [1.1 + 0.1 * k for k in range(6)]
    pace = plan_api.pace_of(0.0, ticks, nets=2)
    assert pace.turn_s == pytest.approx(0.1)
    assert pace.setup_s == pytest.approx(0.5)
    assert 2 * (pace.setup_s + 3 * pace.turn_s) == pytest.approx(1.0 + 0.6)    # 2 nets, 3 turns each
    assert plan_api.pace_of(0.0, [1.0], nets=2) is None


def test_timed_rounds_fit_the_time_between_a_floor_and_what_was_asked():
    pace = plan_api.Pace(setup_s=0.5, turn_s=0.01)
    # 27 nets, 3 warm-up turns: 20 s fit (20/27 - 0.5) / 0.01 - 3 = 21 rounds
    assert plan_api.fit_runs(20.0, 27, 3, pace, most=30) == 21
    assert plan_api.fit_runs(1e4, 27, 3, pace, most=30) == 30                      # never more than asked
    assert plan_api.fit_runs(1.0, 27, 3, pace, most=30) == plan_api.MIN_RUNS     # never fewer than the floor
    assert plan_api.fit_runs(-5.0, 27, 3, pace, most=5) == 5                     # nor than asked, when less
    assert plan_api.fit_runs(1.0, 27, 3, None, most=30) == 30                    # pace unknown
    assert plan_api.fit_runs(math.inf, 27, 3, pace, most=30) == 30               # no deadline


def test_an_unbounded_clock_never_runs_out():
    clock = plan_api.Clock(None, 0.0)
    assert clock.left() == math.inf and clock.until() is None
    said = []
    spent = plan_api.Clock(0.0, 0.0, said.append)
    assert spent.left() < 0 and spent.until(0.5) is not None
    spent.cut("no time")
    assert spent.cuts == ["no time"] == said


@pytest.fixture(scope="module")
def googlenet():
    return load_model("fmnist_googlenet")       # the prototxt: slimming needs no weights and no engine


def fake_times(slower: dict[str, float]):
    """A stand-in for plan.time_nets: every net 1.0 ms with a little spread, a net named in ``slower`` more."""
    calls = []

    def fake(nets, opt, progress=None):
        calls.append(list(nets))
        return {k: [1.0 + slower.get(k, 0.0) + 0.001 * (i % 3) for i in range(opt.runs)] for k in nets}
    return fake, calls


def test_a_lossless_rule_slower_alone_but_not_with_the_lossy_merges_is_kept(monkeypatch, googlenet):
    """push_pool_concat 0.2 ms slower in the exact net but not in slim everything: kept (the case
    measured with ONNX Runtime); pool_into_fc slower at both ends: left out, and says where."""
    fake, calls = fake_times({"-push_pool_concat": -0.2, "-pool_into_fc": -0.2, "everything -pool_into_fc": -0.2})
    monkeypatch.setattr(plan_api, "time_nets", fake)
    said = []
    rules, dropped = plan_api.exact_rules_that_pay(googlenet, None, plan_api.Options(), said.append,
                                                   plan_api.no_stage)
    assert {"everything", "everything -push_pool_concat", "everything -pool_into_fc"} <= set(calls[0])
    assert [d["rule"] for d in dropped] == ["pool_into_fc"]
    assert "push_pool_concat" in rules and "pool_into_fc" not in rules
    assert "slim everything 0.200 ms" in dropped[0]["why"]
    assert any(line.strip().startswith("rule push_pool_concat kept") for line in said)


def test_the_candidates_timing_is_cut_to_the_plans_time(monkeypatch, googlenet):
    """At a measured pace that leaves room for 12 rounds, the candidates are timed 12 rounds and the
    plan says so; unbounded, the rounds asked for."""
    fake, calls = fake_times({})
    monkeypatch.setattr(plan_api, "time_nets", fake)
    nets = plan_api.build_nets(googlenet)
    n = 3 + 2 + len(nets.variants) + len(nets.without)          # original, exact x2, everything x2, +c, -c
    # time for 12.5 rounds and 3 warm-up turns at 15 ms a turn (a little less by the time it is read)
    clock = plan_api.Clock(n * 0.015 * 15.5 / plan_api.TABLE_SHARE, time.perf_counter())
    clock.pace = plan_api.Pace(setup_s=0.0, turn_s=0.015)
    _, _, opt = plan_api._time_candidates(googlenet, nets, plan_api.Options(runs=30), lambda s: None,
                                          plan_api.no_stage, clock)
    assert opt.runs == 12 and len(calls[-1]) == n
    assert clock.cuts and "timed 12 rounds, not 30" in clock.cuts[0]
    _, _, opt = plan_api._time_candidates(googlenet, nets, plan_api.Options(runs=30), lambda s: None,
                                          plan_api.no_stage, plan_api.Clock(None, 0.0))
    assert opt.runs == 30


def test_aiming_again_is_estimated_from_what_the_plan_spent(googlenet):
    nets = plan_api.build_nets(googlenet)
    for c in nets.candidates:
        c.saved_ms, c.saved_spread_ms = 0.05, 0.01
    fid = {nets.candidates[0].name: {"flips": 1, "rel_error": 0.1, "seconds": 2.0},
           "exact": {"flips": 0, "rel_error": 0.0, "seconds": 1.0}}
    rounds = [{"seconds": 5.0}, {"seconds": 7.0}]
    todo = len(nets.variants) - 1                                   # all eligible for a speed-up, one done
    assert plan_api._aim_seconds(nets, plan_api.Options(speedup=3), fid, rounds) == pytest.approx(todo * 1.5 + 7.0)
    fid[nets.candidates[1].name] = {"skipped": True, "note": plan_api.SKIPPED}   # left out: re-learned then
    assert plan_api._aim_seconds(nets, plan_api.Options(speedup=3), fid, rounds) == pytest.approx(todo * 1.5 + 7.0)


def test_a_check_is_made_again_only_when_the_time_left_holds_one(monkeypatch, googlenet):
    """A speed-up plan whose assembled net measures short (2x for 3x) is checked again with a
    higher target, up to ``rounds`` times; with no time left the first check stands, and says why."""
    def pairs(nets, opt, progress=None):          # every net 5 ms beside an original of 10 ms: 2x
        return {k: [10.0] * opt.runs if k == "original" else [5.0] * opt.runs for k in nets}
    monkeypatch.setattr(plan_api, "time_nets", pairs)

    def check(clock):
        nets = plan_api.build_nets(googlenet)
        for c in nets.candidates:
            c.saved_ms, c.saved_spread_ms = 1.0, 0.1       # the table says 3x is reached
        opt = plan_api.Options(speedup=3, rounds=3, runs=5, warmup=0)
        return plan_api._choose_and_check(googlenet, nets, opt, {"original": 10.0, "exact": 9.0}, None, None, None,
                                          None, None, None, lambda s: None, plan_api.no_stage, {}, clock)

    rounds, _, _ = check(plan_api.Clock(None, 0.0))
    assert len(rounds) == 3 and all("seconds" in r for r in rounds)
    spent = plan_api.Clock(0.0, time.perf_counter())
    rounds, choice, _ = check(spent)
    assert len(rounds) == 1 and spent.cuts and spent.cuts[0].startswith("no time left for check 2")
    assert any("3x was not reached" in n for n in choice.notes)


def test_each_net_of_the_check_keeps_the_original_timed_beside_it(monkeypatch, googlenet):
    """Each net of a check is timed beside the original in a session of its own, and the sessions
    differ (a machine slowed for a while): the check keeps each pair's original, and when the plan
    becomes slim everything its prediction is that pair's, milliseconds and original alike."""
    beside = {"planned": (10.0, 5.0), "exact": (12.0, 11.0), "slim everything": (11.0, 3.0)}

    def pairs(nets, opt, progress=None):          # (original, net) in ms, by the net's label
        label = next(k for k in nets if k != "original")
        return {"original": [beside[label][0]] * opt.runs, label: [beside[label][1]] * opt.runs}
    monkeypatch.setattr(plan_api, "time_nets", pairs)
    nets = plan_api.build_nets(googlenet)
    for c in nets.candidates:
        c.saved_ms, c.saved_spread_ms = 1.0, 0.1
    opt = plan_api.Options(speedup=3, rounds=1, runs=5, warmup=0)
    rounds, choice, check = plan_api._choose_and_check(googlenet, nets, opt, {"original": 10.0, "exact": 9.0}, None,
                                                       None, None, None, None, None, lambda s: None,
                                                       plan_api.no_stage, {}, plan_api.Clock(None, 0.0))
    assert check["exact_ms"] == 11.0 and check["exact_original_ms"] == 12.0
    assert check["slim_everything_original_ms"] == 11.0
    assert choice.chosen == list(nets.variants)           # 2x short of 3x: slim everything's 3.67x
    assert (check["planned_ms"], check["original_ms"]) == (3.0, 11.0) and check["speedup"] == pytest.approx(11 / 3, abs=1e-4)


def test_for_a_speedup_slim_everything_is_relearned_before_the_candidates(monkeypatch, googlenet):
    """The order of re-learning, which the plan's time may cut short: the exact net, then for a
    speed-up slim everything (the fall-back when the chosen set falls short), the candidates by
    saving; for a budget slim everything comes last."""
    import numpy as np
    orders = []
    monkeypatch.setattr(plan_api, "load_images", lambda *a, **k: (np.zeros((2, 1)), np.zeros((10, 1)), None))
    monkeypatch.setattr(plan_api, "_relearned", lambda model, todo, *a, **k: orders.append(list(todo)) or {})
    nets = plan_api.build_nets(googlenet)
    for k, c in enumerate(nets.candidates):
        c.saved_ms, c.saved_spread_ms = 0.01 * (k + 1), 0.001     # the last candidate saves most
    for opt in (plan_api.Options(speedup=3), plan_api.Options()):
        plan_api._fidelity(googlenet, nets, "fashion-mnist:train[:20]", None, opt, lambda s: None,
                           plan_api.no_stage, plan_api.Clock(None, 0.0))
    by_saving = [c.name for c in reversed(nets.candidates) if c.name in nets.variants]
    assert orders[0] == ["exact", "slim everything", *by_saving]
    assert orders[1] == ["exact", *by_saving, "slim everything"]


def test_more_than_two_nets_are_timed_on_the_crowded_device(googlenet, monkeypatch):
    """time_nets asks the target for its crowded form (ONNX Runtime: spinning off) for more than
    two nets; a pair is timed as deployed. The plan says so in its notes on ONNX Runtime only."""
    from deeprebirth.runtime import bench
    used = []

    def fake_run(prepared, device, *args, **kwargs):
        used.append(getattr(device, "spinning", None))
        return []
    monkeypatch.setattr(bench, "run_isolated", fake_run)
    opt = plan_api.Options(engine="onnxruntime")
    net = googlenet.net
    plan_api.time_nets({"a": net, "b": net}, opt)
    plan_api.time_nets({"a": net, "b": net, "c": net}, opt)
    assert used == [True, False]
    assert any("not spinning" in n for n in plan_api._crowded_notes(opt))
    assert plan_api._crowded_notes(plan_api.Options(engine="caffe")) == []


def test_a_net_without_weights_is_planned_on_the_structure_its_weights_would_give():
    """By time alone the nets timed are those `slim --plan` makes with the weights: a BatchNorm fold
    computes weights, so without them it is made from stand-in weights, and the merges it opens
    (ResNet-50's conv1 with its BatchNorm, Scale and pooling) are candidates, as with weights."""
    m = load_model("resnet50")
    assert m.weights is None
    assert "conv1" in [c.name for c in plan_api.lossy_candidates(m)]
    exact = plan_api.slimmed(m, [])
    assert exact.weights is None and exact.result.model.weights is None
    assert not {"BatchNorm", "Scale"} & {layer.type for layer in exact.deploy.layer}
    merged = plan_api.slimmed(m, ["conv1"])
    assert "pool1" not in {layer.name for layer in merged.deploy.layer}
