"""`rebirth finetune`: a `rebirth slim` output trains in Caffe from an image folder (loss falls,
accuracy rises), resumes from a snapshot, distils from the teacher without labels, and refuses
bad input with one line and no output."""
from __future__ import annotations

import json

import pytest

from deeprebirth.caffe import netio
from helpers import error_line, make_slimmed, run

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


def test_resume_continues_the_iteration_count(slimmed, tmp_path):
    d = slimmed
    out = tmp_path / "out"
    assert run("finetune", d / "slim", "--train", d / "train", "--iters", 6, "--snapshot", 3, "-o", out,
               "--json").exit_code == 0
    state = out / "finetune_iter_3.solverstate"
    assert state.exists()
    res = run("finetune", d / "slim", "--train", d / "train", "--iters", 9, "--resume", state, "-o", out, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["start_iteration"] == 3 and doc["iterations"] == 9 and doc["history"][-1]["iteration"] == 9
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
    # a file that is not a snapshot, or one whose weights went missing: one line, before Caffe sees it
    line = error_line(run("finetune", d / "slim", "--train", d / "train", "--resume", d / "tiny.prototxt", "-o", out))
    assert "tiny.prototxt: not a Caffe .solverstate snapshot" in line
    (out / "finetune_iter_3.caffemodel").unlink()
    line = error_line(run("finetune", d / "slim", "--train", d / "train", "--resume", state, "-o", out))
    assert "finetune_iter_3.caffemodel are missing" in line


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
