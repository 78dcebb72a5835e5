"""Fashion-MNIST as Caffe reads it for training: LMDBs of Datum records at the teachers' 64x64
input, and the Data layers over them (teachers.py trains from them with `caffe train`; table3.py's
chains read the same training LMDB). The images come from the product's SOURCE reader
(`fashion-mnist:train`, deeprebirth.learning.sources.FashionMnist); the product reads LMDBs but
writes none, so the writer is here."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from deeprebirth.caffe import proto as pb
from deeprebirth.learning.sources import FashionMnist

SIZE = 64              # the teachers' input: 28x28 images resized to 64x64 (Pillow, bilinear)
MEAN = 73.0            # Fashion-MNIST's mean gray level (0..255), after resizing too
SCALE = 1.0 / 255.0
TRAIN_LMDB = "fmnist_train_lmdb"      # 64x64, in order (table3.py's "$WORK/fmnist_train_lmdb[:58000]")
TEST_LMDB = "fmnist_test_lmdb"        # 64x64


def images(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST's ``split`` ("train" or "test"): N x 28 x 28 uint8 images and their labels."""
    source = FashionMnist(split)
    return source.images, source.labels(range(len(source)))


def resized(ims: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Each image resized to size x size (Pillow, bilinear), uint8."""
    from PIL import Image  # noqa: PLC0415

    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in ims])


def write_lmdb(path: Path, ims: np.ndarray, labels: np.ndarray) -> None:
    """Caffe Datum records (raw uint8, 1 x H x W), keys 00000000, 00000001, ... in order, written to
    a temporary folder renamed to ``path``."""
    import lmdb  # noqa: PLC0415

    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    env = lmdb.open(str(tmp), map_size=int(ims.nbytes * 2 + (1 << 26)))
    with env.begin(write=True) as txn:
        for i, (im, label) in enumerate(zip(ims, labels)):
            d = pb.Datum(channels=1, height=im.shape[0], width=im.shape[1], data=im.tobytes(), label=int(label))
            txn.put(f"{i:08d}".encode(), d.SerializeToString())
    env.close()
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def make_lmdbs(work: Path, limits: dict[str, int | None] | None = None, pad: int = 0,
               train_name: str = TRAIN_LMDB) -> dict[str, Path]:
    """WORK/``train_name`` (the training images at 64x64, padded by ``pad`` black pixels on each
    side) and WORK/fmnist_test_lmdb (64x64), each written once; ``limits`` keeps the first N of a
    split (small runs). Returns {"train": path, "test": path}."""
    limits = limits or {}
    out = {}
    for split, name, p in (("train", train_name, pad), ("test", TEST_LMDB, 0)):
        path = work / name
        out[split] = path
        if (path / "data.mdb").exists():
            continue
        ims, labels = images(split)
        n = limits.get(split)
        ims, labels = resized(ims[:n]), labels[:n]
        if p:
            ims = np.pad(ims, ((0, 0), (p, p), (p, p)))
        print(f"writing {path} ({len(ims)} images, {ims.shape[1]}x{ims.shape[2]})", flush=True)
        write_lmdb(path, ims, labels)
    return out


def data_layer(source: Path, phase: int, batch: int) -> "pb.LayerParameter":
    """A Data layer over an LMDB written here: tops data and label, mean 73, scale 1/255, mirror in
    TRAIN."""
    layer = pb.LayerParameter(name="data", type="Data")
    layer.top.extend(["data", "label"])
    layer.include.add(phase=phase)
    layer.transform_param.scale = SCALE
    layer.transform_param.mean_value.append(MEAN)
    layer.transform_param.mirror = phase == pb.TRAIN
    layer.data_param.source = str(source)
    layer.data_param.backend = pb.DataParameter.LMDB
    layer.data_param.batch_size = batch
    return layer
