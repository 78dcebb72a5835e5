"""scripts/reproduce/table3.py: Table 3 on Fashion-MNIST from the `rebirth` commands that made the
shipped nets (rows 9R, 9RL, 9RL+, BN), measured by `rebirth eval --json` and `rebirth bench --json`.
The chain is checked command by command without running it; the cheap mode (--eval-only) and a
CI-sized chain run for real."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest
import table3
from helpers import ROOT

from deeprebirth.cli import main as cli_main

SCRIPT = ROOT / "scripts" / "reproduce" / "table3.py"


def chain_args(**kw):
    args = dict(train_images=None, teacher_weights=table3.TEACHER[1], recover_iters=20000, labels_iters=20000,
                labels_total=40000, bn_iters=1000)
    return argparse.Namespace(**{**args, **kw})


def test_every_command_of_the_chains_is_one_rebirth_accepts(tmp_path):
    steps = table3.chain(tmp_path, chain_args())
    assert [s.name for s in steps] == ["slim", "9R", "9RL", "9RL+", "BN slim", "BN relearn", "BN"]
    for s in steps:
        cli_main.commands[s.cmd[0]].make_context(s.cmd[0], s.cmd[1:] + ["--json"])   # raises on a wrong flag
    by = {s.name: s.cmd for s in steps}
    lmdb = str(tmp_path / "fmnist_train_lmdb")
    assert by["9R"][by["9R"].index("--images") + 1] == f"{lmdb}[:58000]"       # the last 2,000 pick the weights
    assert by["9R"][by["9R"].index("--val") + 1] == f"{lmdb}[58000:]"
    assert by["9RL"][by["9RL"].index("--weights") + 1] == str(tmp_path / "recover" / "relearn" / "weights.caffemodel")
    assert "-b" not in by["9RL+"]          # 9RL not run yet: its batch and rate are not known
    (tmp_path / "labels_distill" / "finetune").mkdir(parents=True)
    (tmp_path / "labels_distill" / "finetune" / "finetune.json").write_text('{"batch": 64, "base_lr": 0.01}')
    resume = next(s.cmd for s in table3.chain(tmp_path, chain_args()) if s.name == "9RL+")
    cli_main.commands["finetune"].make_context("finetune", resume[1:])
    assert resume[resume.index("--resume") + 1].endswith("labels_distill/finetune/finetune_iter_20000.solverstate")
    assert resume[resume.index("-b") + 1] == "64" and resume[resume.index("--iters") + 1] == "40000"
    small = table3.chain(tmp_path, chain_args(train_images=400))
    assert small[1].cmd[small[1].cmd.index("--images") + 1].endswith("[:360]")     # a tenth held out


def test_the_table_names_no_path_of_the_run(tmp_path):
    rows = table3.shipped_rows()
    for i, r in enumerate(rows):
        r.result["eval"] = {"command": "rebirth eval x", "top1": 0.9 - i / 100, "top5": 0.99, "images": 10_000}
        r.result["speed"] = {"best_ms": 1.0, "median_ms": 1.0 + i, "speedup_best": 1.0 + i, "speedup_median": 2.0,
                             "speedup_paired": 2.5, "memory_bytes": 1024 * (100 + i)}
    mach = {"cpu": "a CPU", "cores": 2, "load_average": [1.0, 2.0, 3.0], "openblas_threads": "1",
            "date": "2026-12-05 00:00 UTC"}
    table3.write_results(tmp_path, rows, [{"command": "rebirth bench x"}], mach, "the shipped models/ folders",
                         None, "python scripts/reproduce/table3.py --eval-only")
    md = (tmp_path / "table3.md").read_text()
    assert "| 9RL+ | GoogLeNet-Slim, labels" in md and "| 89.00 % | 99.00 % | 10,000 | 2.00x / 2.00x / 2.50x |" in md
    assert "| teacher |" in md and "1.00x (teacher)" in md and "load average 1.00 / 2.00 / 3.00" in md
    assert str(ROOT) not in md and "out/" not in md and ".venv" not in md     # no path of this run, none ignored
    assert "rebirth recover $WORK/slim --images \"$WORK/fmnist_train_lmdb[:58000]\"" in md
    assert "scripts/reproduce/slim_tucker.py" in md and "--time 0.5" in md
    doc = json.loads((tmp_path / "table3.json").read_text())
    assert [r["row"] for r in doc["rows"]] == ["teacher", "9RL+", "9R", "T6", "BN teacher", "BN"]
    assert doc["machine"]["cores"] == 2


@pytest.mark.slow
@pytest.mark.caffe
def test_eval_only_measures_the_shipped_folders(caffe, tmp_path):
    cmd = [sys.executable, str(SCRIPT), "--eval-only", "--limit", "50", "--bench-runs", "2", "--results",
           str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "table3.json").read_text())
    assert all(r["eval"]["images"] == 50 and r["eval"]["top1"] > 0.7 for r in doc["rows"])   # trained nets
    assert all(r["speed"]["speedup_median"] > 1.0 for r in doc["rows"] if not r["row"].endswith("teacher"))
    assert "rebirth eval models/fmnist_googlenet_slim --data fashion-mnist:test --limit 50 --json" in \
        (tmp_path / "table3.md").read_text()


@pytest.mark.slow
@pytest.mark.caffe
def test_a_small_chain_runs_and_resumes(caffe, tmp_path):
    """The chains on 400 training images and a few iterations: every row evaluated, every step
    recorded with its command; a second run finds every step done and runs none."""
    work, res = tmp_path / "work", tmp_path / "results"
    cmd = [sys.executable, str(SCRIPT), "--work", str(work), "--results", str(res), "--train-images", "400",
           "--recover-iters", "4", "--labels-iters", "4", "--labels-total", "8", "--bn-iters", "4",
           "--limit", "40", "--bench-runs", "2"]
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((res / "table3.json").read_text())
    assert [r["row"] for r in doc["rows"]] == ["teacher", "9R", "9RL", "9RL+", "BN teacher", "BN"]
    assert list(doc["chain"]) == ["slim", "9R", "9RL", "9RL+", "BN slim", "BN relearn", "BN"]
    assert all(str(tmp_path) not in s["command"] for s in doc["chain"].values())
    assert doc["rows"][0]["eval"]["top1"] > 0.7 and all(r["eval"]["images"] == 40 for r in doc["rows"])
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "+ rebirth slim" not in again.stderr and "+ rebirth finetune" not in again.stderr
    assert (work / "slim" / "weights.caffemodel").exists()       # the folder slim_tucker.py's --slim takes
    # --ship: the three folders, into a scratch models/ (each timed against its teacher)
    rows = table3.work_rows(work, chain_args(train_images=400, recover_iters=4, labels_iters=4, labels_total=8,
                                             bn_iters=4))
    for r, got in zip(rows, doc["rows"]):
        r.result = {k: got[k] for k in ("eval", "speed")}
    models = tmp_path / "models"
    models.mkdir()
    made = table3.ship(work, rows, runs=2, models=models)
    assert [p.name for p in made] == ["fmnist_googlenet_slim", "fmnist_googlenet_slim_labelfree", "fmnist_resnet_slim"]
    for folder in made:
        assert {p.name for p in folder.iterdir()} == {"deploy.prototxt", "weights.caffemodel", "train_val.prototxt",
                                                      "README.md"}
        assert "Made by `scripts/reproduce/table3.py`" in (folder / "README.md").read_text()
        assert str(tmp_path) not in (folder / "train_val.prototxt").read_text() + (folder / "deploy.prototxt").read_text()
