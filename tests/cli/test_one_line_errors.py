"""Issue 17's cases: each is one `rebirth: error:` line naming the file and what was expected, or
now works (an output folder as MODEL for inspect/bench, fold-bn --json)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import click
import numpy as np
import pytest
from helpers import BN_NET as NET
from helpers import bn_files as files
from helpers import error_line, run, write_random_weights

from deeprebirth.caffe import netio
from deeprebirth.cli import main

LONG = "x" * 300


@pytest.fixture
def small(tmp_path):
    return files(tmp_path)     # the small conv/BatchNorm/Scale/ReLU/pool/fc net of test_trust


@pytest.mark.parametrize("args", [
    ("inspect", LONG + ".prototxt"), ("slim", LONG, "-o", "out"), ("bench", LONG),
    ("eval", LONG, "--data", "fashion-mnist:test[:3]"), ("fold-bn", LONG, "w", "-o", "out"),
    ("relearn", LONG, "--images", "x"), ("finetune", LONG, "--train", "x"), ("tucker", LONG, "w", "-o", "out"),
])
def test_an_over_long_path_is_one_line(tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    line = error_line(run(*args))
    assert "file name too long" in line or "no such file" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["inspect", "slim", "eval", "tucker"])
def test_a_directory_as_weights_is_one_line(tmp_path, small, command):
    proto, _ = small
    extra = {"inspect": [], "slim": ["-o", tmp_path / "o"], "eval": ["--data", "x"], "tucker": []}[command]
    args = [command, proto, tmp_path, "-o", tmp_path / "o"] if command == "tucker" else \
        [command, proto, "--weights", tmp_path, *extra]
    line = error_line(run(*args))
    assert f"{tmp_path}: is a directory" in line and "takes a file" in line


def test_a_subset_suffix_that_is_not_numbers(tmp_path, small):
    proto, weights = small
    line = error_line(run("eval", proto, "-w", weights, "--data", "fashion-mnist:test[:abc]"))
    assert "[:abc]" in line and "start:stop" in line


def test_relearn_batch_larger_than_count_given_explicitly(tmp_path):
    line = error_line(run("relearn", tmp_path, "--images", "x", "--count", "20", "--batch", "32"))
    assert "--batch 32 is more than --count 20" in line


def test_fold_bn_json_and_files_before_words(tmp_path, small):
    proto, weights = small
    res = run("fold-bn", proto, weights, "-o", tmp_path / "o", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["layers"] == {"before": 8, "after": 6}
    assert [c["substructure"] for c in doc["changes"]] == ["conv1"]
    assert sorted(doc["files"]) == sorted(str(tmp_path / "o" / n) for n in ("deploy.prototxt", "weights.caffemodel"))
    (tmp_path / "p").write_text("a file where the folder would go")
    res = run("fold-bn", proto, weights, "-o", tmp_path / "p")
    assert "folded" not in res.output                                      # no success words before failing
    error_line(res)


def test_fold_bn_refuses_overflowing_statistics(tmp_path, small):
    proto, _ = small
    arrays = write_random_weights(netio.parse_net_text(NET), tmp_path / "ok.caffemodel", seed=0)
    arrays["bn1"][1][:] = 0.0          # variance 0 ...
    arrays["bn1"][2][:] = 1e-30        # ... and a moving-average factor that overflows 1/sqrt(var/f + eps)
    arrays["sc1"][0][:] = 3e38
    bad = tmp_path / "bad.caffemodel"
    netio.write_weights(netio.with_weights(netio.parse_net_text(NET), arrays), bad)
    line = error_line(run("fold-bn", proto, bad, "-o", tmp_path / "o"))
    assert "non-finite weights in layer" in line and "nothing written" in line
    assert not (tmp_path / "o").exists()


def test_inspect_and_bench_take_an_output_folder(tmp_path, small, caffe):
    proto, weights = small
    assert run("fold-bn", proto, weights, "-o", tmp_path / "o").exit_code == 0
    res = run("inspect", tmp_path / "o", "--json")
    assert res.exit_code == 0, res.output
    assert "fc" in [layer["name"] for layer in json.loads(res.stdout)["layers"]]
    res = run("bench", tmp_path / "o", "--runs", "1", "--warmup", "0", "--json")
    assert res.exit_code == 0, res.output
    assert np.isfinite(json.loads(res.stdout)["models"][0]["best_ms"])


def test_every_command_that_rewrites_a_net_takes_a_model_folder(tmp_path, small):
    """Issue 31: an output folder (here fold-bn's) works as MODEL for slim, fold-bn, tucker and plan
    too, its weights (and train_val) taken from it; a prototxt without WEIGHTS is one line."""
    proto, weights = small
    assert run("fold-bn", proto, weights, "-o", tmp_path / "o").exit_code == 0
    folder = tmp_path / "o"
    res = run("fold-bn", folder, "-o", tmp_path / "again", "--json")
    assert res.exit_code == 0, res.output
    res = run("tucker", folder, "--ratio", "0.5", "-o", tmp_path / "tk")
    assert res.exit_code == 0, res.output
    assert f"using the weights in the folder ({folder / 'weights.caffemodel'})" in res.stderr
    assert (tmp_path / "tk" / "init.caffemodel").is_file()
    res = run("slim", folder, "-o", tmp_path / "s")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "s" / "init.caffemodel").is_file()         # the folder's weights were read
    res = run("plan", folder, "--json")                          # weights: it needs images, and says so
    assert "--images" in error_line(res)
    line = error_line(run("tucker", proto, "-o", tmp_path / "x"))
    assert str(proto) in line and "WEIGHTS" in line and not (tmp_path / "x").exists()


def _extreme_weights(tmp_path) -> Path:
    """Weights that overflow float32 when BatchNorm/Scale fold into conv1 (no NaN: a loadable net)."""
    arrays = write_random_weights(netio.parse_net_text(NET), tmp_path / "ok.caffemodel", seed=0)
    arrays["sc1"][0][:] = 3e38
    arrays["conv1"][0][:] = 3e38
    path = tmp_path / "extreme.caffemodel"
    netio.write_weights(netio.with_weights(netio.parse_net_text(NET), arrays), path)
    return path


def test_extreme_weights_raise_no_numpy_warning(tmp_path, small):
    """Folding out of float32 range is refused where weights are written and silent where they are
    not (inspect lists the fold): numpy's RuntimeWarning never reaches the user."""
    proto, _ = small
    extreme = _extreme_weights(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)     # any numpy warning would fail the command
        res = run("inspect", proto, "-w", extreme)
        assert res.exit_code == 0 and "Warning" not in res.output, res.output
        line = error_line(run("fold-bn", proto, extreme, "-o", tmp_path / "o"))
        assert "non-finite weights in layer 'conv1'" in line
        line = error_line(run("slim", proto, "-w", extreme, "-o", tmp_path / "s", "--rules", "fold_bn"))
        assert "non-finite weights in layer 'conv1'" in line and "nothing written" in line
    assert not (tmp_path / "o").exists() and not (tmp_path / "s").exists()


def test_numpy_warnings_become_one_line():
    @main.command("_probe_numpy", hidden=True)
    def probe():
        warnings.simplefilter("always", RuntimeWarning)
        np.array([1e300]).astype(np.float32)
        np.array([0.0]) / np.array([0.0])
        np.array([1e300]).astype(np.float32)
    try:
        res = run("_probe_numpy")
    finally:
        main.commands.pop("_probe_numpy")
    assert res.exit_code == 0
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rebirth: warning: a numeric problem in the computation"), res.output
    assert "overflow encountered in cast" in lines[0] and "test_one_line_errors.py:" in lines[0]


def test_ctrl_c_while_the_arguments_are_read_is_the_one_interrupted_line(monkeypatch):
    def interrupted(self, ctx, args):
        raise KeyboardInterrupt
    monkeypatch.setattr(click.Group, "parse_args", interrupted)
    res = run("inspect", "googlenet")
    assert res.exit_code == 130
    assert res.output.strip().splitlines() == ["rebirth: error: interrupted (outputs are complete or as they were)"]
