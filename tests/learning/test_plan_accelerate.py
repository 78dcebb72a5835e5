"""`rebirth plan`, `slim --plan` and `rebirth accelerate` end to end on a tiny net (Caffe; small runs)."""
from __future__ import annotations

import json
import shlex

import pytest
from helpers import error_line, make_slimmed, run

from deeprebirth.learning import plan as plan_api


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, caffe):
    return make_slimmed(tmp_path_factory.mktemp("plan"))


def plan_args(d, *more):
    return ("plan", d / "tiny.prototxt", "-w", d / "tiny.caffemodel", "--train-val", d / "tv.prototxt",
            "--images", d / "plain", "--runs", "5", "--count", "14", "--heldout", "10", *more)


def test_plan_measures_every_candidate_and_slim_applies_it(tiny, tmp_path):
    res = run(*plan_args(tiny, "-o", tmp_path / "plan.json", "--json"))
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "plan.json").read_text())
    assert doc["kind"] == "rebirth-plan" and doc["basis"] == "measured"
    (cand,) = doc["candidates"]
    assert cand["name"] == "conv1" and cand["rules"] == ["streamline"]
    assert isinstance(cand["saved_ms"], float) and cand["saved_spread_ms"] > 0
    if cand["why"].startswith("saves"):          # within the noise: never re-learned, never chosen
        assert cand["flips"] is None and not cand["chosen"]
    else:
        assert 0 <= cand["flips"] <= 10 and cand["rel_error"] is not None
    assert doc["heldout_images"] == 10 and doc["predicted_speedup"] > 0
    assert doc["rounds"] and doc["rounds"][-1]["chosen"] == doc["only"]
    # applied by slim: the chosen lossy rewrites, every exact one
    plan = tmp_path / "forced.json"
    plan.write_text(json.dumps({**doc, "only": ["conv1"]}))
    res = run("slim", tiny / "tiny.prototxt", "-w", tiny / "tiny.caffemodel", "--plan", plan, "-o", tmp_path / "s")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert report["plan"]["only"] == ["conv1"] and report["regenerated"] == ["conv1"]


def test_the_apply_line_a_plan_prints_runs_as_pasted(tiny, tmp_path, monkeypatch):
    """The plan's last line names the `rebirth slim` that applies it, with the weights and
    train_val as given: pasted, it writes the planned net. A plan that changes nothing says so
    instead (slim would refuse: nothing to slim)."""
    import shlex
    monkeypatch.chdir(tmp_path)
    res = run(*plan_args(tiny, "-o", "plan.json", "--speedup", "100"))     # out of reach: every candidate
    assert res.exit_code == 0, res.output
    line = next(x for x in res.stdout.splitlines() if x.startswith("plan: plan.json"))
    words = shlex.split(line[line.index("(apply: ") + len("(apply: "):].rstrip(")"))
    assert words[:2] == ["rebirth", "slim"] and "-w" in words and "--train-val" in words
    pasted = run(*words[1:])
    assert pasted.exit_code == 0, pasted.output
    assert (tmp_path / "planned" / "deploy.prototxt").is_file() and (tmp_path / "planned" / "init.caffemodel").is_file()
    nothing = dict(json.loads((tmp_path / "plan.json").read_text()), only=[], exact_rewrites=0)
    assert not plan_api.changes_anything(nothing) and plan_api.changes_anything(dict(nothing, only=["conv1"]))


