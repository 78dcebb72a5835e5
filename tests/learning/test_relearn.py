"""`rebirth relearn`: the unit plan slim records, least squares (exact where the change is), SGD
in Caffe lowering every unit's reconstruction error, and the errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import error_line, run, write_random_weights

from deeprebirth.caffe import netio
from deeprebirth.learning import lstsq
from deeprebirth.runtime import pycaffe
from deeprebirth.transforms import relearn_plan

# conv -> ReLU -> a 1x1/2 pooling (pure subsampling): streamline makes one stride-2 convolution that
# computes exactly the same function, so least squares must find it. (15x15: with an even size,
# Caffe's rounded-up pooling would add a window that starts past the edge and yields -FLT_MAX.)
SUBSAMPLE = """name: "subsample"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 15 dim: 15 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 6 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 1 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc" inner_product_param { num_output: 4 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""

# A stem and one inception block: streamline (conv1 + pool + LRN) and branch slimming.
SMALL = """name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 32 dim: 32 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 8 kernel_size: 5 pad: 2 stride: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
layer { name: "i/1x1" type: "Convolution" bottom: "norm1" top: "i/1x1" convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "i/relu_1x1" type: "ReLU" bottom: "i/1x1" top: "i/1x1" }
layer { name: "i/3x3_reduce" type: "Convolution" bottom: "norm1" top: "i/3x3_reduce" convolution_param { num_output: 6 kernel_size: 1 } }
layer { name: "i/relu_3x3_reduce" type: "ReLU" bottom: "i/3x3_reduce" top: "i/3x3_reduce" }
layer { name: "i/3x3" type: "Convolution" bottom: "i/3x3_reduce" top: "i/3x3" convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "i/relu_3x3" type: "ReLU" bottom: "i/3x3" top: "i/3x3" }
layer { name: "i/5x5_reduce" type: "Convolution" bottom: "norm1" top: "i/5x5_reduce" convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "i/relu_5x5_reduce" type: "ReLU" bottom: "i/5x5_reduce" top: "i/5x5_reduce" }
layer { name: "i/5x5" type: "Convolution" bottom: "i/5x5_reduce" top: "i/5x5" convolution_param { num_output: 4 kernel_size: 5 pad: 2 } }
layer { name: "i/relu_5x5" type: "ReLU" bottom: "i/5x5" top: "i/5x5" }
layer { name: "i/pool" type: "Pooling" bottom: "norm1" top: "i/pool" pooling_param { pool: MAX kernel_size: 3 stride: 1 pad: 1 } }
layer { name: "i/pool_proj" type: "Convolution" bottom: "i/pool" top: "i/pool_proj" convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "i/relu_pool_proj" type: "ReLU" bottom: "i/pool_proj" top: "i/pool_proj" }
layer { name: "i/output" type: "Concat" bottom: "i/1x1" bottom: "i/3x3" bottom: "i/5x5" bottom: "i/pool_proj" top: "i/output" }
layer { name: "gap" type: "Pooling" bottom: "i/output" top: "gap" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "gap" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def write_model(tmp_path, text, name, seed=0):
    proto = tmp_path / f"{name}.prototxt"
    proto.write_text(text)
    w = tmp_path / f"{name}.caffemodel"
    write_random_weights(netio.read_net(proto), w, seed=seed)
    return proto, w


def image_folder(tmp_path, n=24, size=40, seed=0):
    """Real natural images (skimage's astronaut, coffee, chelsea, rocket) cut into random crops."""
    from PIL import Image
    from skimage import data as skdata

    pictures = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket()]
    rng = np.random.default_rng(seed)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(n):
        pic = pictures[i % len(pictures)]
        y = rng.integers(0, pic.shape[0] - 4 * size)
        x = rng.integers(0, pic.shape[1] - 4 * size)
        Image.fromarray(pic[y:y + 4 * size, x:x + 4 * size]).resize((size, size)).save(folder / f"{i:03d}.png")
    return folder


