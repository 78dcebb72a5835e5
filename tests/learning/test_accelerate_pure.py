"""accelerate's never-worse choice and its report, from made-up records (no Caffe, no timing)."""
from __future__ import annotations

import time

from deeprebirth.learning import accelerate as acc
from deeprebirth.learning import report_md


def test_the_promise_is_the_budget_or_the_planned_agreement():
    assert acc.allowed_drop({"goal": {"max_drop": 0.5}}) == 0.5
    plan = {"goal": {"speedup": 3.0, "max_drop": None}, "predicted_fidelity": {"agreement": 0.976, "top1_drop": 0.012}}
    assert abs(acc.allowed_drop(plan) - 2.4) < 1e-9
    assert acc.allowed_drop({"goal": {}}) == 1.0


def test_with_labels_the_promise_is_top1_points():
    plan = {"goal": {"speedup": 3.0, "max_drop": None, "labels": True},
            "predicted_fidelity": {"agreement": 0.976, "top1_drop": 0.012}}
    assert acc.labelled(plan) and abs(acc.allowed_drop(plan) - 1.2) < 1e-9
    assert acc.allowed_drop({"goal": {"labels": True}}) == 0.5
    # a plan made without labels carried out with them: its budget was in another measure
    assert acc.allowed_drop({"goal": {"max_drop": 2.0}}, labels=True) == 0.5
    # better than the original is no loss at all
    assert acc.allowed_drop({"goal": {"labels": True}, "predicted_fidelity": {"top1_drop": -0.01}}) == 0.0
    opts = [{"name": "recovered", "flips_percent": 4.0, "top1": 0.913, "top1_original": 0.92},
            {"name": "re-learned", "flips_percent": 6.0, "top1": 0.90, "top1_original": 0.92},
            {"name": "exact", "flips_percent": 0.0, "exact": True}]
    chosen, why = acc.pick(opts, 1.0, labels=True)
    assert chosen["name"] == "recovered" and "-0.70 points" in why and "top-1 points lost" in why
    chosen, why = acc.pick(opts, 0.5, labels=True)
    assert chosen["name"] == "exact" and "0.50 top-1 points lost" in why


def options(recovered, relearned):
    return [{"name": "recovered", "flips_percent": recovered}, {"name": "re-learned", "flips_percent": relearned},
            {"name": "exact", "flips_percent": 0.0, "exact": True}]


def test_never_worse_than_promised():
    chosen, why = acc.pick(options(0.4, 0.9), 1.0)
    assert chosen["name"] == "recovered" and "within 1.00 %" in why
    # distillation made it worse than least squares had: the re-learned weights, still within
    chosen, _ = acc.pick(options(1.6, 0.8), 1.0)
    assert chosen["name"] == "re-learned"
    # neither within the promise: the exact net, and the reason says so
    chosen, why = acc.pick(options(1.6, 1.2), 1.0)
    assert chosen["name"] == "exact" and "no recovered net" in why


def summary():
    return {
        "tool": "rebirth 0.x", "model": "fmnist_googlenet", "images": "fashion-mnist:train[:3000]", "out": "fast",
        "target": {"engine": "onnxruntime", "device": "cpu"}, "result": "recovered", "speedup": 3.1,
        "seconds": 600.0, "time_budget_s": 1800.0, "machine": {"node": "x"},
        "bench": {"models": [{"model": "original", "median_ms": 9.3, "best_ms": 9.0, "memory_bytes": 2 ** 21},
                             {"model": "accelerated", "median_ms": 3.0, "best_ms": 2.9, "memory_bytes": 2 ** 20}]},
        "plan": {"only": ["conv1", "inception_3a"], "basis": "measured", "predicted_speedup": 3.0,
                 "exact": {"speedup": 1.1}, "slim_everything": {"speedup": 3.3}},
        "candidates": [{"name": "conv1", "saved_ms": 1.2, "flips": 2, "rel_error": 0.05, "chosen": True,
                        "why": "within the budget"},
                       {"name": "pool2", "saved_ms": None, "flips": None, "rel_error": None, "chosen": False,
                        "why": "not timed"}],
        "steps": {"plan": {"seconds": 120}, "check": {
            "allowed": 1.0, "why": "recovered: 0.40 % ...", "heldout": "fashion-mnist:train[9:3000:10]",
            "options": [{"name": "recovered", "flips": 2, "images": 300, "flips_percent": 0.67, "agreement": 0.9933,
                         "rel_error": 0.04, "top1": 0.91, "top1_original": 0.915},
                        {"name": "exact", "flips_percent": 0.0, "exact": True}]}},
    }


