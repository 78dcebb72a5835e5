"""scripts/reproduce/slim_tucker.py: the Slim-Tucker chain (tucker -> relearn -> merge -> distil with labels
-> eval) as the `rebirth` commands a user runs, resumable step by step."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest
import slim_tucker as mod
from helpers import ROOT, run

from deeprebirth.cli import main as cli_main

SCRIPT = ROOT / "scripts" / "reproduce" / "slim_tucker.py"


def test_every_command_of_the_chain_is_one_rebirth_accepts(tmp_path):
    """Each step is a real `rebirth` command line: click parses it (no unknown flag, no missing
    argument), and each step reads what the one before it writes."""
    args = argparse.Namespace(slim=ROOT / "models" / "fmnist_googlenet_slim", rank_floor=0.0625, time=0.5,
                              teacher=[ROOT / "models" / "fmnist_googlenet.prototxt",
                                       ROOT / "models" / "fmnist_googlenet.caffemodel"],
                              iters=30, train="fashion-mnist:train[:100]", val="fashion-mnist:train[100:132]",
                              test="fashion-mnist:test[:50]", longer=0)
    steps = mod.commands(tmp_path, args)
    assert [s.name for s in steps] == ["tucker", "relearn", "merge", "distill", "test"]
    for cmd in (s.cmd for s in steps):
        sub = cli_main.commands[cmd[0]]
        sub.make_context(cmd[0], cmd[1:] + ["--json"])          # raises on a flag rebirth does not have
    tucker, relearn, merge, distill, test = (s.cmd for s in steps)
    assert tucker[tucker.index("--rank-floor") + 1] == "0.0625" and tucker[tucker.index("--time") + 1] == "0.5"
    assert relearn[1] == tucker[tucker.index("-o") + 1]
    assert merge[merge.index("-w") + 1] == str(tmp_path / "relearn" / "weights.caffemodel")
    assert distill[1] == merge[merge.index("-o") + 1] and "--with-labels" in distill
    assert test[test.index("-w") + 1] == str(tmp_path / "distill" / "weights.caffemodel")
    args.rank_floor = None
    assert "--rank-floor" not in mod.commands(tmp_path, args)[0].cmd      # tucker's own default
    args.longer = 60          # resumed from the first run's last snapshot, with its batch and rate
    (tmp_path / "distill").mkdir()
    (tmp_path / "distill" / "finetune.json").write_text(json.dumps({"batch": 32, "base_lr": 0.01}))
    steps = mod.commands(tmp_path, args)
    assert [s.name for s in steps][-2:] == ["distill_long", "test_long"]
    resume = steps[-2].cmd
    cli_main.commands["finetune"].make_context("finetune", resume[1:] + ["--json"])
    assert resume[resume.index("--resume") + 1] == str(tmp_path / "distill" / "finetune_iter_30.solverstate")
    assert resume[resume.index("-b") + 1] == "32" and resume[resume.index("--base-lr") + 1] == "0.01"
    assert steps[-1].cmd[steps[-1].cmd.index("-w") + 1] == str(tmp_path / "distill_long" / "weights.caffemodel")


def test_a_record_of_the_users_is_left_alone(tmp_path):
    """OUT/slim_tucker.json that this script did not write: the run stops before any step, and the
    file is as it was."""
    mine = tmp_path / "slim_tucker.json"
    mine.write_text('{"mine": 1}')
    with pytest.raises(SystemExit, match="not written by scripts/reproduce/slim_tucker.py; left alone"):
        mod.main([str(tmp_path)])
    assert mine.read_text() == '{"mine": 1}' and [p.name for p in tmp_path.iterdir()] == ["slim_tucker.json"]
    with pytest.raises(SystemExit, match="no such file"):
        mod.main([str(tmp_path / "new"), "--slim", str(tmp_path / "nothing")])
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
@pytest.mark.caffe
def test_the_chain_runs_and_resumes(caffe, tmp_path):
    """A few images and iterations through the real commands: a top-1 on the test images, every
    step timed; a second run finds every step done and runs none."""
    out = tmp_path / "st"
    cmd = [sys.executable, str(SCRIPT), str(out), "--iters", "4",
           "--train", "fashion-mnist:train[:300]", "--val", "fashion-mnist:train[300:332]",
           "--test", "fashion-mnist:test[:64]"]
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out / "slim_tucker.json").read_text())
    steps = doc["steps"]
    assert list(steps) == ["tucker", "relearn", "merge", "distill", "test"]
    assert steps["test"]["images"] == 64 and 0.0 <= steps["test"]["top1"] <= 1.0
    cost = steps["tucker"]["budget_cost"]
    assert cost["after"] < cost["before"]
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert again.returncode == 0 and "+ rebirth" not in again.stderr
    # every command printed as a user pastes it, the work folder as $WORK
    assert all(s["command"].startswith("rebirth ") and str(out) not in s["command"] for s in steps.values())
    assert "$WORK/merged" in steps["distill"]["command"]
    # --ship: a models/ folder with a README the shipped-model tests read (into a scratch models/)
    models = tmp_path / "models"
    models.mkdir()
    args = argparse.Namespace(
        row="T5", time=0.5, longer=0, slim=ROOT / "models" / "fmnist_googlenet_slim", iters=4,
        teacher=[ROOT / "models" / "fmnist_googlenet.prototxt", ROOT / "models" / "fmnist_googlenet.caffemodel"])
    shipped = mod.ship(out, args, doc, runs=2, models=models)
    assert {p.name for p in shipped.iterdir()} == {"deploy.prototxt", "weights.caffemodel", "train_val.prototxt",
                                                   "README.md"}
    readme = (shipped / "README.md").read_text()
    assert f"top-1 {100 * steps['test']['top1']:.2f} %" in readme and "pool_into_fc" in readme
    assert "Made by `scripts/reproduce/slim_tucker.py`" in readme and "faster than its teacher" in readme
    assert str(tmp_path) not in (shipped / "train_val.prototxt").read_text()
    assert str(tmp_path) not in (shipped / "deploy.prototxt").read_text()
    res = run("eval", shipped, "--data", "fashion-mnist:test[:20]", "--json")     # a MODEL for `rebirth eval`
    assert res.exit_code == 0 and json.loads(res.stdout)["images"] == 20, res.output
