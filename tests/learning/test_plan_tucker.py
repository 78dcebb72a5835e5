"""The plan's Tucker candidates (learning/plan_tucker.py, `plan --tucker`), and a plan's Tucker
layers applied by `slim --plan` and `accelerate --plan` (transforms/slim.py ``tucker``)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import error_line, run, write_random_weights

from deeprebirth.caffe import netio
from deeprebirth.errors import RebirthError
from deeprebirth.graph.model import Model, load_model
from deeprebirth.learning import plan_tucker
from deeprebirth.transforms import planner
from deeprebirth.transforms import slim as slim_api
from deeprebirth.transforms.planner import Candidate

NET = """name: "tk"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 16 dim: 16 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 16 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2" convolution_param { num_output: 32 kernel_size: 3 pad: 1 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool2" top: "fc" inner_product_param { num_output: 10 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


@pytest.fixture(scope="module")
def tk(tmp_path_factory):
    d = tmp_path_factory.mktemp("tk")
    (d / "net.prototxt").write_text(NET)
    write_random_weights(netio.parse_net_text(NET), d / "net.caffemodel", seed=1)
    return d


def model(tk) -> Model:
    return load_model(tk / "net.prototxt", tk / "net.caffemodel")


# -- pure -------------------------------------------------------------------------------------------


def test_decompositions_stand_only_when_faster_than_the_slim_plan_and_within_the_budget():
    assert plan_tucker.verdict(0.5, 0.1, None, 4, 5.0, False) == (True, "faster than the slim plan and within "
                                                                        "the budget")
    assert plan_tucker.verdict(0.5, 0.1, None, None, None, False)[0]
    stands, why = plan_tucker.verdict(0.05, 0.1, None, 0, 5.0, False)         # within the noise
    assert not stands and "bought nothing" in why and "+0.050 ms against the slim plan" in why
    assert not plan_tucker.verdict(-0.2, 0.1, None, 0, None, False)[0]
    stands, why = plan_tucker.verdict(0.5, 0.1, None, 6, 5.0, True)
    assert not stands and "6 held-out image(s) lost, over the budget of 5.0" in why
    stands, why = plan_tucker.verdict(0.5, 0.1, "singular", 0, 5.0, False)
    assert not stands and "could not be re-learned: singular" in why
    assert plan_tucker.verdict(0.5, 0.1, None, None, None, False, (4.8, 4.0))[0]
    stands, why = plan_tucker.verdict(0.032, 0.030, None, None, None, False, (3.61, 3.71))   # the pairs disagree
    assert not stands and "3.61x against the slim plan's 3.71x" in why and "saved 0.032 ms" in why


def tucker_cands():
    return [Candidate("tucker:conv2", ["tucker"], 1, saved_ms=1.0, saved_spread_ms=0.1, flips=2, rel_error=0.05),
            Candidate("tucker:fc", ["tucker"], 1, saved_ms=0.5, saved_spread_ms=0.1, flips=0, rel_error=0.01)]


def test_an_undecided_head_to_head_is_timed_again_and_pooled():
    """A saving within the noise is timed again, up to HEAD_TO_HEAD_SESSIONS in all, the runs
    pooled; a loss, or a saving beyond the noise, is decided at once."""
    rng = np.random.default_rng(0)

    def sessions(saving_ms, spread):
        def timed():
            timed.calls += 1
            base = 10.0 + rng.normal(0.0, spread, 90)
            return {"slim plan": list(base), "with tucker": list(base - saving_ms + rng.normal(0.0, spread, 90))}
        timed.calls = 0
        return timed
    noisy = sessions(0.3, 2.0)        # saves 0.3 ms of 10, runs spread by 2 ms: undecided each time
    saved, noise, n = plan_tucker.head_to_head(noisy)
    assert n == noisy.calls == plan_tucker.HEAD_TO_HEAD_SESSIONS
    clear = sessions(1.0, 0.05)
    saved, noise, n = plan_tucker.head_to_head(clear)
    assert n == clear.calls == 1 and saved > noise
    slower = sessions(-0.5, 0.05)     # slower: not timed again
    saved, noise, n = plan_tucker.head_to_head(slower)
    assert saved < 0 and n == slower.calls == 1


def test_pairs_that_disagree_with_the_head_to_head_are_timed_again_once(tk, monkeypatch):
    """plan_tucker._check: head to head the decomposed net saves time, but its pair with the
    original reads it slower than the slim plan's: the pairs are timed again once, each keeping the
    session whose original ran quicker; if they still disagree, the slim plan stands."""
    from types import SimpleNamespace

    from deeprebirth.learning import plan as P
    m = model(tk)
    sessions = []

    def pairs(original, nets, opt, progress=None, retimed=None):     # (net ms, the original's ms beside it)
        sessions.append(dict(nets))
        return sessions_ms[len(sessions) - 1]
    monkeypatch.setattr(P, "time_pairs", pairs)
    rng = np.random.default_rng(0)
    monkeypatch.setattr(P, "time_nets", lambda nets, opt, progress=None: {
        "slim plan": list(1.0 + 0.01 * rng.random(opt.runs)), "with tucker": list(0.9 + 0.01 * rng.random(opt.runs))})
    choice = SimpleNamespace(budget=None)
    assembled = SimpleNamespace(deploy=m.net)

    def check():
        return plan_tucker._check(m, P.Options(runs=10, warmup=0), choice, assembled, {"conv2": {"R3": 4, "R4": 8}},
                                  m.net, None, None, False, None, lambda s: None, P.no_stage)

    disagree = ({"slim plan": 1.0, "with tucker": 1.1}, {"slim plan": 4.0, "with tucker": 4.0})
    quicker = ({"slim plan": 0.95, "with tucker": 0.9}, {"slim plan": 3.8, "with tucker": 3.9})
    sessions_ms = [disagree, quicker]
    out = check()
    assert len(sessions) == 2 and out["stands"], out["why"]
    assert (out["speedup"], out["slim_plan_speedup"]) == (pytest.approx(3.9 / 0.9, abs=1e-4), 4.0)
    assert out["original_ms"] == 3.9                     # the second session, its original quicker
    sessions.clear()
    sessions_ms = [disagree, ({"slim plan": 1.0, "with tucker": 1.2}, {"slim plan": 4.2, "with tucker": 4.2})]
    out = check()
    assert len(sessions) == 2 and not out["stands"] and "the timings disagree" in out["why"]
    assert out["speedup"] == pytest.approx(4.0 / 1.1, abs=1e-4)        # the first sessions: quicker originals
    sessions.clear()
    sessions_ms = [({"slim plan": 1.0, "with tucker": 0.9}, {"slim plan": 4.0, "with tucker": 4.0})]
    assert check()["stands"] and len(sessions) == 1                    # agreeing pairs: timed once


def test_a_speedup_the_slim_plan_reached_needs_no_decomposition():
    opt = plan_tucker.P.Options(speedup=2.0)
    choice = planner.Choice([], 5.0, 2.0, 0.0, None, "measured")
    got = plan_tucker._choose(tucker_cands(), opt, choice, {"speedup": 2.1}, base_ms=5.0, heldout=100)
    assert got.chosen == []
    # short of 2.2x: the planned net at 5 ms measured 2x (the original: 10 ms), 2.2x needs 0.45 ms saved
    cands = tucker_cands()
    got = plan_tucker._choose(cands, plan_tucker.P.Options(speedup=2.2), choice, {"speedup": 2.0}, 5.0, 100)
    assert got.chosen == ["tucker:fc"]          # 0.5 ms saved brings 5 ms to 4.5 <= 10/2.2 at the least cost


def test_a_budget_gives_the_decompositions_what_the_slim_plan_left():
    opt = plan_tucker.P.Options()
    # a budget of 4 images (1 % of 200 x recovery 2); the slim plan spent 2: 2 left, conv2 costs 2.05
    choice = planner.Choice(["conv1"], 5.0, 2.0, 2.0, 4.0, "measured")
    got = plan_tucker._choose(tucker_cands(), opt, choice, {"speedup": 2.0, "fidelity": {"flips": 2}}, 5.0, 200)
    assert got.chosen == ["tucker:fc"]
    got = plan_tucker._choose(tucker_cands(), opt, choice, {"speedup": 2.0, "fidelity": {"flips": 0}}, 5.0, 200)
    assert got.chosen == ["tucker:conv2", "tucker:fc"]


def test_a_plans_tucker_section_is_checked_when_read(tmp_path):
    p = tmp_path / "plan.json"
    p.write_text(json.dumps({"kind": planner.PLAN_KIND, "only": [], "tucker": {"layers": ["conv2"]}}))
    with pytest.raises(RebirthError, match='"tucker" must be null or hold "layers"'):
        planner.read_plan(p)
    p.write_text(json.dumps({"kind": planner.PLAN_KIND, "only": [], "tucker": None}))
    assert planner.tucker_layers(planner.read_plan(p)) == {}
    p.write_text(json.dumps({"kind": planner.PLAN_KIND, "only": [], "tucker": {"layers": {"fc": {"r": 4}}}}))
    assert planner.tucker_layers(planner.read_plan(p)) == {"fc": {"r": 4}}


# -- the decomposition in slim (no engine) -------------------------------------------------------


def test_slim_decomposes_the_layers_a_plan_names_from_their_weights(tk):
    m = model(tk)
    out = slim_api.slim(m, None, only=[], exact_always=True, tucker={"conv2": {"R3": 8, "R4": 16}, "fc": {"r": 4}})
    names = [layer.name for layer in out.deploy.layer]
    assert "conv2" not in names and {"conv2_in", "conv2_core", "conv2_out", "fc_in", "fc_out"} <= set(names)
    assert out.weights["conv2_in"][0].shape == (8, 16, 1, 1) and out.weights["conv2_core"][0].shape == (16, 8, 3, 3)
    # the new layers start from the decomposition: their product is the best rank-4 fit of fc's weights
    fc = m.weights["fc"][0]
    approx = out.weights["fc_out"][0].reshape(10, 4) @ out.weights["fc_in"][0].reshape(4, -1)
    s = np.linalg.svd(fc, compute_uv=False)
    assert np.linalg.norm(fc - approx) == pytest.approx(np.sqrt(np.sum(s[4:] ** 2)), rel=1e-3)
    assert {"conv2_core", "fc_in", "fc_out"} <= set(out.new_layers)
    assert [c["rule"] for c in out.report()["changes"]][-2:] == ["tucker", "tucker"]
    # a slim substructure named like a Tucker layer is not rewritten by naming the layer
    out = slim_api.slim(m, None, only=[], exact_always=True, tucker={"conv1": {"R3": 3, "R4": 8}})
    assert [c.rule for c in out.result.changes] == ["tucker"]


def test_tucker_layers_a_plan_cannot_have_are_one_clear_error_and_without_weights_the_structure(tk):
    m = model(tk)
    cases = [({"conv9": {"r": 2}}, "has no Convolution or InnerProduct named 'conv9'"),
             ({"fc": {"r": 0}}, "must be {\"R3\": n, \"R4\": n} or {\"r\": n}"),
             ({"fc": {"R3": 2}}, "must be {\"R3\": n, \"R4\": n} or {\"r\": n}"),
             ({"fc": {"r": 10}}, "cannot be decomposed at the ranks given")]
    for ranks, expected in cases:
        with pytest.raises(RebirthError, match=expected.replace("{", r"\{").replace("}", r"\}")):
            slim_api.slim(m, None, only=[], exact_always=True, tucker=ranks)
    # a layer a chosen rewrite regenerates: the structure, learned from fresh weights
    out = slim_api.slim(m, None, only=["conv2"], exact_always=True, tucker={"conv2": {"R3": 8, "R4": 16}})
    assert {"conv2_in", "conv2_core", "conv2_out"} <= set(out.new_layers) and not slim_api.factored_layers(out)
    assert any("conv2: regenerated by a chosen rewrite, so decomposed as a structure only" in n for n in out.notes)
    # without weights: the structure, from stand-in weights that are not written
    out = slim_api.slim(load_model(tk / "net.prototxt"), None, only=[], exact_always=True, tucker={"fc": {"r": 2}})
    assert out.weights is None and {"fc_in", "fc_out"} <= {layer.name for layer in out.deploy.layer}
    assert any(n.startswith("no weights: the Tucker layers of fc are the decomposition's structure") for n in out.notes)


def test_the_candidates_are_the_trained_layers_of_the_planned_net(tk):
    m = model(tk)
    ranks, notes = plan_tucker.candidate_ranks(m.net, m.weights, set(), "x")
    assert set(ranks) == {"conv1", "conv2", "fc"}
    for name, r in ranks.items():          # never below the ranks that keep half the weights
        floor = plan_tucker._decomposed(m.net, m.weights, "x", plan_tucker.TuckerRule(ratio=0.5))[name][0]
        assert all(r[k] >= floor[k] for k in r)
    merged = slim_api.slim(m, None, only=["conv2"], exact_always=True)
    again, _ = plan_tucker.candidate_ranks(merged.deploy, merged.weights, set(merged.new_layers), "x")
    floor = plan_tucker._decomposed(merged.deploy, merged.weights, "x", plan_tucker.TuckerRule(ratio=0.5))
    assert again["conv2"] == floor["conv2"][0]          # regenerated: the floor's ranks, no VBMF


def test_the_layers_saving_the_most_are_offered_at_a_deeper_rank_too(tk, monkeypatch):
    m = model(tk)
    ranks, _ = plan_tucker.candidate_ranks(m.net, m.weights, set(), "x")
    offered, _ = plan_tucker.offered(m.net, m.weights, set(), "x")
    first = {n: lr for n, lr in offered.items() if "@" not in n}
    assert first == {f"tucker:{k}": (k, r) for k, r in ranks.items()}
    deeper = {n: lr for n, lr in offered.items() if "@" in n}
    assert deeper and all(n == f"tucker:{layer}@0.25" for n, (layer, _) in deeper.items())
    for layer, r in deeper.values():          # fewer weights kept in every mode, never more
        assert all(r[k] <= ranks[layer][k] for k in r) and r != ranks[layer]
    monkeypatch.setattr(plan_tucker, "DEEPER", 1)     # only the layer that saves the most
    offered, _ = plan_tucker.offered(m.net, m.weights, set(), "x")
    assert [lr[0] for n, lr in offered.items() if "@" in n] == [next(iter(ranks))]


# -- with Caffe ----------------------------------------------------------------------------------------


def test_plan_with_tucker_times_and_relearns_each_decomposition_and_accelerate_applies_one(tk, tmp_path, caffe):
    res = run("plan", tk / "net.prototxt", "-w", tk / "net.caffemodel", "--images", "fashion-mnist:train[:120]",
              "--tucker", "--runs", "5", "--count", "30", "--heldout", "30", "-o", tmp_path / "plan.json")
    assert res.exit_code == 0, res.output
    assert "tucker:conv2" in res.stdout
    doc = json.loads((tmp_path / "plan.json").read_text())
    cands = {c["layer"]: c for c in doc["tucker"]["candidates"]}
    assert set(cands) == {"conv1", "conv2", "fc"}
    for c in cands.values():
        assert isinstance(c["saved_ms"], float) and c["saved_spread_ms"] > 0 and c["why"]
        assert c["flips"] is None or 0 <= c["flips"] <= 30
    assert doc["tucker"]["layers"] == {} or doc["tucker"]["check"]["stands"]
    # by time alone: random weights timed, the ranks that keep half the weights, nothing re-learned
    res = run("plan", tk / "net.prototxt", "--tucker", "--runs", "5", "--json")
    assert res.exit_code == 0, res.output
    alone = json.loads(res.stdout)
    assert any(n.startswith("Tucker ranks by time alone") for n in alone["notes"])
    assert {c["layer"] for c in alone["tucker"]["candidates"]} == {"conv1", "conv2", "fc"}
    assert all(c["flips"] is None for c in alone["tucker"]["candidates"])
    # a plan with fc decomposed: accelerate slims, re-learns and checks it to a model folder
    forced = tmp_path / "forced.json"
    forced.write_text(json.dumps({**doc, "only": [], "tucker": {"layers": {"fc": cands["fc"]["ranks"]}}}))
    res = run("accelerate", tk / "net.prototxt", "-w", tk / "net.caffemodel", "--images", "fashion-mnist:train[:120]",
              "--plan", forced, "--iters", "5", "-o", tmp_path / "fast", "--json")
    assert res.exit_code == 0, res.output
    slim_report = json.loads((tmp_path / "fast" / "slim" / "report.json").read_text())
    assert slim_report["plan"]["tucker"] == {"fc": cands["fc"]["ranks"]}
    assert {"fc_in", "fc_out"} <= set(slim_report["regenerated"])
    assert (tmp_path / "fast" / "weights.caffemodel").is_file()
    # slim --plan of a plan made with weights, without them: one line, nothing written
    res = run("slim", tk / "net.prototxt", "--plan", forced, "-o", tmp_path / "s")
    assert "planned with weights" in error_line(res)
    assert not (tmp_path / "s").exists()


def test_the_reports_show_the_decompositions_and_why():
    from test_accelerate_pure import summary

    from deeprebirth.cli import plan_reports
    from deeprebirth.learning import report_md

    cand = {"name": "tucker:conv2", "layer": "conv2", "ranks": {"R3": 8, "R4": 16}, "rules": ["tucker"],
            "saved_ms": 0.4, "saved_spread_ms": 0.1, "flips": 1, "rel_error": 0.02, "chosen": True,
            "why": "within the budget"}
    doc = dict(summary(), tucker={"layers": {"conv2": {"R3": 8, "R4": 16}}, "candidates": [cand], "check": None})
    text = report_md.render(doc)
    assert "Tucker decompositions: conv2 (R3 8, R4 16)." in text
    assert "| tucker:conv2 | 0.400 | 1 | - | 0.0200 | yes | within the budget |" in text
    plan = {"model": "m", "target": {"engine": "caffe", "device": "cpu"}, "goal": {"speedup": 3.0}, "basis": "measured",
            "heldout_images": 0, "candidates": [], "exact": {"ms": 2.0, "speedup": 1.0}, "original_ms": 2.0,
            "only": [], "predicted_ms": 0.9, "predicted_speedup": 2.2, "timing": {"runs": 5}, "seconds": 3.0,
            "tucker": {"layers": {}, "candidates": [dict(cand, chosen=False, why="decomposing bought nothing")],
                       "check": {"layers": {"conv2": {}}, "ms": 1.0, "speedup": 2.0, "fidelity": None}}}
    text = plan_reports.plan_text(plan)
    assert "tucker:conv2" in text and "decomposing bought nothing" in text
    assert "with 1 Tucker (not kept)" in text and "planned (0 lossy)" in text
    plan["tucker"]["layers"] = {"conv2": {"R3": 8, "R4": 16}}
    assert "planned (0 lossy + 1 Tucker)" in plan_reports.plan_text(plan)


def test_the_plan_text_shows_the_original_timed_beside_each_net():
    """Each net of the check is timed beside the original in a session of its own: the table shows
    that session's original, so milliseconds read from different sessions are not compared."""
    from deeprebirth.cli import plan_reports
    plan = {"model": "m", "target": {"engine": "caffe", "device": "cpu"}, "goal": {}, "basis": "time alone",
            "heldout_images": 0, "candidates": [], "only": ["conv1"], "original_ms": 80.67,
            "exact": {"ms": 98.01, "original_ms": 109.7, "speedup": 1.12},
            "slim_everything": {"ms": 58.89, "original_ms": 80.43, "speedup": 1.37},
            "predicted_ms": 59.11, "predicted_speedup": 1.36, "timing": {"runs": 30, "check_runs": 90}, "seconds": 97}
    lines = plan_reports.plan_text(plan).splitlines()
    head = next(ln for ln in lines if ln.startswith("net "))
    assert "original beside it" in head
    exact = next(ln for ln in lines if ln.startswith("exact (lossless"))
    assert exact.split()[3:6] == ["98.01", "109.70", "1.12x"]
    planned = next(ln for ln in lines if ln.startswith("planned (1 lossy)"))
    assert planned.split()[3:6] == ["59.11", "80.67", "1.36x"]
    plan["exact"]["fidelity"] = {"agreement": 1.0, "rel_error": 0.0, "top1_drop": 0.0}
    assert "100.0 % agree, output error 0.000, top-1 +0.0 pt" in plan_reports.plan_text(plan)     # never "-0.0"
    del plan["exact"]["original_ms"]                       # a plan file written before: still shown
    assert "exact (lossless rewrites)" in plan_reports.plan_text(plan)