# ----------------------------------------------------------------------------------------------
# planning (no Caffe)


def test_plan_units_small_net(tmp_path):
    proto, w = write_model(tmp_path, SMALL, "small")
    out = tmp_path / "slim"
    res = run("slim", proto, "--weights", w, "-o", out, "--data-layer", "dummy", "--rules", "streamline,branch")
    assert res.exit_code == 0, res.output
    plan = json.loads((out / "report.json").read_text())["relearn"]
    assert plan["version"] == relearn_plan.REPORT_VERSION
    assert plan["teacher"]["deploy"] == str(proto.resolve()) and plan["teacher"]["weights"] == str(w.resolve())
    units = {u["name"]: u for u in plan["units"]}
    assert list(units) == ["conv1", "i"]
    # conv1 absorbed pool1 and lost norm1: the target is what the inception block reads in the teacher.
    assert units["conv1"]["inputs"] == ["data"] and units["conv1"]["targets"] == ["norm1"]
    assert units["conv1"]["new"] == ["conv1"]
    # The block keeps its Concat output; its 5x5 reducer is unchanged and so is an input.
    assert units["i"]["outputs"] == ["i/output"] and units["i"]["targets"] == ["i/output"]
    assert set(units["i"]["inputs"]) == {units["conv1"]["outputs"][0], "i/5x5_reduce"}
    assert set(units["i"]["new"]) == {"i/3x3_reduce", "i/3x3", "i/5x5"}


def test_solve_linear_exact_and_through_relu():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(3000, 12))
    w = rng.normal(size=(12, 5))
    b = rng.normal(size=5)
    got_w, got_b = lstsq.solve_linear(a, a @ w + b)
    assert np.allclose(got_w, w, atol=1e-6) and np.allclose(got_b, b, atol=1e-6)
    # Through a ReLU: only the positive part of the target is known.
    got_w, got_b = lstsq.solve_linear(a, np.maximum(a @ w + b, 0), relu=True, iterations=500)
    assert np.max(np.abs(got_w - w)) / np.max(np.abs(w)) < 1e-4 and np.max(np.abs(got_b - b)) < 1e-4


def test_patches_match_caffe_convolution_layout():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 3, 7, 6))
    w = rng.normal(size=(4, 3, 3, 2))
    cols = lstsq.patches(x, (3, 2), (2, 1), (1, 0))
    got = cols @ w.reshape(4, -1).T  # N x Ho x Wo x O
    # The same convolution, directly.
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (0, 0)))
    ho, wo = (7 + 2 - 3) // 2 + 1, (6 - 2) // 1 + 1
    want = np.zeros((2, ho, wo, 4))
    for i in range(ho):
        for j in range(wo):
            want[:, i, j] = np.einsum("nchw,ochw->no", xp[:, :, 2 * i:2 * i + 3, j:j + 2], w)
    assert got.shape == want.shape and np.allclose(got, want)


def test_relative_error_and_r2():
    t = np.arange(12.0).reshape(1, 3, 2, 2)
    assert lstsq.relative_error(t, t) == 0.0 and lstsq.r_squared(t, t) == 1.0
    assert lstsq.relative_error(np.zeros_like(t), t) == pytest.approx(1.0)


def test_prune_filters_keeps_largest():
    w = np.zeros((4, 2, 1, 1), dtype=np.float32)
    w[:, 0, 0, 0] = [0.1, 3.0, -2.0, 0.5]
    b = np.arange(4, dtype=np.float32)
    got = lstsq.prune_filters([w, b], [(2, 2, 1, 1), (2,)])
    assert got is not None and list(got[1]) == [1.0, 2.0]
    assert lstsq.prune_filters([w, b], [(2, 3, 1, 1), (2,)]) is None


# ----------------------------------------------------------------------------------------------
# Caffe


