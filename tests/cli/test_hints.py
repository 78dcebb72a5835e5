"""Every hint the CLI prints is pasted and run: it names a command and options that exist, and it
works for the net at hand (SOURCE replaced by an image folder; a fine-tuning run is cut to a few
iterations with --iters, the only thing added)."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys

import pytest
from helpers import FT_DEPLOY as DEPLOY
from helpers import FT_TRAIN_VAL as TRAIN_VAL
from helpers import ROOT, error_line, make_slimmed, run, write_random_weights

from deeprebirth.caffe import netio


@pytest.fixture(scope="module")
def slimmed(tmp_path_factory, caffe):
    return make_slimmed(tmp_path_factory.mktemp("hints"))


def hints(text: str) -> list[list[str]]:
    """The `rebirth ...` commands in a report, as argument lists (without the program name)."""
    out = []
    for line in text.splitlines():
        m = re.search(r"\brebirth ((?:inspect|slim|fold-bn|tucker|relearn|finetune|eval|bench)\b.*)$", line)
        if m:
            out.append(shlex.split(m.group(1)))
    return out


def test_every_option_a_hint_names_exists(tmp_path):
    """Hints from reports and errors, checked against the commands' real options."""
    from deeprebirth.cli import main
    proto = tmp_path / "net.prototxt"
    proto.write_text(DEPLOY)
    write_random_weights(netio.parse_net_text(DEPLOY), tmp_path / "w.caffemodel", seed=0)
    report = run("slim", proto, "-w", tmp_path / "w.caffemodel", "-o", tmp_path / "s")
    found = hints(report.output)
    assert [h[0] for h in found] == ["relearn", "finetune"]
    for h in found:
        cmd = main.commands[h[0]]
        known = {o for p in cmd.params for o in p.opts}
        used = [a for a in h if a.startswith("--")]
        assert set(used) <= known, (h, set(used) - known)


def test_the_streamline_hint_runs(tmp_path):
    """A BatchNorm between a convolution and its pooling (names in GoogLeNet's style, so the
    streamline unit 'c1' and the convolution 'c1/3x3' differ): the note names the --only that works."""
    text = DEPLOY.replace('"conv1"', '"c1/3x3"').replace(
        'layer { name: "relu1"', 'layer { name: "c1/bn" type: "BatchNorm" bottom: "c1/3x3" top: "c1/3x3" }\n'
        'layer { name: "c1/scale" type: "Scale" bottom: "c1/3x3" top: "c1/3x3" scale_param { bias_term: true } }\n'
        'layer { name: "relu1"').replace('"relu1" type: "ReLU" bottom: "conv1" top: "conv1"',
                                         '"relu1" type: "ReLU" bottom: "c1/3x3" top: "c1/3x3"')
    text = text.replace('bottom: "conv1" top: "pool1"', 'bottom: "c1/3x3" top: "pool1"')
    proto = tmp_path / "bn.prototxt"
    proto.write_text(text)
    write_random_weights(netio.parse_net_text(text), tmp_path / "bn.caffemodel", seed=0)
    units = [c["name"] for c in json.loads(run("inspect", proto, "--json").stdout)["candidates"]
             if c["rule"] == "streamline"]
    assert units == ["c1"]
    first = run("slim", proto, "-w", tmp_path / "bn.caffemodel", "--only", "c1", "-o", tmp_path / "a")
    only = re.search(r"--only (\S+)\)?", first.output)
    assert only and only.group(1).rstrip(");") == "c1/3x3,c1", first.output
    again = run("slim", proto, "-w", tmp_path / "bn.caffemodel", "--only", "c1/3x3,c1", "-o", tmp_path / "b")
    assert again.exit_code == 0, again.output
    rules = {c["rule"] for c in json.loads((tmp_path / "b" / "report.json").read_text())["changes"]}
    assert rules == {"fold_bn", "streamline"}


