"""Issue 31: `finetune` and `recover` without --val validate on images held out of the training
source (the split of every source kind, its record and summary), and `eval --teacher`'s relative
output error and its warning about a teacher that gives every image one class."""
from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import datum, make_slimmed, run, write_lmdb
from PIL import Image

from deeprebirth.caffe import netio
from deeprebirth.learning import evaluate as ev
from deeprebirth.learning import sources as data

# ----------------------------------------------------------------------------------------------
# The split of a source (no Caffe)


def test_holdout_size_is_a_tenth_between_300_and_2000_and_never_over_a_quarter():
    assert data.holdout_size(60_000) == 2000
    assert data.holdout_size(5_000) == 500
    assert data.holdout_size(2_000) == 300       # a tenth would be 200: raised to 300
    assert data.holdout_size(1_200) == 300       # exactly a quarter
    assert data.holdout_size(1_199) == 0         # more than a quarter: no split
    assert data.holdout_size(24) == 0 and data.holdout_size(0) == 0


def _same_images(a: data.Source, b: data.Source) -> bool:
    return len(a) == len(b) and all(np.array_equal(a.image(i), b.image(i)) for i in (0, len(a) // 2, len(a) - 1)) \
        and (not a.has_labels or list(a.labels(range(len(a)))) == list(b.labels(range(len(b)))))


def _check_split(spec: str, n: int, held: int) -> tuple[data.Source, data.Source]:
    """``spec`` (n images) splits into held images, every k-th (k = n // held) from the k-th on,
    named by a SOURCE that opens the same images again, and the other n - held."""
    whole = data.open_source(spec)
    part, out = data.hold_out(whole)
    k = n // held
    assert (len(part), len(out)) == (n - held, held)
    assert _same_images(out, data.open_source(out.name))
    assert np.array_equal(out.image(0), whole.image(k - 1)) and np.array_equal(out.image(held - 1), whole.image(k * held - 1))
    assert np.array_equal(part.image(0), whole.image(0)) and np.array_equal(part.image(k - 1), whole.image(k))
    assert part.name == f"{whole.name} without {out.name}"
    return part, out


def _gray(i: int) -> np.ndarray:
    return np.full((4, 4, 1), i % 251, dtype=np.uint8)


def test_every_source_kind_splits_into_sources_a_user_can_name(tmp_path):
    # a list file (1,300 lines over a few image files; labelled)
    for i in range(5):
        Image.fromarray(_gray(40 * i)[:, :, 0]).save(tmp_path / f"{i}.png")
    (tmp_path / "list.txt").write_text("".join(f"{i % 5}.png {i % 3}\n" for i in range(1300)))
    _, out = _check_split(str(tmp_path / "list.txt"), 1300, 300)
    assert out.name == f"{tmp_path / 'list.txt'}[3:1200:4]"
    # an LMDB (its keys in order)
    write_lmdb(tmp_path / "db", {f"{i:05d}".encode(): datum(_gray(i), i % 10) for i in range(1250)})
    _, out = _check_split(str(tmp_path / "db"), 1250, 300)
    assert out.name == f"{tmp_path / 'db'}[3:1200:4]" and out.label(1) == 7
    # a folder of class folders
    for i in range(1200):
        folder = tmp_path / "folder" / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_gray(i)[:, :, 0]).save(folder / f"{i:04d}.png")
    _, out = _check_split(str(tmp_path / "folder"), 1200, 300)
    assert out.name == f"{tmp_path / 'folder'}[3:1200:4]"
    assert set(out.labels(range(len(out)))) == {0, 1}      # the held-out images are of every class


def test_a_slice_of_a_slice_is_one_slice_of_the_source():
    if not (data.FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    _check_split("fashion-mnist:train[:5000]", 5000, 500)
    _, out = data.hold_out(data.open_source("fashion-mnist:train[:5000]"))
    assert out.name == "fashion-mnist:train[9:5000:10]"
    _, out = data.hold_out(data.open_source("fashion-mnist:train[1000::2]"))   # 29,500 images, every other one
    assert out.name == "fashion-mnist:train[1026:57000:28]" and len(out) == 2000   # every 14th of those
    _check_split("fashion-mnist:train[1000::2]", 29_500, 2000)
    _, out = data.hold_out(data.open_source("fashion-mnist:test"))
    assert out.name == "fashion-mnist:test[9:10000:10]"
    # labels hidden (distillation) are still the same images: the name is the source's
    _, out = data.hold_out(data.unlabelled(data.open_source("fashion-mnist:test[:2000]")))
    assert out.name == "fashion-mnist:test[5:1800:6]" and not out.has_labels


class _Mine(data.Source):
    """A caller's own source: no SOURCE string names it."""
    name = "mine"

    def __len__(self):
        return 1500

    def image(self, i):
        return _gray(i)


def test_a_source_no_string_names_is_split_and_described_and_a_small_one_is_not():
    part, out = data.hold_out(_Mine())
    assert (len(part), len(out)) == (1200, 300)
    assert out.name == "mine (every 5th of its images, 300 in all)" and np.array_equal(out.image(0), _gray(4))
    assert part.name == f"mine without {out.name}"
    assert data.subset_spec(_Mine(), range(3)) is None
    small = data.Subset(_Mine(), list(range(100)), "some")
    assert data.hold_out(small) == (small, None)


# ----------------------------------------------------------------------------------------------
# eval --teacher: the relative output error and the one-class warning (no Caffe)


def test_relative_error_is_pooled_over_the_images():
    t = np.array([[3.0, 4.0], [0.0, 0.0]])          # ||t|| = 5; the second image's teacher output is zero
    s = np.array([[3.0, 4.0], [0.0, 1.0]])
    assert ev.relative_error(s, t) == pytest.approx(1 / 5)   # a per-image mean would divide by zero
    assert ev.relative_error(t, t) == 0.0
    assert ev.relative_error(2 * t, t) == pytest.approx(1.0)
    assert ev.relative_error(s, np.zeros_like(t)) is None
    # accumulated batch by batch (Meter) it is the same number
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(7, 5)), rng.normal(size=(7, 5))
    meter = ev.Meter()
    for part in (slice(0, 3), slice(3, 7)):
        meter.add(s[part], ev.log_softmax(s[part]), None, t[part], ev.log_softmax(t[part]))
    got = meter.result(labels=False, teacher=True)
    assert got["rel_error"] == pytest.approx(np.linalg.norm(s - t) / np.linalg.norm(t))
    assert got["rel_error"] == pytest.approx(ev.relative_error(s, t))


def test_a_teacher_of_one_class_is_warned_about():
    assert ev.one_class_warning(np.array([0, 0, 7, 0])) == (
        "the teacher gives class 2 to every one of the 7 images: agreement with it proves nothing about the model "
        "(evaluate on images of more than one class, or check the teacher's weights and preprocessing)")
    assert ev.one_class_warning(np.array([1, 0, 6])) is None
    assert ev.one_class_warning(np.array([0, 1])) is None      # one image: nothing to tell
    meter = ev.Meter()
    t = np.array([[0.0, 2.0, 1.0], [0.5, 3.0, 0.0]])
    meter.add(t, ev.log_softmax(t), None, t, ev.log_softmax(t))
    got = meter.result(labels=False, teacher=True)
    assert got["teacher_classes"] == 1 and "gives class 1 to every one of the 2 images" in got["warnings"][0]
    u = t[:, [1, 0, 2]]                               # class 0 for both
    meter.add(u, ev.log_softmax(u), None, u, ev.log_softmax(u))
    got = meter.result(labels=False, teacher=True)
    assert got["teacher_classes"] == 2 and got["warnings"] == []


# ----------------------------------------------------------------------------------------------
# With Caffe


@pytest.fixture(scope="module")
def slimmed(tmp_path_factory, caffe):
    """The tiny slim dir of test_finetune and a list file of 1,200 of its training images (repeated)."""
    d = make_slimmed(tmp_path_factory.mktemp("holdout"))
    files = sorted((d / "train").rglob("*.png"))
    (d / "big.txt").write_text("".join(f"{files[i % len(files)]} {int(files[i % len(files)].parent.name[1])}\n"
                                       for i in range(1200)))
    return d


@pytest.mark.caffe
@pytest.mark.slow
def test_finetune_without_val_validates_on_held_out_images(slimmed, tmp_path):
    d = slimmed
    out = tmp_path / "out"
    res = run("finetune", d / "slim", "--train", d / "big.txt", "--iters", 6, "--base-lr", 0.01, "-o", out)
    assert res.exit_code == 0, res.output
    held = f"{d / 'big.txt'}[3:1200:4]"
    assert "300 of the 1,200 training images (every 4th) are held out and validated on as --val would be" in res.output
    assert held in res.output and "training reads the other 900" in res.output
    doc = json.loads((out / "finetune.json").read_text())
    assert doc["heldout"] == {"source": held, "images": 300, "train": f"{d / 'big.txt'} without {held}",
                              "train_images": 900, "of": str(d / "big.txt")}
    assert doc["train"] == str(d / "big.txt") and doc["val"] is None   # a resume splits the same way
    hist = doc["history"]
    assert [h["iteration"] for h in hist] == [0, 6] and all("val_top1" in h for h in hist)
    assert doc["best"]["val_top1"] >= hist[0]["val_top1"]                # never below the start
    assert "{opt:" not in json.dumps(doc) and "--val" in " ".join(doc["notes"])
    # the held-out images are a SOURCE the written net evaluates to the kept record on
    got = json.loads(run("eval", out, "--data", held, "--json").stdout)
    assert got["images"] == 300 and got["top1"] == pytest.approx(doc["best"]["val_top1"])
    # a source under 1,200 images is trained on whole, and the run says so
    res = run("finetune", d / "slim", "--train", d / "train", "--iters", 2, "-o", tmp_path / "small", "--json")
    doc = json.loads(res.stdout)
    assert doc["heldout"] is None and [h["iteration"] for h in doc["history"]] == [2] and "best" in doc
    assert "24 training images are too few to hold some out for validation" in doc["notes"][0]


@pytest.mark.caffe
@pytest.mark.slow
def test_eval_teacher_reports_the_relative_error_and_warns_of_a_one_class_teacher(slimmed, tmp_path):
    d = slimmed
    deploy = netio.parse_net_text((d / "tiny.prototxt").read_text())
    one = netio.weights_of(netio.read_weights(d / "tiny.caffemodel"))
    one["fc"] = [np.zeros_like(one["fc"][0]), np.array([0.0, 5.0, 0.0], dtype=np.float32)]   # always class 1
    netio.write_weights(netio.with_weights(deploy, one), tmp_path / "one.caffemodel")
    common = ("--data", d / "val", "--train-val", d / "tv.prototxt", "--json")
    res = run("eval", d / "tiny.prototxt", "-w", d / "tiny.caffemodel", "--teacher", d / "tiny.prototxt",
              "--teacher-weights", tmp_path / "one.caffemodel", *common)
    assert res.exit_code == 0, res.output
    assert "rebirth: warning: the teacher gives class 1 to every one of the 12 images" in res.stderr
    got = json.loads(res.stdout)
    assert got["teacher_classes"] == 1 and 0 < got["rel_error"] < 2
    # the same net as its own teacher: no error, no warning (when it tells the images apart)
    res = run("eval", d / "tiny.prototxt", "-w", d / "tiny.caffemodel", "--teacher", d / "tiny.prototxt",
              "--teacher-weights", d / "tiny.caffemodel", *common[:-1])
    assert res.exit_code == 0, res.output
    assert "rel_error     0.0000 (||model - teacher|| / ||teacher||" in res.stdout


@pytest.mark.caffe
@pytest.mark.slow
def test_recover_without_val_holds_the_images_out_of_both_steps(slimmed, tmp_path):
    d = slimmed
    out = tmp_path / "rec"
    res = run("recover", d / "slim", "--images", d / "big.txt", "--iters", 4, "--relearn-iters", 2, "--count", 16,
              "-o", out, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    held = f"{d / 'big.txt'}[3:1200:4]"
    assert doc["val"] is None and doc["heldout"]["source"] == held and doc["finetune"]["heldout"] == doc["heldout"]
    assert doc["relearn"]["source"] == f"{d / 'big.txt'} without {held}"   # relearn never sees the held-out images
    hist = doc["finetune"]["history"]
    assert "val_agreement" in hist[0] and "val_top1" not in hist[0]   # label-free, also on held-out images
    assert doc["finetune"]["best"]["val_agreement"] >= hist[0]["val_agreement"]
    assert held in json.loads((out / "recover.json").read_text())["heldout"]["source"]
