"""What the tests share: paths, prototxt text builders, small nets, random weights, the CLI runner
and a fake timing device.

tests/ is on sys.path (setup.cfg: ``pythonpath = tests``), so every test module, in whatever
sub-folder, imports these as ``from helpers import ...``; no test imports another test module.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from deeprebirth.caffe import netio
from deeprebirth.caffe import proto as pb
from deeprebirth.caffe.phase import filter_phase
from deeprebirth.cli import main
from deeprebirth.graph.dag import Graph
from deeprebirth.graph.model import Model
from deeprebirth.runtime import pycaffe
from deeprebirth.runtime.devices.base import Device, Memory, Session

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
DATA = TESTS / "data"                # fork nets (DenseNet-style, MobileNet-SSD-style)
STAND_IN = TESTS / "stand_in"        # stand-in adb, ssh and scp for the device tests
SHARED_MODELS = Path(os.environ.get("DEEPREBIRTH_SHARED_MODELS", ROOT.parent / "shared" / "models"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Blob memory of the public GoogLeNet at batch 1 (what merging and pushing must leave alone).
GOOGLENET_MEMORY_B1 = 27_342_336


# ----------------------------------------------------------------------------------------------
# The CLI


def run(*args, catch_exceptions: bool = False):
    """`rebirth ARGS...` through click's CliRunner (each argument str()-ed); an exception that
    escapes the command is raised in the test unless ``catch_exceptions``."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=catch_exceptions)


PROGRESS_LINE = re.compile(r"^rebirth: (?!error:|warning:)[a-z-]+(: | (\d+% \(|\d+ \S+ so far \())")
"""cli/progress.py's lines without a terminal (a slow machine shows them), and what a long command
says it will do (``rebirth: recover: ...``, a run's plan): not part of a message."""


def error_line(result, code: int | None = 1, stream: str = "output", prefix: str | None = "rebirth: error: ") -> str:
    """The one line a failed command printed: exit code ``code`` (None: any but 0), exactly one
    line on ``stream`` ("output": stdout and stderr as a user sees them, or "stderr"), starting
    with ``prefix`` (None: any start), and no traceback."""
    if code is None:
        assert result.exit_code != 0, result.output
    else:
        assert result.exit_code == code, result.output
    text = getattr(result, stream)
    lines = [x for x in text.strip().splitlines() if not PROGRESS_LINE.match(x)]
    assert len(lines) == 1, text
    if prefix is not None:
        assert lines[0].startswith(prefix), text
    assert "Traceback" not in result.output, result.output
    return lines[0]


# ----------------------------------------------------------------------------------------------
# Prototxt text, one layer a line


def dims_text(dims) -> str:
    return " ".join(f"dim: {d}" for d in dims)


def input_layer(dims, name: str = "data") -> str:
    return f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ {dims_text(dims)} }} }} }}\n'


def layer(name, kind, bottoms, top=None, extra="") -> str:
    """Any layer: ``bottoms`` a list of blobs, ``top`` defaults to ``name``, ``extra`` its fields."""
    bs = " ".join(f'bottom: "{b}"' for b in bottoms)
    return f'layer {{ name: "{name}" type: "{kind}" {bs} top: "{top or name}" {extra} }}\n'


def conv(name, bottom, n=4, k=1, pad=0, stride=1, top=None, extra="", bias=True, kind="Convolution") -> str:
    """A convolution (``kind``: or a Deconvolution); a field given as None is left out."""
    fields = [f"{key}: {value}" for key, value in
              (("num_output", n), ("kernel_size", k), ("pad", pad), ("stride", stride)) if value is not None]
    if not bias:
        fields.append("bias_term: false")
    if extra:
        fields.append(extra)
    return (f'layer {{ name: "{name}" type: "{kind}" bottom: "{bottom}" top: "{top or name}" '
            f'convolution_param {{ {" ".join(fields)} }} }}\n')


def relu(name, bottom, top=None, slope=None) -> str:
    """A ReLU, in place unless ``top`` is given; ``slope``: a leaky one."""
    p = f" relu_param {{ negative_slope: {slope} }}" if slope is not None else ""
    return f'layer {{ name: "{name}" type: "ReLU" bottom: "{bottom}" top: "{top or bottom}"{p} }}\n'


def pool(name, bottom, k=3, stride=2, pad=0, method="MAX", top=None, extra="") -> str:
    return (f'layer {{ name: "{name}" type: "Pooling" bottom: "{bottom}" top: "{top or name}" '
            f'pooling_param {{ pool: {method} kernel_size: {k} stride: {stride} pad: {pad} {extra} }} }}\n')


def concat(name, bottoms, top=None, axis=None) -> str:
    bs = " ".join(f'bottom: "{b}"' for b in bottoms)
    p = f" concat_param {{ axis: {axis} }}" if axis is not None else ""
    return f'layer {{ name: "{name}" type: "Concat" {bs} top: "{top or name}"{p} }}\n'