@pytest.mark.caffe
@pytest.mark.slow
def test_least_squares_recovers_exact_change(caffe, tmp_path):
    proto, w = write_model(tmp_path, SUBSAMPLE, "sub", seed=3)
    slim = tmp_path / "slim"
    assert run("slim", proto, "--weights", w, "-o", slim, "--data-layer", "dummy").exit_code == 0
    images = image_folder(tmp_path, n=30, size=15)
    res = run("relearn", slim, "--images", images, "--count", 24, "--heldout", 6, "--iters", 0,
              "--no-least-squares", "-o", tmp_path / "xavier", "--json")
    assert res.exit_code == 0, res.output
    xavier = json.loads(res.stdout)["units"][0]["error"]["least_squares"]["rel"]
    res = run("relearn", slim, "--images", images, "--count", 24, "--heldout", 6, "--iters", 0,
              "--no-teacher-init", "-o", tmp_path / "rl", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    unit = doc["units"][0]
    assert unit["init"] == {"conv1": "least-squares"}
    assert xavier > 0.1 and unit["error"]["least_squares"]["rel"] < 1e-8
    # And the whole slim net now computes what the teacher computes (to 1e-4 relative).
    teacher = pycaffe.CaffeNet(netio.read_net(proto), netio.weights_of(netio.read_weights(w)))
    net = netio.read_net(slim / "deploy.prototxt")
    student = pycaffe.CaffeNet(net, netio.weights_of(netio.read_weights(tmp_path / "rl" / "weights.caffemodel")))
    x = np.random.default_rng(0).uniform(0, 1, size=(4, 3, 15, 15)).astype(np.float32)
    teacher.fill_inputs(inputs={"data": x})
    student.fill_inputs(inputs={"data": x})
    a, b = teacher.forward()["prob"], student.forward()["prob"]
    ta, tb = teacher.net.blobs["fc"].data, student.net.blobs["fc"].data
    assert np.max(np.abs(ta - tb)) <= 1e-4 * np.max(np.abs(ta)) and np.allclose(a, b, atol=1e-5)


@pytest.mark.caffe
@pytest.mark.slow
def test_relearn_lowers_every_unit_error(caffe, tmp_path):
    proto, w = write_model(tmp_path, SMALL, "small", seed=4)
    slim = tmp_path / "slim"
    assert run("slim", proto, "--weights", w, "-o", slim, "--data-layer", "dummy").exit_code == 0
    images = image_folder(tmp_path, n=40, size=32)
    res = run("relearn", slim, "--images", images, "--count", 32, "--heldout", 8, "--iters", 30,
              "--batch", 8, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [u["name"] for u in doc["units"]] == ["conv1", "i"]
    for unit in doc["units"]:
        e = unit["error"]
        best = min(e["least_squares"]["rel"], e["sgd"]["rel"])
        assert best < 0.5 * e["initial"]["rel"], unit
        assert unit["kept"] in ("least_squares", "sgd") and unit["iterations"] == 30
    # Written next to the slim net (the default OUTDIR), and it loads into the slim deploy net.
    rl_json = json.loads((slim / "relearn.json").read_text())
    assert rl_json["units"] == doc["units"]
    weights = netio.weights_of(netio.read_weights(slim / "weights.caffemodel"))
    pycaffe.CaffeNet(netio.read_net(slim / "deploy.prototxt"), weights)
    # Teacher inputs: also runs (the option exists for comparison).
    res = run("relearn", slim, "--images", images, "--count", 16, "--heldout", 4, "--iters", 0, "--input",
              "teacher", "--only", "i", "-o", tmp_path / "t", "--json")
    assert res.exit_code == 0, res.output
    assert [u["name"] for u in json.loads(res.stdout)["units"]] == ["i"]


def test_a_relearned_net_blind_to_its_input_is_reported(caffe, tmp_path):
    """Measured: a Slim-Tucker net relearned at `--time 0.5` gave every image the same output, and
    the fine-tune that followed ran 100 min at chance. relearn now says so in its summary and in
    relearn.json (the blob that is zero for every image), and a net that tells images apart says
    nothing."""
    proto, w = write_model(tmp_path, SMALL, "small", seed=4)
    slim = tmp_path / "slim"
    assert run("slim", proto, "--weights", w, "-o", slim, "--data-layer", "dummy").exit_code == 0
    images = image_folder(tmp_path, n=40, size=32)
    init = netio.read_weights(slim / "init.caffemodel")
    arrays = netio.weights_of(init)
    arrays["conv1"] = [np.zeros_like(arrays["conv1"][0]), np.full_like(arrays["conv1"][1], -1.0)]   # dead ReLUs
    dead = tmp_path / "dead.caffemodel"
    netio.write_weights(netio.with_weights(init, arrays), dead)
    res = run("relearn", slim, "--images", images, "--count", 16, "--heldout", 8, "--iters", 0, "--only", "i",
              "-w", dead, "-o", tmp_path / "d")
    assert res.exit_code == 0, res.output
    assert "warning: the re-learned net gives every held-out image the same output" in res.output
    assert "blob 'norm1' is zero for every image" in res.output, res.output   # conv1's top in the slim net
    assert "norm1" in json.loads((tmp_path / "d" / "relearn.json").read_text())["input_blind"]
    res = run("relearn", slim, "--images", images, "--count", 16, "--heldout", 8, "--iters", 0, "-o", tmp_path / "ok")
    assert res.exit_code == 0 and "same output" not in res.output
    assert "input_blind" not in json.loads((tmp_path / "ok" / "relearn.json").read_text())


# ----------------------------------------------------------------------------------------------
# errors


@pytest.mark.slow
def test_errors_without_caffe(tmp_path):
    proto, w = write_model(tmp_path, SMALL, "small")
    slim = tmp_path / "slim"
    assert run("slim", proto, "--weights", w, "-o", slim, "--data-layer", "dummy").exit_code == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "report.json" in error_line(run("relearn", empty, "--images", empty))
    old = tmp_path / "old"
    old.mkdir()
    for name in ("deploy.prototxt", "report.json"):
        (old / name).write_bytes((slim / name).read_bytes())
    report = json.loads((old / "report.json").read_text())
    del report["relearn"]
    (old / "report.json").write_text(json.dumps(report))
    assert "older rebirth" in error_line(run("relearn", old, "--images", empty))
    assert "no such file" in error_line(run("relearn", tmp_path / "missing", "--images", empty)) or \
        "not a directory" in error_line(run("relearn", tmp_path / "missing", "--images", empty))
    assert "no unit named 'nope'" in error_line(run("relearn", slim, "--images", empty, "--only", "nope"))
    before = sorted(p.name for p in slim.iterdir())
    line = error_line(run("relearn", slim, "--images", empty))
    assert str(empty) in line
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"not a picture")
    (bad / "ok.png").write_bytes((tmp_path / "small.caffemodel").read_bytes()[:10])
    assert "broken.png" in error_line(run("relearn", slim, "--images", bad))
    assert sorted(p.name for p in slim.iterdir()) == before  # nothing written
    no_weights = tmp_path / "slim_nw"
    assert run("slim", proto, "-o", no_weights, "--data-layer", "dummy").exit_code == 0
    assert "--teacher-weights" in error_line(run("relearn", no_weights, "--images", empty))


def test_relearn_sgd_too_high_rate_is_caught(caffe, tmp_path):
    """A learning rate that blows SGD up: the unit's SGD restarts at lower rates or gives up, the
    summary says so, and no NaN reaches the written weights."""
    proto, w = write_model(tmp_path, SMALL, "small", seed=4)
    slim = tmp_path / "slim"
    assert run("slim", proto, "--weights", w, "-o", slim, "--data-layer", "dummy").exit_code == 0
    images = image_folder(tmp_path, n=24, size=32)
    res = run("relearn", slim, "--images", images, "--count", 16, "--heldout", 8, "--iters", 20,
              "--batch", 8, "--lr", 1e7, "--no-least-squares", "--only", "conv1")
    assert res.exit_code == 0, res.output
    assert "SGD diverged at lr 1e+07" in res.output
    doc = json.loads((slim / "relearn.json").read_text())
    unit = doc["units"][0]
    assert any("diverged" in n for n in unit["notes"])
    assert unit["kept"] != "sgd" or np.isfinite(unit["error"]["sgd"]["rel"])
    weights = netio.weights_of(netio.read_weights(slim / "weights.caffemodel"))
    assert all(np.isfinite(a).all() for arrays in weights.values() for a in arrays)


# ----------------------------------------------------------------------------------------------
# a time budget bounds relearn (recover and accelerate give it one)


def test_unit_deadline_shares_what_is_left_among_the_units_to_do():
    from deeprebirth.learning import relearn as rl
    assert rl.unit_deadline(100.0, None, 3) is None                  # no budget: no bound
    assert rl.unit_deadline(100.0, 160.0, 3) == pytest.approx(120.0)   # a third of the 60 s left
    assert rl.unit_deadline(100.0, 160.0, 1) == pytest.approx(160.0)   # the last unit: all of it
    assert rl.unit_deadline(100.0, 90.0, 2) == pytest.approx(100.0)    # spent already: stop at once


def test_solve_linear_past_its_deadline_keeps_the_plain_fit():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6))
    y = np.maximum(a @ rng.normal(size=(6, 3)) + 0.1, 0)
    plain = lstsq.solve_linear(a, y, relu=False)
    cut = lstsq.solve_linear(a, y, relu=True, deadline=0.0)          # perf_counter is past 0 already
    full = lstsq.solve_linear(a, y, relu=True)
    assert all(np.allclose(p, c) for p, c in zip(plain, cut))
    err = [float(np.sum((np.maximum(a @ w + b, 0) - y) ** 2)) for w, b in (cut, full)]
    assert err[1] < 0.5 * err[0]            # the projections through the ReLU are what was cut


