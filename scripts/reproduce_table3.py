#!/usr/bin/env python
"""The paper's Table 3 (GoogLeNet accuracy on slimming each layer, bottom to top), reproduced on
Fashion-MNIST with a GoogLeNet-shaped teacher trained here.

    .venv/bin/python scripts/reproduce_table3.py [--work out/table3] [--teacher-iters 6000]
                                                 [--relearn-images 1000] [--finetune-iters 300] ...

Resumable: every stage leaves its result in WORK and is skipped when run again (``--redo STAGE``).
Stages:

1. ``data``: Fashion-MNIST (Debian's dataset-fashion-mnist) as two LMDBs of Caffe Datum records,
   resized to the teacher's 64x64 input with Pillow.
2. ``teacher``: models/fmnist_googlenet.prototxt trained from scratch by the ``caffe`` tool
   (``caffe train``, Data layers reading the LMDB, SGD with momentum); its test accuracy.
3. ``steps``: the paper's procedure, one substructure more per step (conv1, conv2, inception_3a,
   ...): ``rebirth slim --only`` (cumulative) of the teacher, ``relearn`` of the new unit against the
   teacher's feature maps (no labels), a short ``finetune`` with labels, evaluation (top-1/top-5 on
   the 10,000 test images), latency ratio to the teacher (measured side by side at batch 1) and blob
   memory. Two chains run side by side: *relearn only* (no label used at any step) and
   *relearn + fine-tune* (each step starts from the previous step's fine-tuned weights).

The result is WORK/table3.json and WORK/table3.md (the table the README shows).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from deeprebirth.learning import preprocess
from deeprebirth.caffe import netio
from deeprebirth.transforms import trainfiles  # noqa: E402
from deeprebirth.runtime.pycaffe import caffe_tool  # noqa: E402
from deeprebirth.caffe import proto as pb  # noqa: E402
from deeprebirth.errors import RebirthError  # noqa: E402
from deeprebirth.graph.dag import Graph  # noqa: E402

TEACHER = ROOT / "models" / "fmnist_googlenet.prototxt"
SIZE = 64
MEAN = 73.0            # Fashion-MNIST's mean gray level (0..255), after resizing too
SCALE = 1.0 / 255.0

# Bottom to top, as the paper's Table 3; each step adds these substructures to --only (fold_bn's
# and push_pool_concat's exact rewrites go with the step that needs them).
STEPS = [
    ("conv1", ["conv1/7x7_s2", "conv1"]),
    ("conv2", ["conv2/3x3", "conv2"]),
    ("inception_3a", ["inception_3a"]),
    ("inception_3b", ["pool3/3x3_s2", "inception_3b"]),
    ("inception_4a", ["inception_4a"]),
    ("inception_4b-4d", ["inception_4b", "inception_4c", "inception_4d"]),
    ("inception_4e", ["pool4/3x3_s2", "inception_4e"]),
    ("inception_5a", ["inception_5a"]),
    ("inception_5b", ["inception_5b"]),
]


def log(msg: str) -> None:
    print(f"[table3 {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# 1. data


def fmnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST's images (N x 28 x 28 uint8) and labels, read by the SOURCE reader."""
    from deeprebirth.learning.sources import FashionMnist  # noqa: PLC0415

    source = FashionMnist(split)
    return source.images, source.labels(range(len(source)))


def resized(images: np.ndarray, size: int = SIZE) -> np.ndarray:
    from PIL import Image  # noqa: PLC0415

    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in images])