def test_the_tucker_hints_name_its_options(tmp_path):
    proto = tmp_path / "net.prototxt"
    proto.write_text(DEPLOY)
    write_random_weights(netio.parse_net_text(DEPLOY), tmp_path / "w.caffemodel", seed=0, drop=("fc",))
    line = error_line(run("tucker", proto, tmp_path / "w.caffemodel", "-o", tmp_path / "t", "--data-layer", "dummy"))
    assert "--allow-missing" in line
    assert run("tucker", proto, tmp_path / "w.caffemodel", "-o", tmp_path / "t", "--data-layer", "dummy",
               "--allow-missing").exit_code == 0
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / "notes.txt").write_text("mine")
    res = run("tucker", proto, tmp_path / "w.caffemodel", "-o", tmp_path / "u", "--data-layer", "dummy",
              "--allow-missing")
    assert res.exit_code == 1 and "--force" in res.stderr.splitlines()[-1]
    assert run("tucker", proto, tmp_path / "w.caffemodel", "-o", tmp_path / "u", "--data-layer", "dummy",
               "--allow-missing", "--force").exit_code == 0


def test_a_train_val_as_model_is_told_what_works(tmp_path):
    tv = tmp_path / "tv.prototxt"
    tv.write_text(TRAIN_VAL.replace('transform_param { scale: 0.00390625 mirror: true } ', ''))
    line = error_line(run("inspect", tv))
    assert "give the deploy prototxt" in line
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text(DEPLOY)
    assert run("inspect", deploy).exit_code == 0


INCEPTION = """name: "inc"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 8 dim: 8 dim: 8 } } }
layer { name: "b3" type: "Convolution" bottom: "data" top: "b3" convolution_param { num_output: 24 kernel_size: 3 pad: 1 } }
layer { name: "r3" type: "ReLU" bottom: "b3" top: "b3" }
layer { name: "b5" type: "Convolution" bottom: "data" top: "b5" convolution_param { num_output: 16 kernel_size: 5 pad: 2 } }
layer { name: "r5" type: "ReLU" bottom: "b5" top: "b5" }
layer { name: "cat" type: "Concat" bottom: "b3" bottom: "b5" top: "cat" }
layer { name: "fc" type: "InnerProduct" bottom: "cat" top: "fc" inner_product_param { num_output: 3 } }
"""


def test_the_tucker_merge_hint_runs_when_pasted(tmp_path, caffe, monkeypatch):
    """A Tucker net whose branches end in 1x1 `_out` layers into one Concat: the report names the
    exact merge to run once fine-tuned; pasted (the fine-tuned weights stood in for by the
    decomposition's), it merges them."""
    proto = tmp_path / "inc.prototxt"
    proto.write_text(INCEPTION)
    write_random_weights(netio.parse_net_text(INCEPTION), tmp_path / "w.caffemodel", seed=0)
    monkeypatch.chdir(tmp_path)
    report = run("tucker", "inc.prototxt", "w.caffemodel", "--ranks", "4,4", "--only", "b3,b5", "--data-layer",
                 "dummy", "-o", "t")
    assert report.exit_code == 0, report.output
    line = next(x for x in report.output.splitlines() if x.startswith("once fine-tuned"))
    merge = hints(line)[0]
    (tmp_path / "t" / "finetune").mkdir()
    (tmp_path / "t" / "finetune" / "weights.caffemodel").write_bytes((tmp_path / "t" / "init.caffemodel").read_bytes())
    res = run(*merge)
    assert res.exit_code == 0, res.output
    layers = [lr.name for lr in netio.read_net(tmp_path / "t_merged" / "deploy.prototxt").layer]
    assert "b3_out+b5_out" in layers and "b3_out" not in layers


def test_an_exact_slim_hints_eval_and_it_runs_when_pasted(slimmed, tmp_path):
    """Only exact rewrites (the tiny net with a global average pooling, folded by pool_into_fc):
    the report says the weights are ready and names `rebirth eval`, which runs when pasted."""
    d = slimmed
    gap = "pooling_param { pool: AVE global_pooling: true }"
    deploy, tv = tmp_path / "gap.prototxt", tmp_path / "gap_tv.prototxt"
    deploy.write_text(DEPLOY.replace("pooling_param { pool: MAX kernel_size: 2 stride: 2 }", gap))
    tv.write_text(TRAIN_VAL.replace("pooling_param { pool: MAX kernel_size: 2 stride: 2 }", gap))
    write_random_weights(netio.parse_net_text(deploy.read_text()), tmp_path / "gap.caffemodel", seed=2)
    out = tmp_path / "exact"
    report = run("slim", deploy, "-w", tmp_path / "gap.caffemodel", "--train-val", tv, "--rules", "pool_into_fc",
                 "-o", out)
    assert report.exit_code == 0, report.output
    assert "every rewrite was exact" in report.output, report.output
    ev = next(h for h in hints(report.output) if h[0] == "eval")
    res = run(*[str(d / "val") if a == "SOURCE" else a for a in ev])
    assert res.exit_code == 0, res.output
    assert "top1" in res.output