def test_a_plan_out_of_time_leaves_candidates_out_and_says_so(tiny):
    """--time 1s: spent by the first timing (a child process and Caffe's start), so no candidate is
    re-learned, one check is made, and the plan is the exact net, with the reasons."""
    res = run(*plan_args(tiny, "--speedup", "100", "--time", "1s", "--json"))
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["time_budget_s"] == 1.0 and len(doc["rounds"]) == 1 and doc["only"] == []
    (cand,) = doc["candidates"]
    assert cand["flips"] is None and not cand["chosen"]
    assert cand["why"] == "not re-learned: the plan's time for re-learning ran out" or cand["why"].startswith("saves")
    assert "over its time of 1 s" in doc["notes"][-1] and doc["seconds"] > 1.1
    assert plan_api.over_time(40.0, 5.0).startswith("the plan took 40 s, over its time of 5 s")
    assert plan_api.over_time(5.4, 5.0) is None and plan_api.over_time(400.0, None) is None
    res = run(*plan_args(tiny, "--time", "soon"))
    assert "--time" in error_line(res)


def test_plan_without_weights_is_by_time_alone(tiny):
    res = run("plan", tiny / "tiny.prototxt", "--runs", "5", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["basis"] == "time alone" and any("time alone" in n for n in doc["notes"])
    assert doc["candidates"][0]["flips"] is None
    res = run("plan", tiny / "tiny.prototxt", "--runs", "5", "--images", "fashion-mnist:train[:20]", "--json")
    doc = json.loads(res.stdout)                     # images given without weights: not read, and said
    assert doc["images"] is None and any("fashion-mnist:train[:20]) were not read" in n for n in doc["notes"])
    res = run("plan", tiny / "tiny.prototxt", "--runs", "5", "--images", tiny / "no such folder")
    assert res.exit_code == 1 and "no such folder: no such file or directory" in error_line(res)


def test_plan_refusals_are_one_line(tiny, tmp_path):
    res = run(*plan_args(tiny, "--speedup", "2", "--max-drop", "1"))
    assert "give --speedup or --max-drop, not both" in error_line(res)
    for slower in ("0.5", "1"):
        res = run(*plan_args(tiny, "--speedup", slower))
        assert f"--speedup is how many times faster the net should run (e.g. 3), above 1, not {slower}" \
            in error_line(res)
    res = run("plan", tiny / "tiny.prototxt", "-w", tiny / "tiny.caffemodel", "--runs", "5")
    assert "give --images" in error_line(res)
    few = "fashion-mnist:train[:19]"              # too few images: refused before anything is timed
    for cmd in (plan_args(tiny, "--images", few), ("accelerate", tiny / "tiny.prototxt", "-w", tiny / "tiny.caffemodel",
                                                    "--images", few, "-o", tmp_path / "fast")):
        res = run(*cmd)
        assert f"{few}: has 19 image(s); a plan needs at least 20" in error_line(res)
        assert "timing" not in res.output and not (tmp_path / "fast").exists()
    bad = tmp_path / "bad.json"
    bad.write_text('{"only": []}')
    res = run("slim", tiny / "tiny.prototxt", "--plan", bad, "-o", tmp_path / "s")
    assert "not a plan written by `rebirth plan`" in error_line(res)
    assert not (tmp_path / "s").exists()


def accelerate_conv1(tiny, tmp_path, *more):
    """accelerate on the tiny net with a plan that merges conv1, 10 distillation iterations."""
    res = run(*plan_args(tiny, "-o", tmp_path / "plan.json"))
    assert res.exit_code == 0, res.output
    forced = tmp_path / "forced.json"
    forced.write_text(json.dumps({**json.loads((tmp_path / "plan.json").read_text()), "only": ["conv1"]}))
    return run("accelerate", tiny / "tiny.prototxt", "-w", tiny / "tiny.caffemodel", "--train-val", tiny / "tv.prototxt",
               "--plan", forced, "--iters", "10", "-o", tmp_path / "fast", "--json", *more)


def test_accelerate_makes_a_checked_model_folder(tiny, tmp_path):
    out = tmp_path / "fast"
    res = accelerate_conv1(tiny, tmp_path, "--images", tiny / "plain")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    for name in ("deploy.prototxt", "weights.caffemodel", "train_val.prototxt", "plan.json", "report.json",
                 "report.md", "chart.png"):
        assert (out / name).is_file(), name
    check = doc["steps"]["check"]
    assert doc["result"] in ("recovered", "re-learned", "exact")
    assert {o["name"] for o in check["options"]} == {"recovered", "re-learned", "exact"}
    chosen = next(o for o in check["options"] if o["name"] == doc["result"])
    assert chosen.get("exact") or chosen["flips_percent"] <= check["allowed"]
    assert doc["speedup"] is not None and "accelerate" in json.loads((out / "report.json").read_text())
    # OUT is a MODEL for the other commands
    res = run("inspect", out, "--json")
    assert res.exit_code == 0, res.output
    # report.md's eval line gives the check's numbers again (the output error as `eval --teacher` counts it)
    (line,) = [ln for ln in (out / "report.md").read_text().splitlines() if ln.startswith("rebirth eval ")]
    args = shlex.split(line)
    assert args[2] == str(out) and "--teacher-weights" in args and check["rel_error_of"] == "the output blob"
    recovered = next(o for o in check["options"] if o["name"] == "recovered")
    res = run("eval", out / "slim" / "recovered", *args[3:], "--json")
    assert res.exit_code == 0, res.output
    again = json.loads(res.stdout)
    assert again["images"] == recovered["images"] and again["agreement"] == pytest.approx(recovered["agreement"],
                                                                                          abs=1e-4)
    assert again["rel_error"] == pytest.approx(recovered["rel_error"], rel=1e-3, abs=1e-6)
    assert run(*args[1:], "--json").exit_code == 0


def test_an_interrupted_accelerate_keeps_its_steps_and_goes_on_from_the_distillations_snapshot(
        tiny, tmp_path, monkeypatch):
    """Ctrl-C during the distillation: exit 130 and a line saying what was kept (a new OUT is not
    removed); the same command again reuses the plan, the slim net and relearn's weights, and
    resumes the distillation from its snapshot, at its rate, to a checked model folder."""
    import os
    import signal

    from deeprebirth.learning import health
    check = health.check_divergence

    def check_then_interrupt(losses, it, *floor):      # Ctrl-C right after the distillation's step 3
        check(losses, it, *floor)
        if it == 3:
            os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.setattr(health, "check_divergence", check_then_interrupt)
    out = tmp_path / "fast"
    res = accelerate_conv1(tiny, tmp_path, "--images", tiny / "plain")
    assert res.exit_code == 130, res.output
    last = [x for x in res.stderr.strip().splitlines() if x.startswith("rebirth: error:")]
    assert len(last) == 1 and "Traceback" not in res.output, res.output
    assert last[0].startswith("rebirth: error: interrupted: the distillation stopped by SIGINT at iteration 3 of ")
    assert f"kept in {out}: plan.json, slim/, the distillation's snapshot at iteration 3; the same command again" \
        in last[0]
    rec = out / "slim" / "recovered"
    first = json.loads((rec / "recover.json").read_text())
    assert first["interrupted"]["iteration"] == 3 and (rec / "finetune_iter_3.solverstate").is_file()
    relearned = (rec / "relearn" / "relearn.json").read_bytes()
    assert not (out / "weights.caffemodel").exists()
    monkeypatch.undo()
    res = run("accelerate", tiny / "tiny.prototxt", "-w", tiny / "tiny.caffemodel", "--train-val", tiny / "tv.prototxt",
              "--plan", tmp_path / "forced.json", "--iters", "10", "-o", out, "--json", "--images", tiny / "plain")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["steps"]["recover"]["resumed_at"] == 3 and doc["steps"]["slim"] == {"reused": str(out / "slim")}
    again = json.loads((rec / "recover.json").read_text())
    assert "interrupted" not in again and again["resumed"]["iteration"] == 3
    tuned = again["finetune"]
    assert tuned["start_iteration"] == 3 and tuned["iterations"] == 10 and tuned["resumed_from"].endswith("_iter_3.solverstate")
    assert tuned["base_lr"] == first["finetune"]["base_lr"]
    assert (rec / "relearn" / "relearn.json").read_bytes() == relearned       # relearn not run again
    assert (out / "weights.caffemodel").is_file() and doc["result"] in ("recovered", "re-learned", "exact")


def test_more_trains_a_finished_recovery_longer_from_its_last_snapshot(tiny, tmp_path):
    out = tmp_path / "fast"
    args = ("accelerate", tiny / "tiny.prototxt", "-w", tiny / "tiny.caffemodel", "--train-val", tiny / "tv.prototxt",
            "--images", tiny / "plain", "-o", out, "--json")
    res = run(*args, "--more")              # nothing to go on from: one line, no folder
    assert "holds no recovery to train longer (--more goes on from a finished run" in error_line(res)
    assert not out.exists()
    res = accelerate_conv1(tiny, tmp_path, "--images", tiny / "plain")
    assert res.exit_code == 0, res.output
    rec = out / "slim" / "recovered"
    first = json.loads((rec / "recover.json").read_text())["finetune"]
    assert first["iterations"] == 10
    relearned = (rec / "relearn" / "relearn.json").read_bytes()
    res = run(*args, "--plan", tmp_path / "forced.json", "--iters", "10")      # again: every step done is reused
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["steps"]["recover"] == {"reused": str(rec)}
    res = run(*args, "--plan", tmp_path / "forced.json", "--iters", "16", "--more")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["steps"]["recover"]["resumed_at"] == 10 and doc["steps"]["recover"]["distill_iterations"] == 16
    tuned = json.loads((rec / "recover.json").read_text())["finetune"]
    assert (tuned["start_iteration"], tuned["iterations"], tuned["base_lr"]) == (10, 16, first["base_lr"])
    assert (rec / "relearn" / "relearn.json").read_bytes() == relearned
    assert {o["name"] for o in doc["steps"]["check"]["options"]} == {"recovered", "re-learned", "exact"}


def test_plan_never_writes_over_a_file_it_did_not_write(tiny, tmp_path):
    mine = tmp_path / "notes.json"
    mine.write_text('{"mine": true}')
    res = run("plan", tiny / "tiny.prototxt", "--runs", "5", "-o", mine)
    assert "not a plan rebirth wrote" in error_line(res)
    assert mine.read_text() == '{"mine": true}'


def test_accelerate_with_labels_distils_with_them_and_checks_top1(tiny, tmp_path):
    out = tmp_path / "fast"
    res = accelerate_conv1(tiny, tmp_path, "--images", tiny / "train", "--labels")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    check = doc["steps"]["check"]
    assert check["labels"] is True and check["allowed"] >= 0
    recovered = next(o for o in check["options"] if o["name"] == "recovered")
    assert 0 <= recovered["top1"] <= 1 and 0 <= recovered["top1_original"] <= 1
    chosen = next(o for o in check["options"] if o["name"] == doc["result"])
    assert chosen.get("exact") or 100 * (chosen["top1_original"] - chosen["top1"]) <= check["allowed"] + 1e-9
    rec = json.loads((out / "slim" / "recovered" / "recover.json").read_text())
    assert rec["labels_read"] is True and rec["finetune"]["mode"] == "distill+labels"
    assert "top-1 points lost" in (out / "report.md").read_text()


def test_labels_on_unlabelled_images_is_a_one_line_error_before_any_work(tiny, tmp_path):
    out = tmp_path / "fast"
    res = run("accelerate", tiny / "tiny.prototxt", "-w", tiny / "tiny.caffemodel", "--images", tiny / "plain",
              "--labels", "-o", out)
    assert "have no labels, but --labels needs them" in error_line(res)
    assert not out.exists()
    res = run(*plan_args(tiny, "--labels"))
    assert "have no labels, but --labels needs them" in error_line(res)


TWO_STAGES = """name: "two"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 12 dim: 12 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2" convolution_param { num_output: 6 kernel_size: 3 pad: 1 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool2" top: "fc" inner_product_param { num_output: 3 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def test_a_set_that_misses_its_promise_falls_back_to_the_exact_net(tiny, tmp_path):
    from helpers import write_random_weights

    from deeprebirth.caffe import netio
    (tmp_path / "two.prototxt").write_text(TWO_STAGES)
    write_random_weights(netio.parse_net_text(TWO_STAGES), tmp_path / "two.caffemodel", seed=3)
    res = run("plan", tmp_path / "two.prototxt", "-w", tmp_path / "two.caffemodel", "--images", tiny / "plain",
              "--runs", "5", "--count", "14", "--heldout", "10", "-o", tmp_path / "plan.json")
    assert res.exit_code == 0, res.output
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert {c["name"] for c in plan["candidates"]} == {"conv1", "conv2"}
    # both merges, and a promise no recovered net can keep unless it changes no image's class
    plan.update(only=["conv1", "conv2"], goal={"speedup": None, "max_drop": 0.0})
    (tmp_path / "forced.json").write_text(json.dumps(plan))
    out = tmp_path / "fast"
    res = run("accelerate", tmp_path / "two.prototxt", "-w", tmp_path / "two.caffemodel", "--images", tiny / "plain",
              "--plan", tmp_path / "forced.json", "--iters", "5", "--runs", "5", "-o", out, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    check = doc["steps"]["check"]
    options = {o["name"]: o for o in check["options"]}
    assert set(options) == {"recovered", "re-learned", "exact"}      # no smaller set is tried
    if options["recovered"]["flips"] == 0 or options["re-learned"]["flips"] == 0:   # the promise kept
        assert doc["result"] in ("recovered", "re-learned")
        return
    assert doc["result"] == "exact" and "the exact net: no recovered net stayed within 0.00" in check["why"]
    report = json.loads((out / "report.json").read_text())
    assert report.get("regenerated", []) == []        # the exact net: every lossless rewrite, no lossy one
    res = run("eval", out, "--data", tiny / "val", "--json")
    assert res.exit_code == 0, res.output


def test_with_labels_accelerate_aims_at_the_speed_and_keeps_the_budget(tiny, tmp_path, monkeypatch):
    """When aimed_speedup says the speed is worth going for (on this tiny net timing cannot be
    relied on to, so it is told), the plan is made again for that speed-up, the promise stays the
    budget in top-1 points, and plan.json and report.md say so; nothing is measured twice."""
    from deeprebirth.learning import accelerate as acc
    monkeypatch.setattr(acc, "aimed_speedup", lambda plan, opt: 1.5 if opt.labels else None)
    out = tmp_path / "fast"
    res = run("accelerate", tiny / "tiny.prototxt", "-w", tiny / "tiny.caffemodel", "--train-val", tiny / "tv.prototxt",
              "--images", tiny / "train", "--labels", "--runs", "5", "--count", "14", "--heldout", "10",
              "--iters", "10", "-o", out, "--json")
    assert res.exit_code == 0, res.output
    plan = json.loads((out / "plan.json").read_text())
    assert plan["goal"]["speedup"] == 1.5 and plan["goal"]["aimed"] is True
    assert plan["goal"]["max_drop"] == 0.5 and plan["budget_plan"]["only"] is not None
    assert any("aimed at 1.5x" in n for n in plan["notes"])
    assert res.output.count("lossy candidate(s)") == 1      # chosen again from the same measurements
    # every candidate a speed-up may choose was re-learned, also those the budget's plan left out
    assert all(c["flips"] is not None for c in plan["candidates"] if (c["saved_ms"] or 0) > 0 and not c.get("note"))
    doc = json.loads(res.stdout)
    assert doc["steps"]["check"]["allowed"] == 0.5 and doc["steps"]["check"]["labels"] is True
    assert "hint" not in doc
    assert "aimed at 1.5x" in (out / "report.md").read_text()
