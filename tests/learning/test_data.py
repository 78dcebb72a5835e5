"""Image sources and preprocessing (deeprebirth.learning.sources): every SOURCE kind, labels, Caffe's
DataTransformer arithmetic against hand-computed values, and the one-line errors."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from helpers import datum, write_lmdb
from PIL import Image

from deeprebirth import outputs
from deeprebirth.caffe import netio
from deeprebirth.caffe import proto as pb
from deeprebirth.errors import RebirthError
from deeprebirth.learning import preprocess
from deeprebirth.learning import sources as data


def rgb(seed: int, h: int = 6, w: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr if arr.ndim == 2 or arr.shape[2] == 3 else arr[:, :, 0]).save(path)
    return path


@pytest.fixture
def class_folder(tmp_path):
    root = tmp_path / "imgs"
    arrays = {}
    for cls, n in (("cat", 2), ("dog", 3)):
        for i in range(n):
            arr = rgb(10 * len(cls) + i + (0 if cls == "cat" else 100))
            arrays[f"{cls}/{i}.png"] = arr
            save(root / cls / f"{i}.png", arr)
    return root, arrays


# ------------------------------------------------------------------------------------------
# Sources


def test_folder_with_class_dirs_is_labelled_in_sorted_order(class_folder):
    root, arrays = class_folder
    src = data.open_source(str(root))
    assert len(src) == 5 and src.has_labels and src.classes == ("cat", "dog")
    assert [src.label(i) for i in range(5)] == [0, 0, 1, 1, 1]
    np.testing.assert_array_equal(src.image(3), arrays["dog/1.png"])


def test_flat_or_mixed_folder_is_unlabelled(tmp_path, class_folder):
    root, _ = class_folder
    save(root / "loose.png", rgb(7))  # one image outside the class folders -> no labels
    src = data.open_source(str(root))
    assert len(src) == 6 and not src.has_labels and src.label(0) is None
    with pytest.raises(RebirthError, match="no labels, but finetune needs them"):
        data.require_labels(src, "finetune")
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    save(tmp_path / "flat" / "g.png", gray)
    flat = data.open_source(str(tmp_path / "flat"))
    assert not flat.has_labels
    np.testing.assert_array_equal(flat.image(0), gray[:, :, None])


def test_list_file_relative_and_absolute_paths(tmp_path):
    a = save(tmp_path / "d" / "a.png", rgb(1))
    b = save(tmp_path / "elsewhere" / "b c.png", rgb(2))  # a space in the name: the label is the last field
    lst = tmp_path / "d" / "train.txt"
    lst.write_text(f"# comment\na.png 3\n\n{b} 7\n")
    src = data.open_source(str(lst))
    assert len(src) == 2 and src.has_labels and [src.label(0), src.label(1)] == [3, 7]
    np.testing.assert_array_equal(src.image(1), rgb(2))
    unl = tmp_path / "d" / "unlabelled.txt"
    unl.write_text("a.png\n")
    assert not data.open_source(str(unl)).has_labels
    assert a.exists()


@pytest.mark.parametrize("text, match", [
    ("a.png 1\na.png x\n", r"train\.txt:2: expected 'path \[label\]'"),
    ("a.png 1\nmissing.png 2\n", r"train\.txt:2: .*missing\.png: no such image file"),
    ("a.png 1\na.png\n", r"train\.txt:2: no label here"),
    ("\n# nothing\n", "names no images"),
])
def test_list_file_errors(tmp_path, text, match):
    save(tmp_path / "a.png", rgb(1))
    (tmp_path / "train.txt").write_text(text)
    with pytest.raises(RebirthError, match=match):
        data.open_source(str(tmp_path / "train.txt"))


def test_lmdb_raw_and_encoded_datums(tmp_path):
    import io as pyio
    png = pyio.BytesIO()
    Image.fromarray(rgb(5)).save(png, format="PNG")
    gray = (np.arange(20, dtype=np.uint8).reshape(4, 5, 1) * 10)
    write_lmdb(tmp_path / "db", {
        b"00000000_a": datum(rgb(3), 4),                      # raw, stored BGR as convert_imageset does
        b"00000001_b": pb.Datum(data=png.getvalue(), encoded=True, label=9).SerializeToString(),
        b"00000002_c": datum(gray, 1),
    })
    src = data.open_source(str(tmp_path / "db"))
    assert len(src) == 3 and src.has_labels and [src.label(i) for i in range(3)] == [4, 9, 1]
    np.testing.assert_array_equal(src.image(0), rgb(3))   # back to RGB
    np.testing.assert_array_equal(src.image(1), rgb(5))
    np.testing.assert_array_equal(src.image(2), gray)
    by_file = data.open_source(str(tmp_path / "db" / "data.mdb"))
    assert len(by_file) == 3 and by_file.label(1) == 9


def test_lmdb_of_other_records_is_refused(tmp_path):
    write_lmdb(tmp_path / "db", {b"k": b"\xff\xff\xff not a datum"})
    with pytest.raises(RebirthError, match=r"record 'k' is not a Caffe Datum"):
        data.open_source(str(tmp_path / "db"))


def _idx(path: Path, arr: np.ndarray, magic: int) -> None:
    head = np.array([magic, *arr.shape], dtype=">u4").tobytes()
    with gzip.open(path, "wb") as fh:
        fh.write(head + arr.astype(np.uint8).tobytes())


def test_fashion_mnist_idx_reader(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    _idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs, 2051)
    _idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([3, 1, 4, 1]), 2049)
    src = data.FashionMnist("test", root=tmp_path)
    assert len(src) == 4 and src.name == "fashion-mnist:test"
    np.testing.assert_array_equal(src.image(2), imgs[2][:, :, None])
    np.testing.assert_array_equal(src.labels([0, 2]), [3, 4])
    _idx(tmp_path / "train-images-idx3-ubyte.gz", imgs, 2049)  # wrong magic
    with pytest.raises(RebirthError, match="not an idx file"):
        data.FashionMnist("train", root=tmp_path)


def test_fashion_mnist_installed():
    if not (data.FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (make install)")
    test = data.open_source("fashion-mnist:test")
    assert len(test) == 10000 and test.image(0).shape == (28, 28, 1) and test.label(0) == 9
    sub = data.open_source("fashion-mnist:test[10:20]")
    assert len(sub) == 10 and sub.label(0) == test.label(10)
    assert len(data.open_source("fashion-mnist:test", limit=7)) == 7


def test_subset_suffix_and_limit(class_folder):
    root, arrays = class_folder
    sub = data.open_source(f"{root}[1::2]")
    assert len(sub) == 2 and [sub.label(0), sub.label(1)] == [0, 1]
    np.testing.assert_array_equal(sub.image(1), arrays["dog/1.png"])
    assert len(data.open_source(str(root), limit=3)) == 3
    with pytest.raises(RebirthError, match="selects no images"):
        data.open_source(f"{root}[9:]")


def test_source_errors(tmp_path):
    with pytest.raises(RebirthError, match="nope: no such file or directory"):
        data.open_source(str(tmp_path / "nope"))
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    with pytest.raises(RebirthError, match="empty: no images in this folder"):
        data.open_source(str(tmp_path / "empty"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.jpg").write_bytes(b"this is not a jpeg")
    src = data.open_source(str(bad))
    with pytest.raises(RebirthError, match=r"broken\.jpg: cannot decode image \(.+\)"):
        src.image(0)


# ------------------------------------------------------------------------------------------
# Preprocessing


def test_mean_scale_bgr_hand_computed():
    img = np.zeros((2, 2, 3), dtype=np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 10, 20, 30        # R, G, B
    pre = preprocess.Preprocess(3, 2, 2, mean=(1.0, 2.0, 3.0), scale=0.5)
    x = pre.apply([img])
    assert x.shape == (1, 3, 2, 2) and x.dtype == np.float32
    # BGR order: channel 0 is blue (30), minus mean[0], times scale
    np.testing.assert_array_equal(x[0, :, 0, 0], [(30 - 1) * 0.5, (20 - 2) * 0.5, (10 - 3) * 0.5])
    rgb_pre = preprocess.Preprocess(3, 2, 2, bgr=False)
    np.testing.assert_array_equal(rgb_pre.apply([img])[0, :, 1, 1], [10, 20, 30])


def test_centre_crop_with_mean_image_and_train_crops():
    img = np.arange(5 * 5, dtype=np.uint8).reshape(5, 5, 1)
    mean = np.full((1, 5, 5), 1.0, dtype=np.float32)
    mean[0, 1, 1] = 100.0
    pre = preprocess.Preprocess(1, 3, 3, mean=mean, crop=3)
    x = pre.apply([img])[0, 0]
    expect = img[1:4, 1:4, 0].astype(np.float32) - 1.0       # centre offset (5 - 3) // 2 = 1
    expect[0, 0] = img[1, 1, 0] - 100.0                      # the mean image is cropped at the same place
    np.testing.assert_array_equal(x, expect)
    train = preprocess.Preprocess(1, 3, 3, crop=3, mirror=True)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(40):
        y = train.apply([img], train=True, rng=rng)[0, 0]
        flipped = bool(y[0, 0] > y[0, 2])
        if flipped:
            y = y[:, ::-1]
        r0, c0 = divmod(int(y[0, 0]), 5)
        np.testing.assert_array_equal(y, img[r0:r0 + 3, c0:c0 + 3, 0])  # a real crop of the image
        seen.add((r0, c0, flipped))
    assert len({s[:2] for s in seen}) > 3 and {s[2] for s in seen} == {True, False}


def test_channel_conversion_and_resize():
    gray = np.full((4, 4, 1), 50, dtype=np.uint8)
    x = preprocess.Preprocess(3, 4, 4).apply([gray])
    np.testing.assert_array_equal(x[0, :, 0, 0], [50, 50, 50])
    col = np.zeros((4, 4, 3), dtype=np.uint8)
    col[..., 0] = 200                                       # pure red
    y = preprocess.Preprocess(1, 2, 2).apply([col])               # -> gray (L = 0.299 R) and resized to 2x2
    assert y.shape == (1, 1, 2, 2)
    np.testing.assert_allclose(y, np.asarray(Image.fromarray(col).convert("L"))[0, 0], atol=0)
    big = preprocess.Preprocess(3, 3, 3, crop=3, resize=(7, 9)).apply([rgb(0, 20, 20)])
    assert big.shape == (1, 3, 3, 3)


def test_defaults():
    p = preprocess.Preprocess.defaults((1, 3, 224, 224))
    assert p.crop == 224 and p.resize == (256, 256) and list(p.mean) == [104, 117, 123] and p.bgr
    g = preprocess.Preprocess.defaults((10, 1, 28, 28))
    assert g.mean is None and g.scale == pytest.approx(1 / 256) and not g.crop
    x = g.apply([np.full((28, 28), 128, dtype=np.uint8)])
    assert x.shape == (1, 1, 28, 28) and float(x.max()) == 0.5


def _data_layer(text: str) -> "pb.LayerParameter":
    net = netio.parse_net_text(text)
    return net.layer[0]


def test_from_transform_param(tmp_path):
    layer = _data_layer('layer { name: "d" type: "ImageData" top: "data" top: "label" '
                        'transform_param { scale: 0.5 mirror: true crop_size: 4 mean_value: 1 mean_value: 2 mean_value: 3 } '
                        'image_data_param { source: "x.txt" new_height: 6 new_width: 8 } }')
    p = preprocess.Preprocess.from_transform_param(layer, (1, 3, 4, 4))
    assert (p.scale, p.crop, p.mirror, p.resize) == (0.5, 4, True, (6, 8))
    np.testing.assert_array_equal(p.mean, [1, 2, 3])
    mean = np.arange(1 * 1 * 6 * 6, dtype=np.float32).reshape(1, 1, 6, 6)
    outputs.atomic_write(tmp_path / "mean.binaryproto", netio.array_to_blob(mean).SerializeToString())
    layer = _data_layer('layer { name: "d" type: "Data" top: "data" '
                        'transform_param { crop_size: 4 mean_file: "mean.binaryproto" } data_param { source: "db" } }')
    p = preprocess.Preprocess.from_transform_param(layer, (1, 1, 4, 4), base_dir=tmp_path)
    assert p.mean.shape == (1, 6, 6)
    img = np.full((6, 6), 100, dtype=np.uint8)
    np.testing.assert_array_equal(p.apply([img])[0, 0], 100 - mean[0, 0, 1:5, 1:5])
    # no input shape: size from the crop, channels from is_color
    gray = _data_layer('layer { name: "d" type: "ImageData" top: "data" transform_param { crop_size: 5 } '
                       'image_data_param { source: "x" is_color: false } }')
    p = preprocess.Preprocess.from_transform_param(gray)
    assert (p.channels, p.height, p.width) == (1, 5, 5)


def test_preprocess_errors(tmp_path):
    mean = np.zeros((1, 3, 5, 5), dtype=np.float32)
    outputs.atomic_write(tmp_path / "mean.binaryproto", netio.array_to_blob(mean).SerializeToString())
    layer = _data_layer('layer { name: "d" type: "Data" top: "data" '
                        f'transform_param {{ mean_file: "{tmp_path / "mean.binaryproto"}" }} }}')
    with pytest.raises(RebirthError, match=r"layer 'd': the mean image is 5x5 but the net input is 7x7"):
        preprocess.Preprocess.from_transform_param(layer, (1, 3, 7, 7))
    with pytest.raises(RebirthError, match="crop_size 5 gives 5x5 images but the net input is 4x4"):
        preprocess.Preprocess(3, 4, 4, crop=5)
    with pytest.raises(RebirthError, match="2 mean values for a 3-channel"):
        preprocess.Preprocess(3, 4, 4, mean=(1, 2))
    with pytest.raises(RebirthError, match="expected H x W x C"):
        preprocess.Preprocess(3, 4, 4).apply([np.zeros((4, 4, 4), dtype=np.uint8)])


def test_batches_short_last_and_loop(class_folder):
    root, _ = class_folder
    src = data.open_source(str(root))
    pre = preprocess.Preprocess(3, 6, 5)
    got = list(src.batches(pre, 2))
    assert [x.shape[0] for x, _ in got] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate([y for _, y in got]), [0, 0, 1, 1, 1])
    it = src.batches(pre, 2, shuffle=True, loop=True, seed=3, train=True)
    labels = np.concatenate([next(it)[1] for _ in range(5)])   # two full epochs of 5 images
    assert sorted(labels[:5]) == [0, 0, 1, 1, 1] and sorted(labels[5:]) == [0, 0, 1, 1, 1]
    again = src.batches(pre, 2, shuffle=True, loop=True, seed=3, train=True)
    np.testing.assert_array_equal(next(again)[0], next(src.batches(pre, 2, shuffle=True, loop=True, seed=3,
                                                                    train=True))[0])
    assert list(src.batches(pre, 4, limit=3))[0][0].shape == (3, 3, 6, 5)


# ------------------------------------------------------------------------------------------
# Against Caffe's own DataTransformer


@pytest.mark.caffe
def test_matches_caffes_data_layer_on_an_lmdb(caffe, tmp_path):
    """A Caffe Data layer (TEST phase: centre crop) reading an LMDB gives the very numbers our
    LmdbSource + Preprocess.from_transform_param give, for per-channel means and a mean file."""
    images = [rgb(20 + i, 7, 8) for i in range(3)]
    write_lmdb(tmp_path / "db", {f"{i:08d}".encode(): datum(img, i) for i, img in enumerate(images)})
    mean = np.random.default_rng(1).uniform(0, 255, size=(1, 3, 7, 8)).astype(np.float32)
    outputs.atomic_write(tmp_path / "mean.binaryproto", netio.array_to_blob(mean).SerializeToString())
    # (Caffe shares one reader thread per layer name + source between live nets: distinct names)
    for k, transform in enumerate(("scale: 0.5 crop_size: 5 mean_value: 10 mean_value: 20 mean_value: 30",
                                   f'scale: 0.25 crop_size: 4 mean_file: "{tmp_path / "mean.binaryproto"}"')):
        text = (f'layer {{ name: "d{k}" type: "Data" top: "data" top: "label" transform_param {{ {transform} }} '
                f'data_param {{ source: "{tmp_path / "db"}" backend: LMDB batch_size: 3 }} }}')
        (tmp_path / "net.prototxt").write_text(text)
        net = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST)
        net.forward()
        layer = netio.parse_net_text(text).layer[0]
        pre = preprocess.Preprocess.from_transform_param(layer, net.blobs["data"].data.shape)
        src = data.open_source(str(tmp_path / "db"))
        x, labels = next(src.batches(pre, 3))
        np.testing.assert_allclose(x, net.blobs["data"].data, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(labels, net.blobs["label"].data.astype(int))
        del net


@pytest.mark.caffe
def test_matches_caffes_image_data_layer(caffe, tmp_path):
    """ImageData (OpenCV decoding, BGR) on PNG files, colour and gray, equals our list-file source."""
    save(tmp_path / "a.png", rgb(1, 6, 7))
    save(tmp_path / "b.png", rgb(2, 6, 7)[:, :, :1])   # a gray file: OpenCV repeats it over B, G, R
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'a.png'} 4\n{tmp_path / 'b.png'} 2\n")
    text = ('layer { name: "img" type: "ImageData" top: "data" top: "label" transform_param { scale: 2 crop_size: 5 '
            f'mean_value: 1 mean_value: 2 mean_value: 3 }} image_data_param {{ source: "{tmp_path / "list.txt"}" '
            'batch_size: 2 } }')
    (tmp_path / "net.prototxt").write_text(text)
    net = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST)
    net.forward()
    pre = preprocess.Preprocess.from_transform_param(netio.parse_net_text(text).layer[0], net.blobs["data"].data.shape)
    x, labels = next(data.open_source(str(tmp_path / "list.txt")).batches(pre, 2))
    np.testing.assert_allclose(x, net.blobs["data"].data, rtol=0, atol=1e-5)
    assert list(labels) == [4, 2]


def test_a_new_source_is_one_class():
    """Adding an image source is a Source subclass (docs/architecture.md): __len__, image
    and label are all the batching, preprocessing and training code needs."""
    class Checkerboards(data.Source):
        name = "checkerboards"
        has_labels = True

        def __len__(self):
            return 6

        def image(self, i):
            board = (np.indices((8, 8)).sum(axis=0) + i) % 2 * 255
            return board.astype(np.uint8)[:, :, None]

        def label(self, i):
            return i % 2

    pre = preprocess.Preprocess.defaults((1, 1, 8, 8))
    batches = list(Checkerboards().batches(pre, 4))
    assert [x.shape for x, _ in batches] == [(4, 1, 8, 8), (2, 1, 8, 8)]
    assert batches[0][1].tolist() == [0, 1, 0, 1]
    assert batches[0][0][0, 0, 0, 0] == 0 and batches[0][0][1, 0, 0, 0] == pytest.approx(255 / 256)