def test_report_md_names_every_number_and_the_commands():
    text = report_md.render(summary())
    assert "**Result: recovered**" in text and "3.10x faster" in text
    assert "| original | 9.30 | 9.00 | 2.0 |" in text
    assert "2 of 300 (0.67 %)" in text and "original 91.50 %" in text
    assert "| conv1 | 1.200 | 2 | - | 0.0500 | yes | within the budget |" in text
    assert "Allowed: 1.0 % of images changing class" in text
    assert "rebirth bench fmnist_googlenet fast --engine onnxruntime" in text
    # the eval line names the teacher's weights: a deploy.prototxt given with -w has none of its own
    assert "--teacher fmnist_googlenet\n" in text
    assert "Machine: x." in text           # a plan file of before: its keys as they are
    text = report_md.render({**summary(), "machine": {"node": "vm", "processor": "AMD EPYC", "logical_cpus": 2,
                                                      "load_average": [2.0, 1.5, 0.25]}})
    assert "Machine: vm, AMD EPYC, 2 logical CPUs; load average 2.00, 1.50, 0.25 (1, 5, 15 min) when planned." in text
    from deeprebirth.learning import plan
    assert plan.machine("/nonexistent")["logical_cpus"] >= 1
    text = report_md.render({**summary(), "model": "my net/deploy.prototxt", "weights": "my net/w.caffemodel"})
    assert "--teacher 'my net/deploy.prototxt' --teacher-weights 'my net/w.caffemodel'\n" in text


def test_chart_of_whole_passes_is_a_png():
    png = report_md.chart_png(summary())
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert report_md.chart_png({"bench": {"models": []}}) is None


def test_saving_is_a_median_difference_with_a_noise_floor():
    import numpy as np

    from deeprebirth.learning.plan import MIN_SAVING, saving
    rng = np.random.default_rng(0)
    base = list(1.0 + rng.exponential(0.05, 30))
    again = list(1.0 + rng.exponential(0.05, 30))
    faster = list(0.8 + rng.exponential(0.05, 30))
    saved, noise = saving(base, faster, again)
    assert 0.15 < saved < 0.25 and saved > noise          # a fifth faster: measurable
    saved, noise = saving(base, again)
    assert abs(saved) < noise                              # the same net: within the noise
    assert noise >= MIN_SAVING * 1.0                       # never below 1 % of the base's time
    assert saving(base, faster, again) == saving(base, faster, again)   # the bootstrap is seeded


def test_the_time_kept_after_recovery_follows_the_net():
    """The reserve for the check, the export and the bench grows with the net's
    measured pass and the images the check reads; never below RESERVE_MIN_S."""
    small = acc.reserve_seconds(0.56 / 500, 2000, 0.64, 90, 3)       # the Fashion-MNIST GoogLeNet here
    assert acc.RESERVE_MIN_S <= small < 120
    big = acc.reserve_seconds(0.04, 300, 40.0, 90, 3)                 # an ImageNet GoogLeNet on a CPU
    assert big > 2 * small
    assert big == acc.RESERVE_MARGIN * (acc.RESERVE_FIXED_S + 3 * 300 * 0.04
                                        + 2 * 93 * 0.040)
    assert acc.reserve_seconds(0.0, 0, 0.1, 90, 3) == acc.RESERVE_MIN_S


