"""`rebirth finetune`: a `rebirth slim` output trains in Caffe from an image folder (loss falls,
accuracy rises), resumes from a snapshot, distils from the teacher without labels, and refuses
bad input with one line and no output."""
from __future__ import annotations

import json
import shlex

import numpy as np
import pytest
from helpers import FT_TRAIN_VAL as TRAIN_VAL
from helpers import error_line, make_slimmed, run, write_random_weights

from deeprebirth.caffe import netio
from deeprebirth.caffe.folders import read_slim_dir
from deeprebirth.cli import progress
from deeprebirth.learning import evaluate as ev
from deeprebirth.learning import health
from deeprebirth.learning import keeping as kp


@pytest.fixture(scope="module")
def slimmed(tmp_path_factory, caffe):
    """A slim dir (conv1 + pool1 -> a stride-2 conv1, regenerated), labelled and unlabelled folders."""
    return make_slimmed(tmp_path_factory.mktemp("ft"))


@pytest.mark.slow
def test_finetune_lowers_the_loss_and_learns(slimmed, tmp_path):
    d = slimmed
    out = tmp_path / "out"
    res = run("finetune", d / "slim", "--train", d / "train", "--val", d / "val", "--iters", 40, "--base-lr", 0.01,
              "--test-interval", 10, "--snapshot", 20, "-o", out, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    hist = doc["history"]
    assert [h["iteration"] for h in hist] == [0, 10, 20, 30, 40]
    assert hist[-1]["loss"] < 0.7 * hist[1]["loss"]
    assert hist[-1]["val_top1"] > hist[0]["val_top1"] and hist[-1]["val_top1"] >= 0.9
    assert doc["batch"] == 6 and doc["preprocess"]["scale"] == pytest.approx(1 / 256) and doc["preprocess"]["mirror"]
    names = {p.name for p in out.iterdir()}
    assert {"weights.caffemodel", "deploy.prototxt", "finetune.json", "finetune_iter_20.solverstate",
            "finetune_iter_40.caffemodel"} <= names
    assert json.loads((out / "finetune.json").read_text())["history"] == hist
    # the written model evaluates to the last validation's top-1
    # (preprocessed as the slim train_val's TEST layer says, found through finetune.json)
    res = json.loads(run("eval", out, "--data", d / "val", "--json").stdout)
    assert res["top1"] == pytest.approx(hist[-1]["val_top1"]) and res["preprocess"]["scale"] == pytest.approx(1 / 256)
    assert res["preprocess_from"] == str(d / "slim" / "train_val.prototxt")


def test_resume_continues_the_iteration_count(slimmed, tmp_path, monkeypatch):
    d = slimmed
    out = tmp_path / "out"
    assert run("finetune", d / "slim", "--train", d / "train", "--iters", 6, "--snapshot", 3, "-o", out,
               "--json").exit_code == 0
    state = out / "finetune_iter_3.solverstate"
    assert state.exists()
    monkeypatch.setattr(progress, "QUIET_SECONDS", -1.0)   # progress lines for short work too
    res = run("finetune", d / "slim", "--train", d / "train", "--iters", 9, "--resume", state, "-o", out, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["start_iteration"] == 3 and doc["iterations"] == 9 and doc["history"][-1]["iteration"] == 9
    assert "finetune 100% (6/6 it" in res.stderr    # the bar counts the iterations this run trains
    assert (out / "finetune_iter_9.solverstate").exists()
    # the restored weights are the snapshot's, not init.caffemodel's: a resumed run from the
    # same state with no further steps gives the snapshot's weights back
    same = run("finetune", d / "slim", "--train", d / "train", "--iters", 3, "--resume", state, "-o", tmp_path / "r")
    assert same.exit_code == 0, same.output
    got = netio.weights_of(netio.read_weights(tmp_path / "r" / "weights.caffemodel"))
    snap = netio.weights_of(netio.read_weights(out / "finetune_iter_3.caffemodel"))
    assert got["conv1"][0].tobytes() == snap["conv1"][0].tobytes()
    init = netio.weights_of(netio.read_weights(d / "slim" / "init.caffemodel"))
    assert got["conv1"][0].tobytes() != init["conv1"][0].tobytes()
    # a run folder moved elsewhere: the snapshot still names the old absolute weights path, and the
    # weights beside it are restored instead (Caffe itself would abort); the user's folder is untouched
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("finetune_iter_3.solverstate", "finetune_iter_3.caffemodel"):
        (moved / name).write_bytes((out / name).read_bytes())
    (out / "finetune_iter_3.caffemodel").rename(tmp_path / "kept.caffemodel")
    res = run("finetune", d / "slim", "--train", d / "train", "--iters", 3, "--resume", moved / "finetune_iter_3.solverstate",
              "-o", tmp_path / "m")
    assert res.exit_code == 0, res.output
    assert "which is gone" in res.output and str(moved / "finetune_iter_3.caffemodel") in res.output, res.output
    again = netio.weights_of(netio.read_weights(tmp_path / "m" / "weights.caffemodel"))
    assert again["conv1"][0].tobytes() == snap["conv1"][0].tobytes()
    assert sorted(p.name for p in moved.iterdir()) == ["finetune_iter_3.caffemodel", "finetune_iter_3.solverstate"]
    (tmp_path / "kept.caffemodel").rename(out / "finetune_iter_3.caffemodel")
    # a file that is not a snapshot, or one whose weights went missing: one line, before Caffe sees it
    line = error_line(run("finetune", d / "slim", "--train", d / "train", "--resume", d / "tiny.prototxt", "-o", out))
    assert "tiny.prototxt: not a Caffe .solverstate snapshot" in line
    (out / "finetune_iter_3.caffemodel").unlink()
    line = error_line(run("finetune", d / "slim", "--train", d / "train", "--resume", state, "-o", out))
    assert "finetune_iter_3.caffemodel are missing (and there is no finetune_iter_3.caffemodel beside it)" in line


def test_distill_without_labels(slimmed, tmp_path):
    d = slimmed
    out = tmp_path / "out"
    res = run("finetune", d / "slim", "--train", d / "plain", "--val", d / "plain", "--distill", "--iters", 30,
              "--base-lr", 0.01, "--test-interval", 15, "-o", out, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["mode"] == "distill" and "EuclideanLoss" in doc["loss"]
    assert doc["teacher"]["weights"].endswith("tiny.caffemodel")
    hist = doc["history"]
    assert hist[-1]["loss"] < hist[1]["loss"]
    assert hist[-1]["val_kl"] < hist[0]["val_kl"] and "val_top1" not in hist[-1]


def test_distill_with_labels_sums_both_losses(slimmed, tmp_path):
    d = slimmed
    res = run("finetune", d / "slim", "--train", d / "train", "--val", d / "val", "--distill", "--with-labels",
              "--iters", 10, "--test-interval", 5, "-o", tmp_path / "out", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["mode"] == "distill+labels" and "distill_loss" in doc["loss"] and "loss (weight 1)" in doc["loss"]
    assert all("val_top1" in h for h in doc["history"]) and np.isfinite(doc["history"][-1]["loss"])
    # labels are needed, and --with-labels alone means nothing: one line each, nothing written
    line = error_line(run("finetune", d / "slim", "--train", d / "plain", "--distill", "--with-labels",
                          "-o", tmp_path / "x"))
    assert "no labels, but --with-labels needs them" in line
    line = error_line(run("finetune", d / "slim", "--train", d / "train", "--with-labels", "-o", tmp_path / "x"))
    assert "it needs --distill" in line and not (tmp_path / "x").exists()


def test_distill_from_another_teacher(slimmed, tmp_path):
    """--teacher replaces the model SLIM_DIR's report names (a tucker output names its Slim net):
    another set of weights for the same deploy; recorded in finetune.json; checked before training."""
    d = slimmed
    from deeprebirth.caffe import netio
    other = tmp_path / "other.caffemodel"
    write_random_weights(netio.parse_net_text((d / "tiny.prototxt").read_text()), other, seed=7)
    res = run("finetune", d / "slim", "--train", d / "plain", "--distill", "--teacher", d / "tiny.prototxt",
              "--teacher-weights", other, "--iters", 4, "-o", tmp_path / "out", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["teacher"]["weights"] == str(other) and np.isfinite(doc["history"][-1]["loss"])
    assert doc["teacher_option"] == {"model": str(d / "tiny.prototxt"), "weights": str(other)}
    # the printed resume line repeats --teacher, and pasted it continues the same run
    res = run("finetune", d / "slim", "--train", d / "plain", "--distill", "--teacher", d / "tiny.prototxt",
              "--teacher-weights", other, "--iters", 4, "-o", tmp_path / "out2")
    line = next(x for x in res.stdout.splitlines() if x.startswith("resume with: "))
    assert f"--teacher {d / 'tiny.prototxt'} --teacher-weights {other}" in line
    words = shlex.split(line[len("resume with: "):].replace("--iters N", "--iters 6"))
    again = run(*words[1:], "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["teacher"]["weights"] == str(other)
    line = error_line(run("finetune", d / "slim", "--train", d / "train", "--teacher", d / "tiny.prototxt",
                          "--teacher-weights", other, "-o", tmp_path / "x"))
    assert "it needs --distill" in line and not (tmp_path / "x").exists()
    line = error_line(run("finetune", d / "slim", "--train", d / "plain", "--distill", "--teacher",
                          d / "tiny.prototxt", "-o", tmp_path / "x"))
    assert "--teacher needs weights (--teacher-weights," in line and not (tmp_path / "x").exists()
    line = error_line(run("finetune", d / "slim", "--train", d / "plain", "--distill", "--teacher", "nosuch",
                          "-o", tmp_path / "x"))
    assert "nosuch: no such file, folder or built-in model (--teacher; built-in:" in line
    assert not (tmp_path / "x").exists()


def test_distill_reads_no_label_even_from_labelled_images(slimmed, tmp_path):
    """Labelled training and validation images: distillation hides their labels, so the kept
    weights are chosen by agreement with the teacher, never by top-1."""
    d = slimmed
    res = run("finetune", d / "slim", "--train", d / "train", "--val", d / "val", "--distill", "--iters", 10,
              "--test-interval", 5, "-o", tmp_path / "out", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert all("val_top1" not in h and "val_agreement" in h for h in doc["history"])
    assert "val_top1" not in doc["best"] and "val_agreement" in doc["best"]


def test_missing_labels_and_bad_slim_dirs(slimmed, tmp_path):
    d = slimmed
    out = tmp_path / "out"
    line = error_line(run("finetune", d / "slim", "--train", d / "plain", "-o", out))
    assert "plain: the images have no labels, but finetune without --distill needs them" in line
    assert not out.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no report.json" in error_line(run("finetune", empty, "--train", d / "train", "-o", out))
    other = tmp_path / "other"
    other.mkdir()
    for name in ("deploy.prototxt", "train_val.prototxt", "solver.prototxt"):
        (other / name).write_bytes((d / "slim" / name).read_bytes())
    (other / "report.json").write_text(json.dumps({"tool": "someone else 0.1"}))
    assert "not a report of `rebirth slim`" in error_line(run("finetune", other, "--train", d / "train", "-o", out))
    (other / "report.json").write_text((d / "slim" / "report.json").read_text())
    (other / "solver.prototxt").unlink()
    assert "solver.prototxt missing" in error_line(run("finetune", other, "--train", d / "train", "-o", out))
    assert not out.exists()


# ----------------------------------------------------------------------------------------------
# Safe defaults: divergence caught, seeds reproducible, best weights kept, BatchNorm-folded nets


def test_too_high_rate_is_caught_and_lowered(slimmed, tmp_path):
    d = slimmed
    out = tmp_path / "out"
    res = run("finetune", d / "slim", "--train", d / "train", "--iters", 12, "--base-lr", 100, "-o", out, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert any("diverged" in n and "started again at base_lr" in n for n in doc["notes"]), doc["notes"]
    assert doc["base_lr"] < 100
    assert all(np.isfinite(h["loss"]) for h in doc["history"] if h["loss"] is not None)
    weights = netio.weights_of(netio.read_weights(out / "weights.caffemodel"))
    assert all(np.isfinite(a).all() for arrays in weights.values() for a in arrays)
    # a rate no restart can rescue: one line, no traceback
    line = error_line(run("finetune", d / "slim", "--train", d / "train", "--iters", 12, "--base-lr", 1e30,
                          "-o", tmp_path / "o2"))
    assert "the loss diverged at base_lr 1e+30 and at 3 lower rates" in line and "lower --base-lr" in line


def test_one_seed_gives_the_same_losses(slimmed, tmp_path):
    d = slimmed
    losses = []
    for k, seed in enumerate((5, 5, 6)):
        res = run("finetune", d / "slim", "--train", d / "train", "--iters", 8, "--test-interval", 2, "--seed", seed,
                  "-o", tmp_path / f"o{k}", "--json")
        assert res.exit_code == 0, res.output
        losses.append([h["loss"] for h in json.loads(res.stdout)["history"]])
    assert losses[0] == losses[1]
    assert losses[0] != losses[2]


def test_default_finetune_of_trained_weights_keeps_the_best(slimmed, tmp_path):
    """From learned weights, a default fine-tune does not end below its start on --val: the
    regenerated layers learn at 1x with a warm-up, and the best validated weights are written."""
    d = slimmed
    pre = tmp_path / "pre"
    assert run("finetune", d / "slim", "--train", d / "train", "--iters", 30, "--base-lr", 0.01, "-o", pre).exit_code == 0
    out = tmp_path / "out"
    res = run("finetune", d / "slim", "--train", d / "train", "--val", d / "val", "--weights", pre / "weights.caffemodel",
              "--iters", 20, "--test-interval", 5, "-o", out, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["new_layers_lr_mult"] == 1.0 and doc["warmup"] == 4 and doc["random_seed"] == 0
    start = doc["history"][0]["val_top1"]
    kept, scores = doc["best"], [(h["iteration"], h["val_top1"]) for h in doc["history"]]
    top = max(scores, key=lambda s: s[1])
    assert kept["val_top1"] >= start
    assert kept["val_top1"] == top[1] or (kept["iteration"] == 20 and kept["highest"]["val_top1"] == top[1])
    got = json.loads(run("eval", out, "--data", d / "val", "--json").stdout)["top1"]
    assert got == pytest.approx(kept["val_top1"]) and got >= start


def test_default_schedule_anneals_and_solver_schedule_is_kept(slimmed, tmp_path):
    """From learned weights the default schedule starts every layer at the regenerated layers'
    rate (base_lr x their lr_mult 10) and falls linearly to 0 at the last iteration;
    --schedule solver keeps solver.prototxt's policy and rate; --stepsize needs it."""
    d = slimmed
    pre = tmp_path / "pre"
    assert run("finetune", d / "slim", "--train", d / "train", "--iters", 4, "-o", pre).exit_code == 0
    solver_lr = read_slim_dir(d / "slim").solver.base_lr
    res = run("finetune", d / "slim", "--train", d / "train", "--weights", pre / "weights.caffemodel", "--iters", 8,
              "--test-interval", 4, "-o", tmp_path / "a", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["schedule"] == "anneal" and doc["lr_policy"] == "poly"
    assert doc["base_lr"] == pytest.approx(10 * solver_lr)
    assert [h["lr"] for h in doc["history"]] == pytest.approx([5 * solver_lr, 0.0])
    res = run("finetune", d / "slim", "--train", d / "train", "--weights", pre / "weights.caffemodel", "--iters", 8,
              "--schedule", "solver", "--stepsize", 4, "-o", tmp_path / "s", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["schedule"] == "solver" and doc["lr_policy"] == "step" and doc["base_lr"] == pytest.approx(solver_lr)
    line = error_line(run("finetune", d / "slim", "--train", d / "train", "--stepsize", 4, "-o", tmp_path / "x"))
    assert "--schedule solver" in line and not (tmp_path / "x").exists()


BN_DEPLOY = """name: "tinybn"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 12 dim: 12 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 6 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2" convolution_param { num_output: 6 kernel_size: 3 pad: 1 bias_term: false } }
layer { name: "bn2" type: "BatchNorm" bottom: "conv2" top: "conv2" }
layer { name: "scale2" type: "Scale" bottom: "conv2" top: "conv2" scale_param { bias_term: true } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "fc" type: "InnerProduct" bottom: "conv2" top: "fc" inner_product_param { num_output: 3 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def test_batchnorm_folded_net_finetunes_at_the_defaults(slimmed, tmp_path, caffe):
    """A BatchNorm whose running variance is tiny (as a trained one's often is) folds into weights
    many times larger than the rest; 40 default iterations from the folded weights stay finite and
    the loss falls (its first iterations swing: 12 images, batch 6, folded weights 20x the rest)."""
    d = slimmed
    deploy = netio.parse_net_text(BN_DEPLOY)
    (tmp_path / "bn.prototxt").write_text(BN_DEPLOY)
    tv = TRAIN_VAL.replace('name: "tiny"', 'name: "tinybn"').split('layer { name: "conv1"')[0] + "\n".join(
        line for line in BN_DEPLOY.splitlines()[2:-1]) + """
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""
    (tmp_path / "bn_tv.prototxt").write_text(tv)
    weights = write_random_weights(deploy, tmp_path / "bn.caffemodel", seed=2)
    weights["bn2"] = [np.zeros(6, np.float32), np.full(6, 1e-4, np.float32), np.ones(1, np.float32)]
    netio.write_weights(netio.with_weights(deploy, weights), tmp_path / "bn.caffemodel")
    slim = tmp_path / "slim"
    res = run("slim", tmp_path / "bn.prototxt", "-w", tmp_path / "bn.caffemodel", "--train-val", tmp_path / "bn_tv.prototxt",
              "-o", slim)
    assert res.exit_code == 0, res.output
    folded = netio.weights_of(netio.read_weights(slim / "init.caffemodel"))["conv2"][0]
    assert np.abs(folded).max() > 20 * np.abs(weights["conv2"][0]).max()
    res = run("finetune", slim, "--train", d / "train", "--iters", 40, "--test-interval", 10,
              "--weights", slim / "init.caffemodel", "-o", tmp_path / "out", "--json")
    assert res.exit_code == 0, res.output
    hist = json.loads(res.stdout)["history"]
    losses = [h["loss"] for h in hist if h["loss"] is not None]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    assert not any("diverged" in n for n in json.loads(res.stdout)["notes"])


def test_recover_from_images_without_labels(slimmed, tmp_path, monkeypatch):
    """`rebirth recover`: relearn then distil, on a folder of images without class folders; its
    progress reaches stderr also when that is not a terminal (a log file), beside --json."""
    d = slimmed
    out = tmp_path / "rec"
    monkeypatch.setattr(progress, "QUIET_SECONDS", -1.0)   # progress lines for short work too
    res = run("recover", d / "slim", "--images", d / "plain", "--val", d / "plain", "--iters", 20,
              "--relearn-iters", 10, "--count", 16, "-o", out, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert "rebirth: recover 100% (" in res.stderr
    assert doc["labels_read"] is False and doc["finetune"]["mode"] == "distill"
    assert doc["relearn"]["units"] and (out / "relearn" / "weights.caffemodel").exists()
    assert doc["finetune"]["start_weights"] == str(out / "relearn" / "weights.caffemodel")
    hist = doc["finetune"]["history"]
    assert "val_agreement" in hist[0] and doc["finetune"]["best"]["val_agreement"] >= hist[0]["val_agreement"]
    assert {"weights.caffemodel", "deploy.prototxt", "finetune.json", "recover.json"} <= {p.name for p in out.iterdir()}
    # images without labels and no teacher agreement needed: the written net evaluates
    got = json.loads(run("eval", out, "--data", d / "val", "--json").stdout)
    assert 0 <= got["top1"] <= 1


def test_collapse_is_told_from_a_net_that_was_uniform_from_the_start():
    """A net whose logits stop telling the classes apart (every ReLU before the classifier dead)
    keeps a finite loss: `collapsed` catches it after COLLAPSE_WINDOW iterations, but only when
    the logits told them apart at the start."""
    healthy = np.array([[1.0, 2.0, 0.5], [0.2, 2.5, 1.0]])
    dead = np.array([[0.003, 0.0002, -0.002], [0.0034, 0.0001, -0.0017]])   # as measured, plus Dropout noise
    assert health.logit_spread(healthy) == pytest.approx(2.3) and health.logit_spread(dead) < health.COLLAPSE_SPREAD
    n = health.COLLAPSE_WINDOW
    run_ = [health.logit_spread(healthy)] + [health.logit_spread(dead)] * n
    assert health.collapsed(run_)
    assert not health.collapsed(run_[:-1])                          # not yet for the whole window
    assert not health.collapsed(run_[:-2] + [0.3, 0.0])             # it moved inside the window
    assert not health.collapsed([0.0] * (n + 5))                    # uniform from the start: not ours


def test_collapsed_run_restarts_at_a_lower_rate(slimmed, tmp_path, monkeypatch):
    """The collapse check is wired into training: with a test every run fails, a run restarts at a
    tenth of the rate, and after the last rate stops with one line that says it collapsed."""
    d = slimmed
    monkeypatch.setattr(health, "collapsed", lambda spreads: len(spreads) > 3)
    line = error_line(run("finetune", d / "slim", "--train", d / "train", "--iters", 8, "-o", tmp_path / "o"))
    assert "collapsed (a uniform output for every image) at iteration 4" in line and "lower --base-lr" in line


def test_back_to_chance_needs_a_run_that_was_clearly_above_it():
    """The validation check of a collapse: measured, a Slim-Tucker run went from 38.4 % top-1 to
    10.35 % (10 classes) at its first validation."""
    assert health.back_to_chance([0.384, 0.1035], 10)
    assert not health.back_to_chance([0.384], 10)                    # one score: nothing to compare
    assert not health.back_to_chance([0.817, 0.6675], 10)            # a short run's dip (README): no collapse
    assert not health.back_to_chance([0.15, 0.10], 10)               # never clearly above chance
    assert health.back_to_chance([0.9, 0.52], 2) and not health.back_to_chance([0.9, 0.6], 2)


def test_a_lead_within_the_validation_noise_keeps_the_last_weights():
    """Measured (Table 3, row 9RL): the best on 2,000 held-out images, 92.55 % at iteration 16,000
    over 92.40 % at the last, read 91.67 % against 92.02 % on the test images; the last weights are
    kept in such a tie, never weights below the start, and a clear lead is still kept."""
    se = kp.lead_within_noise(0.9255, 0.9240, 2000)
    assert se is not None and abs(se - 0.00587) < 1e-4
    assert kp.lead_within_noise(0.9255, 0.9240, 200_000) is None      # the same lead on many images is real
    assert kp.lead_within_noise(0.7700, 0.1870, 2000) is None         # a collapse is never noise
    assert kp.lead_within_noise(0.5, 0.5, 0) == 0.0                    # no images: no noise to allow
    row = [(0, 0.7905), (4000, 0.8865), (16000, 0.9255), (20000, 0.9240)]
    assert kp.kept_iteration(row, 16000, 20000, 2000) == 20000
    assert kp.kept_iteration(row, 16000, 20000, 200_000) == 16000      # resolved by many images
    assert kp.kept_iteration([(0, 0.817), (20, 0.6675)], 0, 20, 2000) == 0     # the short run's dip
    # within the noise of the best, but below the start: the start is kept
    assert kp.kept_iteration([(0, 0.9250), (10, 0.9260), (20, 0.9245)], 10, 20, 2000) == 10
    assert kp.kept_iteration([(0, 0.90), (10, 0.92)], 10, 20, 2000) == 10      # interrupted: 20 not validated
    # wired into the record of the kept weights and the weights written
    v = object.__new__(kp.Validator)
    v.history = [{"iteration": 0, "val_top1": 0.7905}, {"iteration": 16000, "val_top1": 0.9255},
                 {"iteration": 20000, "val_top1": 0.9240}]
    v.best, v.images, v.first, v.first_record, notes = (0.9255, 16000, {"w": 1}), 2000, 0, 0, []
    rec = v.best_record(20000, notes)
    assert rec["iteration"] == 20000 and rec["highest"]["iteration"] == 16000 and v.best_weights(20000) is None
    assert "leads them by no more than the standard error of 2,000 validation images (0.59 pt)" in notes[-1]
    v.images, notes = 200_000, []
    assert v.best_record(20000, notes)["iteration"] == 16000 and v.best_weights(20000) == {"w": 1}
    assert len(notes) == 1 and "the best on the validation images" in notes[0]


def test_a_validation_back_at_chance_restarts_at_a_lower_rate(slimmed, tmp_path, monkeypatch):
    """Wired into validation, also the last one: with a check that always fires, each rate is tried
    once and the run stops with one line that gives the validation score."""
    d = slimmed
    monkeypatch.setattr(health, "back_to_chance", lambda scores, classes: len(scores) > 1)
    res = run("finetune", d / "slim", "--train", d / "train", "--val", d / "val", "--iters", 4, "-o", tmp_path / "o")
    line = error_line(res)
    assert "collapsed (validation top-1" in line and "back at chance" in line and "at iteration 4" in line
    assert f"at {health.DIVERGENCE_ATTEMPTS - 1} lower rates" in line and "at base_lr 1e-06" in line
    assert not (tmp_path / "o" / "weights.caffemodel").exists()


def test_input_blind_logits_are_told_from_a_confident_net():
    """Every image given the same logits (a dead layer cuts the path): refused at the start. A net
    whose logits differ per image, even a little or with one class dominant, is not."""
    same = np.tile(np.array([[1.5, -0.2, 0.3]], np.float32), (8, 1))
    assert ev.input_blind(same)
    varied = same.copy()
    varied[3, 1] += 1e-3
    assert not ev.input_blind(varied)
    assert not ev.input_blind(same[:1])                  # one image tells nothing
    assert ev.input_blind(np.zeros((4, 3)))


def test_a_net_dead_for_every_image_is_refused_before_training(slimmed, tmp_path):
    """Measured: two Slim-Tucker nets (`tucker --time 0.5`) whose relearned reducers were zero for
    every image trained 32,000 iterations at a constant 9.6 % on --val. Now the run does not start:
    one line names the dead blob, and nothing is written."""
    d = slimmed
    init = netio.read_weights(d / "slim" / "init.caffemodel")
    weights = netio.weights_of(init)
    first = next(name for name in weights if len(weights[name]) == 2)     # the first layer with a bias
    weights[first] = [np.zeros_like(weights[first][0]), np.full_like(weights[first][1], -1.0)]
    dead = tmp_path / "dead.caffemodel"
    netio.write_weights(netio.with_weights(init, weights), dead)
    out = tmp_path / "out"
    line = error_line(run("finetune", d / "slim", "--train", d / "train", "--val", d / "val", "--weights", dead,
                          "--iters", 4, "-o", out))
    assert "the net gives every --val image the same output" in line and "dead ReLUs" in line, line
    assert f"'{first}'" in line or "is zero for every image" in line
    assert not out.exists()         # the folder it made for the run is gone again
    kept = tmp_path / "kept"
    kept.mkdir()                    # a folder that was there before stays, empty as it was
    error_line(run("finetune", d / "slim", "--train", d / "train", "--val", d / "val", "--weights", dead,
                   "--iters", 4, "-o", kept))
    assert kept.is_dir() and [p.name for p in kept.iterdir()] in ([], [".rebirth"])
    line = error_line(run("finetune", d / "slim", "--train", d / "train", "--weights", dead, "--iters", 4,
                          "-o", tmp_path / "noval"))       # without --val: 16 training images tell
    assert "the net gives every training image the same output" in line, line
    assert not (tmp_path / "noval").exists()


def test_messages_name_flags_on_the_command_line_and_parameters_in_the_library(slimmed, tmp_path):
    """A note or error names the caller's parameter: the command's flag on the command line (in
    its output and finetune.json), the parameter's name for a library caller."""
    from deeprebirth.errors import RebirthError
    from deeprebirth.learning import finetune as ft
    from deeprebirth.learning import sources as data
    d = slimmed
    pre = tmp_path / "pre"
    assert run("finetune", d / "slim", "--train", d / "train", "--iters", 2, "-o", pre).exit_code == 0
    res = run("finetune", d / "slim", "--train", d / "train", "--weights", pre / "weights.caffemodel", "--iters", 2,
              "-o", tmp_path / "cli", "--json")
    assert res.exit_code == 0, res.output
    assert any("so pass --val to keep the best" in n for n in json.loads(res.stdout)["notes"])
    written = (tmp_path / "cli" / "finetune.json").read_text()
    assert "so pass --val to keep the best" in written and "{opt:" not in written
    doc = ft.finetune(d / "slim", data.open_source(str(d / "train")), None, tmp_path / "lib",
                      ft.Options(iters=2, weights=str(pre / "weights.caffemodel")))
    assert any("so pass {opt:val} to keep the best" in n for n in doc["notes"])
    assert "so pass val to keep the best" in (tmp_path / "lib" / "finetune.json").read_text()
    with pytest.raises(RebirthError) as exc:
        ft.finetune(d / "slim", data.open_source(str(d / "train")), None, tmp_path / "x", ft.Options(stepsize=4))
    assert str(exc.value) == "stepsize sets the solver's step policy: add schedule solver"
    assert not (tmp_path / "x").exists()
