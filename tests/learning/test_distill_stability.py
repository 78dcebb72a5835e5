"""Never worse than the start: label-free distillation keeps the weights closest to the teacher on
held-out images (the start among them), a noisy loss near a good start is not taken for a
divergence, and a run given a time budget fits its iterations to it (issue #31, point 4)."""
from __future__ import annotations

import io
import json
import types

import numpy as np
import pytest
from helpers import error_line, make_slimmed, run

from deeprebirth.caffe import netio
from deeprebirth.cli import progress as pr
from deeprebirth.errors import Diverged, RebirthError
from deeprebirth.learning import health
from deeprebirth.learning import keeping as kp
from deeprebirth.learning import recover as rc
from deeprebirth.learning import solver as sv

# ----------------------------------------------------------------------------------------------
# Pure: which weights are kept


def _rec(it, rel, kl, agree=0.9):
    return {"iteration": it, "loss": None, "val_rel_error": rel, "val_kl": kl, "val_agreement": agree}


def test_fidelity_keeps_the_closest_to_the_teacher_the_start_included():
    """Measured on the BatchNorm ResNet slim net (docs/recovery.md): from a start at relative error
    0.168 (KL 0.047), base_lr 0.01 went to 0.215 and back; the start is a candidate like any other."""
    worse = [_rec(0, 0.168, 0.047, 0.942), _rec(50, 0.215, 0.082, 0.938), _rec(100, 0.194, 0.063, 0.950)]
    assert kp.by_fidelity(worse) and kp.fidelity_kept(worse) == 0
    better = [*worse, _rec(150, 0.154, 0.040, 0.952), _rec(200, 0.154, 0.041, 0.952)]
    assert kp.fidelity_kept(better) == 150                     # a tie on the error: the lower KL
    assert kp.fidelity_kept([_rec(0, 0.1, 0.01), _rec(5, 0.1, 0.01)]) == 0    # a full tie: the earliest
    assert kp.fidelity_kept(better, first=100) == 150          # a resumed run's records from its start on
    # higher agreement does not beat a lower output error (agreement was what kept the last weights)
    assert kp.score(_rec(0, 0.10, 0.03, 0.90)) > kp.score(_rec(9, 0.12, 0.04, 0.95))
    assert not kp.by_fidelity([{"iteration": 0, "val_top1": 0.9, "val_rel_error": 0.1}])   # labels: top-1
    assert kp.fidelity_kept([{"iteration": 0, "val_agreement": 0.9}]) is None


def _validator(history, best_it, weights):
    v = object.__new__(kp.Validator)
    v.history, v.first, v.first_record, v.images = history, 0, 0, 300
    v.best = (kp.score(next(h for h in history if h["iteration"] == best_it)), best_it, weights)
    return v


def test_a_run_that_only_got_worse_keeps_its_start_and_says_so():
    hist = [_rec(0, 0.168, 0.047, 0.942), _rec(60, 0.215, 0.082, 0.938), _rec(120, 0.190, 0.060, 0.960)]
    v, notes = _validator(hist, 0, {"conv1": ["start"]}), []
    rec = v.best_record(120, notes)
    assert rec["iteration"] == 0 and rec["start_kept"] and rec["start"]["val_rel_error"] == 0.168
    assert v.best_weights(120) == {"conv1": ["start"]}
    assert len(notes) == 1 and "no validated iteration came closer to the teacher than the start" in notes[0]
    assert "weights.caffemodel holds the start weights" in notes[0]
    # the agreement of iteration 120 is higher, yet within noise of nothing: no "last weights" rule here
    hist[-1]["val_rel_error"] = 0.150
    v, notes = _validator(hist, 120, {"conv1": ["last"]}), []
    rec = v.best_record(120, notes)
    assert rec["iteration"] == 120 and not rec["start_kept"] and v.best_weights(120) is None and notes == []


def _resumed(history, first):
    """A Validator of a run resumed at ``first`` (the earlier run's records before it), before
    its first validation."""
    v = object.__new__(kp.Validator)
    v.history, v.first, v.first_record, v.images, v.best = list(history), first, len(history), 2000, None
    v.adopted = None
    return v