def test_with_labels_and_speed_on_the_table_accelerate_aims_at_it():
    """With labels the check measures top-1 after recovery, so a budget's plan that left most of
    slim everything's speed unused (least squares alone loses tens of points) is made again for
    90 % of that speed; never without labels, with a speed-up asked for, or when little is left."""
    from deeprebirth.learning import plan as plan_api
    plan = {"goal": {"max_drop": 0.5, "labels": True, "speedup": None}, "predicted_speedup": 1.01,
            "slim_everything": {"speedup": 3.48}}
    labels = plan_api.Options(labels=True)
    assert acc.aimed_speedup(plan, labels) == 3.1
    assert acc.aimed_speedup(plan, plan_api.Options(labels=True, max_drop=1.0)) == 3.1   # a budget given: the same
    assert acc.aimed_speedup(plan, plan_api.Options(labels=True, speedup=2.0)) is None
    assert acc.aimed_speedup(dict(plan, goal={"max_drop": 1.0}), plan_api.Options()) is None   # label-free
    assert acc.aimed_speedup(dict(plan, slim_everything={"speedup": 1.05}), labels) is None      # a ResNet: nothing
    assert acc.aimed_speedup(dict(plan, slim_everything=None), labels) is None
    assert acc.speed_target(3.48) == 3.1 and acc.speed_target(1.83) == 1.6


def test_the_plan_gets_a_third_of_the_time(monkeypatch, tmp_path):
    """accelerate bounds its plan by PLAN_SHARE of --time (plan.Options.time_budget), unless the
    plan options carry a budget of their own."""
    from deeprebirth.graph.model import load_model
    from deeprebirth.learning import plan as plan_api
    given = []

    class Planned(Exception):
        pass

    def fake_plan(model, images, train_val, options, **kw):
        given.append(options.time_budget)
        raise Planned
    monkeypatch.setattr(plan_api, "make_plan", fake_plan)
    model = load_model("fmnist_googlenet")
    for popt, expected in ((plan_api.Options(), acc.PLAN_SHARE * 600), (plan_api.Options(time_budget=42.0), 42.0)):
        ctx = acc._Ctx(model, "fmnist_googlenet", None, None, "fashion-mnist:train[:100]", None, tmp_path,
                       acc.Options(plan=popt, time_budget=600.0), lambda s: None, plan_api.no_stage,
                       time.perf_counter())
        try:
            acc._plan_step(ctx)
        except Planned:
            pass
        assert abs(given[-1] - expected) < 1.0


def test_the_report_says_how_recovery_spent_its_time():
    doc = {"relearn_seconds": 216.96, "finetune": {"iterations": 9567, "seconds": 1251.71, "time_budget": {
        "refits": [{"iteration": 2172, "iterations": 10081, "kept": True},
                   {"iteration": 5430, "iterations": 9567}]}}}
    assert acc.recovery_summary(doc) == {"relearn_s": 216.96, "distill_iterations": 9567, "distill_s": 1251.71,
                                         "refitted": "at 5,430 to 9,567 iterations"}
    # a re-fit that changed nothing is not news; a recovery without a distillation has no iterations
    doc["finetune"]["time_budget"]["refits"].pop()
    assert "refitted" not in acc.recovery_summary(doc)
    assert acc.recovery_summary({"relearn_seconds": 3.0}) == {"relearn_s": 3.0}


