"""scripts/reproduce/steps.py: a `rebirth` command as a step with a done-record, shown as a user
pastes it."""
from __future__ import annotations

import json

import pytest
import steps
from helpers import ROOT


def test_commands_are_shown_from_the_root_with_the_work_folder_as_a_variable(tmp_path):
    work = tmp_path / "w"
    cmd = ["finetune", str(ROOT / "models" / "x"), "--train", f"{work}/lmdb[:58000]", "-o", str(work / "ft"),
           "--note", "a b"]
    assert steps.shown(cmd, work) == ('rebirth finetune models/x --train "$WORK/lmdb[:58000]" -o $WORK/ft '
                                      "--note 'a b'")
    assert steps.shown(["x.py", "--eval-only"], None, ".venv/bin/python") == ".venv/bin/python x.py --eval-only"


def test_a_chain_runs_each_step_once_and_keeps_what_it_is_asked_to(tmp_path):
    done = tmp_path / "chain.json"
    model = str(ROOT / "models" / "googlenet.prototxt")
    made = [steps.Step("inspect", ["inspect", model, "-b", "1"]),
            steps.Step("timed", ["inspect", model], always=True)]
    calls = []

    def keep(name, got):
        calls.append(name)
        return {"layers": got["totals"]["layers"]}

    doc = steps.run_chain(lambda: made, done, "me", work=tmp_path, keep=keep)
    assert calls == ["inspect", "timed"] and doc["steps"]["inspect"]["layers"] == 143
    assert doc["steps"]["inspect"]["command"] == "rebirth inspect models/googlenet.prototxt -b 1 --json"
    assert json.loads(done.read_text()) == doc
    steps.run_chain(lambda: made, done, "me", work=tmp_path, keep=keep)
    assert calls == ["inspect", "timed", "timed"]          # done once; a measurement every time


def test_a_record_it_did_not_write_stops_the_run(tmp_path):
    mine = tmp_path / "chain.json"
    mine.write_text('{"made_by": "someone else", "steps": {}}')
    with pytest.raises(SystemExit, match="not written by me; left alone"):
        steps.run_chain(lambda: [steps.Step("x", ["inspect", "googlenet"])], mine, "me")
    assert mine.read_text() == '{"made_by": "someone else", "steps": {}}'


def test_a_failing_command_stops_the_chain(tmp_path, capsys):
    with pytest.raises(SystemExit, match="rebirth inspect failed"):
        steps.rebirth(["inspect", str(tmp_path / "missing.prototxt")])
    assert "+ rebirth inspect" in capsys.readouterr().err


def test_the_machine_is_described():
    m = steps.machine()
    assert m["cpu"] and m["cores"] >= 1 and m["date"].endswith("UTC")
    line = steps.machine_line(m)
    assert line.startswith("Machine: ") and "logical cores" in line


def test_accelerate_check_keeps_a_tagged_run_apart_with_its_options(tmp_path):
    import accelerate_check as ac
    plain = ac.chain("fmnist_googlenet", "onnxruntime", "30m", tmp_path)
    tagged = ac.chain("fmnist_googlenet", "onnxruntime", "30m", tmp_path, "fashion-mnist:train[:50000]",
                      ["--speedup", "3", "--labels"], "labels")
    assert plain[0].cmd[-1] == tmp_path / "fmnist_googlenet-onnxruntime"
    assert tagged[0].cmd[-1] == tmp_path / "fmnist_googlenet-onnxruntime-labels"
    assert tagged[0].cmd[-5:-2] == ["--speedup", "3", "--labels"] and "fashion-mnist:train[:50000]" in tagged[0].cmd
    text = ac.table([], steps.machine(), "fashion-mnist:train[:50000]", ["--speedup", "3", "--labels"],
                    " --args '--speedup 3 --labels'")
    assert text.startswith("# `rebirth accelerate` with --speedup 3 --labels\n") and "with its labels" in text


