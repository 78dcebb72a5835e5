"""scripts/reproduce/teachers.py and its data module fmnist.py: the teachers' nets, train_vals and
solvers as the shipped files have them, and Fashion-MNIST written as the LMDBs `caffe train` reads
(checked by reading them back through the product's SOURCE reader)."""
from __future__ import annotations

import fmnist
import numpy as np
import pytest
import teachers
from helpers import ROOT

from deeprebirth.caffe import netio
from deeprebirth.caffe import proto as pb
from deeprebirth.learning.sources import open_source


def body(text: str) -> str:
    """A prototxt without its comment header."""
    return "\n".join(line for line in text.splitlines() if not line.startswith("#"))


def test_the_resnet_teacher_and_the_train_vals_are_what_models_holds():
    built = netio.net_to_text(teachers.build_fmnist_resnet())
    assert body(built) == body((ROOT / "models" / "fmnist_resnet.prototxt").read_text())
    for name in ("googlenet", "resnet"):
        spec = teachers.TEACHERS[name]
        tv = teachers.train_val(spec["deploy"], "", spec["batch"])
        shipped = netio.read_net(spec["train_val"])
        assert [lr.name for lr in tv.layer] == [lr.name for lr in shipped.layer]
        data = [lr for lr in tv.layer if lr.type == "Data"]
        assert [lr.data_param.source for lr in data] == [teachers.TRAIN_LMDB, teachers.TEST_LMDB]
        assert all(lr.transform_param.crop_size == 64 and lr.transform_param.mean_value[0] == 73 for lr in data)


def test_solvers_warm_up_then_decay_to_zero():
    sv = teachers.solvers("resnet", iters=1000, base_lr=0.1, warmup=100, snapshot=50, test_interval=200)
    assert sv["warmup"].lr_policy == "sigmoid" and sv["warmup"].max_iter == 100
    assert sv["main"].lr_policy == "poly" and sv["main"].power == 1.0 and sv["main"].max_iter == 1000
    assert sv["main"].snapshot_prefix == "snap/resnet"
    assert teachers.solvers("resnet", 1000, 0.1, 0, 50, 200)["warmup"] is None


def test_lmdbs_hold_the_images_resized_and_padded(tmp_path):
    paths = fmnist.make_lmdbs(tmp_path, {"train": 12, "test": 5}, pad=4, train_name="train_pad")
    train, test = open_source(str(paths["train"])), open_source(str(paths["test"]))
    assert (len(train), len(test)) == (12, 5)
    ims, labels = fmnist.images("train")
    assert list(train.labels(range(12))) == [int(x) for x in labels[:12]]
    first = np.squeeze(np.asarray(train.image(0)))
    assert first.shape == (72, 72)
    assert np.array_equal(first[4:-4, 4:-4], fmnist.resized(ims[:1])[0])
    assert not first[:4].any() and not first[:, -4:].any()          # the black border
    assert np.squeeze(np.asarray(test.image(0))).shape == (64, 64)
    layer = fmnist.data_layer(paths["test"], pb.TEST, 100)
    assert layer.data_param.source == str(paths["test"]) and not layer.transform_param.mirror
    assert (tmp_path / "train_pad" / "data.mdb").stat().st_mtime == pytest.approx(
        fmnist.make_lmdbs(tmp_path, {"train": 12}, pad=4, train_name="train_pad")["train"].joinpath(
            "data.mdb").stat().st_mtime)                                   # written once