def test_an_earlier_distillation_is_gone_on_from_its_last_snapshot_at_its_rate(tmp_path):
    """recover's go_on: the snapshot found beside recover.json (by name: the folder may have moved),
    the rate the earlier run trained at, no start weights; from relearn's weights again when the
    earlier run left no step or its snapshot is gone."""
    import json

    from deeprebirth.learning import finetune as ft
    from deeprebirth.learning import recover as rc
    out = tmp_path / "recovered"
    assert rc.previous_run(out) is None
    (out / "relearn").mkdir(parents=True)
    (out / "relearn" / "weights.caffemodel").write_bytes(b"")
    (out / "finetune_iter_69.solverstate").write_bytes(b"")
    tuned = {"iterations": 69, "base_lr": 0.0033, "snapshots": ["/elsewhere/recovered/finetune_iter_69.solverstate"]}
    (out / "recover.json").write_text(json.dumps({"finetune": tuned, "interrupted": {"iteration": 69}}))
    assert rc.previous_run(out)["finetune"] == tuned and rc.interrupted_run(out) is not None
    start = ft.Options(weights=str(out / "relearn" / "weights.caffemodel"), seed=3, with_labels=True)
    got = rc.resumed_options(start, tuned, out)
    assert (got.resume, got.weights, got.base_lr) == (str(out / "finetune_iter_69.solverstate"), None, 0.0033)
    assert (got.seed, got.with_labels) == (3, True)
    assert rc.resumed_options(start, dict(tuned, iterations=0), out) == start        # stopped during the probe
    assert rc.resumed_options(start, dict(tuned, snapshots=["x/finetune_iter_70.solverstate"]), out) == start
    (out / "recover.json").write_text(json.dumps({"finetune": tuned}))                # finished: only --more goes on
    assert rc.previous_run(out) is not None and rc.interrupted_run(out) is None
    (out / "relearn" / "weights.caffemodel").unlink()
    assert rc.previous_run(out) is None


def test_a_bench_whose_original_ran_slow_is_timed_again_once(monkeypatch, tmp_path):
    """accelerate's bench: the original slower than in the plan's check by more than
    PAIR_AGREEMENT (the machine slowed), the two are timed again once and the session whose
    original ran quicker kept; an original as quick as in the check, or no time left, once."""
    from deeprebirth.graph.model import load_model
    from deeprebirth.learning import plan as plan_api
    from deeprebirth.runtime import bench
    assert acc.slowed(67.2, 58.3) and not acc.slowed(59.0, 58.3) and not acc.slowed(67.2, None)
    sessions = []

    def fake_run(prepared, device, runs, *args, **kwargs):       # (original, result) medians by session, in ms
        ms = timings[len(sessions)]
        sessions.append(ms)
        return [bench.Measurement(p.label, [], [], forward_s=[t / 1000.0] * runs) for p, t in zip(prepared, ms)]
    monkeypatch.setattr(bench, "run_isolated", fake_run)
    m = load_model("googlenet")
    said = []
    ctx = acc._Ctx(m, "googlenet", None, None, "x", None, tmp_path, acc.Options(), said.append, plan_api.no_stage,
                   time.perf_counter())
    result = {"weights": None, "slim": None, "deploy": m.net}
    timings = [(67.2, 17.2), (58.3, 11.8)]
    doc = acc._bench_step(ctx, result, {"original_ms": 58.3})
    assert len(sessions) == 2 and ctx.steps["bench"]["original_ms"] == [67.2, 58.3]
    assert [round(x["median_ms"], 1) for x in doc["models"]] == [58.3, 11.8]
    assert any("timed again" in line for line in said)
    sessions.clear()
    timings = [(67.2, 17.2), (70.0, 18.0)]                  # slower again: the first session kept
    doc = acc._bench_step(ctx, result, {"original_ms": 58.3})
    assert len(sessions) == 2 and [round(x["median_ms"], 1) for x in doc["models"]] == [67.2, 17.2]
    sessions.clear()
    timings = [(59.0, 11.9)]
    acc._bench_step(ctx, result, {"original_ms": 58.3})
    assert len(sessions) == 1 and ctx.steps["bench"] == {"runs": 3 * plan_api.Options().runs, "sessions": 1}
    sessions.clear()
    timings = [(67.2, 17.2)]
    ctx.started -= ctx.opt.time_budget                        # no time left: once
    acc._bench_step(ctx, result, {"original_ms": 58.3})
    assert len(sessions) == 1


def test_the_machine_names_its_processor_and_load(tmp_path):
    from deeprebirth.learning import plan
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: X\nmodel name\t: Test CPU 9000 @ 3.0GHz\n")
    doc = plan.machine(str(info))
    assert doc["processor"] == "Test CPU 9000 @ 3.0GHz" and doc["logical_cpus"] >= 1
    assert len(doc["load_average"]) == 3 and all(v >= 0 for v in doc["load_average"])