def write_lmdb(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Caffe Datum records (raw uint8, 1 x H x W), keys in order, written to a temporary directory
    and renamed."""
    import lmdb  # noqa: PLC0415

    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    env = lmdb.open(str(tmp), map_size=int(images.nbytes * 2 + (1 << 26)))
    with env.begin(write=True) as txn:
        for i, (im, label) in enumerate(zip(images, labels)):
            d = pb.Datum(channels=1, height=im.shape[0], width=im.shape[1], data=im.tobytes(), label=int(label))
            txn.put(f"{i:08d}".encode(), d.SerializeToString())
    env.close()
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def stage_data(work: Path, limits: dict[str, int | None]) -> None:
    for split in ("train", "test"):
        path = work / f"fmnist_{split}_lmdb"
        if (path / "data.mdb").exists():
            continue
        images, labels = fmnist(split)
        n = limits.get(split)
        images, labels = images[:n], labels[:n]
        log(f"writing {path} ({len(images)} images, {SIZE}x{SIZE})")
        write_lmdb(path, resized(images), labels)


# ----------------------------------------------------------------------------------------------
# 2. teacher


def data_layer(source: Path, phase: int, batch: int) -> "pb.LayerParameter":
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


def teacher_train_val(work: Path, batch: int) -> "pb.NetParameter":
    deploy = netio.read_net(TEACHER)
    net = pb.NetParameter(name=deploy.name)
    net.layer.append(data_layer(work / "fmnist_train_lmdb", pb.TRAIN, batch))
    net.layer.append(data_layer(work / "fmnist_test_lmdb", pb.TEST, 100))
    net.layer.extend(trainfiles.scratch_body(deploy))
    net.layer.extend(trainfiles.loss_layers(trainfiles.logits_blob(deploy), "label", {layer.name for layer in net.layer}, 10))
    return net


def stage_teacher(work: Path, iters: int, batch: int, given: Path | None = None) -> dict:
    out = work / "teacher"
    result_file = out / "teacher.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    out.mkdir(parents=True, exist_ok=True)
    tv = teacher_train_val(work, batch)
    (out / "train_val.prototxt").write_text(trainfiles.render_net(tv, ["Fashion-MNIST teacher (scripts/reproduce_table3.py)"]))
    if given is not None:
        shutil.copyfile(given, out / "teacher.caffemodel")
        res = {"given": str(given)}
        result_file.write_text(json.dumps(res, indent=2))
        return res
    solver = trainfiles.build_solver(
        net_file="train_val.prototxt", test_batch=100, val_images=10_000, test_interval=iters,
        snapshot=500, snapshot_prefix="snap/teacher", base_lr=0.01, lr_policy="multistep",
        weight_decay=5e-4, max_iter=iters, display=50, average_loss=50)
    solver.ClearField("stepsize")
    solver.stepvalue.extend([int(iters * 0.6), int(iters * 0.85)])
    solver.test_initialization = False
    solver.random_seed = 1
    (out / "solver.prototxt").write_text(trainfiles.render_solver(solver, ["Fashion-MNIST teacher"]))
    (out / "snap").mkdir(exist_ok=True)
    states = sorted((out / "snap").glob("teacher_iter_*.solverstate"), key=lambda p: int(re.findall(r"\d+", p.name)[-1]))
    cmd = [caffe_tool(), "train", "-solver", "solver.prototxt"]
    if states:
        cmd += ["-snapshot", str(states[-1].relative_to(out))]
    log(f"training the teacher: {' '.join(cmd)} (in {out}; log in {out}/train.log)")
    t0 = time.time()
    env = dict(os.environ, GLOG_minloglevel="0", GLOG_logtostderr="1")
    with open(out / "train.log", "a") as fh:
        proc = subprocess.Popen(cmd, cwd=out, stdout=fh, stderr=subprocess.STDOUT, env=env)
        rc = proc.wait()
    if rc != 0:
        raise SystemExit(f"caffe train failed (exit {rc}); see {out}/train.log")
    final = out / "snap" / f"teacher_iter_{iters}.caffemodel"
    shutil.copyfile(final, out / "teacher.caffemodel")
    text = (out / "train.log").read_text()
    accs = re.findall(r"Test net output #\d+: accuracy = ([0-9.]+)", text)
    top5 = re.findall(r"Test net output #\d+: accuracy_top5 = ([0-9.]+)", text)
    res = {"iters": iters, "batch": batch, "seconds": round(time.time() - t0, 1),
           "caffe_test_top1": float(accs[-1]) if accs else None,
           "caffe_test_top5": float(top5[-1]) if top5 else None}
    result_file.write_text(json.dumps(res, indent=2))
    return res


# ----------------------------------------------------------------------------------------------
# 3. steps


def teacher_eval(work: Path, limit: int | None) -> dict:
    path = work / "teacher" / "eval.json"
    if path.exists():
        return json.loads(path.read_text())
    res = evaluate_net(TEACHER, work / "teacher" / "teacher.caffemodel", work, work / "teacher" / "train_val.prototxt",
                       limit)
    path.write_text(json.dumps(res, indent=2))
    return res


def evaluate_net(deploy, weights, work: Path, train_val, limit: int | None = None) -> dict:
    from deeprebirth.learning import sources as data
    from deeprebirth.learning import evaluate as ev  # noqa: PLC0415
    from deeprebirth.graph.model import load_model  # noqa: PLC0415

    model = load_model(deploy, weights)
    runner = ev.Runner.build(model)
    pre = preprocess.preprocess_for(runner.input_shape, train_val)
    source = data.open_source(str(work / "fmnist_test_lmdb"))
    res = ev.run_evaluation(runner, source, pre, batch=100, progress=None, limit=limit)
    return {"top1": res["top1"], "top5": res["top5"], "n": res["images"]}


def combined_start(init: Path, previous: Path | None, out: Path, changed: set[str]) -> Path:
    """init.caffemodel of this step's slim net, with every layer the previous step's weights have in
    the same shapes taken from there (what that step learned), except the layers this step rewrote
    (``changed``: a folded or regenerated layer keeps its new weights); written to ``out``."""
    net = netio.read_weights(init)
    if previous is not None:
        prev = netio.weights_of(netio.read_weights(previous))
        arrays = netio.weights_of(net)
        for name, arrs in arrays.items():
            theirs = None if name in changed else prev.get(name)
            if theirs is not None and [a.shape for a in theirs] == [a.shape for a in arrs]:
                arrays[name] = theirs
        net = netio.with_weights(netio.strip_weights(net), arrays)
    netio.write_weights(net, out)
    return out


def latency(teacher: Path, teacher_w: Path, slim: Path, slim_w: Path, runs: int) -> dict:
    """Teacher and slim net at batch 1, interleaved in one process (deeprebirth.runtime.bench)."""
    from deeprebirth.runtime import bench  # noqa: PLC0415
    from deeprebirth.runtime.devices import get_device  # noqa: PLC0415

    prepared = bench.prepare([str(teacher), str(slim)], [str(teacher_w), str(slim_w)], batch=1)
    doc = bench.build_json(bench.run(prepared, get_device("cpu"), runs=runs, warmup=5, layers=False, memory=False))
    t, m = doc["models"]
    return {"best_ratio": t["best_ms"] / m["best_ms"], "median_ratio": t["median_ms"] / m["median_ms"],
            "paired_ratio": 1.0 / doc["ratios"]["models"][m["model"]]["paired_median"],
            "teacher_best_ms": t["best_ms"], "slim_best_ms": m["best_ms"]}


def stage_steps(work: Path, args) -> list[dict]:
    from deeprebirth.learning import finetune as ft
    from deeprebirth.learning import relearn as rl
    from deeprebirth.transforms import slim as slim_api
    from deeprebirth.learning import sources as data  # noqa: PLC0415
    from deeprebirth.graph.model import load_model  # noqa: PLC0415

    teacher_w = work / "teacher" / "teacher.caffemodel"
    tv_path = work / "teacher" / "train_val.prototxt"
    t_eval = teacher_eval(work, args.eval_images)
    rows = [{"step": 0, "slim": "N/A", "relearn_only": t_eval, "relearn_finetune": t_eval, "speedup": 1.0,
             "memory_bytes": Graph(netio.read_net(TEACHER), strict=False).memory_bytes,
             "layers": len(netio.read_net(TEACHER).layer)}]
    log(f"step 0 (teacher): top-1 {t_eval['top1']:.4f}, top-5 {t_eval['top5']:.4f}")
    only: list[str] = []
    prev = {"a": None, "b": None}
    train_lmdb = str(work / "fmnist_train_lmdb")
    for k, (label, names) in enumerate(STEPS[:args.steps], start=1):
        only += names
        step_dir = work / "steps" / f"{k}_{label}"
        done = step_dir / "step.json"
        if done.exists():
            row = json.loads(done.read_text())
            rows.append(row)
            prev = {"a": step_dir / "a" / "weights.caffemodel", "b": step_dir / "b" / "weights.caffemodel"}
            continue
        t0 = time.time()
        shutil.rmtree(step_dir, ignore_errors=True)
        step_dir.mkdir(parents=True)
        model = load_model(TEACHER, teacher_w)
        out = slim_api.slim(model, only=list(only), train_val=netio.read_net(tv_path), train_val_source=str(tv_path))
        slim_dir = step_dir / "slim"
        slim_api.write(out, slim_dir)
        changed = {n for c in out.result.changes if c.substructure in names
                   for n in list(c.regenerated) + list(c.modified) + list(c.added)}
        units = [u["name"] for u in out.report()["relearn"]["units"]]
        mine = [u for u in units if any(part in names for part in u.split("+"))]
        row = {"step": k, "slim": label, "only": list(only), "units": mine,
               "layers": len(out.deploy.layer), "memory_bytes": Graph(out.deploy, strict=False).memory_bytes}
        for chain in ("a", "b"):
            cdir = step_dir / chain
            cdir.mkdir()
            start = combined_start(slim_dir / "init.caffemodel", prev[chain], cdir / "start.caffemodel", changed)
            if chain == "a":
                row["before_relearn"] = evaluate_net(slim_dir / "deploy.prototxt", start, work, tv_path,
                                                     args.eval_images)
            opt = rl.Options(train_images=args.relearn_images, heldout_images=200, iters=args.relearn_iters,
                             batch=32, base_lr=args.relearn_lr, only=mine, seed=k,
                             max_weight_scale=args.relearn_max_scale or None)
            doc = rl.relearn_dir(slim_dir, train_lmdb, cdir / "relearn", weights=start, options=opt)
            final = cdir / "relearn" / "weights.caffemodel"
            row[f"relearn_{chain}"] = [{"unit": u["name"], "error": u["error"], "kept": u["kept"]} for u in doc["units"]]
            if chain == "b" and args.finetune_iters:
                res = ft.finetune(slim_dir, data.open_source(train_lmdb), None, iters=args.finetune_iters,
                                  base_lr=args.finetune_lr, stepsize=max(1, int(args.finetune_iters * 0.7)),
                                  test_interval=0, snapshot=0, weights=str(final), outdir=cdir / "finetune",
                                  seed=k, progress=None, schedule="solver")
                final = cdir / "finetune" / "weights.caffemodel"
                row["finetune"] = {"iters": args.finetune_iters, "seconds": res.get("seconds")}
            shutil.copyfile(final, cdir / "weights.caffemodel")
            row["relearn_only" if chain == "a" else "relearn_finetune"] = evaluate_net(
                slim_dir / "deploy.prototxt", cdir / "weights.caffemodel", work, tv_path, args.eval_images)
        row.update(latency(TEACHER, teacher_w, slim_dir / "deploy.prototxt", step_dir / "b" / "weights.caffemodel",
                           args.bench_runs))
        row["seconds"] = round(time.time() - t0, 1)
        done.write_text(json.dumps(row, indent=2))
        rows.append(row)
        prev = {"a": step_dir / "a" / "weights.caffemodel", "b": step_dir / "b" / "weights.caffemodel"}
        log(f"step {k} ({label}): relearn only top-1 {row['relearn_only']['top1']:.4f}; relearn+finetune top-1 "
            f"{row['relearn_finetune']['top1']:.4f}; {row['best_ratio']:.2f}x faster (best); {row['seconds']} s")
    return rows


def finished_run(outdir: Path, iters: int, weights: Path, distill: bool = False, mode: str | None = None) -> dict | None:
    """A fine-tuning already finished in ``outdir`` with these iterations from these weights, in this
    mode (its finetune.json: ``mode``, else "distill" or "labels" by ``distill``), so a stage
    interrupted after its training does not train again."""
    doc = outdir / "finetune.json"
    if not doc.exists():
        return None
    got = json.loads(doc.read_text())
    same = got.get("iterations") == iters and "interrupted" not in got and \
        got.get("mode") == (mode or ("distill" if distill else "labels")) and \
        Path(got.get("start_weights") or "").resolve() == Path(weights).resolve()
    return got if same else None


def kept_weights(outdir: Path) -> Path:
    """The weights a finished `rebirth finetune` in ``outdir`` keeps by the current rule
    (finetune.kept_iteration: the last iteration's when the best on --val leads them by no more
    than the validation noise and they are not below the start). A run made before that rule
    holds its best-on-val weights in weights.caffemodel; then the last ones are its final
    snapshot."""
    from deeprebirth.learning import finetune as ft
    from deeprebirth.learning import sources as data  # noqa: PLC0415

    doc = json.loads((outdir / "finetune.json").read_text())
    best, hist = doc.get("best"), doc.get("history") or []
    if not best or "highest" in best or not hist:       # no --val, or kept by the current rule already
        return outdir / "weights.caffemodel"
    scores = ft.validation_scores(hist, doc.get("start_iteration", 0))
    images = len(data.open_source(doc["val"]))
    kept = ft.kept_iteration(scores, best["iteration"], hist[-1]["iteration"], images)
    last = outdir / f"finetune_iter_{hist[-1]['iteration']}.caffemodel"
    return last if kept != best["iteration"] and last.exists() else outdir / "weights.caffemodel"


def held_out_split(lmdb: str) -> tuple[str, str]:
    """The training LMDB as (training part, held-out part): the last 2,000 images (a tenth of a
    smaller LMDB) are held out, for keeping the best weights of a fine-tuning."""
    from deeprebirth.learning import sources as data  # noqa: PLC0415

    n = len(data.open_source(lmdb))
    held = n - min(2000, n // 10)
    return f"{lmdb}[:{held}]", f"{lmdb}[{held}:]"


def stage_labelfree(work: Path, args) -> dict | None:
    """The label-free chain finished as `rebirth recover` does: the last step's relearn-only net
    distilled against the teacher's logits (``finetune --distill``, no label read) for
    ``--distill-iters``; the best weights on the last 2,000 *training* images (held out of it) (agreement with the
    teacher, no labels) are kept."""
    from deeprebirth.learning import finetune as ft
    from deeprebirth.learning import sources as data  # noqa: PLC0415

    out = work / "labelfree"
    done = out / "labelfree.json"
    if done.exists():
        return json.loads(done.read_text())
    last = work / "steps" / f"{len(STEPS)}_{STEPS[-1][0]}"
    if not (last / "step.json").exists() or not args.distill_iters:
        return None
    t0 = time.time()
    step = json.loads((last / "step.json").read_text())
    train, held = held_out_split(str(work / "fmnist_train_lmdb"))
    res = finished_run(out / "distill", args.distill_iters, last / "a" / "weights.caffemodel", True) or ft.finetune(
        last / "slim", data.open_source(train), data.open_source(held),
        iters=args.distill_iters, test_interval=max(1, args.distill_iters // 5), snapshot=0, distill=True,
        weights=str(last / "a" / "weights.caffemodel"), outdir=out / "distill", progress=None)
    tv_path = work / "teacher" / "train_val.prototxt"
    row = {key: step[key] for key in ("layers", "memory_bytes", "best_ratio", "median_ratio", "paired_ratio")}
    row.update({"step": f"{len(STEPS)}L", "slim": f"{STEPS[-1][0]}, label-free: relearn, then {args.distill_iters} "
                "distillation iterations", "relearn_only": step["relearn_only"], "best": res.get("best")})
    row["relearn_finetune"] = evaluate_net(last / "slim" / "deploy.prototxt", out / "distill" / "weights.caffemodel",
                                           work, tv_path, args.eval_images)
    row["seconds"] = round(time.time() - t0, 1)
    out.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(row, indent=2))
    log(f"label-free: relearn only {row['relearn_only']['top1']:.4f} -> distilled {row['relearn_finetune']['top1']:.4f}; "
        f"{row['seconds']} s")
    return row


def stage_recover(work: Path, args) -> dict | None:
    """Label-free as a user would run it (row 9R): the teacher slimmed in one go at the defaults
    (`rebirth slim`, every substructure at once, not step by step), then `rebirth recover` with
    ``--recover-iters`` distillation iterations (relearn of every unit, then distillation against
    the teacher's logits; no label read; the best weights by agreement with the teacher on the last
    2,000 training images kept)."""
    if not args.recover_iters:
        return None
    out = work / "recover"
    done = out / "recover_row.json"
    if done.exists():
        return json.loads(done.read_text())
    t0 = time.time()
    slim_dir, rec = out / "slim", out / "recovered"
    rebirth_into(slim_dir, ["slim", str(TEACHER), "-w", str(work / "teacher" / "teacher.caffemodel"), "--train-val",
                            str(MODELS / "fmnist_googlenet_train_val.prototxt"), "-o", str(slim_dir)])
    train, held = held_out_split(str(work / "fmnist_train_lmdb"))
    rebirth_into(rec, ["recover", str(slim_dir), "--images", train, "--val", held, "--iters", str(args.recover_iters),
                       "-o", str(rec)], record="recover.json")
    tv_path = work / "teacher" / "train_val.prototxt"
    deploy = slim_dir / "deploy.prototxt"
    graph = Graph(netio.read_net(deploy), strict=False)
    row = {"step": f"{len(STEPS)}R", "slim": "all substructures at once (`rebirth slim`), label-free: `rebirth "
           f"recover` (relearn, then {args.recover_iters} distillation iterations)", "layers": len(graph.nodes),
           "memory_bytes": graph.memory_bytes,
           "relearn_only": evaluate_net(deploy, rec / "relearn" / "weights.caffemodel", work, tv_path, args.eval_images),
           "relearn_finetune": evaluate_net(deploy, rec / "weights.caffemodel", work, tv_path, args.eval_images)}
    row.update(latency(TEACHER, work / "teacher" / "teacher.caffemodel", deploy, rec / "weights.caffemodel",
                       args.bench_runs))
    return finished(row, done, t0, f"label-free (recover): relearn only {row['relearn_only']['top1']:.4f} -> "
                    f"recovered {row['relearn_finetune']['top1']:.4f}")


def stage_labels_distill(work: Path, args) -> dict | None:
    """The labelled counterpart of row 9R (row 9RL): the same one-go slim net and the same relearned
    weights (the recover stage's), then ``--labels-distill-iters`` iterations of `rebirth finetune
    --distill --with-labels` (the teacher's logits and the labels, the two losses summed) at its
    defaults otherwise; the best weights on the held-out 2,000 training images are kept. Needs the
    recover stage (its slim net and relearn)."""
    out, rec = work / "labels_distill", work / "recover"
    done = out / "labels_distill_row.json"
    if done.exists():
        return json.loads(done.read_text())
    if not args.labels_distill_iters or not (rec / "recover_row.json").exists():
        return None
    t0 = time.time()
    slim_dir, start = rec / "slim", rec / "recovered" / "relearn" / "weights.caffemodel"
    train, held = held_out_split(str(work / "fmnist_train_lmdb"))
    rebirth_into(out / "finetune", ["finetune", str(slim_dir), "--weights", str(start), "--distill", "--with-labels",
                                    "--iters", str(args.labels_distill_iters), "--train", train, "--val", held,
                                    "-o", str(out / "finetune")], record="finetune.json")
    if not finished_run(out / "finetune", args.labels_distill_iters, start, mode="distill+labels"):
        raise SystemExit(f"{out / 'finetune'} holds another or an interrupted run: resume it with `rebirth finetune "
                         "--resume` (its finetune.json names the snapshots) or remove the folder")
    deploy, weights = slim_dir / "deploy.prototxt", kept_weights(out / "finetune")
    recovered = json.loads((rec / "recover_row.json").read_text())
    row = {key: recovered[key] for key in ("layers", "memory_bytes", "relearn_only")}
    row.update({"step": f"{len(STEPS)}RL", "slim": "all substructures at once (`rebirth slim`), 9R's relearn, then "
                f"{args.labels_distill_iters} iterations of distillation with labels (`finetune --distill --with-labels`)",
                "relearn_finetune": evaluate_net(deploy, weights, work, work / "teacher" / "train_val.prototxt",
                                                 args.eval_images)})
    row.update(latency(TEACHER, work / "teacher" / "teacher.caffemodel", deploy, weights, args.bench_runs))
    return finished(row, done, t0, f"distillation with labels: relearn only {row['relearn_only']['top1']:.4f} -> "
                    f"{row['relearn_finetune']['top1']:.4f}")


def stage_labels_distill_more(work: Path, args) -> dict | None:
    """Row 9RL+: row 9RL's run resumed from its last snapshot (`rebirth finetune --resume`, as the
    run's own `resume with:` line says) to ``--labels-distill-iters + --labels-distill-more``
    iterations, into labels_distill/finetune_long: one longer annealed schedule whose rate restarts
    at the point where the longer schedule would be (Caffe's poly rate is computed from max_iter,
    so at 20,000 of 40,000 it is base_lr / 2), annealed to 0 again. The best weights on the same
    held-out images are kept."""
    out = work / "labels_distill"
    done, short_done = out / "labels_distill_more_row.json", out / "labels_distill_row.json"
    if done.exists() or not args.labels_distill_more or not short_done.exists():
        return json.loads(done.read_text()) if done.exists() else None     # reused, or not asked for / not ready
    t0 = time.time()
    longer, total = out / "finetune_long", args.labels_distill_iters + args.labels_distill_more
    got = resume_longer(work / "recover" / "slim", out / "finetune", longer, total,
                        *held_out_split(str(work / "fmnist_train_lmdb")))
    short = json.loads(short_done.read_text())
    row = {key: short[key] for key in ("layers", "memory_bytes", "relearn_only", "best_ratio", "median_ratio",
                                       "paired_ratio") if key in short}
    deploy = work / "recover" / "slim" / "deploy.prototxt"
    row.update({"step": f"{len(STEPS)}RL+", "slim": f"9RL resumed from its last snapshot to {total} iterations "
                f"(the rate restarts at {got['base_lr'] * args.labels_distill_more / total:.2g}, annealed to 0)",
                "best": got.get("best"), "relearn_finetune": evaluate_net(
                    deploy, kept_weights(longer), work, work / "teacher" / "train_val.prototxt",
                    args.eval_images)})
    return finished(row, done, t0, f"9RL resumed to {total}: {row['relearn_finetune']['top1']:.4f}")


def resume_longer(slim_dir: Path, first: Path, longer: Path, total: int, train: str, held: str,
                  extra: list[str] = ()) -> dict:
    """`rebirth finetune --resume` of the finished run in ``first`` from its last snapshot to
    ``total`` iterations, into ``longer``: what the run's own `resume with:` line says (its mode,
    batch and rate; ``extra`` options such as --teacher). Returns the longer run's finetune.json."""
    ran = json.loads((first / "finetune.json").read_text())
    mode = {"distill": ["--distill"], "distill+labels": ["--distill", "--with-labels"]}.get(ran.get("mode"), [])
    state = first / f"finetune_iter_{ran['iterations']}.solverstate"
    rebirth_into(longer, ["finetune", str(slim_dir), "--resume", str(state), *mode, *extra, "-b", str(ran["batch"]),
                          "--base-lr", f"{ran['base_lr']:.6g}", "--iters", str(total), "--train", train, "--val",
                          held, "-o", str(longer)], record="finetune.json")
    got = json.loads((longer / "finetune.json").read_text())
    if got.get("iterations") != total or "interrupted" in got:
        raise SystemExit(f"{longer} holds another or an interrupted run: resume it with `rebirth finetune --resume` "
                         "or remove the folder")
    return got


def finished(row: dict, done: Path, t0: float, message: str) -> dict:
    """A stage's row with its wall time, written to ``done`` (what a rerun reuses) and logged."""
    row["seconds"] = round(time.time() - t0, 1)
    done.write_text(json.dumps(row, indent=2))
    log(f"{message}; {row['seconds']} s")
    return row


def stage_bn_teacher(work: Path, args) -> dict | None:
    """The BatchNorm teacher's slim row: `rebirth slim` (BatchNorm folded, conv1 + pool1 merged),
    relearn, a default `finetune` with labels, top-1 and speed against that teacher."""
    from deeprebirth.learning import finetune as ft
    from deeprebirth.learning import relearn as rl
    from deeprebirth.learning import sources as data  # noqa: PLC0415

    if not args.bn_teacher:
        return None
    deploy, weights, tv = (Path(p) for p in args.bn_teacher)
    out = work / "bn_teacher"
    done = out / "bn.json"
    if done.exists():
        return json.loads(done.read_text())
    t0 = time.time()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    proc = subprocess.run([sys.executable, "-m", "deeprebirth.cli", "slim", str(deploy), "-w", str(weights),
                           "--train-val", str(tv), "-o", str(out / "slim")], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"rebirth slim of the BN teacher failed: {proc.stderr.strip()}")
    train_lmdb = str(work / "fmnist_train_lmdb")
    rl.relearn_dir(out / "slim", train_lmdb, out / "relearn", options=rl.Options(
        train_images=args.relearn_images, iters=args.relearn_iters, seed=5))
    res = ft.finetune(out / "slim", data.open_source(train_lmdb), None, iters=args.bn_finetune_iters,
                      test_interval=0, snapshot=0, weights=str(out / "relearn" / "weights.caffemodel"),
                      outdir=out / "finetune", seed=5, progress=None)
    row = {"step": "BN", "slim": f"BN teacher {deploy.name}: slim, relearn, {args.bn_finetune_iters} default "
           "fine-tuning iterations", "teacher": evaluate_net(deploy, weights, work, tv, args.eval_images),
           "relearn_only": evaluate_net(out / "slim" / "deploy.prototxt", out / "relearn" / "weights.caffemodel",
                                        work, tv, args.eval_images),
           "relearn_finetune": evaluate_net(out / "slim" / "deploy.prototxt", out / "finetune" / "weights.caffemodel",
                                            work, tv, args.eval_images),
           "finetune_notes": res.get("notes"), "layers": len(netio.read_net(out / "slim" / "deploy.prototxt").layer),
           "memory_bytes": Graph(netio.read_net(out / "slim" / "deploy.prototxt"), strict=False).memory_bytes}
    row.update(latency(deploy, weights, out / "slim" / "deploy.prototxt", out / "finetune" / "weights.caffemodel",
                       args.bench_runs))
    return finished(row, done, t0, f"BN teacher: {row['teacher']['top1']:.4f}; slim relearned "
                    f"{row['relearn_only']['top1']:.4f}, fine-tuned {row['relearn_finetune']['top1']:.4f}; "
                    f"{row['best_ratio']:.2f}x")


def tucker_source(work: Path, source: str) -> tuple[Path | None, str]:
    """The weights of the one-go Slim net that ``--tucker-from`` SOURCE names ("recover": row 9R's;
    "labels_distill": row 9RL+'s kept weights when that run was made, else 9RL's) and the row's
    name; (None, name) when that row was not run."""
    if source == "recover":
        w, name = work / "recover" / "recovered" / "weights.caffemodel", f"{len(STEPS)}R"
    else:
        run = work / "labels_distill" / "finetune_long"
        name = f"{len(STEPS)}RL+"
        if not (run / "finetune.json").exists():
            run, name = work / "labels_distill" / "finetune", f"{len(STEPS)}RL"
        w = kept_weights(run) if (run / "finetune.json").exists() else run / "weights.caffemodel"
    return (w if w.exists() else None), f"row {name}'s Slim net"


def stage_tucker(work: Path, args) -> list[dict]:
    """Slim-Tucker at each of ``--tucker-macs`` (MAC budgets) or else ``--tucker-ratios`` (a
    speed/accuracy curve): one row per budget."""
    rows = []
    for kind, value in tucker_budgets(args):
        row = tucker_row(work, args, value, kind)
        if row:
            rows.append(row)
    return rows


def tucker_budgets(args) -> list[tuple[str, float]]:
    """(kind, value) of each Slim-Tucker row: ``--tucker-time``, else ``--tucker-macs``, else
    ``--tucker-ratios``."""
    return ([("time", t) for t in args.tucker_time] if args.tucker_time else
            [("macs", m) for m in args.tucker_macs] if args.tucker_macs else
            [("ratio", r) for r in args.tucker_ratios])


def tucker_folder(work: Path, args, value: float, kind: str) -> Path:
    """The work folder of one Slim-Tucker row: slim_tucker_[KIND_]VALUE[_floorF][_FROM] (``_floorF``
    for a budget under a rank floor; the rows made before `tucker` had one are --tucker-floor 0)."""
    out = work / (f"slim_tucker_{value:g}" if kind == "ratio" else f"slim_tucker_{kind}_{value:g}")
    floor = tucker_floor(args, kind)
    out = out.with_name(out.name + (f"_floor{floor:g}" if floor else ""))
    return out.with_name(out.name + ("" if args.tucker_from == "steps" else f"_{args.tucker_from}"))


def tucker_floor(args, kind: str) -> float:
    """The rank floor of a budget row (`rebirth tucker --rank-floor`): ``--tucker-floor``, else
    tucker's default; 0 for a ratio row (no budget, no floor)."""
    if kind == "ratio":
        return 0.0
    from deeprebirth.transforms import rank_budget  # noqa: PLC0415
    return rank_budget.RANK_FLOOR if args.tucker_floor is None else args.tucker_floor


def tucker_row(work: Path, args, ratio: float, kind: str = "ratio") -> dict | None:
    """Slim-Tucker: the Slim net's best weights (the longest fine-tune's: final/finetune_long,
    else final/finetune, else the last step's), its global pooling folded into the classifier
    (`rebirth slim --rules pool_into_fc`, exact), decomposed (`rebirth tucker --time`, `--macs` or
    `--ratio`), re-learned against the Slim net at relearn's defaults, fine-tuned at finetune's
    defaults, evaluated and timed against the teacher. (Rows before the fold, from row 9+'s
    weights, are in tucker_macs_*/ and tucker_*/ of the earlier work folders.)"""
    from deeprebirth.learning import finetune as ft
    from deeprebirth.learning import relearn as rl
    from deeprebirth.learning import sources as data  # noqa: PLC0415

    out = tucker_folder(work, args, ratio, kind)
    done = out / "tucker.json"
    if done.exists():
        return dict(json.loads(done.read_text()), folder=out.name)
    last = work / "steps" / f"{len(STEPS)}_{STEPS[-1][0]}"
    if args.tucker_from == "steps" and not (last / "step.json").exists():
        return None
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    tv_path = work / "teacher" / "train_val.prototxt"
    slim_dir = out / "slim"
    if args.tucker_from == "steps":
        candidates = [work / "final" / "finetune_long", work / "final" / "finetune", last / "b"]
        source_w = next(c / "weights.caffemodel" for c in candidates if (c / "weights.caffemodel").exists())
        folded = out / "folded"
        rebirth_into(folded, ["slim", str(last / "slim" / "deploy.prototxt"), "-w", str(source_w), "--train-val",
                              str(last / "slim" / "train_val.prototxt"), "--rules", "pool_into_fc", "-o", str(folded)])
        parent = (folded / "deploy.prototxt", folded / "init.caffemodel", folded / "train_val.prototxt")
        whose = f"{source_w.parent.name}'s Slim net, pool5 folded"
    else:       # the one-go slim net (its pool5 already folded by `rebirth slim`'s defaults), row 9R's or 9RL's weights
        source_w, whose = tucker_source(work, args.tucker_from)
        if source_w is None:
            return None
        rec = work / "recover" / "slim"
        parent = (rec / "deploy.prototxt", source_w, rec / "train_val.prototxt")
    floor = [] if kind == "ratio" else ["--rank-floor", str(tucker_floor(args, kind))]
    rebirth_into(slim_dir, ["tucker", str(parent[0]), str(parent[1]), f"--{kind}", str(ratio), *floor,
                            "--train-val", str(parent[2]), "-o", str(slim_dir)])
    label = {"ratio": "ratio", "macs": "MAC budget", "time": "time budget"}[kind] + f" {ratio:g}"
    label += f" of {whose}"
    label += ", distilled against Slim" if args.tucker_distill else ""
    label += "" if args.tucker_iters else ", relearned (no fine-tuning)"
    row = {"step": "T", "folder": out.name, "slim": f"Slim-Tucker ({label})", "layers": len(netio.read_net(slim_dir / "deploy.prototxt").layer),
           "memory_bytes": Graph(netio.read_net(slim_dir / "deploy.prototxt"), strict=False).memory_bytes}
    row["before_relearn"] = evaluate_net(slim_dir / "deploy.prototxt", slim_dir / "init.caffemodel", work, tv_path,
                                         args.eval_images)
    train, held = held_out_split(str(work / "fmnist_train_lmdb"))
    if (out / "relearn" / "relearn.json").exists():
        doc = json.loads((out / "relearn" / "relearn.json").read_text())
    else:        # relearn's defaults (`rebirth relearn SLIM --images "$L[:58000]"`)
        doc = rl.relearn_dir(slim_dir, train, out / "relearn", options=rl.Options())
    row["relearn_a"] = [{"unit": u["name"], "error": u["error"], "kept": u["kept"]} for u in doc["units"]]
    row["relearn_only"] = evaluate_net(slim_dir / "deploy.prototxt", out / "relearn" / "weights.caffemodel", work,
                                       tv_path, args.eval_images)
    final = out / "relearn" / "weights.caffemodel"
    row["relearn_finetune"] = row["relearn_only"]     # --tucker-iters 0: straight to the merge
    try:
        if args.tucker_iters:
            if not finished_run(out / "finetune", args.tucker_iters, final, args.tucker_distill):
                ft.finetune(slim_dir, data.open_source(train), data.open_source(held),
                            iters=args.tucker_iters, base_lr=args.tucker_lr,
                            test_interval=max(args.tucker_iters // 10, 1), snapshot=0, distill=args.tucker_distill,
                            weights=str(final), outdir=out / "finetune", progress=None)
            final = out / "finetune" / "weights.caffemodel"
            row["relearn_finetune"] = evaluate_net(slim_dir / "deploy.prototxt", final, work, tv_path,
                                                   args.eval_images)
            row["finetune"] = {"iters": args.tucker_iters, "base_lr": args.tucker_lr or "finetune's default",
                               "mode": "distilled against the Slim net" if args.tucker_distill else "labels"}
    except RebirthError as exc:   # reported in the row, the relearned net is timed instead
        row["finetune_error"] = str(exc)
    timed = slim_dir
    if (args.tucker_merge_iters or args.tucker_distill_more) and "finetune_error" not in row:
        timed, final = tucker_merged(out, slim_dir, final, train, held, args, row)
    row.update(latency(TEACHER, work / "teacher" / "teacher.caffemodel", timed / "deploy.prototxt",
                       final, args.bench_runs))
    row["params"] = Graph(netio.read_net(timed / "deploy.prototxt"), strict=False).totals()["params"]
    row["seconds"] = round(time.time() - t0, 1)
    done.write_text(json.dumps(row, indent=2))
    log(f"Slim-Tucker: relearn only top-1 {row['relearn_only']['top1']:.4f}; relearn+finetune top-1 "
        f"{row['relearn_finetune']['top1']:.4f}; {row['best_ratio']:.2f}x faster (best); {row['seconds']} s")
    return row


def stage_tucker_distill(work: Path, args) -> list[dict]:
    """Rows T+D: each merged Slim-Tucker net the Tucker stage finished (the weights its merged
    fine-tune kept; with --tucker-merge-iters 0, the merge of the relearned weights) distilled
    with labels against the original teacher, ``--tucker-distill-more`` iterations of `rebirth
    finetune --distill --with-labels --teacher` at finetune's defaults (a `tucker` output's report
    names the Slim net it came from; the teacher is the better model to learn from), into
    merged/distill. The same net as its T row, so its speed is that row's."""
    if not args.tucker_distill_more or not args.tucker:
        return []
    rows = []
    made = [tucker_folder(work, args, value, kind) for kind, value in tucker_budgets(args)]
    for row in [dict(json.loads((f / "tucker.json").read_text()), folder=f.name)    # the T rows finished
                for f in made if (f / "tucker.json").exists()]:
        out = work / row["folder"]
        merged = out / "merged"
        done = merged / ("distill_long_row.json" if args.tucker_distill_longer else "distill_row.json")
        if done.name != "distill_row.json" and (merged / "distill_row.json").exists():
            rows.append(json.loads((merged / "distill_row.json").read_text()))     # its T+D row, for the table
        if done.exists():
            rows.append(json.loads(done.read_text()))
            continue
        if "merged" not in row:
            continue
        t0 = time.time()
        train, held = held_out_split(str(work / "fmnist_train_lmdb"))
        teacher = ["--teacher", str(TEACHER), "--teacher-weights", str(work / "teacher" / "teacher.caffemodel")]
        start = kept_weights(merged / "finetune") if row["merged"]["iters"] else merged / "init.caffemodel"
        rebirth_into(merged / "distill", ["finetune", str(merged), "--weights", str(start),
                                          "--distill", "--with-labels", *teacher, "--iters",
                                          str(args.tucker_distill_more), "--train", train, "--val", held, "-o",
                                          str(merged / "distill")], record="finetune.json")
        got = dict(row, step="T+D", slim=f"{row['slim']}, merged, then {args.tucker_distill_more} iterations of "
                   "distillation with labels against the teacher")
        run = merged / "distill"
        if args.tucker_distill_longer:     # that run resumed from its last snapshot on one longer schedule
            total = args.tucker_distill_more + args.tucker_distill_longer
            resume_longer(merged, run, merged / "distill_long", total, train, held, teacher)
            run = merged / "distill_long"
            got.update(step="T+D+", slim=f"{got['slim']}, resumed to {total}")
        got["relearn_finetune"] = evaluate_net(merged / "deploy.prototxt", kept_weights(run), work,
                                               work / "teacher" / "train_val.prototxt", args.eval_images)
        got["weights_from"] = run.name
        rows.append(finished(got, done, t0, f"Slim-Tucker distilled: {got['relearn_finetune']['top1']:.4f}"))
    return rows


def rebirth_into(where: Path, cmd: list[str], record: str = "report.json") -> None:
    """Run `rebirth CMD --json` (a command that writes ``where``/``record``) unless ``where`` holds
    that record already."""
    if (where / record).exists():
        return
    proc = subprocess.run([sys.executable, "-m", "deeprebirth.cli", *cmd, "--json"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"rebirth {cmd[0]} (into {where}) failed: {proc.stderr.strip()}")


def tucker_merged(out: Path, slim_dir: Path, weights: Path, train: str, held: str, args, row: dict):
    """The fine-tuned Tucker net with each inception's branch-end 1x1 convolutions merged into one
    after its Concat (`rebirth slim --rules merge_concat_1x1`, exact: block-diagonal weights), then
    fine-tuned ``--tucker-merge-iters`` more at half the Tucker rate (where a run twice as long would
    be halfway): the zero blocks start learning how the branches mix, at no cost in time.
    Returns (the merged net's folder, its final weights); ``row`` gets its top-1 before and after."""
    from deeprebirth.learning import finetune as ft
    from deeprebirth.learning import sources as data  # noqa: PLC0415

    merged = out / "merged"
    rebirth_into(merged, ["slim", str(slim_dir / "deploy.prototxt"), "-w", str(weights), "--train-val",
                          str(slim_dir / "train_val.prototxt"), "--rules", "merge_concat_1x1", "-o", str(merged)])
    tv_path = out.parent / "teacher" / "train_val.prototxt"
    start = merged / "init.caffemodel"
    lr = (args.tucker_lr or 0.01) / 2
    if not args.tucker_merge_iters:      # merged only: --tucker-distill-more trains it
        row["merged"] = {"iters": 0, "before": row["relearn_finetune"], "after": row["relearn_finetune"]}
        graph = Graph(netio.read_net(merged / "deploy.prototxt"), strict=False)
        row["layers"], row["memory_bytes"] = len(graph.nodes), graph.memory_bytes
        return merged, start
    if not finished_run(merged / "finetune", args.tucker_merge_iters, start):
        ft.finetune(merged, data.open_source(train), data.open_source(held), iters=args.tucker_merge_iters,
                    base_lr=lr, test_interval=max(args.tucker_merge_iters // 5, 1), snapshot=0, weights=str(start),
                    outdir=merged / "finetune", progress=None)
    final = merged / "finetune" / "weights.caffemodel"
    row["merged"] = {"iters": args.tucker_merge_iters, "base_lr": lr, "before": row["relearn_finetune"],
                     "after": evaluate_net(merged / "deploy.prototxt", final, out.parent, tv_path, args.eval_images)}
    row["relearn_finetune"] = row["merged"]["after"]
    graph = Graph(netio.read_net(merged / "deploy.prototxt"), strict=False)
    row["layers"], row["memory_bytes"] = len(graph.nodes), graph.memory_bytes
    return merged, final


def stage_final(work: Path, args) -> dict | None:
    """The last step's relearn + fine-tune net fine-tuned longer (``--final-iters``, finetune's
    default schedule: every layer from 0.01, annealed to 0): how close a longer schedule (the paper
    fine-tunes each step for ~90,000 iterations) comes to the teacher."""
    from deeprebirth.learning import finetune as ft
    from deeprebirth.learning import sources as data  # noqa: PLC0415

    out = work / "final"
    done = out / "final.json"
    if done.exists():
        return json.loads(done.read_text())
    last = work / "steps" / f"{len(STEPS)}_{STEPS[-1][0]}"
    if not (last / "step.json").exists() or not args.final_iters:
        return None
    t0 = time.time()
    step = json.loads((last / "step.json").read_text())
    if not finished_run(out / "finetune", args.final_iters, last / "b" / "weights.caffemodel"):
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        ft.finetune(last / "slim", data.open_source(str(work / "fmnist_train_lmdb")), None, iters=args.final_iters,
                    test_interval=0, snapshot=0, weights=str(last / "b" / "weights.caffemodel"),
                    outdir=out / "finetune", progress=None)
    tv_path = work / "teacher" / "train_val.prototxt"
    row = {key: step[key] for key in ("layers", "memory_bytes", "best_ratio", "median_ratio", "paired_ratio")}
    row.update({"step": f"{len(STEPS)}+", "slim": f"{STEPS[-1][0]}, then {args.final_iters} more fine-tuning iterations",
                "relearn_only": step["relearn_only"]})
    row["relearn_finetune"] = evaluate_net(last / "slim" / "deploy.prototxt", out / "finetune" / "weights.caffemodel",
                                           work, tv_path, args.eval_images)
    row["seconds"] = round(time.time() - t0, 1)
    done.write_text(json.dumps(row, indent=2))
    log(f"final fine-tune: top-1 {row['relearn_finetune']['top1']:.4f}; {row['seconds']} s")
    return row


# ----------------------------------------------------------------------------------------------
# shipping the table's nets (models/fmnist_*_slim*/)

MODELS = ROOT / "models"


def shipped_train_val(slim_train_val: Path, data_from: Path, made_by: str = "scripts/reproduce_table3.py") -> str:
    """The slim net's train_val with the data layers of the shipped teacher train_val (whose
    sources are relative and whose TEST layer is the preprocessing `rebirth eval` reads), in place
    of this run's layers (sources under WORK)."""
    body = [layer for layer in netio.read_net(slim_train_val).layer if layer.type != "Data"]
    data = [layer for layer in netio.read_net(data_from).layer if layer.type == "Data"]
    net = pb.NetParameter(name=netio.read_net(slim_train_val).name)
    net.layer.extend(data + body)
    return trainfiles.render_net(net, [f"{slim_train_val.parent.name}: the slim body, data layers of {data_from.name} "
                                        f"({made_by} --ship)"])


SHIP_RULES = {"pool_into_fc": "its global average pooling is folded into the classifier",
              "merge_concat_1x1": "the 1x1 convolutions that end each inception's branches are merged into one "
                                  "after its Concat"}


def fold_head(deploy: Path, weights: Path, train_val_text: str) -> tuple[dict[str, bytes | str], list[str]] | None:
    """The exact rules of ``SHIP_RULES`` on a finished net (the table's steps slim with --only, which
    leaves pool5 alone; a Tucker net ends its branches with 1x1 convolutions): its deploy.prototxt,
    init.caffemodel and train_val.prototxt, and the rules that changed it; None when none applies."""
    from deeprebirth.graph.model import load_model  # noqa: PLC0415
    from deeprebirth.transforms import slim as slim_api  # noqa: PLC0415

    model = load_model(deploy, weights)
    model.source = "the table's net (scripts/reproduce_table3.py)"   # no path of the run in a shipped file
    try:
        out = slim_api.slim(model, rules=list(SHIP_RULES),
                            train_val=netio.parse_net_text(train_val_text, "train_val.prototxt"))
    except RebirthError:     # nothing to fold (no global pooling, no such Concat, or the guards refused)
        return None
    return slim_api.render(out), list(dict.fromkeys(c.rule for c in out.result.changes))


def ship_folder(name: str, deploy: Path, weights: Path, train_val_text: str, row: dict, how: str,
                bench: tuple[Path, Path, int] | None = None, made_by: str = "scripts/reproduce_table3.py") -> Path:
    """models/NAME/ with deploy.prototxt, weights.caffemodel, train_val.prototxt and README.md,
    written in a temporary folder and renamed over the previous one (ours: its README.md says it
    was made by this script or by ``made_by``, another of ours). The global pooling is folded into the classifier first (``fold_head``,
    exact); ``bench`` (teacher deploy, teacher weights, runs) times the shipped net against it."""
    dest = MODELS / name
    readme = dest / "README.md"
    ours = ("Made by `scripts/reproduce_table3.py`", f"Made by `{made_by}`")
    if dest.exists() and not (readme.exists() and any(m in readme.read_text(errors="replace") for m in ours)):
        raise SystemExit(f"{dest} exists and was not written by this script: left alone")
    tmp = MODELS / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    got = fold_head(deploy, weights, train_val_text)
    if got is None:      # no path of the run in a shipped file: the header names the table's net
        header = re.compile(r"^(# Slimmed by .*? from ).*$", re.M)
        (tmp / "deploy.prototxt").write_text(header.sub(rf"\1the table's net ({made_by})", deploy.read_text()))
        shutil.copyfile(weights, tmp / "weights.caffemodel")
        (tmp / "train_val.prototxt").write_text(train_val_text)
    else:
        folded, applied = got
        for src, dst in (("deploy.prototxt", "deploy.prototxt"), ("init.caffemodel", "weights.caffemodel"),
                         ("train_val.prototxt", "train_val.prototxt")):
            content = folded[src]
            (tmp / dst).write_bytes(content if isinstance(content, bytes) else content.encode())
        done = "; ".join(f"{SHIP_RULES[r]} (rule `{r}`)" for r in applied)
        how += f" Then {done}: exact rewrites, so the accuracy below is unchanged by them."
    if bench is not None:
        row = dict(row, **latency(bench[0], bench[1], tmp / "deploy.prototxt", tmp / "weights.caffemodel", bench[2]))
    top = row["relearn_finetune"]
    (tmp / "README.md").write_text(
        f"# {name}\n\n{how}\n\nMade by `{made_by}` (row {row['step']}: {row['slim']}).\n\n"
        f"* top-1 {100 * top['top1']:.2f} %, top-5 {100 * top['top5']:.2f} % on the {top['n']:,} Fashion-MNIST test images\n"
        + (f"* {row['best_ratio']:.2f}x faster than its teacher at batch 1 (best runs; {row['median_ratio']:.2f}x medians"
           + (f", {row['paired_ratio']:.2f}x the median of run-by-run ratios" if "paired_ratio" in row else "")
           + "), measured side by side in pycaffe when it was shipped; the best-run ratio varies by several tenths "
           "from one measurement to the next on this shared machine\n" if "best_ratio" in row else "")
        + f"\nCheck it:\n\n```sh\n.venv/bin/rebirth eval models/{name} --data fashion-mnist:test --json\n"
        f".venv/bin/rebirth bench {row.get('bench_teacher', 'fmnist_googlenet')} models/{name}"
        + (f" -w {row['bench_teacher_weights']} -w models/{name}/weights.caffemodel" if "bench_teacher_weights" in row else "")
        + "\n```\n")
    old = MODELS / f".{name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)
    log(f"shipped {dest}")
    return dest


def prefer_longer(row: dict, weights: Path, longer: Path, deploy: Path, work: Path, what: str) -> tuple[dict, Path]:
    """``longer``'s weights and a copy of ``row`` evaluated on them when a longer run was made
    (a `rebirth finetune` into ``longer``'s folder, named in the row by ``what``); else as given."""
    if not longer.exists():
        return row, weights
    run = json.loads((longer.parent / "finetune.json").read_text())
    how = (f"resumed at iteration {run['start_iteration']:,} to {run['iterations']:,}" if run.get("resumed_from")
           else f"{run['iterations']:,} iterations from {Path(run.get('start_weights') or 'init').parent.name}/")
    mode = {"distill": ", distillation", "distill+labels": ", distillation with labels"}.get(run.get("mode"), "")
    row = dict(row, slim=f"{row['slim']}; shipped: {what} ({longer.parent.name}/: {how}{mode}, base_lr "
                         f"{run['base_lr']:.2g}, {run.get('schedule', 'anneal')})")
    row["relearn_finetune"] = evaluate_net(deploy, longer, work, work / "teacher" / "train_val.prototxt")
    return row, longer


def ship(work: Path, rows: list[dict], tucker_dir: str | None, runs: int = 50, labels: str = "steps") -> None:
    """The table's final nets as models/ folders: Slim (labels; ``labels`` "steps": row 9+, else 9;
    "distill": row 9RL), label-free (9R, else 9L), Slim-Tucker (``tucker_dir``, e.g.
    tucker_macs_0.5) and the BN teacher's slim net, each timed against its teacher as shipped
    (``runs`` interleaved runs)."""
    bench = (TEACHER, work / "teacher" / "teacher.caffemodel", runs)
    last = work / "steps" / f"{len(STEPS)}_{STEPS[-1][0]}"
    tv = MODELS / "fmnist_googlenet_train_val.prototxt"
    by_step = {str(r["step"]): r for r in rows}
    final = work / "final" / "finetune" / "weights.caffemodel"
    slim_row = by_step.get(f"{len(STEPS)}+") if final.exists() else by_step.get(str(len(STEPS)))
    if labels == "distill":
        if f"{len(STEPS)}RL" not in by_step:
            raise SystemExit("--ship-labels distill: row 9RL was not run (--recover-iters and --labels-distill-iters)")
        rec = work / "recover"
        row, weights = by_step[f"{len(STEPS)}RL"], kept_weights(work / "labels_distill" / "finetune")
        if f"{len(STEPS)}RL+" in by_step:      # --labels-distill-more: the resumed, longer run
            row, weights = prefer_longer(row, weights, kept_weights(work / "labels_distill" / "finetune_long"),
                                         rec / "slim" / "deploy.prototxt", work, "a longer distillation")
        ship_folder("fmnist_googlenet_slim", rec / "slim" / "deploy.prototxt", weights,
                    shipped_train_val(rec / "slim" / "train_val.prototxt", tv), row,
                    "GoogLeNet-Slim of the Fashion-MNIST teacher (`models/fmnist_googlenet.*`), recovered with labels: "
                    "`rebirth slim` at its defaults, relearn of each unit against the teacher's feature maps (as "
                    "`rebirth recover` does), then `rebirth finetune --distill --with-labels`: the teacher's logits and "
                    "the labels, the two losses summed. `rebirth slim`'s default rules have already folded its global "
                    "average pooling into the classifier (rule `pool_into_fc`, exact).", bench)
    elif slim_row:
        slim_row, final = prefer_longer(slim_row, final,
                                        work / "final" / "finetune_long" / "weights.caffemodel",
                                        last / "slim" / "deploy.prototxt", work, "a longer fine-tuning")
        ship_folder("fmnist_googlenet_slim", last / "slim" / "deploy.prototxt",
                    final if final.exists() else last / "b" / "weights.caffemodel",
                    shipped_train_val(last / "slim" / "train_val.prototxt", tv), slim_row,
                    "GoogLeNet-Slim of the Fashion-MNIST teacher (`models/fmnist_googlenet.*`), recovered with labels: "
                    "relearn of each unit, then fine-tuning.", bench)
    if f"{len(STEPS)}R" in by_step:     # the label-free command as users run it
        rec = work / "recover"
        ship_folder("fmnist_googlenet_slim_labelfree", rec / "slim" / "deploy.prototxt",
                    rec / "recovered" / "weights.caffemodel",
                    shipped_train_val(rec / "slim" / "train_val.prototxt", tv), by_step[f"{len(STEPS)}R"],
                    "GoogLeNet-Slim recovered without reading a label (`rebirth recover`): relearn of each unit "
                    "against the teacher's feature maps, then distillation of the whole net against the teacher's "
                    "logits. `rebirth slim`'s default rules have already folded its global average pooling into the "
                    "classifier (rule `pool_into_fc`, exact).", bench)
    elif f"{len(STEPS)}L" in by_step:
        row, weights = prefer_longer(by_step[f"{len(STEPS)}L"], work / "labelfree" / "distill" / "weights.caffemodel",
                                     work / "labelfree" / "distill_long" / "weights.caffemodel",
                                     last / "slim" / "deploy.prototxt", work, "a longer distillation")
        ship_folder("fmnist_googlenet_slim_labelfree", last / "slim" / "deploy.prototxt", weights,
                    shipped_train_val(last / "slim" / "train_val.prototxt", tv), row,
                    "GoogLeNet-Slim recovered without reading a label: relearn of each unit against the teacher's "
                    "feature maps, then distillation of the whole net against the teacher's logits.", bench)
    if tucker_dir:
        t = work / tucker_dir
        row = json.loads((t / "tucker.json").read_text())
        how = ("GoogLeNet-Slim-Tucker: the Slim net, its global average pooling folded into the classifier (rule "
               "`pool_into_fc`, exact), decomposed (`rebirth tucker`), relearned against that Slim net"
               + (", then fine-tuned with labels." if "finetune" in row else "."))
        distilled = next((r for step in ("T+D+", "T+D") for r in rows          # the longer run, when made
                          if r.get("step") == step and r.get("folder") == tucker_dir), None)
        if "merged" in row and row["merged"]["iters"]:     # the merged net, fine-tuned further (tucker_merged)
            net, weights = t / "merged", kept_weights(t / "merged" / "finetune")
            how += (f" Then each inception's branch-end 1x1 convolutions merged into one after its Concat (rule "
                    f"`merge_concat_1x1`, exact) and the merged net fine-tuned {row['merged']['iters']:,} more "
                    f"iterations (top-1 {100 * row['merged']['before']['top1']:.2f} % before them).")
        elif "merged" in row:      # merged only, then distilled (--tucker-merge-iters 0)
            net, weights = t / "merged", t / "merged" / "init.caffemodel"
            how += (" Then each inception's branch-end 1x1 convolutions merged into one after its Concat (rule "
                    "`merge_concat_1x1`, exact).")
        if "merged" in row:
            if distilled:          # --tucker-distill-more: then distilled against the teacher
                how += (f" Then distilled with labels against the teacher (`rebirth finetune --distill --with-labels "
                        f"--teacher`; top-1 {100 * row['merged']['after']['top1']:.2f} % before).")
                row, weights = dict(distilled), kept_weights(t / "merged" / distilled.get("weights_from", "distill"))
        else:
            net = t / "slim"
            row, weights = prefer_longer(row, t / "finetune" / "weights.caffemodel",
                                         t / "finetune_long" / "weights.caffemodel", net / "deploy.prototxt",
                                         work, "a longer fine-tuning")
        ship_folder("fmnist_googlenet_slim_tucker", net / "deploy.prototxt",
                    weights if weights.exists() else t / "relearn" / "weights.caffemodel",
                    shipped_train_val(net / "train_val.prototxt", tv), row, how, bench)
    bn = work / "bn_teacher"
    if (bn / "bn.json").exists():
        row = dict(json.loads((bn / "bn.json").read_text()), bench_teacher="models/fmnist_resnet.prototxt",
                   bench_teacher_weights="models/fmnist_resnet.caffemodel")
        ship_folder("fmnist_resnet_slim", bn / "slim" / "deploy.prototxt", bn / "finetune" / "weights.caffemodel",
                    shipped_train_val(bn / "slim" / "train_val.prototxt", MODELS / "fmnist_resnet_train_val.prototxt"),
                    row, "The BatchNorm ResNet teacher (`models/fmnist_resnet.*`) slimmed: its BatchNorm/Scale folded "
                    "into the convolutions, conv1 + pool1 merged and relearned, then fine-tuned with labels at the "
                    "defaults.", (MODELS / "fmnist_resnet.prototxt", MODELS / "fmnist_resnet.caffemodel", runs))


def table(rows: list[dict], teacher: dict) -> str:
    lines = ["| step | slim layer(s) | top-1, relearn only | top-5, relearn only | top-1, relearn + fine-tune | "
             "top-5, relearn + fine-tune | speed-up (best / median) | blob memory | layers |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        a, b = r["relearn_only"], r["relearn_finetune"]
        speed = "1.00x" if r["step"] == 0 else f"{r['best_ratio']:.2f}x / {r['median_ratio']:.2f}x"
        lines.append(f"| {r['step']} | {r['slim']} | {100 * a['top1']:.2f}% | {100 * a['top5']:.2f}% | "
                     f"{100 * b['top1']:.2f}% | {100 * b['top5']:.2f}% | {speed} | "
                     f"{r['memory_bytes'] / 1024:.0f} KB | {r['layers']} |")
    return "\n".join(lines) + "\n"


def bn_table(rows: list[dict]) -> str:
    bn = [r for r in rows if r.get("step") == "BN"]
    if not bn:
        return ""
    r = bn[0]
    return ("\n| BatchNorm teacher | top-1 teacher | top-1 relearn only | top-1 relearn + fine-tune | speed-up (best / "
            "median) |\n|---|---:|---:|---:|---:|\n"
            f"| {r['slim']} | {100 * r['teacher']['top1']:.2f}% | {100 * r['relearn_only']['top1']:.2f}% | "
            f"{100 * r['relearn_finetune']['top1']:.2f}% | {r['best_ratio']:.2f}x / {r['median_ratio']:.2f}x |\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "table3")
    ap.add_argument("--teacher-iters", type=int, default=3000)
    ap.add_argument("--teacher-batch", type=int, default=64)
    ap.add_argument("--teacher-weights", type=Path, help="use these trained teacher weights instead of training")
    ap.add_argument("--train-images", type=int, help="put only the first N training images in the LMDB")
    ap.add_argument("--test-images", type=int, help="put only the first N test images in the LMDB")
    ap.add_argument("--stage", choices=["data", "teacher", "steps", "all"], default="all")
    ap.add_argument("--relearn-images", type=int, default=1000, help="training images per relearned unit")
    ap.add_argument("--relearn-iters", type=int, default=200, help="SGD iterations per relearned unit")
    ap.add_argument("--relearn-lr", type=float, default=0.01)
    ap.add_argument("--relearn-max-scale", type=float, default=0.0,
                    help="relearn's --max-weight-scale for the steps (0: off, as the README's table was measured; "
                         "Slim-Tucker always uses 10, without which its fine-tuning diverges)")
    ap.add_argument("--finetune-iters", type=int, default=300, help="fine-tuning iterations per step (batch 64)")
    ap.add_argument("--finetune-lr", type=float, default=0.001, help="base_lr of the fine-tuning (x10 on new layers)")
    ap.add_argument("--bench-runs", type=int, default=100, help="timed runs of each net per step")
    ap.add_argument("--final-iters", type=int, default=2000,
                    help="fine-tune the last step's net this much longer for an extra row (0: skip)")
    ap.add_argument("--tucker-iters", type=int, default=2000, help="fine-tuning iterations of Slim-Tucker "
                    "with labels after its relearn (0: none, the relearned net goes to the merge)")
    ap.add_argument("--tucker-lr", type=float, default=None,
                    help="its base_lr (default: finetune's default schedule)")
    ap.add_argument("--tucker-distill", action="store_true",
                    help="fine-tune Slim-Tucker against the Slim net's logits (finetune --distill) instead of labels")
    ap.add_argument("--tucker-ratios", type=lambda t: [float(x) for x in t.split(",")], default=[0.5, 0.65, 0.8],
                    help="Slim-Tucker weight budgets, comma-separated: one row each (a speed/accuracy curve)")
    ap.add_argument("--tucker-macs", type=lambda t: [float(x) for x in t.split(",")], default=None,
                    help="instead of --tucker-ratios: `rebirth tucker --macs` budgets, comma-separated, one row each")
    ap.add_argument("--tucker-from", choices=["steps", "recover", "labels_distill"], default="steps",
                    help="the Slim net Slim-Tucker decomposes: the step-by-step chain's (row 9+), row 9R's or row "
                         "9RL+'s (else 9RL's; the one-go slim net); the folder gets the name as a suffix unless steps")
    ap.add_argument("--tucker-merge-iters", type=int, default=0,
                    help="then merge each inception's branch-end 1x1s (merge_concat_1x1, exact) and fine-tune the "
                         "merged net this many more iterations at half --tucker-lr (0: do not; with --tucker-distill-more the "
                         "merge is made all the same, and that distillation starts from it)")
    ap.add_argument("--tucker-time", type=lambda t: [float(x) for x in t.split(",")], default=None,
                    help="instead of --tucker-ratios or --tucker-macs: `rebirth tucker --time` budgets, comma-separated")
    ap.add_argument("--tucker-floor", type=float, default=None, metavar="F",
                    help="with --tucker-time or --tucker-macs: `rebirth tucker --rank-floor F` (default: tucker's, "
                         "1/8; the rows measured before the floor existed: 0); the folder gets _floorF unless 0")
    ap.add_argument("--distill-iters", type=int, default=2000,
                    help="distillation iterations that finish the label-free chain (0: skip)")
    for flag, what in (   # the extra rows' iterations (0: skip the row)
            ("--recover-iters", "also the label-free row as a user runs it: `rebirth slim` of the teacher, then "
                                "`rebirth recover --iters N` (row 9R)"),
            ("--labels-distill-iters", "after the recover stage: its relearned net distilled with labels too, "
                                       "`rebirth finetune --distill --with-labels --iters N` (row 9RL)"),
            ("--labels-distill-more", "row 9RL resumed from its last snapshot for N more iterations on one longer "
                                      "schedule (row 9RL+; with --ship-labels distill, the shipped labelled net)"),
            ("--tucker-distill-more", "each merged Slim-Tucker net distilled with labels against the teacher N more "
                                      "iterations (rows T+D; with --ship-tucker, the shipped weights)"),
            ("--tucker-distill-longer", "with --tucker-distill-more: that run resumed from its last snapshot for N "
                                        "more iterations (rows T+D+, shipped with --ship-tucker instead)")):
        ap.add_argument(flag, type=int, default=0, help=f"{what}; 0: skip")
    ap.add_argument("--bn-teacher", nargs=3, metavar=("DEPLOY", "WEIGHTS", "TRAIN_VAL"),
                    help="also slim, relearn and fine-tune this BatchNorm teacher (one row)")
    ap.add_argument("--bn-finetune-iters", type=int, default=1000)
    ap.add_argument("--time-budget", type=float, default=None,
                    help="minutes; the optional stages (final, label-free, Tucker, BN) are skipped once it is spent")
    ap.add_argument("--no-tucker", dest="tucker", action="store_false",
                    help="skip the Slim-Tucker row after the last step")
    ap.add_argument("--steps", type=int, default=len(STEPS), help="run only the first N steps")
    ap.add_argument("--ship", action="store_true",
                    help="copy the final nets into models/fmnist_googlenet_slim*/ and models/fmnist_resnet_slim/")
    ap.add_argument("--ship-labels", choices=["steps", "distill"], default="steps",
                    help="with --ship: the labelled Slim net to ship, the step-by-step chain (row 9+) or row 9RL")
    ap.add_argument("--ship-tucker", metavar="DIR", help="with --ship: the Slim-Tucker row to ship (e.g. tucker_macs_0.5)")
    ap.add_argument("--eval-images", type=int, default=None, help="evaluate on the first N test images (default: all)")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    stage_data(args.work, {"train": args.train_images, "test": args.test_images})
    if args.stage == "data":
        return 0
    t = stage_teacher(args.work, args.teacher_iters, args.teacher_batch, args.teacher_weights)
    log(f"teacher: {t}")
    if args.stage == "teacher":
        return 0
    started = time.time()
    rows = stage_steps(args.work, args)
    extra = [stage_final, stage_labelfree, stage_recover, stage_labels_distill, stage_labels_distill_more]
    extra += ([stage_tucker, stage_tucker_distill] if args.tucker else []) + [stage_bn_teacher]
    for stage in extra if args.steps == len(STEPS) else [stage_bn_teacher]:
        if args.time_budget is not None and time.time() - started > 60 * args.time_budget:
            log(f"time budget of {args.time_budget:g} min spent: {stage.__name__} skipped")
            continue
        got = stage(args.work, args)
        rows += got if isinstance(got, list) else [got] if got else []
    md = table([r for r in rows if r.get("step") != "BN"], t) + bn_table(rows)
    (args.work / "table3.md").write_text(md)
    (args.work / "table3.json").write_text(json.dumps({"teacher": t, "rows": rows, "args": {
        k: str(v) for k, v in vars(args).items()}}, indent=2))
    print(md)
    if args.ship:
        ship(args.work, rows, args.ship_tucker, args.bench_runs, args.ship_labels)
    return 0


if __name__ == "__main__":
    sys.exit(main())