def lrn(name, bottom, top=None) -> str:
    return (f'layer {{ name: "{name}" type: "LRN" bottom: "{bottom}" top: "{top or name}" '
            f'lrn_param {{ local_size: 5 alpha: 0.0001 beta: 0.75 }} }}\n')


def bn(name, bottom, top, extra="") -> str:
    return f'layer {{ name: "{name}" type: "BatchNorm" bottom: "{bottom}" top: "{top}" {extra} }}\n'


def scale(name, bottom, top, bias=True, extra="") -> str:
    return (f'layer {{ name: "{name}" type: "Scale" bottom: "{bottom}" top: "{top}" '
            f'scale_param {{ bias_term: {str(bias).lower()} {extra} }} }}\n')


def dropout(name, blob) -> str:
    return f'layer {{ name: "{name}" type: "Dropout" bottom: "{blob}" top: "{blob}" }}\n'


def ip(name, bottom, n=5) -> str:
    return (f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{name}" '
            f'inner_product_param {{ num_output: {n} }} }}\n')


def net_of(body: str, dims) -> "pb.NetParameter":
    """The net ``body`` (prototxt text) fed by an Input layer "data" of shape ``dims``."""
    return netio.parse_net_text(f'name: "t" {input_layer(dims)}' + body)


# ----------------------------------------------------------------------------------------------
# Nets, models and weights


def get_layer(net, name):
    return next(lr for lr in net.layer if lr.name == name)


def types(net) -> list[str]:
    return [lr.type for lr in net.layer]


def names(net) -> list[str]:
    return [lr.name for lr in net.layer]


def with_weights(net, seed=0, source="<model>", weights_source=None) -> Model:
    """A Model of ``net`` with random weights (pycaffe.random_weights: realistic BatchNorm stats)."""
    return Model(net, pycaffe.random_weights(Graph(net), seed), source, weights_source)


def text_model(text: str, source: str = "<test>", seed: int | None = None) -> Model:
    """A Model of prototxt ``text`` read as file ``source``; with random weights of ``seed``, or none."""
    net = netio.parse_net_text(text, source)
    m = Model(net, source=source)
    if seed is not None:
        m.weights = pycaffe.random_weights(Graph(net), seed=seed)
    return m


def write_random_weights(net, path: Path, seed: int = 0, drop=()) -> "netio.Weights":
    """A caffemodel of random weights for ``net`` at ``path`` (without the layers in ``drop``);
    returns the weights."""
    weights = pycaffe.random_weights(Graph(net), seed=seed)
    for name in drop:
        weights.pop(name)
    netio.write_weights(netio.with_weights(net, weights), path)
    return weights


def googlenet(shared_models: Path, batch: int | None = None, weights: bool = False) -> Model:
    """The public BVLC GoogLeNet deploy net (TEST phase), at ``batch`` (None: as published, 10),
    with random weights if ``weights``."""
    net = filter_phase(netio.read_net(shared_models / "bvlc_googlenet" / "deploy.prototxt"), pb.TEST)
    if batch is not None:
        net.layer[0].input_param.shape[0].dim[0] = batch
    return with_weights(net) if weights else Model(net)


# A GoogLeNet stem (conv1, pool1, norm1, conv2, norm2, pool2) and a classifier, 64x64 input.
STEM = """name: "stem"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 64 dim: 64 } } }
layer { name: "conv1/7x7_s2" type: "Convolution" bottom: "data" top: "conv1/7x7_s2"
        convolution_param { num_output: 8 kernel_size: 7 pad: 3 stride: 2 } }
layer { name: "conv1/relu_7x7" type: "ReLU" bottom: "conv1/7x7_s2" top: "conv1/7x7_s2" }
layer { name: "pool1/3x3_s2" type: "Pooling" bottom: "conv1/7x7_s2" top: "pool1/3x3_s2"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "pool1/norm1" type: "LRN" bottom: "pool1/3x3_s2" top: "pool1/norm1" lrn_param { local_size: 5 } }
layer { name: "conv2/3x3" type: "Convolution" bottom: "pool1/norm1" top: "conv2/3x3"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "conv2/relu_3x3" type: "ReLU" bottom: "conv2/3x3" top: "conv2/3x3" }
layer { name: "conv2/norm2" type: "LRN" bottom: "conv2/3x3" top: "conv2/norm2" lrn_param { local_size: 5 } }
layer { name: "pool2/3x3_s2" type: "Pooling" bottom: "conv2/norm2" top: "pool2/3x3_s2"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool2/3x3_s2" top: "fc" inner_product_param { num_output: 10 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""

# A blob ("pool") feeding two layers makes Caffe insert a Split layer of its own.
TINY = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 3 dim: 12 dim: 12 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc_a" type: "InnerProduct" bottom: "pool" top: "fc_a" inner_product_param { num_output: 5 } }
layer { name: "fc_b" type: "InnerProduct" bottom: "pool" top: "fc_b" inner_product_param { num_output: 3 } }
layer { name: "cat" type: "Concat" bottom: "fc_a" bottom: "fc_b" top: "cat" }
layer { name: "prob" type: "Softmax" bottom: "cat" top: "prob" }
"""


