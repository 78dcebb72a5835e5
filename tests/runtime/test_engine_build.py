"""The engine `make install` builds: pycaffe with its data back ends (LMDB, LevelDB, HDF5, OpenCV)
and the `caffe` command-line tools in the virtualenv's bin/. Every input file is written by the
test itself."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import datum, write_lmdb

from deeprebirth.caffe import netio
from deeprebirth.caffe import proto as pb
from deeprebirth.runtime import pycaffe

pytestmark = pytest.mark.caffe
BIN = Path(sys.executable).parent


def net_with(layer_text: str, tmp_path: Path) -> "pb.NetParameter":
    path = tmp_path / "net.prototxt"
    path.write_text(f'name: "reader"\n{layer_text}\n')
    return netio.read_net(path)


def forward(net: "pb.NetParameter") -> dict[str, np.ndarray]:
    caffe_net = pycaffe.CaffeNet(net, phase=pb.TEST)
    caffe_net.net.forward()
    return {k: v.data.copy() for k, v in caffe_net.net.blobs.items()}


def images(n=4, h=6, w=5, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def image_list(folder: Path, pics: np.ndarray, labels) -> Path:
    """PNG files of ``pics`` and a Caffe list file 'name label' naming them."""
    from PIL import Image

    lines = []
    for i, (im, label) in enumerate(zip(pics, labels)):
        Image.fromarray(im).save(folder / f"p{i}.png")
        lines.append(f"p{i}.png {label}")
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    return folder / "list.txt"


def test_data_layer_reads_an_lmdb(caffe, tmp_path):
    pics = images()
    db = tmp_path / "db"
    write_lmdb(db, {f"{i:05d}".encode(): datum(im, 10 + i, bgr=False) for i, im in enumerate(pics)})
    net = net_with(f'''layer {{ name: "data" type: "Data" top: "data" top: "label"
      transform_param {{ scale: 0.5 }} data_param {{ source: "{db}" backend: LMDB batch_size: 4 }} }}''', tmp_path)
    blobs = forward(net)
    assert np.allclose(blobs["data"], pics.transpose(0, 3, 1, 2) * 0.5)
    assert list(blobs["label"]) == [10, 11, 12, 13]


def test_imagedata_layer_reads_a_list_of_images(caffe, tmp_path):
    pics = images(3, 7, 9, seed=1)
    image_list(tmp_path, pics, range(3))
    net = net_with(f'''layer {{ name: "data" type: "ImageData" top: "data" top: "label"
      image_data_param {{ source: "{tmp_path / 'list.txt'}" root_folder: "{tmp_path}/" batch_size: 3 }} }}''', tmp_path)
    blobs = forward(net)
    # OpenCV decodes to BGR: channel 0 is the image's blue.
    assert np.array_equal(blobs["data"], pics[:, :, :, ::-1].transpose(0, 3, 1, 2).astype(np.float32))
    assert list(blobs["label"]) == [0, 1, 2]


def test_hdf5data_layer_reads_an_hdf5_file(caffe, tmp_path):
    import h5py  # the test extra
    x = np.random.default_rng(2).normal(size=(5, 2, 3, 3)).astype(np.float32)
    y = np.arange(5, dtype=np.float32)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["data"] = x
        f["label"] = y
    (tmp_path / "h5.txt").write_text(f"{tmp_path / 'd.h5'}\n")
    net = net_with(f'''layer {{ name: "data" type: "HDF5Data" top: "data" top: "label"
      hdf5_data_param {{ source: "{tmp_path / 'h5.txt'}" batch_size: 5 }} }}''', tmp_path)
    blobs = forward(net)
    assert np.array_equal(blobs["data"], x) and np.array_equal(blobs["label"], y)


def test_caffe_tool_times_a_small_net(tmp_path):
    caffe_bin = BIN / "caffe"
    assert caffe_bin.exists(), "make install puts the caffe tool in the virtualenv's bin/"
    (tmp_path / "small.prototxt").write_text('''name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
''')
    proc = subprocess.run([str(caffe_bin), "time", "-model", "small.prototxt", "-iterations", "2"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, GLOG_logtostderr="1", GLOG_minloglevel="0"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Average Forward pass" in proc.stderr and "conv" in proc.stderr


def test_convert_imageset_writes_an_lmdb_our_sources_read(caffe, tmp_path):
    from deeprebirth.learning import sources as data

    pics = images(3, 8, 8, seed=3)
    image_list(tmp_path, pics, [0, 1, 0])
    tool = BIN / "convert_imageset"
    assert tool.exists() and shutil.which(str(tool))
    proc = subprocess.run([str(tool), f"{tmp_path}/", str(tmp_path / "list.txt"), str(tmp_path / "db")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    src = data.open_source(str(tmp_path / "db"))
    assert len(src) == 3 and [src.label(i) for i in range(3)] == [0, 1, 0]
    assert np.array_equal(src.image(1), pics[1])