def test_recover_gives_relearn_a_share_of_its_budget():
    from deeprebirth.learning import recover as rc
    from deeprebirth.learning import relearn as rl
    assert rc.relearn_budget(None, None).time_budget is None
    assert rc.relearn_budget(None, 1000.0).time_budget == pytest.approx(rc.RELEARN_SHARE * 1000.0)
    # a bound asked for already is kept when smaller, and the other options are the caller's
    opt = rc.relearn_budget(rl.Options(iters=7, time_budget=5.0), 1000.0)
    assert (opt.iters, opt.time_budget) == (7, 5.0)


def test_relearn_with_its_time_spent_keeps_least_squares_and_says_so(caffe, tmp_path):
    """A budget spent before any unit starts (0 s): each keeps least squares' plain fit (no
    projections through the ReLU), notes that it did no SGD, and the weights are written and load."""
    from deeprebirth.learning import relearn as rl
    proto, w = write_model(tmp_path, SMALL, "small", seed=4)
    slim = tmp_path / "slim"
    assert run("slim", proto, "--weights", w, "-o", slim, "--data-layer", "dummy").exit_code == 0
    images = image_folder(tmp_path, n=24, size=32)
    doc = rl.relearn_dir(slim, str(images), tmp_path / "rl", options=rl.Options(
        train_images=16, heldout_images=8, iters=50, batch=8, time_budget=0.0))
    for unit in doc["units"]:
        assert unit["iterations"] == 0 and "sgd" not in unit["error"], unit
        assert any("time budget" in n for n in unit["notes"]), unit
        assert unit["error"]["least_squares"]["rel"] < unit["error"]["initial"]["rel"]
    weights = netio.weights_of(netio.read_weights(tmp_path / "rl" / "weights.caffemodel"))
    pycaffe.CaffeNet(netio.read_net(slim / "deploy.prototxt"), weights)