def test_accelerate_check_with_more_trains_a_recovery_longer_and_evaluates_what_the_check_judged(tmp_path):
    """Once a run has recovered weights: they are evaluated, and with ``more`` the same accelerate
    command with --more follows, then the result and the recovered weights again; the table says
    what --more changed."""
    import accelerate_check as ac
    args = ("alexnet_lrn", "onnxruntime", "30m", tmp_path, "fashion-mnist:train[:50000]", ["--labels"], "more")
    assert [s.name for s in ac.chain(*args, more=True)] == ["accelerate", "eval_original", "eval_result"]
    rec = tmp_path / "alexnet_lrn-onnxruntime-more" / "slim" / "recovered"
    rec.mkdir(parents=True)
    (rec / "weights.caffemodel").write_bytes(b"")
    assert [s.name for s in ac.chain(*args)][-1] == "eval_recovered"
    chain = ac.chain(*args, more=True)
    assert [s.name for s in chain][3:] == ["eval_recovered", "accelerate_more", "eval_result_more",
                                           "eval_recovered_more"]
    assert chain[4].cmd == [*chain[0].cmd, "--more"] and chain[4].record is None
    assert str(rec.parent / "deploy.prototxt") in map(str, chain[3].cmd)
    row = {"net": "alexnet_lrn", "engine": "onnxruntime", "steps": {
        "accelerate": {"command": "a", "recover": {"distill_iterations": 2265}, "check": {"chosen": "exact"}},
        "eval_recovered": {"command": "e", "top1": 0.8904},
        "accelerate_more": {"command": "m", "recover": {"distill_iterations": 4248}, "minutes": 28.5,
                            "check": {"chosen": "exact", "why": "no recovered net stayed within 0.50"}},
        "eval_recovered_more": {"command": "e2", "top1": 0.8933}}}
    text = ac.table([row], steps.machine(), extra=["--labels"])
    assert "| alexnet_lrn | 2,265 -> 4,248 | exact -> exact (no recovered net stayed within 0.50) | - -> - " \
           "| 89.04 % -> 89.33 % | - -> - | 28.5 |" in text


def test_expected_drop_check_reads_every_set_of_weights_of_a_run_in_order(tmp_path):
    """expected_drop_check.checkpoints: least squares, the snapshots by iteration (10000 after 2000),
    the result; a folder that is not an accelerate run is a one-line error, exit 1."""
    import expected_drop_check as edc
    run = tmp_path / "run"
    rec = run / "slim" / "recovered"
    (rec / "relearn").mkdir(parents=True)
    for p in (rec / "relearn" / "weights.caffemodel", rec / "finetune_iter_10000.caffemodel",
              rec / "finetune_iter_2000.caffemodel", run / "weights.caffemodel"):
        p.write_bytes(b"")
    assert [c[0] for c in edc.checkpoints(run)] == ["relearn", "iter_2000", "iter_10000", "result"]
    assert edc.checkpoints(tmp_path / "nothing") == []
    assert edc.main([str(tmp_path / "nothing"), "--data", "fashion-mnist:test[:20]"]) == 1


def test_plan_vs_everything_recovers_every_merge_as_long_as_accelerate_ran_and_times_both_side_by_side(tmp_path):
    import plan_vs_everything as pve
    chain = pve.chain("fmnist_resnet", "onnxruntime", "30m", tmp_path, "fashion-mnist:train[:3000]")
    by = {s.name: s for s in chain}
    plan, recovered = tmp_path / "fmnist_resnet" / "plan", tmp_path / "fmnist_resnet" / "everything" / "recovered"
    assert by["accelerate"].cmd[-2:] == ["-o", plan] and "--time" in by["accelerate"].cmd
    assert by["recover"].cmd[by["recover"].cmd.index("--time") + 1] == "30m"
    assert by["bench_pair_1"].cmd[1:3] == [plan / "deploy.prototxt", recovered / "deploy.prototxt"]
    assert by["bench_pair_3"].always and by["bench_pair_1"].cmd.count("--weights") == 2
    assert pve.keep("bench_pair", {"models": [{"median_ms": 1.0}, {"median_ms": 0.5}], "ratios": {"models": {
        "a": {"median": 1.0}, "b": {"median": 0.5}}}})["speedup"] == 2.0
    row = {"net": "fmnist_resnet", "steps": {
        "accelerate": {"command": "a", "result": "planned", "only": [], "speedup": 1.0},
        "recover": {"command": "r", "iterations": 4000},
        "bench_pair_1": {"command": "b", "speedup": 1.07}, "bench_pair_2": {"command": "b", "speedup": 0.98},
        "bench_pair_3": {"command": "b", "speedup": 1.01}, "bench_plan_1": {"command": "b", "speedup": 1.0},
        "eval_plan": {"command": "e", "top1": 0.9261, "agreement": 1.0, "rel_error": 0.0},
        "eval_everything": {"command": "e2", "top1": 0.91, "agreement": 0.95, "rel_error": 0.2}}}
    text = pve.table([row], steps.machine(), "")
    assert "| fmnist_resnet | planned (no lossy merge) | 1.00x | every merge, 4,000 distillation iterations | - " \
           "| 1.01x (0.98-1.07) " \
           "| 92.61 % / 91.00 % | 100.00 % / 95.00 % | 0.000 / 0.200 |" in text