@pytest.mark.slow
def test_slim_hints_relearn_and_finetune_run_when_pasted(slimmed, tmp_path):
    d = slimmed
    out = tmp_path / "slim"
    report = run("slim", d / "tiny.prototxt", "-w", d / "tiny.caffemodel", "--train-val", d / "tv.prototxt", "-o", out)
    assert report.exit_code == 0, report.output
    relearn, finetune = hints(report.output)
    relearn = [str(d / "plain") if a == "SOURCE" else a for a in relearn]
    res = run(*relearn)
    assert res.exit_code == 0, res.output
    finetune = [str(d / "train") if a == "SOURCE" else a for a in finetune] + ["--iters", "2"]
    res = run(*finetune)
    assert res.exit_code == 0, res.output
    caffe_line = next(x for x in report.output.splitlines() if "caffe train" in x)
    assert "after writing train.txt and val.txt" in caffe_line   # the data it needs is named


@pytest.mark.slow
def test_ctrl_c_during_finetune_writes_and_the_resume_hint_runs(slimmed, tmp_path):
    """SIGINT to a running `rebirth finetune`: it stops after the iteration, writes weights,
    finetune.json and a snapshot, prints the resume line (with --val), which then runs, and exits
    130 with one `rebirth: error: interrupted: ...` line."""
    d = slimmed
    out = tmp_path / "ft"
    env = dict(os.environ, PYTHONPATH=str(ROOT), GLOG_minloglevel="2")
    proc = subprocess.Popen([sys.executable, "-m", "deeprebirth.cli", "finetune", str(d / "slim"), "--train",
                             str(d / "train"), "--val", str(d / "val"), "--iters", "10000000", "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in proc.stderr:       # the first progress line: training is under way
            if line.startswith("rebirth: finetune "):
                break
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr          # interrupted, like every command (work written)
    assert stderr.strip().splitlines()[-1].startswith("rebirth: error: interrupted: stopped by SIGINT at iteration")
    doc = json.loads((out / "finetune.json").read_text())
    stopped = doc["interrupted"]["iteration"]
    assert doc["interrupted"]["signal"] == "SIGINT" and 0 < stopped < 10000000
    assert (out / "weights.caffemodel").is_file()
    assert (out / f"finetune_iter_{stopped}.solverstate").is_file()
    resume = hints(next(x for x in stdout.splitlines() if x.startswith("resume with:")))[0]
    assert "--val" in resume and "--resume" in resume
    resume[resume.index("--iters") + 1] = str(stopped + 2)     # the target: two more iterations
    res = run(*resume, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["start_iteration"] == stopped


def test_the_resume_hint_of_a_distillation_resumes_a_distillation(slimmed, tmp_path):
    """A snapshot holds weights and the iteration, not how the run was set up: the resume line
    carries the mode, batch and rate, so pasted it continues the same distillation."""
    d = slimmed
    out = tmp_path / "kd"
    first = run("finetune", d / "slim", "--train", d / "plain", "--distill", "--iters", "2", "--snapshot", "2",
                "--base-lr", "0.003", "-b", "4", "-o", out)
    assert first.exit_code == 0, first.output
    resume = hints(next(x for x in first.output.splitlines() if x.startswith("resume with:")))[0]
    assert "--distill" in resume and resume[resume.index("--base-lr") + 1] == "0.003"
    resume[resume.index("--iters") + 1] = "3"
    res = run(*resume, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert (doc["mode"], doc["start_iteration"], doc["batch"]) == ("distill", 2, 4)
    assert abs(doc["base_lr"] - 0.003) < 1e-9