def _validated(v, entry, weights):
    """One of this run's validations, as __call__ records it (the net holding ``weights``)."""
    blobs = {k: [types.SimpleNamespace(data=np.asarray(a)) for a in arrays] for k, arrays in weights.items()}
    v.history.append(entry)
    v._keep_if_best(entry, types.SimpleNamespace(caffe_net=types.SimpleNamespace(
        net=types.SimpleNamespace(params=blobs))))


def test_a_resumed_run_keeps_what_the_run_it_went_on_from_kept_unless_it_beats_it():
    earlier = [_rec(0, 0.40, 0.2), _rec(100, 0.20, 0.05), _rec(200, 0.26, 0.08)]   # kept 100; snapshot at 200
    v = _resumed(earlier, 200)
    v.adopt({"iteration": 100, **{k: val for k, val in earlier[1].items() if k.startswith("val_")}}, {"w": ["kept"]})
    _validated(v, _rec(200, 0.26, 0.08), {"w": [2.0]})
    _validated(v, _rec(300, 0.23, 0.07), {"w": [3.0]})
    notes = []
    assert v.kept(300) == 100 and v.best_weights(300) == {"w": ["kept"]}
    rec = v.best_record(300, notes)
    assert rec["iteration"] == 100 and not rec["start_kept"] and "iteration 100's weights" in notes[0]
    _validated(v, _rec(400, 0.15, 0.04), {"w": [4.0]})         # now one of its own is closer
    assert v.kept(400) == 400 and v.best_weights(400) is None
    # labelled: the earlier top-1 leads by more than the noise of 2,000 images
    top = [{"iteration": 0, "val_top1": 0.80}, {"iteration": 100, "val_top1": 0.90}, {"iteration": 200,
                                                                                        "val_top1": 0.86}]
    v = _resumed(top, 200)
    v.adopt({"iteration": 100, "val_top1": 0.90}, {"w": ["kept"]})
    _validated(v, {"iteration": 200, "val_top1": 0.86}, {"w": [2.0]})
    _validated(v, {"iteration": 300, "val_top1": 0.87}, {"w": [3.0]})
    assert v.kept(300) == 100 and v.best_weights(300) == {"w": ["kept"]}
    v.history = [h for h in v.history if h["iteration"] != 100]     # its record lost: still kept, no error
    assert v.kept(300) == 100 and v.best_record(300, [])["val_top1"] == 0.90


def test_labelled_validation_still_keeps_the_last_within_noise():
    hist = [{"iteration": 0, "val_top1": 0.7905}, {"iteration": 16000, "val_top1": 0.9255},
            {"iteration": 20000, "val_top1": 0.9240}]
    v = _validator(hist, 16000, {"w": 1})
    v.images = 2000
    assert v.kept(20000) == 20000


# ----------------------------------------------------------------------------------------------
# Pure: divergence near a good start


def test_a_noisy_loss_near_a_good_start_is_no_divergence():
    """A start at loss 1.16 ran between 1.1 and 2.6 at base_lr 0.01 (measured): past 10x a small
    start, but far below the loss of a net that outputs 0 (teacher logits of magnitude ~3)."""
    start = [0.1] + [1.5] * 8
    teacher = np.full((4, 10), 3.0)
    floor = health.zero_output_loss(teacher)
    assert floor == pytest.approx(4 * 10 * 9.0 / (2 * 4))
    health.check_divergence(start, 9, floor)                 # 15x the start, below the floor: going on
    with pytest.raises(Diverged):
        health.check_divergence(start, 9)                    # without a floor (labels) as before
    with pytest.raises(Diverged):
        health.check_divergence([0.1] + [60.0] * 8, 9, floor)   # worse than saying nothing: diverged
    with pytest.raises(Diverged):
        health.check_divergence([0.1, float("nan")], 2, floor)


# ----------------------------------------------------------------------------------------------
# Pure: time budgets


def test_durations():
    assert sv.parse_duration("30m") == 1800 and sv.parse_duration("90s") == 90 and sv.parse_duration("1h") == 3600
    assert sv.parse_duration("1h30m") == 5400 and sv.parse_duration("2.5m") == 150 and sv.parse_duration("45") == 45
    assert sv.parse_duration(" 1H 5M ") == 3900
    for bad in ("", "abc", "0", "0m", "m30", "30x", "1.2.3s", "30m5"):
        with pytest.raises(RebirthError) as exc:
            sv.parse_duration(bad)
        assert "{opt:time}" in exc.value.template
    assert sv.format_duration(45) == "45 s" and sv.format_duration(1800) == "30 min"
    assert sv.format_duration(3900) == "1 h 05 min"


