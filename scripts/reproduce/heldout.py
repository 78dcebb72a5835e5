#!/usr/bin/env python
"""Train the held-aside Fashion-MNIST nets with ``caffe train`` (issue 31): nets trained
*differently* from the shipped teachers, which nobody looked at while choosing `rebirth`'s
defaults, on which `rebirth accelerate` is checked.

    nice -n 10 .venv/bin/python scripts/reproduce/heldout.py [--work WORK] [--which NAME ...]
                                                             [--iters N] [--threads 1]
    .venv/bin/python scripts/reproduce/heldout.py --probe 30 --which NAME   # seconds per iteration
    .venv/bin/python scripts/reproduce/heldout.py --write-models            # the prototxts only

Duration (one OpenBLAS thread, the 2-core machine shared with other jobs, load average 3-8):
16-39 minutes of `caffe train` a net at its default iterations, about 1 h 20 min for the first
three (models/heldout/README.md has each one's), plus a minute or two each for the data stage, the
BatchNorm statistics and the evaluation. The iteration counts were chosen from ``--probe 30`` (0.47,
0.43 and 0.21 s an iteration on an idle machine), aiming at 20-40 minutes a net; under the other
jobs' load the runs went 1.5-1.7x slower than the probe. ``googlenet_b`` keeps the short 3,000
iterations on purpose (0.14 s an iteration: 7 minutes). Every net gets its own recipe, none of them
the teachers' (sigmoid warm-up then poly, SGD, batch 64, base_lr 0.03/0.1):

* ``alexnet_lrn``: conv 7x7/2 (32) + ReLU + LRN + max pool, conv 5x5 (64) + ReLU + LRN + max pool,
  three 3x3 convs (96, 96, 64) + ReLU, max pool, fc 256 + ReLU + Dropout 0.5, fc 10; no BatchNorm.
  SGD, momentum 0.9, ``step`` (x0.1 every 40 % of the run), base_lr 0.01, weight decay 1e-4,
  batch 128; random shifts, no mirror.
* ``mobilenet_bn``: MobileNet-v1 style: conv 3x3/2 (16) + BN + Scale + ReLU, six depthwise-separable
  blocks (depthwise 3x3, ``group`` = channels, + BN + Scale + ReLU; pointwise 1x1 + BN + Scale +
  ReLU) to 32, 64 (/2), 64, 128 (/2), 128, 256 (/2) channels; global average pooling, fc 10.
  Adam (0.9, 0.999), ``multistep`` (x0.2 at 60 % and 85 %), base_lr 0.002, weight decay 4e-5,
  batch 96; random shifts and mirror.
* ``resnet_bn_b``: a ResNet unlike models/fmnist_resnet.prototxt: stem conv 3x3/1 (16) + BN +
  Scale + ReLU at 64x64, max pool 3x3/2, three stages of two basic blocks at widths 24 (/2), 48
  (/2), 96 (/2) with 1x1 projection shortcuts, global average pooling, fc 10. SGD with Nesterov
  momentum 0.9, ``exp`` (to 1 % of base_lr at the end), base_lr 0.05, weight decay 2e-4,
  batch 48; the unpadded 64x64 images (no shift), mirror.
* ``googlenet_b``: models/fmnist_googlenet.prototxt's architecture trained from scratch with
  another recipe and seed: SGD, momentum 0.9, ``inv`` (gamma 1e-3, power 0.75), base_lr 0.02,
  weight decay 2e-4, batch 32, 3,000 iterations; random shifts, no mirror.
* ``googlenet_ls``: the same architecture trained with label smoothing 0.1 (stock Caffe layers:
  SoftmaxWithLoss at 0.9, and Softmax, Log, Reduction MEAN at -0.1, smoothing_layers), which
  makes a less confident teacher, the case where the label-free estimate of the top-1 lost
  (evaluate.expected_drop) could err low: SGD, momentum 0.9, ``poly`` (power 1), base_lr 0.05,
  weight decay 5e-4, batch 64, 2,500 iterations; random shifts and mirror.

The data are teachers.py's data stage (with fmnist.py's readers and LMDB writer): the 60,000
training images resized to 64x64 and padded to 72x72 (random 64x64 crops: shifts of up to 4 px),
plus the same images unpadded (``resnet_bn_b``), and the 10,000 test images at 64x64, in WORK
(default out/heldout, git-ignored). Preprocessing: mean 73, scale 1/255 (the TEST data layer of
each train_val, which `rebirth eval --train-val` reads).

Resumable: ``caffe train`` snapshots every ``--snapshot`` iterations into WORK/NAME/snap/, and a
rerun of the same command resumes from the newest solverstate (teachers.py's ``run_caffe``). At the
end, BatchNorm statistics are recomputed over 10,000 training images (teachers.py's
``recalibrate_bn``), the weights are evaluated with `rebirth eval` on the 10,000 test images and
copied to models/heldout/NAME/weights.caffemodel; `rebirth inspect` and `rebirth slim` are run on
the result (their outcome recorded), and models/heldout/README.md is rewritten from
WORK/*/result.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")
import fmnist  # sibling modules (Python puts the script's folder first on sys.path)
import teachers
from steps import ROOT, rebirth

from deeprebirth import outputs
from deeprebirth.caffe import netio
from deeprebirth.caffe import proto as pb
from deeprebirth.transforms import trainfiles

HELDOUT = ROOT / "models" / "heldout"
MADE_BY = "scripts/reproduce/heldout.py"
SIZE = fmnist.SIZE
CLASSES = teachers.CLASSES
TEST_BATCH = teachers.TEST_BATCH
PADDED = teachers.TRAIN_LMDB          # 72x72: random 64x64 crops shift the image by up to 4 px
UNPADDED = fmnist.TRAIN_LMDB          # 64x64


def log(msg: str) -> None:
    print(f"[heldout {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# the nets (deploy prototxts, in scripts/gen_models.py's builders)


def _gm():
    return teachers.gen_models()


def build_alexnet_lrn() -> "pb.NetParameter":
    """AlexNet's pattern for 1x64x64: two conv + ReLU + LRN + max-pool stages, three 3x3 convs,
    a pool, fc6 256 + ReLU + Dropout, fc7 10."""
    gm = _gm()
    net = pb.NetParameter(name="HeldoutAlexNetLRN")
    x = gm.input_layer(net, "data", (1, 1, SIZE, SIZE))
    x = gm.conv_relu(net, "conv1", "relu1", x, 32, 7, stride=2, pad=3)           # 32x32
    x = gm.lrn(net, "norm1", x)
    x = gm.pool(net, "pool1", x, "MAX", 3, stride=2)                              # 16x16
    x = gm.conv_relu(net, "conv2", "relu2", x, 64, 5, pad=2)
    x = gm.lrn(net, "norm2", x)
    x = gm.pool(net, "pool2", x, "MAX", 3, stride=2)                              # 8x8
    x = gm.conv_relu(net, "conv3", "relu3", x, 96, 3, pad=1)
    x = gm.conv_relu(net, "conv4", "relu4", x, 96, 3, pad=1)
    x = gm.conv_relu(net, "conv5", "relu5", x, 64, 3, pad=1)
    x = gm.pool(net, "pool5", x, "MAX", 3, stride=2)                              # 4x4
    x = gm.fc(net, "fc6", x, 256)
    gm.relu(net, "relu6", x)
    gm.dropout(net, "drop6", x, 0.5)
    x = gm.fc(net, "fc7", x, CLASSES)
    gm.softmax(net, "prob", x)
    return net


MOBILENET_BLOCKS = ((32, 1), (64, 2), (64, 1), (128, 2), (128, 1), (256, 2))   # (pointwise out, dw stride)


def build_mobilenet_bn(stem: int = 16, blocks=MOBILENET_BLOCKS) -> "pb.NetParameter":
    """MobileNet-v1's pattern for 1x64x64: conv1 3x3/2 + BN + Scale + ReLU, depthwise-separable
    blocks ``convN/dw`` (3x3, group = channels) and ``convN/sep`` (1x1), each + BN + Scale + ReLU,
    global average pooling, fc 10 (MobileNet-Caffe's naming)."""
    gm = _gm()
    net = pb.NetParameter(name="HeldoutMobileNetBN")

    def unit(name, bottom, out, kernel, stride=1, group=None):
        y = gm.conv(net, name, bottom, out, kernel, stride=stride if stride != 1 else None,
                    pad=kernel // 2 if kernel > 1 else None, group=group, bias_term=False)
        gm.batchnorm_scale(net, f"{name}/bn", f"{name}/scale", y)
        return gm.relu(net, f"{name}/relu", y)

    x = gm.input_layer(net, "data", (1, 1, SIZE, SIZE))
    x = unit("conv1", x, stem, 3, stride=2)                                       # 32x32
    channels = stem
    for i, (out, stride) in enumerate(blocks, start=2):
        x = unit(f"conv{i}/dw", x, channels, 3, stride=stride, group=channels)
        x = unit(f"conv{i}/sep", x, out, 1)
        channels = out
    x = gm.pool(net, "pool6", x, "AVE", global_pooling=True)
    x = gm.fc(net, "fc7", x, CLASSES)
    gm.softmax(net, "prob", x)
    return net


def build_resnet_bn_b() -> "pb.NetParameter":
    """A ResNet unlike the shipped teacher: conv1 3x3/1 (16) + BN + Scale + ReLU at 64x64, max pool
    3x3/2 (32x32), stages 2-4 of two basic blocks at 24, 48, 96 channels, each stage's first block
    with stride 2 and a 1x1 projection (16x16, 8x8, 4x4); global average pooling, fc 10."""
    gm = _gm()
    net = pb.NetParameter(name="HeldoutResNetB")
    x = gm.input_layer(net, "data", (1, 1, SIZE, SIZE))
    x = gm.conv_bn(net, "conv1", x, 16, 3, stride=1, pad=1, bias_term=None)
    x = gm.pool(net, "pool1", x, "MAX", 3, stride=2)
    for stage, width in zip((2, 3, 4), (24, 48, 96)):
        for b in range(2):
            name = f"res{stage}{chr(ord('a') + b)}"
            stride = 2 if b == 0 else 1
            shortcut = x
            if b == 0:
                shortcut = gm.conv_bn(net, f"{name}_branch1", x, width, 1, stride=stride, with_relu=False)
            y = gm.conv_bn(net, f"{name}_branch2a", x, width, 3, stride=stride, pad=1)
            y = gm.conv_bn(net, f"{name}_branch2b", y, width, 3, pad=1, with_relu=False)
            x = gm.relu(net, f"{name}_relu", gm.eltwise_sum(net, name, [shortcut, y]))
    x = gm.pool(net, "pool5", x, "AVE", global_pooling=True)
    x = gm.fc(net, "fc10", x, CLASSES)
    gm.softmax(net, "prob", x)
    return net


def _fmnist_googlenet(name: str) -> "pb.NetParameter":
    """models/fmnist_googlenet.prototxt's architecture, unchanged, under another net name."""
    net = netio.read_net(ROOT / "models" / "fmnist_googlenet.prototxt")
    net.name = name
    return net


def build_googlenet_b() -> "pb.NetParameter":
    return _fmnist_googlenet("HeldoutGoogLeNetB")


def build_googlenet_ls() -> "pb.NetParameter":
    """Trained with label smoothing (smoothing_layers)."""
    return _fmnist_googlenet("HeldoutGoogLeNetLS")


def smoothing_layers(logits: str, eps: float, taken: set[str]) -> list["pb.LayerParameter"]:
    """Label smoothing in stock Caffe layers (TRAIN only): the cross-entropy against
    (1 - eps) one-hot + eps uniform is (1 - eps) CE(label) + eps mean_k(-log p_k). The first term
    is SoftmaxWithLoss at loss_weight 1 - eps (set by the caller); the second Softmax -> Log
    (shift 1e-10 keeps log(0) finite; its gradient there is p * 1/(p + shift) = 0) -> Reduction
    MEAN over every axis (1/(N K) sum log p) at loss_weight -eps."""
    out = []
    for name, kind in (("ls_prob", "Softmax"), ("ls_logp", "Log"), ("ls_uniform", "Reduction")):
        layer = pb.LayerParameter(name=trainfiles.unique_name(name, taken), type=kind)
        layer.bottom.append(out[-1].top[0] if out else logits)
        layer.top.append(layer.name)
        layer.include.add(phase=pb.TRAIN)
        out.append(layer)
    out[1].log_param.shift = 1e-10
    out[2].reduction_param.operation = pb.ReductionParameter.MEAN
    out[2].reduction_param.axis = 0
    out[2].loss_weight.append(-eps)
    return out


# Recipes: the solver fields of each net (``iters`` is the default; the schedule's steps scale with
# the iterations actually run). ``lmdb``: the training LMDB (padded: random shifts), ``mirror``.
NETS = {
    "alexnet_lrn": {
        "build": build_alexnet_lrn, "iters": 3000, "batch": 128, "lmdb": PADDED, "mirror": False,
        "arch": "conv1 7x7/2 (32) + ReLU + LRN + max pool 3x3/2, conv2 5x5 (64) + ReLU + LRN + max pool "
                "3x3/2, conv3-5 3x3 (96, 96, 64) + ReLU, max pool 3x3/2, fc6 256 + ReLU + Dropout 0.5, fc7 10; "
                "no BatchNorm",
        "solver": {"type": "SGD", "base_lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4, "lr_policy": "step",
                   "gamma": 0.1, "stepsize": 0.4},
        "recipe": "SGD, momentum 0.9, weight decay 1e-4, base_lr 0.01, `step` (x0.1 every 40 % of the run), "
                  "batch 128, seed 7; random shifts of up to 4 px, no mirror"},
    "mobilenet_bn": {
        "build": build_mobilenet_bn, "iters": 2000, "batch": 96, "lmdb": PADDED, "mirror": True,
        "arch": "conv1 3x3/2 (16) + BN + Scale + ReLU, 6 depthwise-separable blocks (depthwise 3x3 with "
                "group = channels + BN + Scale + ReLU, pointwise 1x1 + BN + Scale + ReLU) to 32, 64 (/2), 64, "
                "128 (/2), 128, 256 (/2) channels, global average pooling, fc7 10",
        "solver": {"type": "Adam", "base_lr": 0.002, "momentum": 0.9, "momentum2": 0.999, "weight_decay": 4e-5,
                   "lr_policy": "multistep", "gamma": 0.2, "stepvalue": (0.6, 0.85)},
        "recipe": "Adam (0.9, 0.999), weight decay 4e-5, base_lr 0.002, `multistep` (x0.2 at 60 % and 85 % "
                  "of the run), batch 96, seed 11; random shifts of up to 4 px, mirror"},
    "resnet_bn_b": {
        "build": build_resnet_bn_b, "iters": 3000, "batch": 48, "lmdb": UNPADDED, "mirror": True,
        "arch": "conv1 3x3/1 (16) + BN + Scale + ReLU at 64x64, max pool 3x3/2, 3 stages of 2 basic blocks "
                "(3x3 + BN + Scale twice, Eltwise SUM, ReLU) at 24, 48, 96 channels, each stage's first block "
                "stride 2 with a 1x1 projection shortcut, global average pooling, fc10",
        "solver": {"type": "Nesterov", "base_lr": 0.05, "momentum": 0.9, "weight_decay": 2e-4, "lr_policy": "exp",
                   "end_fraction": 0.01},
        "recipe": "SGD with Nesterov momentum 0.9, weight decay 2e-4, base_lr 0.05, `exp` (to 1 % of base_lr "
                  "at the last iteration), batch 48, seed 23; no shift (the unpadded 64x64 images), mirror"},
    "googlenet_b": {
        "build": build_googlenet_b, "iters": 3000, "batch": 32, "lmdb": PADDED, "mirror": False,
        "arch": "models/fmnist_googlenet.prototxt unchanged (GoogLeNet at a quarter width, BatchNorm after "
                "every convolution)",
        "solver": {"type": "SGD", "base_lr": 0.02, "momentum": 0.9, "weight_decay": 2e-4, "lr_policy": "inv",
                   "gamma": 1e-3, "power": 0.75},
        "recipe": "SGD, momentum 0.9, weight decay 2e-4, base_lr 0.02, `inv` (gamma 1e-3, power 0.75), batch 32, "
                  "seed 31; random shifts of up to 4 px, no mirror"},
    "googlenet_ls": {
        "build": build_googlenet_ls, "iters": 2500, "batch": 64, "lmdb": PADDED, "mirror": True,
        "label_smoothing": 0.1,
        "arch": "models/fmnist_googlenet.prototxt unchanged (GoogLeNet at a quarter width, BatchNorm after "
                "every convolution)",
        "solver": {"type": "SGD", "base_lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "lr_policy": "poly",
                   "power": 1.0},
        "recipe": "label smoothing 0.1 (SoftmaxWithLoss at 0.9 + 0.1 x the mean of -log p over the classes: "
                  "Softmax, Log, Reduction), SGD, momentum 0.9, weight decay 5e-4, base_lr 0.05, `poly` (power 1: "
                  "linear to 0), batch 64, seed 43; random shifts of up to 4 px, mirror"},
}
SEEDS = {"alexnet_lrn": 7, "mobilenet_bn": 11, "resnet_bn_b": 23, "googlenet_b": 31, "googlenet_ls": 43}
DEFAULT_NETS = ("alexnet_lrn", "mobilenet_bn", "resnet_bn_b")


def model_dir(name: str) -> Path:
    return HELDOUT / name


def deploy(name: str) -> "pb.NetParameter":
    return NETS[name]["build"]()


def train_val(name: str, data_dir: str, batch: int | None = None) -> "pb.NetParameter":
    """The deploy between two Data layers (TRAIN: the net's LMDB, its mirror, and crop_size 64 on
    the padded one; TEST: the 64x64 test LMDB, batch 100, crop_size 64 = the image itself), its body
    as ``trainfiles.scratch_body`` makes it, SoftmaxWithLoss and top-1/top-5 Accuracy."""
    spec = NETS[name]
    dep = deploy(name)
    net = pb.NetParameter(name=dep.name)
    for source, phase, b in ((spec["lmdb"], pb.TRAIN, batch or spec["batch"]),
                             (teachers.TEST_LMDB, pb.TEST, TEST_BATCH)):
        layer = fmnist.data_layer(Path(data_dir) / source if data_dir else Path(source), phase, b)
        if phase == pb.TRAIN:
            layer.transform_param.mirror = spec["mirror"]
        if phase == pb.TEST or source == PADDED:
            layer.transform_param.crop_size = SIZE
        net.layer.append(layer)
    logits = trainfiles.logits_blob(dep)
    net.layer.extend(trainfiles.scratch_body(dep))
    taken = {layer.name for layer in net.layer}
    losses = trainfiles.loss_layers(logits, "label", taken, CLASSES)
    eps = spec.get("label_smoothing")
    if eps:
        losses[0].loss_weight.append(1.0 - eps)
        losses += smoothing_layers(logits, eps, taken | {layer.name for layer in losses})
    net.layer.extend(losses)
    return net


def write_models(names=tuple(NETS)) -> None:
    """models/heldout/NAME/deploy.prototxt and train_val.prototxt (LMDB paths relative to WORK)."""
    for name in names:
        d = model_dir(name)
        d.mkdir(parents=True, exist_ok=True)
        outputs.atomic_write(d / "deploy.prototxt", f"# Generated by {MADE_BY} --write-models: the held-aside "
                             f"net {name}.\n" + netio.net_to_text(deploy(name)))
        header = [f"Held-aside net {name}: the train_val {MADE_BY} trains (caffe train); LMDBs from its data",
                  f"stage (.venv/bin/python {MADE_BY} --stage data --work WORK), paths relative to WORK.",
                  "Its TEST data layer gives every rebirth command the preprocessing: mean 73, scale 1/255,",
                  "crop_size 64 on the 64x64 test images (the image itself)."]
        outputs.atomic_write(d / "train_val.prototxt", trainfiles.render_net(train_val(name, ""), header))


def solver(name: str, iters: int, snapshot: int, test_interval: int, batch: int | None = None,
           prefix: str | None = None) -> "pb.SolverParameter":
    spec = NETS[name]
    r = dict(spec["solver"])
    s = trainfiles.build_solver(net_file="train_val.prototxt", test_batch=TEST_BATCH,
                                val_images=teachers.TEST_IMAGES, test_interval=test_interval, snapshot=snapshot,
                                snapshot_prefix=prefix or f"snap/{name}",
                                max_iter=iters, display=50, average_loss=50, type=r.pop("type"),
                                base_lr=r.pop("base_lr"), momentum=r.pop("momentum"),
                                weight_decay=r.pop("weight_decay"), lr_policy=r.pop("lr_policy"))
    s.ClearField("stepsize")
    s.ClearField("gamma")
    if s.lr_policy == "step":
        s.gamma = r["gamma"]
        s.stepsize = max(1, round(r["stepsize"] * iters))
    elif s.lr_policy == "multistep":
        s.gamma = r["gamma"]
        s.stepvalue.extend(max(1, round(f * iters)) for f in r["stepvalue"])
    elif s.lr_policy == "exp":
        s.gamma = r["end_fraction"] ** (1.0 / iters)
    elif s.lr_policy == "inv":
        s.gamma = r["gamma"]
        s.power = r["power"]
    elif s.lr_policy == "poly":
        s.power = r["power"]
    if "momentum2" in r:
        s.momentum2 = r["momentum2"]
    s.test_initialization = False
    s.random_seed = SEEDS[name]
    return s


# ----------------------------------------------------------------------------------------------
# seconds per iteration


_STAMP = re.compile(r"^I\d+ (\d\d):(\d\d):(\d\d\.\d+) .*Iteration (\d+)(?: \(.*\))?, loss", re.M)


def probe(name: str, work: Path, iters: int, threads: int | None) -> dict:
    """``iters`` iterations of the net's training in WORK/probe/NAME (no snapshot): seconds per
    iteration from the log's time stamps between the first and the last displayed iteration."""
    out = work / "probe" / name
    shutil.rmtree(out, ignore_errors=True)
    (out / "snap").mkdir(parents=True)
    (out / "train_val.prototxt").write_text(trainfiles.render_net(train_val(name, "../.."), [f"{name}: probe"]))
    s = solver(name, iters, snapshot=0, test_interval=0, prefix="snap/probe")
    s.display = 5
    s.ClearField("test_iter")
    s.ClearField("test_interval")
    s.snapshot_after_train = False
    (out / "solver.prototxt").write_text(trainfiles.render_solver(s))
    teachers.run_caffe(out, "solver.prototxt", None, threads)
    stamps = [(int(m[4]), 3600 * int(m[1]) + 60 * int(m[2]) + float(m[3]))
              for m in _STAMP.finditer((out / "train.log").read_text())]
    (i0, t0), (i1, t1) = stamps[0], stamps[-1]
    t1 += 86400 if t1 < t0 else 0
    res = {"net": name, "iterations": i1 - i0, "seconds_per_iter": round((t1 - t0) / (i1 - i0), 3),
           "batch": NETS[name]["batch"], "threads": threads, "load_average": os.getloadavg()}
    (out / "probe.json").write_text(json.dumps(res, indent=2))
    log(f"{name}: {res['seconds_per_iter']} s/iteration (batch {res['batch']}, iterations {i0}-{i1})")
    return res


# ----------------------------------------------------------------------------------------------
# training, evaluation, checks


def has_batchnorm(name: str) -> bool:
    return any(layer.type == "BatchNorm" for layer in deploy(name).layer)


def evaluate(name: str, weights: Path) -> tuple[dict, list[str]]:
    d = model_dir(name).relative_to(ROOT)
    cmd = ["eval", str(d / "deploy.prototxt"), "--weights", str(weights), "--data", "fashion-mnist:test",
           "--train-val", str(d / "train_val.prototxt"), "--batch", "100"]
    return rebirth(cmd), [".venv/bin/rebirth", *cmd, "--json"]


def check_commands(name: str) -> dict:
    """`rebirth inspect` and `rebirth slim` on the shipped files: {command: "ok" or its error}."""
    d = model_dir(name).relative_to(ROOT)
    dep, w, tv = str(d / "deploy.prototxt"), str(d / "weights.caffemodel"), str(d / "train_val.prototxt")
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for cmd in (["inspect", dep, "-w", w], ["slim", dep, "-w", w, "--train-val", tv, "-o", f"{tmp}/slim"]):
            shown = shlex.join(["rebirth", *cmd]).replace(tmp, "/tmp/x")
            proc = subprocess.run([sys.executable, "-m", "deeprebirth.cli", *cmd], cwd=ROOT, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            msg = (proc.stderr.strip().splitlines() or [""])[-1]
            out[shown] = "ok" if proc.returncode == 0 else f"exit {proc.returncode}: {msg}"
            log(f"{name}: {shown}: {out[shown]}")
    return out


def train(name: str, work: Path, args) -> dict:
    spec = NETS[name]
    out = work / name
    result_file = out / "result.json"
    iters = args.iters or spec["iters"]
    if result_file.exists() and not args.redo:
        res = json.loads(result_file.read_text())
        if res.get("iters") == iters:
            log(f"{name}: done ({result_file}); --redo to evaluate and check again")
            return res
    (out / "snap").mkdir(parents=True, exist_ok=True)
    write_models([name])
    (out / "train_val.prototxt").write_text(trainfiles.render_net(train_val(name, ".."), [
        f"held-aside net {name} ({MADE_BY}); LMDBs in {work}"]))
    s = solver(name, iters, args.snapshot, args.test_interval or iters // 2)
    (out / "solver.prototxt").write_text(trainfiles.render_solver(s, [f"held-aside net {name}: {spec['recipe']}"]))
    final = out / "snap" / f"{name}_iter_{iters}.caffemodel"
    state = teachers.newest_state(out, name)
    if not (final.exists() and state is not None and teachers._iter_of(state) >= iters):
        teachers.run_caffe(out, "solver.prototxt", state, args.threads)
    if not final.exists():
        raise SystemExit(f"{final} is missing after training; see {out}/train.log")
    segs = json.loads((out / "segments.json").read_text()) if (out / "segments.json").exists() else []
    weights, bn_stats = final, None
    dest = model_dir(name) / "weights.caffemodel"
    tests = teachers.caffe_tests((out / "train.log").read_text())
    if has_batchnorm(name):
        weights = teachers.recalibrate_bn(out, name, final, args.bn_batches)
        bn_stats = {"images": args.bn_batches * TEST_BATCH}
        if tests and tests[-1][0] == iters:     # Caffe's TEST pass at the end: the running averages
            bn_stats["running_average_top1"] = tests[-1][1]
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.copyfile(weights, tmp)
    os.replace(tmp, dest)
    ev, eval_cmd = evaluate(name, dest.relative_to(ROOT))
    res = {"net": name, "iters": iters, "batch": spec["batch"], "epochs": round(iters * spec["batch"] / 60_000, 2),
           "arch": spec["arch"], "recipe": spec["recipe"], "solver": spec["solver"],
           "train_seconds": round(sum(g["seconds"] for g in segs if g["rc"] == 0), 1), "segments": segs,
           "caffe_tests": tests, "bn_stats": bn_stats,
           "top1": ev["top1"], "top5": ev["top5"], "eval_images": ev["images"], "eval_cmd": shlex.join(eval_cmd),
           "weights_bytes": dest.stat().st_size, "checks": check_commands(name),
           "script_cmd": f"nice -n 10 .venv/bin/python {MADE_BY} " + shlex.join(sys.argv[1:]),
           "finished": datetime.datetime.now().isoformat(timespec="seconds")}
    probe_file = work / "probe" / name / "probe.json"
    if probe_file.exists():
        res["probe"] = json.loads(probe_file.read_text())
    result_file.write_text(json.dumps(res, indent=2))
    log(f"{name}: top-1 {100 * res['top1']:.2f} %, top-5 {100 * res['top5']:.2f} % -> {dest}")
    return res


# ----------------------------------------------------------------------------------------------
# models/heldout/README.md


def write_readme(work: Path) -> None:
    lines = ["# Held-aside nets",
             "",
             "Fashion-MNIST nets trained *differently* from the shipped teachers (models/TEACHERS.md), on which "
             "`rebirth accelerate` is checked (issue 31). Nobody looked at them while choosing the defaults of "
             "`slim`, `relearn`, `finetune`, `recover`, `plan` or `accelerate`: do not tune a default on them.",
             "",
             f"Made by `{MADE_BY}` (`caffe train`, CPU, one OpenBLAS thread, `nice -n 10`, on a 2-core machine "
             "shared with other jobs; resumable: rerun the same command). Each folder holds `deploy.prototxt`, "
             "`train_val.prototxt` (its TEST data layer gives the preprocessing: mean 73, scale 1/255, the 64x64 "
             "image) and `weights.caffemodel`. Data: Fashion-MNIST's 60,000 training images resized to 64x64 "
             "(bilinear), stored padded to 72x72 for random shifts (or unpadded); evaluated on the 10,000 test images.",
             "",
             "Rebuild (the first three, about 1 h 20 min of `caffe train` here plus a few minutes of evaluation; "
             "`googlenet_b`, 7 minutes, with `--which googlenet_b`; `googlenet_ls`, the one trained with label "
             "smoothing, whose confidence is lower than a plain cross-entropy teacher's, 18 minutes beside a "
             "`make test` run, with `--which googlenet_ls`); `--probe 30` times 30 iterations of each "
             "net instead, which is how the iteration counts were chosen (aiming at 20-40 minutes a net):",
             "",
             "```sh",
             f"nice -n 10 .venv/bin/python {MADE_BY} --threads 1",
             f"nice -n 10 .venv/bin/python {MADE_BY} --threads 1 --which googlenet_b",
             f"nice -n 10 .venv/bin/python {MADE_BY} --threads 1 --which googlenet_ls",
             f".venv/bin/python {MADE_BY} --threads 1 --probe 30",
             "```",
             ""]
    for name in NETS:
        f = work / name / "result.json"
        if not f.exists():
            continue
        r = json.loads(f.read_text())
        m = round(r["train_seconds"] / 60)
        tests = ", ".join(f"{it}: {100 * a:.2f} %" for it, a, _ in r["caffe_tests"]) or "none"
        probe_line = []
        if r.get("probe"):
            p = r["probe"]
            probe_line = [f"* speed measured first: {p['seconds_per_iter']} s an iteration of {p['batch']} "
                          f"({p['iterations']} iterations, load average {p['load_average'][0]:.2f}), "
                          + ("which set the iterations" if name != "googlenet_b" else
                             "after the iterations were set: 3,000, a short schedule on purpose")]
        lines += [f"## {name}", "",
                  f"* architecture: {r['arch']}",
                  f"* recipe: {r['recipe']}",
                  f"* iterations: {r['iters']:,} of batch {r['batch']} ({r['epochs']} epochs)",
                  *probe_line,
                  f"* wall time of `caffe train`: {m // 60} h {m % 60:02d} min ({len(r['segments'])} run(s); "
                  f"{r['train_seconds'] / r['iters']:.2f} s an iteration, Caffe's TEST passes included, with "
                  "other jobs on the cores)",
                  f"* Caffe's TEST passes (top-1{', BatchNorm running averages' if r.get('bn_stats') else ''}): "
                  f"{tests}",
                  *([f"* BatchNorm statistics recomputed at the final weights over {r['bn_stats']['images']:,} "
                     "training images (teachers.py's `recalibrate_bn`)" + (
                         f"; Caffe's TEST pass at the end, with its running averages, gave "
                         f"{100 * r['bn_stats']['running_average_top1']:.2f} %"
                         if "running_average_top1" in r["bn_stats"] else "")] if r.get("bn_stats") else []),
                  f"* weights: {r['weights_bytes'] / 1e6:.2f} MB",
                  f"* **top-1 {100 * r['top1']:.2f} %, top-5 {100 * r['top5']:.2f} %** on the "
                  f"{r['eval_images']:,} test images:",
                  "",
                  "  ```sh",
                  "  " + r["eval_cmd"],
                  "  ```",
                  "",
                  "* checked: " + "; ".join(f"`{c}`: {v}" for c, v in r["checks"].items()),
                  ""]
    outputs.atomic_write(HELDOUT / "README.md", "\n".join(lines).rstrip() + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "heldout",
                    help="work folder: LMDBs, snapshots, logs (default: out/heldout, git-ignored)")
    ap.add_argument("--which", nargs="+", choices=list(NETS), default=list(DEFAULT_NETS),
                    help=f"the nets, in order (default: {' '.join(DEFAULT_NETS)})")
    ap.add_argument("--iters", type=int, help="training iterations of each net chosen (default: each net's; "
                    "the schedule's steps scale with it)")
    ap.add_argument("--snapshot", type=int, default=250, help="snapshot every N iterations")
    ap.add_argument("--test-interval", type=int, help="Caffe TEST pass every N iterations (default: half the run)")
    ap.add_argument("--threads", type=int, help="OPENBLAS_NUM_THREADS for caffe (default: OpenBLAS's)")
    ap.add_argument("--bn-batches", type=int, default=100,
                    help="batches of 100 training images over which BatchNorm statistics are recomputed")
    ap.add_argument("--probe", type=int, metavar="N", help="only time N training iterations of each net chosen")
    ap.add_argument("--stage", choices=["data", "all"], default="all")
    ap.add_argument("--redo", action="store_true", help="evaluate and check again although a result exists "
                    "(training resumes from, or stops at, the snapshots)")
    ap.add_argument("--write-models", action="store_true",
                    help="(re)write models/heldout/NAME/deploy.prototxt and train_val.prototxt and exit")
    args = ap.parse_args(argv)
    if args.write_models:
        write_models(args.which)
        return 0
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    with teachers.locked(args.work / ".data.lock"):
        fmnist.make_lmdbs(args.work, pad=teachers.PAD, train_name=PADDED)
        fmnist.make_lmdbs(args.work, pad=0, train_name=UNPADDED)
    if args.stage == "data":
        return 0
    for name in args.which:
        if args.probe:
            probe(name, args.work, args.probe, args.threads)
            continue
        train(name, args.work, args)
        write_readme(args.work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
