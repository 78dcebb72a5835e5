"""Measure label-free distillation of a slim net from given weights, as `rebirth finetune --distill`
sets it up (its TRAIN net, solver and safe defaults), with one setting changed at a time: the rate,
weight decay, gradient clipping, momentum, warm-up. Prints one JSON line per validation: the mean
loss since the last, and the relative output error, KL and agreement against the teacher on
held-out images; with --grad, the raw gradient norm per layer and each layer's step relative to
its weights for the first steps. docs/recovery.md gives the runs and what they showed.

    .venv/bin/python scripts/measure_distill.py SLIM_DIR WEIGHTS --lr 0.01 --iters 400 --every 50
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from deeprebirth.caffe import proto as pb
from deeprebirth.caffe.folders import read_slim_dir
from deeprebirth.graph.model import load_model
from deeprebirth.learning import evaluate as ev
from deeprebirth.learning import preprocess
from deeprebirth.learning import solver as sv
from deeprebirth.learning import sources as data
from deeprebirth.learning.trainnet import DISTILL_LOSS, TEACHER_LOGITS, build_train_net


def _args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("slim", help="a `rebirth slim` output")
    p.add_argument("weights", help="the start weights (a relearn or recover output)")
    p.add_argument("--train", default="fashion-mnist:train[:2700]")
    p.add_argument("--val", default="fashion-mnist:train[58000:58500]")
    p.add_argument("--iters", type=int, default=400)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--lr", type=float, default=0.01, help="base_lr, annealed to 0 (--policy poly)")
    p.add_argument("--wd", type=float, help="weight_decay (default: the solver's)")
    p.add_argument("--clip", type=float, help="clip_gradients (default: finetune's 10)")
    p.add_argument("--momentum", type=float, help="momentum (default: the solver's)")
    p.add_argument("--policy", default="poly", choices=("poly", "fixed"))
    p.add_argument("--warmup", type=int, help="warm-up iterations (default: finetune's)")
    p.add_argument("--grad", action="store_true", help="gradient norms and relative steps of the first 3 steps")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def _norms(net, diff: bool) -> dict[str, float]:
    return {k: float(np.sqrt(sum(np.square((b.diff if diff else b.data).astype(np.float64)).sum() for b in v)))
            for k, v in net.params.items()}


def main() -> None:
    a = _args()
    with tempfile.TemporaryDirectory(prefix="measure-distill-") as work:
        _measure(a, Path(work))


def _measure(a, work: Path) -> None:
    sd = read_slim_dir(a.slim)
    tn = build_train_net(sd, distill=True)
    sparam = sv.make_solver_param(sd, work, a.iters, a.lr)
    safe = sv.safe_defaults(tn.net, sparam, a.seed, True, True, "anneal")
    sparam.lr_policy = a.policy
    for field, value in (("weight_decay", a.wd), ("clip_gradients", a.clip), ("momentum", a.momentum)):
        if value is not None:
            setattr(sparam, field, value)
    warmup = safe.warmup if a.warmup is None else a.warmup
    solver = sv.start_solver(tn.net, sparam, work, start_weights=a.weights)
    net = solver.net
    teacher = ev.Runner.build(ev.load(*sd.teacher()))
    runner = ev.Runner.build(load_model(sd.path / "deploy.prototxt"))
    vpre = preprocess.from_layer(preprocess.data_layer(sd.train_val, pb.TEST), runner.input_shape, base_dir=sd.path,
                                 default=True)
    train, val = data.unlabelled(data.open_source(a.train)), data.open_source(a.val)
    batches = train.batches(tn.pre, tn.batch, train=True, shuffle=True, loop=True, seed=a.seed)
    print("settings", json.dumps({"base_lr": sparam.base_lr, "weight_decay": sparam.weight_decay,
                                  "clip_gradients": sparam.clip_gradients, "momentum": sparam.momentum,
                                  "lr_policy": sparam.lr_policy, "warmup": warmup, "batch": tn.batch}), flush=True)

    def validate(it: int, losses: list[float]) -> None:
        runner.caffe_net.set_weights({k: [b.data for b in v] for k, v in net.params.items()
                                      if k in runner.caffe_net.net.params})
        r = ev.run_evaluation(runner, val, vpre, teacher=teacher)
        print(json.dumps({"it": it, "loss": float(np.mean(losses)) if losses else None, "lr": sv.lr(sparam, it),
                          "rel_error": r["rel_error"], "kl": r["kl"], "agreement": r["agreement"]}), flush=True)

    validate(0, [])
    losses, started = [], time.perf_counter()
    for it in range(a.iters):
        x, _ = next(batches)
        net.blobs[tn.image].data[...] = x
        net.blobs[TEACHER_LOGITS].data[...] = teacher.logits_of(x).reshape(net.blobs[TEACHER_LOGITS].data.shape)
        factor = sv.warmup_factor(warmup, it)
        net.blobs[DISTILL_LOSS].diff[...] = factor
        before = None
        if a.grad and it < 3:
            for v in net.params.values():
                for b in v:
                    b.diff[...] = 0
            net.forward()
            net.backward()
            grads, weights = _norms(net, True), _norms(net, False)
            print("grad", it, json.dumps({"total": float(np.sqrt(sum(g * g for g in grads.values()))),
                                          "per_layer": grads, "weights": weights}), flush=True)
            net.blobs[DISTILL_LOSS].diff[...] = factor
            before = {k: v[0].data.copy() for k, v in net.params.items()}
        solver.step(1)
        if before is not None:
            print("step/weight", it, json.dumps({k: float(np.linalg.norm(net.params[k][0].data - w) /
                                                          max(np.linalg.norm(w), 1e-12)) for k, w in before.items()}),
                  flush=True)
        loss = float(net.blobs[DISTILL_LOSS].data)
        if not np.isfinite(loss):
            print(json.dumps({"it": it + 1, "loss": loss, "diverged": True}))
            break
        losses.append(loss)
        if (it + 1) % a.every == 0:
            validate(it + 1, losses)
            losses = []
    print(json.dumps({"seconds_per_iteration": (time.perf_counter() - started) / max(1, a.iters)}))


if __name__ == "__main__":
    main()