def test_iterations_are_fitted_to_the_time_left():
    """Given the measured seconds per iteration and per validation, the iterations fill the share
    BUDGET_SAFETY of the time left less the validations and the end."""
    fit = sv.fit_iterations(600.0, 0.25, seconds_per_validation=3.0, validations=10, reserve=6.0)
    assert fit.iters == int((sv.BUDGET_SAFETY * 600 - 6 - 30) // 0.25) and not fit.capped
    assert fit.test_interval == -(-fit.iters // 10)
    assert fit.expected <= sv.BUDGET_SAFETY * 600 + 1e-9       # what it expects fits in the time
    assert sv.fit_iterations(600.0, 0.25, 3.0, 10, 6.0, cap=500).iters == 500
    assert sv.fit_iterations(600.0, 0.25, 3.0, 10, 6.0, cap=500).capped
    assert sv.fit_iterations(5.0, 0.25, 3.0, 10, 6.0).iters == 1          # no time: one iteration, no less
    slower = sv.fit_iterations(600.0, 0.5, 3.0, 10, 6.0)
    assert slower.iters == fit.iters // 2                                  # twice as slow: half the iterations
    assert sv.fit_iterations(60.0, 0.1, 0.0, 0).test_interval == sv.fit_iterations(60.0, 0.1, 0.0, 0).iters


def test_a_short_budget_validates_less_rather_than_not_train():
    """42 s left, 3.4 s a validation: ten validations would leave nothing to train (it ran one
    iteration); the validations get at most VALIDATION_SHARE of the time, once at least."""
    assert sv.validations_within(42.0, 3.4, 10, reserve=6.8) == 2
    assert sv.validations_within(1800.0, 3.4, 10, reserve=6.8) == 10       # a long run: all ten
    assert sv.validations_within(5.0, 3.4, 10) == 1 and sv.validations_within(600.0, 3.4, 0) == 0
    fit = sv.fit_iterations(42.0, 0.042, 3.4, 10, reserve=6.8)
    assert fit.iters > 400 and fit.expected <= sv.BUDGET_SAFETY * 42.0 + 1e-9
    assert -(-fit.iters // fit.test_interval) == 2                          # two validations on the way


def test_the_rate_is_probed_from_the_start():
    """Measured (relative output error after 20 steps, or 2 for the first): the exactly folded
    BatchNorm ResNet 2e-7 -> 0.135 at 0.01, 0.081 at 0.0033, 1.9e-7 at 0.001 (a blow-up); the ResNet
    slim net far off 0.59 -> 0.32, near 0.22 -> 0.32, GoogLeNet-Slim 0.49 -> 0.77, a start at 0.159
    -> 0.163 at 0.01 (transients the anneal wins back)."""
    assert sv.probe_rates(0.01) == pytest.approx([0.01, 0.01 / 3, 0.001, 0.01 / 30, 0.0001])
    for start, after in ((0.59, 0.32), (0.22, 0.32), (0.4918, 0.77), (0.1588, 0.1629)):
        assert sv.pick_rate(start, {0.01: after}) == (0.01, True)               # the default rate kept
        assert sv.probe_done(start, {0.01: after})                              # ... and no more tried
    exact = {0.01: 0.135, 0.01 / 3: 0.081}
    assert not sv.probe_done(2.2e-7, exact)
    exact[0.001] = 1.9e-7
    assert sv.probe_done(2.2e-7, exact) and sv.pick_rate(2.2e-7, exact) == (0.001, True)
    every = {r: 1e-2 for r in sv.probe_rates(0.01)}                              # every rate blows it up
    assert sv.pick_rate(2e-7, every) == (pytest.approx(1e-4), False)             # the gentlest, not accepted
    assert sv.pick_rate(0.22, {0.01: float("nan"), 0.001: None}) == (0.001, False)
    assert not sv.probe_accepts(0.22, None) and sv.probe_accepts(0.22, 0.22 * (1 + sv.PROBE_TOLERANCE))
    assert not sv.probe_accepts(0.22, 0.22 * (1 + sv.PROBE_TOLERANCE) + 1e-9)


def test_recover_runs_for_a_default_time_unless_iterations_are_given():
    assert rc.budget_of(None, None) == rc.DEFAULT_TIME_BUDGET
    assert rc.budget_of(2000, None) is None
    assert rc.budget_of(2000, 90.0) == 90.0 and rc.budget_of(None, 60.0) == 60.0


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_progress_shows_from_the_first_iteration_with_the_time_left():
    clock, out = Clock(), io.StringIO()
    p = pr.LineProgress(None, "recover", "it", stream=out, clock=clock, quiet=0.0, eta=True,
                        render=lambda text: text.replace("{opt:time}", "--time"))
    clock.now = 1.0
    p(sv.Planned(100, 50.0, "100 iterations fitted to the 1 min left of {opt:time}"))
    clock.now = 1.5
    p(1)
    for _ in range(9):
        clock.now += pr.MIN_GAP_SECONDS + 1
        p(1)
    lines = out.getvalue().splitlines()
    assert lines[0] == "rebirth: recover: 100 iterations fitted to the 1 min left of --time"
    assert lines[1] == "rebirth: recover 1% (1/100 it, 2 s, about 50 s left)"     # the first iteration shows
    assert len(lines) == 4 and lines[2].startswith("rebirth: recover 5% (5/100 it, ") and lines[3].endswith(" left)")


# ----------------------------------------------------------------------------------------------
# Real runs in Caffe


@pytest.fixture(scope="module")
def slimmed(tmp_path_factory, caffe):
    return make_slimmed(tmp_path_factory.mktemp("stab"))


def test_distillation_that_only_gets_worse_keeps_its_start(slimmed, tmp_path):
    """From weights a hair off their teacher (fine-tuned weights, perturbed, distilled against
    themselves), an absurd rate only moves away. The start is kept, bit for bit, and the record
    says so."""
    d = slimmed
    pre = tmp_path / "pre"
    assert run("finetune", d / "slim", "--train", d / "train", "--iters", 4, "-o", pre).exit_code == 0
    teacher = netio.read_weights(pre / "weights.caffemodel")
    rng = np.random.default_rng(3)
    near = {k: [a + 1e-3 * np.abs(a).max() * rng.standard_normal(a.shape).astype(np.float32) for a in v]
            for k, v in netio.weights_of(teacher).items()}
    start = tmp_path / "start.caffemodel"
    netio.write_weights(netio.with_weights(teacher, near), start)
    out = tmp_path / "out"
    res = run("finetune", d / "slim", "--train", d / "plain", "--val", d / "plain", "--distill", "--teacher",
              pre / "deploy.prototxt", "--teacher-weights", pre / "weights.caffemodel", "--weights", start,
              "--iters", 6, "--test-interval", 2, "--base-lr", 1, "-o", out, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    hist = doc["history"]
    assert 0 < hist[0]["val_rel_error"] < 1e-2 and all("val_rel_error" in h for h in hist), hist
    assert min(h["val_rel_error"] for h in hist[1:]) > hist[0]["val_rel_error"], hist
    best = doc["best"]
    assert best["iteration"] == 0 and best["start_kept"] and best["val_rel_error"] == hist[0]["val_rel_error"]
    assert any("no validated iteration came closer to the teacher than the start" in n for n in doc["notes"])
    assert doc["weight_decay"] == 0 and any("no weight decay" in n for n in doc["notes"])
    assert doc["base_lr"] == 1 and not any("diverged" in n for n in doc["notes"])     # no restart: it ran at 1
    kept = netio.weights_of(netio.read_weights(out / "weights.caffemodel"))
    orig = netio.weights_of(netio.read_weights(start))
    assert all(np.array_equal(kept[k][i], orig[k][i]) for k in kept for i in range(len(kept[k])))


def test_a_long_enough_label_free_run_probes_its_rate(slimmed, tmp_path):
    d = slimmed
    pre = tmp_path / "pre"
    assert run("finetune", d / "slim", "--train", d / "train", "--iters", 4, "-o", pre).exit_code == 0
    res = run("finetune", d / "slim", "--train", d / "plain", "--val", d / "plain", "--distill", "--weights",
              pre / "weights.caffemodel", "--iters", sv.PROBE_MIN_ITERS, "--test-interval", 100, "-o", tmp_path / "o",
              "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    probe = doc["rate_probe"]
    assert probe["steps"] == sv.PROBE_STEPS and probe["rel_error"] and doc["base_lr"] == pytest.approx(probe["base_lr"])
    assert list(probe["rel_error"])[0] == f"{max(float(r) for r in probe['rel_error']):g}"     # largest first
    assert any("as far from the teacher" in n for n in doc["notes"])
    assert doc["best"]["val_rel_error"] <= probe["start_rel_error"] + 1e-9 or doc["best"]["start_kept"]
    # a rate given is not probed, nor a short run
    res = run("finetune", d / "slim", "--train", d / "plain", "--val", d / "plain", "--distill", "--weights",
              pre / "weights.caffemodel", "--iters", 20, "-o", tmp_path / "s", "--json")
    assert json.loads(res.stdout)["rate_probe"] is None


def test_recover_fits_its_iterations_to_the_time(slimmed, tmp_path, monkeypatch):
    """--time with --iters as a cap (so the test is short): the run measures itself, fits, and
    says so up front and in its record; its progress shows from the first iteration."""
    d = slimmed
    res = run("recover", d / "slim", "--images", d / "plain", "--val", d / "plain", "--time", "10m", "--iters", 5,
              "--relearn-iters", 4, "--count", 16, "-o", tmp_path / "rec", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    tb = doc["finetune"]["time_budget"]
    assert tb["fitted_iterations"] == 5 and tb["capped_by_iters"] and not tb["out_of_time"]
    assert tb["seconds"] < 600 and tb["seconds_per_iteration"] > 0 and doc["time_budget"] == 600
    assert doc["finetune"]["iterations"] == 5
    assert "rebirth: recover: re-learning 1 unit(s)" in res.stderr and "within 10 min" in res.stderr
    assert "5 iterations (the --iters asked for)" in res.stderr
    assert "rebirth: recover " in res.stderr and "{opt:" not in res.stderr
    # the library spells its parameters by name
    assert "(the iters asked for)" in json.dumps(
        json.loads((tmp_path / "rec" / "finetune.json").read_text())) or "--iters" in (
        tmp_path / "rec" / "finetune.json").read_text()


def test_a_budget_spent_before_training_stops_at_the_start(slimmed, tmp_path):
    """A budget the measuring alone uses up: no iteration is trained, the record says the time ran
    out, and the start weights are written (library call: parameters by name)."""
    from deeprebirth.learning import finetune as ft
    from deeprebirth.learning import sources as data
    d = slimmed
    pre = tmp_path / "pre"
    assert run("finetune", d / "slim", "--train", d / "train", "--iters", 4, "-o", pre).exit_code == 0
    start = pre / "weights.caffemodel"
    doc = ft.finetune(d / "slim", data.open_source(str(d / "plain")), data.open_source(str(d / "plain")),
                      tmp_path / "o", ft.Options(distill=True, weights=str(start), time_budget=1e-3))
    tb = doc["time_budget"]
    assert tb["out_of_time"] and tb["fitted_iterations"] >= 1 and doc["iterations"] == 0
    assert any("the time (time) ran out at iteration 0" in n for n in json.loads(
        (tmp_path / "o" / "finetune.json").read_text())["notes"])
    kept = netio.weights_of(netio.read_weights(tmp_path / "o" / "weights.caffemodel"))
    orig = netio.weights_of(netio.read_weights(start))
    assert all(np.array_equal(kept[k][i], orig[k][i]) for k in kept for i in range(len(kept[k])))
    # finetune --time on the command line: said up front, fitted, capped by --iters
    res = run("finetune", d / "slim", "--train", d / "plain", "--val", d / "plain", "--distill", "--weights", start,
              "--time", "5m", "--iters", 3, "-o", tmp_path / "c", "--json")
    assert res.exit_code == 0, res.output
    assert "rebirth: finetune: at most 5 min (--time)" in res.stderr and "3 iterations (the --iters asked for)" in res.stderr
    assert json.loads(res.stdout)["time_budget"]["fitted_iterations"] == 3
    # the teacher's outputs are remembered: its share of a step is counted once per new input
    assert "of it the teacher's, paid once for each image it has not seen" in res.stderr
    memo = json.loads(res.stdout)["teacher_memo"]
    assert memo["misses"] >= 1 and memo["hits"] >= 1 and memo["images_kept"] == memo["misses"]
    res = run("finetune", d / "slim", "--train", d / "plain", "--distill", "--time", "soon", "-o", tmp_path / "x")
    assert res.exit_code == 1 and "--time 'soon': expected a duration such as 90s" in error_line(res)
    assert not (tmp_path / "x").exists()


def test_a_refit_restarts_the_solver_where_it_was(slimmed, tmp_path, monkeypatch):
    """A run that fits itself again on the way and changes course restarts Caffe's solver from a
    snapshot of itself: forced here at every re-fit (the iterations capped, so the time decides
    nothing), it ends with the weights of the same run never restarted, bit for bit (iteration,
    momentum and data order carried over), says where it re-fitted, and leaves no snapshot behind
    but the last."""
    from deeprebirth.learning import finetune as ft
    from deeprebirth.learning import sources as data
    d = slimmed
    pre = tmp_path / "pre"
    assert run("finetune", d / "slim", "--train", d / "train", "--iters", 4, "-o", pre).exit_code == 0
    last = {}
    for name, shares, change in (("plain", (), sv.REFIT_CHANGE), ("refit", sv.REFIT_SHARES, -1.0)):
        monkeypatch.setattr(sv, "REFIT_SHARES", shares)
        monkeypatch.setattr(sv, "REFIT_CHANGE", change)
        out = tmp_path / name
        doc = ft.finetune(d / "slim", data.open_source(str(d / "plain")), data.open_source(str(d / "plain")), out,
                          ft.Options(distill=True, weights=str(pre / "weights.caffemodel"), time_budget=600.0,
                                     iters=40, base_lr=0.01))
        assert doc["iterations"] == 40 and not doc["time_budget"]["out_of_time"]
        last[name] = netio.weights_of(netio.read_weights(out / "finetune_iter_40.caffemodel"))
        left = sorted(p.name for p in out.iterdir() if p.name.startswith("finetune_iter_"))
        assert left == ["finetune_iter_40.caffemodel", "finetune_iter_40.solverstate"]
        refits = doc["time_budget"]["refits"]
        if name == "plain":
            assert refits == []
        else:
            assert [r["iteration"] for r in refits] == [8, 20] and all("kept" not in r for r in refits)
            assert all(r["iterations"] == 40 and r["seconds_per_iteration"] > 0 for r in refits)
            assert sum("re-fitted at iteration" in n for n in doc["notes"]) == 2
    assert last["plain"].keys() == last["refit"].keys()
    for k in last["plain"]:
        for a, b in zip(last["plain"][k], last["refit"][k]):
            assert np.array_equal(a, b), k
    # a file of the snapshot's name that the run did not write (an output folder given with force)
    # is never replaced: that re-fit keeps its course, the next one (at 20) restarts
    out = tmp_path / "users"
    out.mkdir()
    (out / "finetune_iter_8.caffemodel").write_bytes(b"the user's own")
    doc = ft.finetune(d / "slim", data.open_source(str(d / "plain")), data.open_source(str(d / "plain")), out,
                      ft.Options(distill=True, weights=str(pre / "weights.caffemodel"), time_budget=600.0,
                                 iters=40, base_lr=0.01, force=True))
    assert (out / "finetune_iter_8.caffemodel").read_bytes() == b"the user's own"
    assert not (out / "finetune_iter_8.solverstate").exists()
    first, second = doc["time_budget"]["refits"]
    assert first["kept"] and "in the output folder already" in first["why"] and "kept" not in second
    assert doc["iterations"] == 40
    # the same run without the restart but with different weights would differ: the check can fail
    assert not np.array_equal(last["plain"]["conv1"][0],
                              netio.weights_of(netio.read_weights(pre / "weights.caffemodel"))["conv1"][0])