# ----------------------------------------------------------------------------------------------
# LMDB of Caffe Datums


def write_lmdb(path: Path, records: dict[bytes, bytes]) -> None:
    import lmdb
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for k, v in records.items():
            txn.put(k, v)
    env.close()


def datum(arr_hwc, label: int, bgr: bool = True) -> bytes:
    """A raw Datum of an H x W x C uint8 image (C x H x W pixels); ``bgr``: a colour image is
    stored blue first, as convert_imageset does."""
    chw = (arr_hwc[:, :, ::-1] if bgr and arr_hwc.shape[2] == 3 else arr_hwc).transpose(2, 0, 1)
    d = pb.Datum(channels=chw.shape[0], height=chw.shape[1], width=chw.shape[2],
                 data=np.ascontiguousarray(chw).tobytes(), label=label)
    return d.SerializeToString()


# ----------------------------------------------------------------------------------------------
# A fake timing device: records the order of forward passes


class FakeSession(Session):
    def __init__(self, label, log):
        self.label, self.log = label, log
        self.layer_names, self.layer_types = ["in", "conv"], ["Input", "Convolution"]

    def forward(self):
        self.log.append(self.label)

    def forward_layer(self, index):
        self.log.append(f"{self.label}{index}")

    def memory(self):
        return Memory(blob_bytes=1)


class FakeDevice(Device):
    name = "fake"

    def __init__(self):
        self.log = []

    def open(self, model, seed=0):
        return FakeSession(model, self.log)


# ----------------------------------------------------------------------------------------------
# Small nets several test modules use

BN_NET = """name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 12 dim: 12 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "sc1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def bn_files(tmp_path: Path, text: str = BN_NET, weights_of: str | None = None, drop=()) -> tuple[Path, Path]:
    """``text`` as tmp_path/net.prototxt and random weights (of ``weights_of``, less ``drop``) as
    tmp_path/net.caffemodel."""
    proto = tmp_path / "net.prototxt"
    proto.write_text(text)
    caffemodel = tmp_path / "net.caffemodel"
    write_random_weights(netio.parse_net_text(weights_of or text), caffemodel, seed=0, drop=drop)
    return proto, caffemodel


# A tiny net, its train_val, and a `rebirth slim` output of it with image folders (finetune, hints)
FT_DEPLOY = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 12 dim: 12 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc" inner_product_param { num_output: 3 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""
FT_TRAIN_VAL = """name: "tiny"
layer { name: "data" type: "ImageData" top: "data" top: "label" include { phase: TRAIN }
        transform_param { scale: 0.00390625 mirror: true } image_data_param { source: "train.txt" batch_size: 6 } }
layer { name: "data" type: "ImageData" top: "data" top: "label" include { phase: TEST }
        transform_param { scale: 0.00390625 } image_data_param { source: "val.txt" batch_size: 6 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc" inner_product_param { num_output: 3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "fc" bottom: "label" top: "accuracy" include { phase: TEST } }
"""


def make_slimmed(d: Path) -> Path:
    """In ``d``: tiny.prototxt/.caffemodel, tv.prototxt, its slim output ``slim`` (conv1 + pool1
    -> a stride-2 conv1, regenerated), labelled ``train``/``val`` folders (class = the dominant
    colour channel) and an unlabelled ``plain`` folder."""
    (d / "tiny.prototxt").write_text(FT_DEPLOY)
    (d / "tv.prototxt").write_text(FT_TRAIN_VAL)
    write_random_weights(netio.parse_net_text(FT_DEPLOY), d / "tiny.caffemodel", seed=1)
    res = run("slim", d / "tiny.prototxt", "-w", d / "tiny.caffemodel", "--train-val", d / "tv.prototxt",
              "-o", d / "slim")
    assert res.exit_code == 0, res.output
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 4)):
        for cls in range(3):   # class = the dominant colour channel
            for i in range(n):
                img = rng.integers(0, 80, size=(12, 12, 3), dtype=np.uint8)
                img[:, :, cls] += 150
                folder = d / split / f"c{cls}"
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(folder / f"{i}.png")
                if split == "train":
                    (d / "plain").mkdir(exist_ok=True)
                    Image.fromarray(img).save(d / "plain" / f"{cls}_{i}.png")
    return d


