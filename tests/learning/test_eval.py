"""`rebirth eval`: exact top-1/top-5 and teacher agreement/KL on a net whose answers are known
by construction (an identity InnerProduct: the class is the brightest pixel)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import error_line, run
from PIL import Image

from deeprebirth.caffe import netio
from deeprebirth.learning import evaluate as ev
from deeprebirth.learning import preprocess
from deeprebirth.learning import sources as data

NET = """name: "argmax"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 2 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 6 } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
"""
LEVELS = np.array([10, 50, 90, 130, 170, 210], dtype=np.uint8)
# Six 2x3 gray images, each a permutation of LEVELS; the identity net's class = the brightest pixel.
PERMS = [np.random.default_rng(s).permutation(6) for s in range(6)]
IMAGES = [LEVELS[p].reshape(2, 3) for p in PERMS]


def _labels() -> list[int]:
    order = [np.argsort(-img.reshape(-1)) for img in IMAGES]   # classes by score, best first
    # 3 right at top-1, one 3rd-best (a top-5 hit only), two the worst class (missed by both)
    return [int(order[0][0]), int(order[1][0]), int(order[2][0]), int(order[3][2]), int(order[4][5]), int(order[5][5])]



@pytest.fixture
def setup(tmp_path):
    net = netio.parse_net_text(NET)
    (tmp_path / "net.prototxt").write_text(NET)
    netio.write_weights(netio.with_weights(net, {"ip": [np.eye(6, dtype=np.float32), np.zeros(6, np.float32)]}),
                     tmp_path / "net.caffemodel")
    swap = np.eye(6, dtype=np.float32)[[1, 0, 2, 3, 4, 5]] * 2.0   # teacher: classes 0 and 1 swapped, logits x2
    netio.write_weights(netio.with_weights(net, {"ip": [swap, np.zeros(6, np.float32)]}), tmp_path / "teacher.caffemodel")
    lines = []
    for i, (img, label) in enumerate(zip(IMAGES, _labels())):
        Image.fromarray(img).save(tmp_path / f"im{i}.png")
        lines.append(f"im{i}.png {label}")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "plain").mkdir()
    for i, img in enumerate(IMAGES):
        Image.fromarray(img).save(tmp_path / "plain" / f"im{i}.png")
    return tmp_path, swap


def _expected_teacher(swap):
    x = np.stack([img.reshape(-1) for img in IMAGES]).astype(np.float64) * preprocess.GRAY_SCALE  # the default scale
    zs, zt = x, x @ swap.T.astype(np.float64)
    ls = zs - zs.max(1, keepdims=True)
    ls -= np.log(np.exp(ls).sum(1, keepdims=True))
    lt = zt - zt.max(1, keepdims=True)
    lt -= np.log(np.exp(lt).sum(1, keepdims=True))
    kl = (np.exp(lt) * (lt - ls)).sum(1).mean()
    agree = (zs.argmax(1) == zt.argmax(1)).mean()
    return agree, kl, zt


@pytest.mark.slow
def test_exact_top1_top5(caffe, setup):
    d, _ = setup
    res = run("eval", d / "net.prototxt", "--weights", d / "net.caffemodel", "--data", d / "list.txt",
              "--batch", 4, "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["images"] == 6 and out["top1"] == pytest.approx(3 / 6) and out["top5"] == pytest.approx(4 / 6)
    assert out["output"] == "prob" and "agreement" not in out


@pytest.mark.slow
def test_teacher_agreement_and_kl(caffe, setup):
    d, swap = setup
    agree, kl, zt = _expected_teacher(swap)
    labels = np.array(_labels())
    res = run("eval", d / "net.prototxt", "--weights", d / "net.caffemodel", "--data", d / "list.txt",
              "--teacher", d / "net.prototxt", "--teacher-weights", d / "teacher.caffemodel", "--json")
    out = json.loads(res.stdout)
    assert 0 < agree < 1 and kl > 0.01
    assert out["agreement"] == pytest.approx(agree) and out["kl"] == pytest.approx(kl, rel=1e-4)
    assert out["teacher_top1"] == pytest.approx((zt.argmax(1) == labels).mean())
    # without labels: agreement and KL only
    res = run("eval", d / "net.prototxt", "--weights", d / "net.caffemodel", "--data", d / "plain",
              "--teacher", d / "net.prototxt", "--teacher-weights", d / "teacher.caffemodel", "--json")
    out = json.loads(res.stdout)
    assert "top1" not in out and out["agreement"] == pytest.approx(agree)
    # the teacher against itself: full agreement, zero KL (library call)
    same = ev.evaluate(str(d / "net.prototxt"), str(d / "net.caffemodel"), data.open_source(str(d / "plain")),
                       preprocess.Preprocess.defaults((1, 1, 2, 3)), teacher=str(d / "net.prototxt"),
                       teacher_weights=str(d / "net.caffemodel"), progress=None)
    assert same["agreement"] == 1.0 and same["kl"] == pytest.approx(0.0, abs=1e-7)
    assert same["expected_drop"] == pytest.approx(0.0, abs=1e-12)


def test_the_expected_drop_weighs_each_changed_class_by_the_teachers_certainty():
    """ev.expected_drop: p_t(teacher's class) - p_t(model's class), averaged; an image whose class
    is kept costs nothing, one changed between two classes the teacher thought equally likely
    almost nothing, one the teacher was sure of almost a whole image."""
    t = np.log(np.array([[0.90, 0.05, 0.05],      # kept below: 0
                         [0.50, 0.49, 0.01],      # changed to class 1: 0.01
                         [0.98, 0.01, 0.01]]))    # changed to class 2: 0.97
    model = np.array([[3.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
    assert ev.expected_drop(model, t) == pytest.approx((0.0 + 0.01 + 0.97) / 3)
    flips = np.mean(model.argmax(1) != t.argmax(1))
    assert 0 <= ev.expected_drop(model, t) <= flips
    assert ev.expected_drop(np.exp(t), t) == 0.0


@pytest.mark.slow
def test_model_directory_and_preprocessing_flags(caffe, setup):
    d, _ = setup
    model_dir = d / "model"
    model_dir.mkdir()
    (model_dir / "deploy.prototxt").write_text(NET)
    (model_dir / "weights.caffemodel").write_bytes((d / "net.caffemodel").read_bytes())
    res = run("eval", model_dir, "--data", d / "list.txt", "--scale", "-1", "--json")
    out = json.loads(res.stdout)   # negated scores: the darkest pixel wins, so the two 'worst' labels hit
    assert out["top1"] == pytest.approx(2 / 6) and out["preprocess"]["scale"] == -1
    relearned = d / "relearned"   # a relearn output: weights + relearn.json naming the slim directory
    relearned.mkdir()
    (relearned / "weights.caffemodel").write_bytes((d / "net.caffemodel").read_bytes())
    (relearned / "relearn.json").write_text(json.dumps({"slim_dir": str(model_dir)}))
    assert json.loads(run("eval", relearned, "--data", d / "list.txt", "--json").stdout)["top1"] == pytest.approx(3 / 6)
    # the same from a train_val's TEST data layer
    (d / "tv.prototxt").write_text(
        'layer { name: "d" type: "ImageData" top: "data" top: "label" include { phase: TRAIN } '
        'transform_param { scale: 1 } image_data_param { source: "a" is_color: false } }\n'
        'layer { name: "d" type: "ImageData" top: "data" top: "label" include { phase: TEST } '
        'transform_param { scale: -1 } image_data_param { source: "b" is_color: false } }\n')
    res = run("eval", model_dir, "--data", d / "list.txt", "--train-val", d / "tv.prototxt", "--json")
    assert json.loads(res.stdout)["top1"] == pytest.approx(2 / 6)


@pytest.mark.slow
def test_errors(caffe, setup):
    d, _ = setup
    line = error_line(run("eval", d / "net.prototxt", "--weights", d / "net.caffemodel", "--data", d / "plain"))
    assert "plain: the images have no labels" in line
    (d / "bad.txt").write_text("im0.png 7\n")
    line = error_line(run("eval", d / "net.prototxt", "--weights", d / "net.caffemodel", "--data", d / "bad.txt"))
    assert "label 7 but the net has 6 outputs" in line
    line = error_line(run("eval", d / "net.prototxt", "--data", d / "list.txt"))
    assert "needs weights" in line
    line = error_line(run("eval", d / "net.prototxt", "--weights", d / "net.caffemodel", "--data", d / "list.txt",
                          "--mean", "1,2,3"))
    assert "3 mean values for a 1-channel" in line


@pytest.mark.caffe
def test_a_builtin_brings_its_weights_and_preprocessing(caffe):
    """`eval fmnist_googlenet --data ...` alone uses the shipped weights and the shipped train_val's
    preprocessing: the same numbers, to the digit, as naming both, and says which it used."""
    from deeprebirth.caffe import builtin
    if not (data.FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (make install)")
    if builtin.weights("fmnist_googlenet") is None:
        pytest.skip("models/fmnist_googlenet.caffemodel is not built")
    spec = "fashion-mnist:test[:40]"
    alone = run("eval", "fmnist_googlenet", "--data", spec, "--json")
    assert alone.exit_code == 0, alone.stderr
    named = run("eval", "fmnist_googlenet", "--data", spec, "--json", "--weights", builtin.weights("fmnist_googlenet"),
                "--train-val", builtin.train_val("fmnist_googlenet"))
    a, b = json.loads(alone.stdout), json.loads(named.stdout)
    assert (a["top1"], a["top5"], a["preprocess"]) == (b["top1"], b["top5"], b["preprocess"])
    assert a["preprocess_from"] == str(builtin.train_val("fmnist_googlenet"))
    assert a["preprocess"]["channels"] == 1 and a["preprocess"]["scale"] != 1
    text = run("eval", "fmnist_googlenet", "--data", "fashion-mnist:test[:10]").stdout
    assert f"from {builtin.train_val('fmnist_googlenet')}" in text
