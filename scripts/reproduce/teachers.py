#!/usr/bin/env python
"""Train the two Fashion-MNIST teachers with ``caffe train`` (issue 18, part 1).

    .venv/bin/python scripts/reproduce/teachers.py [--work WORK] [--which googlenet|resnet|both]
                                                   [--iters N] [--threads T] [--stage data|all]
    .venv/bin/python scripts/reproduce/teachers.py --write-models    # (re)write the ResNet prototxts

Duration: hours of `caffe train` on one core: GoogLeNet about 0.4 s an iteration (its default
12,000 about 1.3 h; the shipped weights had 40,000, about 4 h 10 min), ResNet about 1 h for its
9,000; the data stage alone about a minute.

* ``googlenet``: models/fmnist_googlenet.prototxt (GoogLeNet's shape at a quarter width, the
  teacher of scripts/reproduce/table3.py), its architecture unchanged.
* ``resnet``: models/fmnist_resnet.prototxt, a small ResNet built here (``build_fmnist_resnet``,
  written by ``--write-models``), 1x64x64 input like the other: conv1 5x5/2 (32) + BatchNorm +
  Scale + ReLU, max pooling 3x3/2 to 16x16, three stages of basic blocks (two 3x3 convolutions +
  BatchNorm + Scale each, Eltwise SUM): 2 blocks of 32 channels at 16x16, 1 of 64 at 8x8, 1 of 128
  at 4x4, with 1x1 stride-2 projection shortcuts where the channel count changes; global average
  pooling, a 10-way InnerProduct.

Both read the same data (the ``data`` stage, with the readers and LMDB writer of the sibling
module fmnist.py): the 60,000 training images resized to 64x64 (Pillow bilinear) and padded with 4 black
pixels to 72x72; the 10,000 test images resized to 64x64. Preprocessing (the train_val data
layers, models/fmnist_*_train_val.prototxt): mean 73, scale 1/255, ``crop_size: 64``; in TRAIN a
random crop (shifts of up to +-4 pixels) and a random mirror, in TEST the centre crop, which is
the resized 64x64 image itself: exactly what ``rebirth eval --data fashion-mnist:test --train-val
...`` feeds the deploy net (28x28 -> 64x64 bilinear, no shift).

Schedule (SGD, momentum 0.9, weight decay 5e-4 (none on BatchNorm/Scale), batch 64): a warm-up of
``--warmup`` iterations (``lr_policy: "sigmoid"``, base_lr/50 -> base_lr), then ``poly`` with
power 1 (linear decay to 0 at ``--iters``), resumed from the warm-up's last solverstate (Caffe
has no warm-up policy of its own, so these are two solver files).

Resumable: ``caffe train`` snapshots every ``--snapshot`` iterations into WORK/NAME/snap/ and a
rerun resumes from the newest solverstate (``-snapshot``), with the solver of the phase it is in.
When the run reaches ``--iters``, the final weights are evaluated with ``rebirth eval`` on the
10,000 test images; only then are they written to models/fmnist_NAME.caffemodel (a temporary file
and a rename; only when they beat the weights already there, unless ``--force``) and
models/TEACHERS.md is rewritten from WORK/*/result.json.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")
import fmnist  # the sibling module: Fashion-MNIST readers, LMDB writer, data layer
from steps import ROOT, rebirth

from deeprebirth import outputs
from deeprebirth.caffe import netio
from deeprebirth.caffe import proto as pb
from deeprebirth.runtime.pycaffe import caffe_tool
from deeprebirth.transforms import trainfiles

MODELS = ROOT / "models"
MADE_BY = "scripts/reproduce/teachers.py"
SIZE = fmnist.SIZE                  # 64: the net input
PAD = 4                             # training images are stored 72x72; random 64x64 crops shift them
TRAIN_LMDB = f"fmnist_train_pad{SIZE + 2 * PAD}_lmdb"
TEST_LMDB = fmnist.TEST_LMDB        # 64x64
TEST_BATCH = 100
TEST_IMAGES = 10_000
CLASSES = 10


def log(msg: str) -> None:
    print(f"[teachers {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# the ResNet teacher


def gen_models():
    """scripts/gen_models.py (the product's prototxt builders) as a module, for --write-models."""
    spec = importlib.util.spec_from_file_location("gen_models", ROOT / "scripts" / "gen_models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build_fmnist_resnet(widths=(32, 64, 128), blocks=(2, 1, 1), stem=32, stem_kernel=5,
                        stem_stride=2) -> "pb.NetParameter":
    """A small ResNet for 1x64x64 Fashion-MNIST images, in the released ResNets' naming
    (conv1/bn_conv1/scale_conv1/conv1_relu, res2a_branch2a, bn2a_branch2a, ..., res3a_branch1):
    conv1 5x5/2 (32) + BN + Scale + ReLU (64 -> 32), pool1 (max 3x3/2: 32 -> 16), stages 2-4 of
    basic blocks (3x3 -> 3x3, summed with the identity or, where the channel count changes, with a
    1x1 stride-2 projection ``branch1``): 2 blocks of 32 channels at 16x16, 1 of 64 at 8x8, 1 of 128
    at 4x4; global average pooling, fc10, softmax. (This size trains at about 0.4 s per iteration
    of 64 on one core, like the GoogLeNet teacher; the same net with conv1 3x3/1 at 64x64 and 16,
    32, 64 channels in 2+2+2 blocks took 0.83-1.1 s.)"""
    gm = gen_models()
    net = pb.NetParameter(name="FashionResNet")
    x = gm.input_layer(net, "data", (1, 1, SIZE, SIZE))
    x = gm.conv_bn(net, "conv1", x, stem, stem_kernel, stride=stem_stride, pad=stem_kernel // 2, bias_term=None)
    x = gm.pool(net, "pool1", x, "MAX", 3, stride=2)
    channels = stem
    for stage, (width, n) in enumerate(zip(widths, blocks), start=2):
        for b in range(n):
            name = f"{stage}{chr(ord('a') + b)}"
            stride = 2 if (b == 0 and stage > 2) else 1
            project = b == 0 and (stride != 1 or width != channels)
            res = f"res{name}"
            shortcut = x
            if project:
                shortcut = gm.conv_bn(net, f"{res}_branch1", x, width, 1, stride=stride, with_relu=False)
            y = gm.conv_bn(net, f"{res}_branch2a", x, width, 3, stride=stride, pad=1)
            y = gm.conv_bn(net, f"{res}_branch2b", y, width, 3, pad=1, with_relu=False)
            x = gm.relu(net, f"{res}_relu", gm.eltwise_sum(net, res, [shortcut, y]))
            channels = width
    x = gm.pool(net, "pool5", x, "AVE", global_pooling=True)
    x = gm.fc(net, "fc10", x, CLASSES)
    gm.softmax(net, "prob", x)
    return net


def write_models() -> None:
    """models/fmnist_resnet.prototxt (deploy) and models/fmnist_resnet_train_val.prototxt."""
    deploy = build_fmnist_resnet()
    text = (f"# Generated by {MADE_BY} --write-models (build_fmnist_resnet): the "
            "Fashion-MNIST ResNet teacher.\n" + netio.net_to_text(deploy))
    outputs.atomic_write(MODELS / "fmnist_resnet.prototxt", text)
    write_model_train_val("resnet")
    log("wrote models/fmnist_resnet.prototxt and models/fmnist_resnet_train_val.prototxt")


# ----------------------------------------------------------------------------------------------
# data


@contextlib.contextmanager
def locked(path: Path):
    """An exclusive lock (two runs of this script may stage the data at the same time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def stage_data(work: Path) -> None:
    with locked(work / ".data.lock"):
        fmnist.make_lmdbs(work, pad=PAD, train_name=TRAIN_LMDB)


# ----------------------------------------------------------------------------------------------
# train_val and solvers

TEACHERS = {
    "googlenet": {"deploy": MODELS / "fmnist_googlenet.prototxt",
                  "train_val": MODELS / "fmnist_googlenet_train_val.prototxt",
                  "weights": MODELS / "fmnist_googlenet.caffemodel",
                  "iters": 12_000, "base_lr": 0.03, "warmup": 300, "batch": 64},
    "resnet": {"deploy": MODELS / "fmnist_resnet.prototxt",
               "train_val": MODELS / "fmnist_resnet_train_val.prototxt",
               "weights": MODELS / "fmnist_resnet.caffemodel",
               "iters": 9_000, "base_lr": 0.1, "warmup": 200, "batch": 64},
}


def train_val(deploy_path: Path, data_dir: str, batch: int) -> "pb.NetParameter":
    """The deploy net between Data layers over the two LMDBs (``data_dir``/NAME; the preprocessing
    described in the module docstring) and SoftmaxWithLoss + top-1/top-5 Accuracy (TEST).
    The body is ``trainfiles.scratch_body`` (fillers, lr/decay multipliers, BatchNorm on batch
    statistics)."""
    deploy = netio.read_net(deploy_path)
    net = pb.NetParameter(name=deploy.name)
    for source, phase, b in ((TRAIN_LMDB, pb.TRAIN, batch), (TEST_LMDB, pb.TEST, TEST_BATCH)):
        layer = fmnist.data_layer(Path(data_dir) / source if data_dir else Path(source), phase, b)
        layer.transform_param.crop_size = SIZE
        net.layer.append(layer)
    logits = trainfiles.logits_blob(deploy)
    net.layer.extend(trainfiles.scratch_body(deploy))
    net.layer.extend(trainfiles.loss_layers(logits, "label", {layer.name for layer in net.layer}, CLASSES))
    return net


def write_model_train_val(name: str) -> None:
    """models/fmnist_NAME_train_val.prototxt: LMDB paths relative to the data folder (run Caffe
    from WORK, or change them); every rebirth command takes the preprocessing from its TEST layer."""
    spec = TEACHERS[name]
    tv = train_val(spec["deploy"], "", spec["batch"])
    header = [
        f"Fashion-MNIST {name} teacher: the train_val {MADE_BY} trains (caffe train) with",
        f"models/fmnist_{name}.caffemodel as the result. The LMDBs are that script's data stage",
        f"(.venv/bin/python {MADE_BY} --stage data --work WORK), paths relative to",
        "that folder: training images 64x64 padded to 72x72, test images 64x64.",
        "Its data layers give every rebirth command the preprocessing: mean 73, scale 1/255, crop_size 64",
        "(TRAIN: random crop = shifts of up to 4 pixels, and mirror; TEST: the centre crop = the 64x64 image).",
    ]
    outputs.atomic_write(spec["train_val"], trainfiles.render_net(tv, header))


def solvers(name: str, iters: int, base_lr: float, warmup: int, snapshot: int, test_interval: int) -> dict:
    """{"warmup": SolverParameter or None, "main": SolverParameter}: the same net and snapshot
    prefix; the warm-up ends at ``warmup`` (sigmoid ramp), the main one decays linearly to 0."""
    common = dict(net_file="train_val.prototxt", test_batch=TEST_BATCH, val_images=TEST_IMAGES,
                  test_interval=test_interval, snapshot=snapshot, snapshot_prefix=f"snap/{name}",
                  base_lr=base_lr, weight_decay=5e-4, momentum=0.9, display=50, average_loss=50)
    main = trainfiles.build_solver(lr_policy="poly", max_iter=iters, **common)
    main.ClearField("stepsize")
    main.ClearField("gamma")
    main.power = 1.0
    out = {"main": main, "warmup": None}
    if warmup > 0:
        w = trainfiles.build_solver(lr_policy="sigmoid", max_iter=warmup, **common)
        w.stepsize = warmup // 2                  # lr = base_lr / (1 + exp(-gamma (iter - stepsize)))
        w.gamma = 8.0 / warmup                    # 1.8 % of base_lr at 0, 98 % at the end
        w.test_interval = warmup + 1              # no test in the warm-up
        out["warmup"] = w
    for s in out.values():
        if s is not None:
            s.test_initialization = False
            s.random_seed = 1
    return out


# ----------------------------------------------------------------------------------------------
# training


def _iter_of(path: Path) -> int:
    return int(re.findall(r"_iter_(\d+)\.", path.name)[-1])


def newest_state(out: Path, name: str) -> Path | None:
    states = sorted((out / "snap").glob(f"{name}_iter_*.solverstate"), key=_iter_of)
    return states[-1] if states else None


def run_caffe(out: Path, solver_file: str, state: Path | None, threads: int | None) -> dict:
    cmd = [caffe_tool(), "train", "-solver", solver_file]
    if state is not None:
        cmd += ["-snapshot", str(state.relative_to(out))]
    env = dict(os.environ, GLOG_minloglevel="0", GLOG_logtostderr="1")
    if threads:
        env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = str(threads)
    log(f"{' '.join(cmd)} (in {out}; log in {out}/train.log)")
    t0 = time.time()
    with open(out / "train.log", "a") as fh:
        fh.write(f"\n#### {datetime.datetime.now().isoformat(timespec='seconds')} {shlex.join(cmd)}\n")
        fh.flush()
        rc = subprocess.Popen(cmd, cwd=out, stdout=fh, stderr=subprocess.STDOUT, env=env).wait()
    seg = {"cmd": shlex.join(cmd), "cwd": str(out), "start_iter": _iter_of(state) if state else 0,
           "seconds": round(time.time() - t0, 1), "rc": rc, "threads": threads,
           "ended": datetime.datetime.now().isoformat(timespec="seconds")}
    segs_file = out / "segments.json"
    segs = json.loads(segs_file.read_text()) if segs_file.exists() else []
    segs.append(seg)
    segs_file.write_text(json.dumps(segs, indent=2))
    if rc != 0:
        raise SystemExit(f"caffe train failed (exit {rc}); see {out}/train.log")
    return seg


def evaluate(name: str, weights: Path) -> tuple[dict, list[str]]:
    spec = TEACHERS[name]
    cmd = ["eval", str(spec["deploy"].relative_to(ROOT)), "--weights", str(weights),
           "--data", "fashion-mnist:test", "--train-val", str(spec["train_val"].relative_to(ROOT)),
           "--batch", "100"]
    return rebirth(cmd), [".venv/bin/rebirth", *cmd, "--json"]


def caffe_tests(log_text: str) -> list[tuple[int, float, float]]:
    """(iteration, top-1, top-5) of every TEST pass in a caffe train log."""
    out = []
    for m in re.finditer(r"Iteration (\d+), Testing net \(#0\)(.*?)accuracy = ([0-9.]+).*?accuracy_top5 = ([0-9.]+)",
                         log_text, re.S):
        out.append((int(m.group(1)), float(m.group(3)), float(m.group(4))))
    return out


def train(name: str, work: Path, args) -> dict:
    spec = TEACHERS[name]
    out = work / name
    result_file = out / "result.json"
    iters = args.iters or spec["iters"]
    if result_file.exists() and not args.redo:
        res = json.loads(result_file.read_text())
        if res.get("iters") == iters and (not has_batchnorm(name) or "bn_stats" in res):
            log(f"{name}: done ({result_file}); --redo to train again")
            return res
    (out / "snap").mkdir(parents=True, exist_ok=True)
    base_lr = args.base_lr or spec["base_lr"]
    warmup = spec["warmup"] if args.warmup is None else args.warmup
    tv = train_val(spec["deploy"], "..", spec["batch"])
    (out / "train_val.prototxt").write_text(trainfiles.render_net(tv, [
        f"Fashion-MNIST {name} teacher ({MADE_BY}); LMDBs in {work}"]))
    sv = solvers(name, iters, base_lr, warmup, args.snapshot, args.test_interval)
    for key, s in sv.items():
        if s is not None:
            (out / f"solver_{key}.prototxt").write_text(trainfiles.render_solver(s, [f"{name} teacher, {key} phase"]))
    final = out / "snap" / f"{name}_iter_{iters}.caffemodel"
    while True:
        state = newest_state(out, name)
        done = state is not None and _iter_of(state) >= iters and final.exists()
        if done:
            break
        if sv["warmup"] is not None and (state is None or _iter_of(state) < warmup):
            run_caffe(out, "solver_warmup.prototxt", state, args.threads)
        else:
            run_caffe(out, "solver_main.prototxt", state, args.threads)
            break
    if not final.exists():
        raise SystemExit(f"{final} is missing after training; see {out}/train.log")
    segs = json.loads((out / "segments.json").read_text()) if (out / "segments.json").exists() else []
    tests = caffe_tests((out / "train.log").read_text())
    bn_stats = None
    if has_batchnorm(name):
        running, _ = evaluate(name, rel(final))
        final = recalibrate_bn(out, name, final, args.bn_batches)
        bn_stats = {"batches": args.bn_batches, "images": args.bn_batches * TEST_BATCH,
                    "running_average_top1": running["top1"], "weights": str(rel(final))}
    ev, eval_cmd = evaluate(name, rel(final))
    res = {"teacher": name, "deploy": str(spec["deploy"].relative_to(ROOT)), "iters": iters,
           "batch": spec["batch"], "epochs": round(iters * spec["batch"] / 60_000, 2), "base_lr": base_lr,
           "warmup": warmup, "lr_policy": "sigmoid warm-up, then poly power 1", "weight_decay": 5e-4,
           "momentum": 0.9, "augmentation": f"random {SIZE}x{SIZE} crop of the image padded to "
           f"{SIZE + 2 * PAD}x{SIZE + 2 * PAD} (shifts up to {PAD} px), random mirror",
           "train_seconds": round(sum(s["seconds"] for s in segs), 1), "segments": segs,
           "caffe_tests": tests, "bn_stats": bn_stats, "top1": ev["top1"], "top5": ev["top5"],
           "eval_images": ev["images"],
           "eval_cmd": shlex.join(eval_cmd), "snapshot": str(final),
           "script_cmd": f"nice -n 5 .venv/bin/python {MADE_BY} " + shlex.join(sys.argv[1:])}
    if args.install:
        install(name, final, res, args.force)
    else:
        res["installed"] = False
        log(f"{name}: --no-install: {final} stays in {out} (models/ untouched)")
    result_file.write_text(json.dumps(res, indent=2))
    return res


def rel(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def has_batchnorm(name: str) -> bool:
    return any(layer.type == "BatchNorm" for layer in netio.read_net(TEACHERS[name]["deploy"]).layer)


def recalibrate_bn(out: Path, name: str, final: Path, batches: int) -> Path:
    """Recompute every BatchNorm layer's statistics at the final weights and return the weights
    that carry them (``snap/NAME_iter_N_bnstats.caffemodel``).

    Caffe's BatchNorm keeps an exponential running average of the batch statistics while it
    trains (``moving_average_fraction`` 0.999, so roughly the last thousand iterations, taken at
    weights that were still moving). Evaluated with those averages the ResNet teacher read 83.8 %
    top-1 while its training loss said about 94 %: the averages, not the weights, were off. Here
    the net runs ``batches`` batches of 100 *training* images (the centre crop, no mirror: the
    test-time preprocessing; no test image is read) with ``use_global_stats: false`` and
    ``moving_average_fraction: 1``, so that Caffe sums each batch's mean and (bias-corrected)
    variance and counts the batches in the third blob; the sums are divided by the count and the
    count set to 1. Only BatchNorm blobs change."""
    import caffe  # noqa: PLC0415  (pycaffe: only this step needs it)

    tv = netio.read_net(out / "train_val.prototxt")
    net = pb.NetParameter(name=tv.name)
    for layer in tv.layer:
        is_train = bool(layer.include) and layer.include[0].phase == pb.TRAIN
        if (layer.type == "Data" and not is_train) or layer.type == "Accuracy":
            continue
        new = net.layer.add()
        new.CopyFrom(layer)
        if layer.type == "Data":
            del new.include[:]
            new.include.add(phase=pb.TEST)
            new.data_param.batch_size = TEST_BATCH
            new.data_param.source = str((out / layer.data_param.source).resolve())   # relative to WORK/NAME
            new.transform_param.mirror = False
        elif layer.type == "BatchNorm":
            new.batch_norm_param.use_global_stats = False
            new.batch_norm_param.moving_average_fraction = 1.0
    proto = out / "bn_stats.prototxt"
    proto.write_text(trainfiles.render_net(net, [f"{name}: recompute BatchNorm statistics ({MADE_BY})"]))
    dest = final.with_name(final.stem + "_bnstats.caffemodel")
    log(f"{name}: recomputing the BatchNorm statistics over {batches} x {TEST_BATCH} training images")
    caffe.set_mode_cpu()
    cnet = caffe.Net(str(proto), str(final), caffe.TEST)
    bns = [n for n, lay in zip(cnet._layer_names, cnet.layers) if lay.type == "BatchNorm"]
    for n in bns:
        for blob in cnet.params[n]:
            blob.data[...] = 0
    for _ in range(batches):
        cnet.forward()
    for n in bns:
        count = float(cnet.params[n][2].data.ravel()[0])
        cnet.params[n][0].data[...] /= count
        cnet.params[n][1].data[...] /= count
        cnet.params[n][2].data[...] = 1
    tmp = dest.with_name(dest.name + ".tmp")
    cnet.save(str(tmp))
    os.replace(tmp, dest)
    return dest


def install(name: str, final: Path, res: dict, force: bool) -> None:
    """Copy the final weights to models/fmnist_NAME.caffemodel (temporary file + rename), when
    they beat the weights there (measured the same way) or with ``force``."""
    dest = TEACHERS[name]["weights"]
    if dest.exists() and not force:
        old, _ = evaluate(name, dest.relative_to(ROOT))
        res["previous_top1"] = old["top1"]
        if old["top1"] >= res["top1"]:
            log(f"{name}: {dest} ({100 * old['top1']:.2f} %) is at least as good as the new weights "
                f"({100 * res['top1']:.2f} %): left alone (--force to replace it)")
            res["installed"] = False
            return
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.copyfile(final, tmp)
    os.replace(tmp, dest)
    res["installed"] = True
    log(f"{name}: top-1 {100 * res['top1']:.2f} %, top-5 {100 * res['top5']:.2f} % -> {dest}")


# ----------------------------------------------------------------------------------------------
# the log


def shown_eval_cmd(r: dict, name: str) -> str:
    """The result's eval command as anyone can rerun it: on the shipped weights when they were
    installed (the snapshot under WORK is not in the repository)."""
    cmd = r["eval_cmd"].replace(str(ROOT) + "/", "")
    if r.get("installed", True):
        cmd = re.sub(r"--weights \S+", f"--weights models/fmnist_{name}.caffemodel", cmd)
    return cmd


def write_log(work: Path) -> None:
    lines = ["# The Fashion-MNIST teachers",
             "",
             f"Trained by `{MADE_BY}` (`caffe train`, CPU, on a shared 2-core machine; "
             "resumable: rerun the same command). Data: Fashion-MNIST's 60,000 training images resized "
             "to 64x64 (bilinear), stored padded to 72x72; evaluated on the 10,000 test images with "
             "`rebirth eval` (28x28 -> 64x64 bilinear, mean 73, scale 1/255: the train_val's TEST layer).",
             ""]
    for name in TEACHERS:
        f = work / name / "result.json"
        if not f.exists():
            continue
        r = json.loads(f.read_text())
        h, m = divmod(round(r["train_seconds"] / 60), 60)
        tests = ", ".join(f"{it}: {100 * a:.2f} %" for it, a, _ in r["caffe_tests"])
        lines += [f"## {name}: `{r['deploy']}` -> `models/fmnist_{name}.caffemodel`", "",
                  f"* command: `{r['script_cmd']}` (it runs `caffe train -solver solver_warmup.prototxt`, "
                  f"then `caffe train -solver solver_main.prototxt -snapshot snap/{name}_iter_"
                  f"{r['warmup']}.solverstate` in `{rel(Path(r['segments'][-1]['cwd']))}/`)",
                  f"* schedule: SGD, momentum {r['momentum']}, weight decay {r['weight_decay']} (none on "
                  f"BatchNorm/Scale), base_lr {r['base_lr']}: sigmoid warm-up over {r['warmup']} iterations, "
                  f"then poly (power 1) to 0 at iteration {r['iters']}",
                  f"* iterations: {r['iters']} of batch {r['batch']} ({r['epochs']} epochs)",
                  *([f"* history: {r['note']}"] if r.get("note") else []),
                  f"* augmentation: {r['augmentation']}",
                  f"* wall time of `caffe train`: {h} h {m:02d} min ({len(r['segments'])} run(s), "
                  f"OpenBLAS threads: {r['segments'][-1].get('threads') or 'default'}; other jobs shared the cores)",
                  f"* Caffe's TEST passes (top-1 on the 10,000 test images): {tests}",
                  *([f"* BatchNorm statistics recomputed at the final weights over "
                     f"{r['bn_stats']['images']:,} training images (`recalibrate_bn`): Caffe's running "
                     f"averages gave {100 * r['bn_stats']['running_average_top1']:.2f} % top-1"]
                    if r.get("bn_stats") else []),
                  f"* **top-1 {100 * r['top1']:.2f} %, top-5 {100 * r['top5']:.2f} %** on the "
                  f"{r['eval_images']:,} test images:",
                  "",
                  "  ```sh",
                  "  " + shown_eval_cmd(r, name),
                  "  ```",
                  ""]
        if "previous_top1" in r:
            lines.append(f"  (the weights it replaced: {100 * r['previous_top1']:.2f} %; "
                         f"{'replaced' if r.get('installed') else 'NOT replaced: not better'})")
            lines.append("")
    outputs.atomic_write(MODELS / "TEACHERS.md", "\n".join(lines).rstrip() + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "teachers",
                    help="work folder: LMDBs, snapshots, logs (default: out/teachers, git-ignored)")
    ap.add_argument("--which", choices=["googlenet", "resnet", "both"], default="both")
    ap.add_argument("--iters", type=int, help="training iterations (default: googlenet "
                    f"{TEACHERS['googlenet']['iters']}, resnet {TEACHERS['resnet']['iters']}); changing it "
                    "on a resumed run changes the rest of the poly schedule")
    ap.add_argument("--base-lr", type=float, help="default: googlenet 0.03, resnet 0.1")
    ap.add_argument("--warmup", type=int, help="warm-up iterations (default: googlenet 300, resnet 200; 0: none)")
    ap.add_argument("--snapshot", type=int, default=500, help="snapshot every N iterations")
    ap.add_argument("--test-interval", type=int, default=2000, help="Caffe TEST pass every N iterations")
    ap.add_argument("--threads", type=int, help="OPENBLAS_NUM_THREADS for caffe (default: OpenBLAS's)")
    ap.add_argument("--bn-batches", type=int, default=100,
                    help="batches of 100 training images over which BatchNorm statistics are recomputed")
    ap.add_argument("--stage", choices=["data", "all"], default="all")
    ap.add_argument("--redo", action="store_true", help="train again although a result exists")
    ap.add_argument("--force", action="store_true", help="install the new weights even if not better")
    ap.add_argument("--no-install", dest="install", action="store_false",
                    help="train and evaluate only: neither models/fmnist_NAME.caffemodel nor models/TEACHERS.md is "
                         "written (a candidate teacher, e.g. in a copy of WORK)")
    ap.add_argument("--write-models", action="store_true",
                    help="(re)write models/fmnist_resnet.prototxt and both models/fmnist_*_train_val.prototxt, "
                         "and exit")
    args = ap.parse_args(argv)
    if args.write_models:
        write_models()
        write_model_train_val("googlenet")
        return 0
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    stage_data(args.work)
    if args.stage == "data":
        return 0
    names = list(TEACHERS) if args.which == "both" else [args.which]
    for name in names:
        res = train(name, args.work, args)
        log(f"{name}: top-1 {100 * res['top1']:.2f} %, top-5 {100 * res['top5']:.2f} %")
        if args.install:
            with locked(args.work / ".log.lock"):
                write_log(args.work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
