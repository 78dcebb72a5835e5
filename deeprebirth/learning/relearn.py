"""Layer-wise re-learning of a slim net against its teacher (the paper's Eq. 5), without labels.

DeepRebirth regenerates the layers it merges (a convolution that absorbed a pooling, an inception
block whose branches were folded together) and re-learns them *bottom to top*: each regenerated
substructure is trained to reproduce, at its output, the feature map the original net (the
teacher) computes there, from the slim net's own input to the substructure:

    min_W  sum_images || f_W(x_slim) - y_teacher ||^2                                   (Eq. 5)

A *unit* is one connected piece of the slim net that contains regenerated layers. Blobs are
*matched* when the teacher has the same blob with the same shape (or when a layer both nets share
reads it in both, at the same bottom, with the same shape: then the teacher's blob of that name is
the match). Cutting the slim net at matched blobs leaves connected components; those holding a new
layer are the units. A unit's inputs are the matched blobs it reads, its outputs the matched blobs it
writes, and the teacher's copies of its outputs are its targets. This needs no rule-specific
knowledge: whatever a rule did, the teacher's feature map is the target wherever both nets agree
again.

For each unit, bottom to top (``relearn``):

1. *Targets and inputs* are computed on N training images and M held-out images in Caffe: the
   teacher's output blobs, and the unit's input blobs from the slim net as re-learned so far
   (``input="student"``, the default, so lower errors are corrected rather than compounded) or
   from the teacher (``input="teacher"``).
2. *Teacher initialisation*: a new layer whose teacher namesake has the same weight shapes starts
   from the teacher's weights (e.g. a convolution whose stride absorbed a pooling); one that lost
   output channels (a reducer shrunk by branch slimming) starts from the teacher filters of largest
   L1 norm (the pruning of Li et al. 2017).
3. *Least squares*: a new convolution whose output reaches a target linearly (directly, through a
   Concat at a channel offset, and at most through a ReLU) is solved in closed form, as channel-
   pruning reconstruction does (He et al. 2017): rows are sampled output positions, columns the
   input patches (im2col) plus a bias column, ridge-regularised normal equations
   ``W = (A^T A + lambda I)^-1 A^T Y``. Through a ReLU the target only pins the positions where it
   is positive; elsewhere the pre-activation need only be <= 0. That is solved by alternating
   projections: fit, then replace each zero target by min(prediction, 0), refit (the exact answer,
   when there is one, is a fixed point). With nothing but exact changes in between this recovers the
   exact weights.
4. *SGD* in Caffe: the unit becomes a small net (Input layers for its inputs and targets, its layers,
   one EuclideanLoss per output, weighted by 1/(elements x mean target^2) so the loss is half the
   relative error); only the unit's new layers learn (lr_mult 1, others 0), SGD with momentum 0.9.
   The weights that reconstruct the held-out images best (after least squares or after SGD) are
   kept.
   With a time budget (``Options.time_budget``) each unit gets an equal share of what is left when
   it starts (``unit_deadline``): past it, least squares stops its alternating projections at the
   fit it has (and skips the refinement), and SGD stops where it is or does not start; SGD's weights
   are still kept only when they reconstruct better. Least squares took 90 % of relearn's time on
   the GoogLeNet-style nets here (8-18 s a unit against 0.5 s of SGD), so it is what the bound cuts.

The report gives, per unit, the relative error ``sum (y - t)^2 / sum t^2`` and R^2 of its outputs on
the held-out images at the initial weights, after the teacher/least-squares initialisation and after
SGD, with iterations and seconds.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from deeprebirth import outputs
from deeprebirth.caffe import folders, netio
from deeprebirth.caffe import proto as pb
from deeprebirth.errors import Diverged, RebirthError
from deeprebirth.graph.dag import Graph
from deeprebirth.graph.geometry import conv_geometry
from deeprebirth.learning import preprocess, undo
from deeprebirth.learning.lstsq import patches, prune_filters, r_squared, relative_error, solve_linear
from deeprebirth.transforms import trainfiles
from deeprebirth.transforms.relearn_plan import Unit, selected_units

if TYPE_CHECKING:
    from deeprebirth.learning import sources

OUTPUT_FILES = ("weights.caffemodel", "relearn.json")
"""What relearn writes into its output folder (besides the marker)."""

LS_TYPES = ("Convolution",)

# ----------------------------------------------------------------------------------------------
# The unit as a net of its own


def _unit_layers(student: "pb.NetParameter", unit: Unit) -> list["pb.LayerParameter"]:
    by_name = {layer.name: layer for layer in student.layer}
    out = []
    for name in unit.layers:
        layer = pb.LayerParameter()
        layer.CopyFrom(by_name[name])
        if layer.type == "Dropout":
            continue
        if layer.type == "BatchNorm":
            layer.batch_norm_param.use_global_stats = True
        out.append(layer)
    return out


def unit_net(student: "pb.NetParameter", unit: Unit, shapes: dict[str, tuple[int, ...]],
             batch: int, train: bool = False, loss_weights: dict[str, float] | None = None,
             param_counts: dict[str, int] | None = None) -> "pb.NetParameter":
    """The unit as a net: Input layers for its inputs (and with ``train`` its targets, one
    EuclideanLoss per output), its layers; with ``train`` only the new layers learn."""
    net = pb.NetParameter(name=f"relearn {unit.name}")
    feeds = list(unit.inputs) + ([f"target:{o}" for o in unit.outputs] if train else [])
    for blob in feeds:
        shape = shapes[blob[len("target:"):] if blob.startswith("target:") else blob]
        layer = net.layer.add(name=f"feed:{blob}", type="Input")
        layer.top.append(blob)
        layer.input_param.shape.add(dim=[batch, *shape[1:]])
    new = set(unit.new)
    for layer in _unit_layers(student, unit):
        if train and param_counts and param_counts.get(layer.name):
            del layer.param[:]
            for i in range(param_counts[layer.name]):
                spec = layer.param.add()
                spec.lr_mult = (1.0 if i == 0 else 2.0) if layer.name in new else 0.0
                spec.decay_mult = (1.0 if i == 0 else 0.0) if layer.name in new else 0.0
        net.layer.add().CopyFrom(layer)
    if train:
        for o in unit.outputs:
            loss = net.layer.add(name=f"loss:{o}", type="EuclideanLoss")
            loss.bottom.extend([o, f"target:{o}"])
            loss.top.append(f"loss:{o}")
            loss.loss_weight.append(float((loss_weights or {}).get(o, 1.0)))
    return net


def _flow(student: "pb.NetParameter", unit: Unit, layer_name: str,
          channels: dict[str, int]) -> tuple[str, int, bool] | None:
    """(output blob, channel offset, through a ReLU?) when the new layer's top reaches a unit output
    linearly (directly, through in-place ReLUs, and then at most a channel Concat); else None."""
    layers = [layer for layer in student.layer if layer.name in set(unit.layers)]
    pos = next(i for i, layer in enumerate(layers) if layer.name == layer_name)
    top = layers[pos].top[0]
    relu = False
    for layer in layers[pos + 1:]:
        if top not in layer.bottom:
            continue
        if list(layer.bottom) == [top] and list(layer.top) == [top]:
            if layer.type != "ReLU" or layer.relu_param.negative_slope != 0:
                return None
            relu = True
            continue
        if layer.type == "Concat" and (layer.concat_param.axis in (1, -3)) and top not in unit.outputs:
            offset = 0
            for b in layer.bottom:
                if b == top:
                    break
                offset += channels[b]
            if layer.top[0] in unit.outputs:
                return layer.top[0], offset, relu
            return None
        return (top, 0, relu) if top in unit.outputs else None
    return (top, 0, relu) if top in unit.outputs else None


# ----------------------------------------------------------------------------------------------
# Running (pycaffe)


@dataclass
class Options:
    train_images: int = 1000
    heldout_images: int = 200
    iters: int = 300
    batch: int = 32
    base_lr: float = 0.01
    momentum: float = 0.9
    input: str = "student"          # or "teacher"
    least_squares: bool = True
    teacher_init: bool = True
    max_weight_scale: float | None = 10.0   # least-squares weights at most this x the starting ones' (None: off)
    ls_rows: int = 40_000
    ls_iterations: int = 100        # alternating projections through a ReLU (lstsq.solve_linear)
    ls_refine: bool = True          # then the active-set refinement where affordable (lstsq.solve_linear)
    seed: int = 0
    only: list[str] | None = None
    time_budget: float | None = None  # seconds for the whole run; SGD stops early to keep it (None: no bound)


@dataclass
class UnitResult:
    name: str
    new: list[str]
    inputs: list[str]
    outputs: list[str]
    targets: list[str]
    error: dict = field(default_factory=dict)     # stage -> {"rel": .., "r2": ..}
    init: dict = field(default_factory=dict)      # layer -> "teacher" | "pruned" | "least-squares" | "given"
    iterations: int = 0
    seconds: dict = field(default_factory=dict)
    kept: str = ""
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class _UnitRunner:
    """A unit's own net in pycaffe, fed cached arrays."""

    def __init__(self, student_net, unit: Unit, shapes, weights: netio.Weights, batch: int):
        from deeprebirth.runtime.pycaffe import CaffeNet  # noqa: PLC0415
        self.net = CaffeNet(unit_net(student_net, unit, shapes, batch), weights)
        self.batch = batch

    def set_weights(self, weights: netio.Weights) -> None:
        self.net.set_weights({k: v for k, v in weights.items() if k in self.net.net.params})

    def run(self, feeds: dict[str, np.ndarray], blobs: list[str]) -> dict[str, np.ndarray]:
        return self.net.forward_all(feeds, blobs, self.batch)


def _errors(pred: dict[str, np.ndarray], target: dict[str, np.ndarray]) -> dict:
    p = np.concatenate([pred[k].reshape(len(pred[k]), -1) for k in sorted(pred)], axis=1)
    t = np.concatenate([target[k].reshape(len(target[k]), -1) for k in sorted(target)], axis=1)
    rel = relative_error(p, t)
    r2 = float(np.mean([r_squared(pred[k], target[k]) for k in sorted(pred)]))
    return {"rel": rel, "r2": r2}


@dataclass
class _Run:
    """What every unit of one relearn run shares."""
    student_net: "pb.NetParameter"
    teacher: object                      # the teacher as a CaffeNet
    teacher_weights: netio.Weights
    opt: Options
    shapes: dict[str, tuple[int, ...]]
    param_counts: dict[str, int]
    param_shapes: dict[str, list[tuple[int, ...]]]
    rng: np.random.Generator
    train_images: np.ndarray
    heldout_images: np.ndarray


@dataclass
class _UnitData:
    """A unit's inputs and targets on the training and held-out images (slim-net blob names)."""
    train_in: dict[str, np.ndarray]
    held_in: dict[str, np.ndarray]
    train_t: dict[str, np.ndarray]
    held_t: dict[str, np.ndarray]


def relearn(student_net: "pb.NetParameter", weights: netio.Weights, teacher_net: "pb.NetParameter",
            teacher_weights: netio.Weights, units: list[Unit], train_images: np.ndarray,
            heldout_images: np.ndarray, options: Options | None = None,
            progress: Callable | None = None) -> tuple[netio.Weights, list[UnitResult]]:
    """Re-learn ``units`` of the slim net bottom to top; returns the new weights and a result per
    unit. Images are preprocessed net inputs (N x C x H x W float32). ``progress(done_units,
    n_units, unit, iteration, iterations)`` is called after every SGD iteration and every unit."""
    from deeprebirth.runtime.pycaffe import CaffeNet, import_caffe  # noqa: PLC0415

    opt = options or Options()
    import_caffe()
    weights = {k: [np.array(a, dtype=np.float32) for a in v] for k, v in weights.items()}
    graph = Graph(student_net, strict=False)
    run = _Run(student_net, CaffeNet(teacher_net, teacher_weights), teacher_weights, opt,
               {b: tuple(s) for b, s in graph.shapes.items() if s is not None},
               {n.name: len(n.param_shapes) for n in graph.nodes},
               {n.name: [tuple(s) for s in n.param_shapes] for n in graph.nodes},
               np.random.default_rng(opt.seed), train_images, heldout_images)
    todo = selected_units(units, opt.only)
    results = []
    ends = None if opt.time_budget is None else time.perf_counter() + max(0.0, opt.time_budget)
    for k, unit in enumerate(todo):
        def tick(it, iters, k=k, unit=unit):
            if progress:
                progress(k, len(todo), unit.name, it, iters)
        results.append(_relearn_unit(run, unit, weights, tick, ends, len(todo) - k))
        if progress:
            progress(k + 1, len(todo), unit.name, 0, 0)
    return weights, results


def unit_deadline(now: float, ends: float | None, units_left: int) -> float | None:
    """When a unit's least squares and SGD must stop: an equal share of what the run has left (``ends``, a
    perf_counter time, None: no bound) among the ``units_left`` units still to do, this one included."""
    if ends is None:
        return None
    return now + max(0.0, ends - now) / max(1, units_left)


def _relearn_unit(run: _Run, unit: Unit, weights: netio.Weights, tick: Callable, ends: float | None = None,
                  units_left: int = 1) -> UnitResult:
    """One unit: targets, teacher/least-squares start, SGD (until its share of the time left,
    unit_deadline); ``weights`` updated with the best."""
    opt = run.opt
    t0 = time.perf_counter()
    until = unit_deadline(t0, ends, units_left)
    res = UnitResult(unit.name, unit.new, unit.inputs, unit.outputs, unit.targets)
    d = _unit_data(run, unit, weights)
    runner = _UnitRunner(run.student_net, unit, run.shapes, weights, opt.batch)
    res.error["initial"] = _errors(runner.run(d.held_in, unit.outputs), d.held_t)
    res.seconds["targets"] = round(time.perf_counter() - t0, 2)

    t1 = time.perf_counter()
    if opt.least_squares and opt.teacher_init:
        _start_from_teacher(run, unit, weights, res)
    runner.set_weights(weights)
    if opt.least_squares:
        for name in unit.new:
            if _least_squares_layer(run, unit, name, weights, d, runner, res, until):
                runner.set_weights(weights)
    res.error["least_squares"] = _errors(runner.run(d.held_in, unit.outputs), d.held_t)
    res.seconds["least_squares"] = round(time.perf_counter() - t1, 2)
    best = ("least_squares", res.error["least_squares"]["rel"], {n: weights[n] for n in unit.new if n in weights})
    if res.error["initial"]["rel"] < best[1]:
        best = ("initial", res.error["initial"]["rel"], None)

    t2 = time.perf_counter()
    if opt.iters > 0 and until is not None and until <= t2:
        res.notes.append("no SGD: the time budget was spent before it")
    elif opt.iters > 0:
        learned = _sgd(run, unit, weights, d, tick, res, until)
        if learned is not None:
            runner.set_weights(learned)
            res.error["sgd"] = _errors(runner.run(d.held_in, unit.outputs), d.held_t)
            if res.error["sgd"]["rel"] <= best[1]:
                best = ("sgd", res.error["sgd"]["rel"], learned)
    res.seconds["sgd"] = round(time.perf_counter() - t2, 2)
    res.kept = best[0]
    if best[2] is not None:
        weights.update(best[2])
    else:
        for name in unit.new:
            res.init.pop(name, None)
    res.seconds["total"] = round(time.perf_counter() - t0, 2)
    return res


def _unit_data(run: _Run, unit: Unit, weights: netio.Weights) -> _UnitData:
    """Targets from the teacher; inputs from the slim net as re-learned so far (or the teacher)."""
    from deeprebirth.runtime.pycaffe import CaffeNet  # noqa: PLC0415
    opt = run.opt
    feeds_from = run.teacher if opt.input == "teacher" else CaffeNet(run.student_net, weights)
    in_names = unit.teacher_inputs if opt.input == "teacher" else unit.inputs

    def collect(net, images, blobs):
        return net.forward_all({net.input_names[0]: images}, blobs, opt.batch)

    tr_t = collect(run.teacher, run.train_images, unit.targets)
    ho_t = collect(run.teacher, run.heldout_images, unit.targets)
    tr_in = collect(feeds_from, run.train_images, in_names)
    ho_in = collect(feeds_from, run.heldout_images, in_names)
    return _UnitData({s: tr_in[t] for s, t in zip(unit.inputs, in_names)},
                     {s: ho_in[t] for s, t in zip(unit.inputs, in_names)},
                     {o: tr_t[t] for o, t in zip(unit.outputs, unit.targets)},
                     {o: ho_t[t] for o, t in zip(unit.outputs, unit.targets)})


def _start_from_teacher(run: _Run, unit: Unit, weights: netio.Weights, res: UnitResult) -> None:
    """A new layer with its teacher namesake's weight shapes starts from them; a shrunk one from
    the teacher's filters of largest L1 norm."""
    for name in unit.new:
        theirs = run.teacher_weights.get(name)
        if theirs is None:
            continue
        mine = run.param_shapes[name]
        if [tuple(a.shape) for a in theirs] == mine:
            weights[name] = [a.astype(np.float32).copy() for a in theirs]
            res.init[name] = "teacher"
        else:
            pruned = prune_filters(theirs, mine)
            if pruned is not None:
                weights[name] = [a.astype(np.float32) for a in pruned]
                res.init[name] = "pruned"


def _least_squares_layer(run: _Run, unit: Unit, name: str, weights: netio.Weights, d: _UnitData,
                         runner: _UnitRunner, res: UnitResult, until: float | None = None) -> bool:
    """Solve one new convolution in closed form (module doc, step 3); True when its weights changed.
    Past ``until`` (a perf_counter time) the fit through a ReLU stops where it is (noted)."""
    opt = run.opt
    layer = next(la for la in run.student_net.layer if la.name == name)
    if layer.type not in LS_TYPES:
        return False
    geo = conv_geometry(layer)
    group = layer.convolution_param.group or 1
    flow = _flow(run.student_net, unit, name, {b: s[1] for b, s in run.shapes.items() if len(s) > 1})
    if flow is None or group != 1:
        why = "grouped" if group != 1 else "its output reaches no target linearly"
        res.notes.append(f"'{name}': no least squares ({why})")
        return False
    out_blob, offset, through_relu = flow
    n_out = run.param_shapes[name][0][0]
    bottom = layer.bottom[0]
    top_hw = run.shapes[layer.top[0]][2] * run.shapes[layer.top[0]][3]
    n_img = max(1, min(len(run.train_images), opt.ls_rows // max(1, top_hw)))
    sel = np.sort(run.rng.choice(len(run.train_images), size=min(n_img, len(run.train_images)), replace=False))
    feed = {k: v[sel] for k, v in d.train_in.items()}
    x = feed[bottom] if bottom in feed else runner.run(feed, [bottom])[bottom]
    a = patches(x.astype(np.float64), tuple(geo["kernel"]), tuple(geo["stride"]), tuple(geo["pad"]),
                tuple(geo["dilation"]))
    y = d.train_t[out_blob][sel][:, offset:offset + n_out].transpose(0, 2, 3, 1)
    if y.shape[1:3] != a.shape[1:3]:
        res.notes.append(f"'{name}': no least squares (its output is {a.shape[1]}x{a.shape[2]}, "
                         f"the target {y.shape[1]}x{y.shape[2]})")
        return False
    rows_a = a.reshape(-1, a.shape[-1])
    rows_y = y.reshape(-1, n_out).astype(np.float64)
    w, b = _bounded_fit(rows_a, rows_y, through_relu, weights.get(name), opt.max_weight_scale, name, res,
                        opt.ls_iterations, opt.ls_refine, until)
    if res.init.get(name) == "teacher" and len(weights[name]) in (1, 2):
        # Keep the teacher's own filters when they already fit better (an exact change).
        tw = weights[name][0].reshape(n_out, -1).T.astype(np.float64)
        tb = weights[name][1].astype(np.float64) if len(weights[name]) > 1 else np.zeros(n_out)
        act = (lambda z: np.maximum(z, 0)) if through_relu else (lambda z: z)
        if np.sum((act(rows_a @ tw + tb) - rows_y) ** 2) <= np.sum((act(rows_a @ w + b) - rows_y) ** 2):
            return False
    arrays = [w.T.reshape(run.param_shapes[name][0]).astype(np.float32)]
    if len(run.param_shapes[name]) > 1:
        arrays.append(b.astype(np.float32))
    elif np.any(np.abs(b) > 1e-6):
        res.notes.append(f"'{name}': has no bias term; the least-squares bias was dropped")
    weights[name] = arrays
    res.init[name] = "least-squares"
    return True


def _bounded_fit(rows_a, rows_y, relu: bool, start, max_scale, name: str, res: UnitResult, iterations: int = 100,
                 refine: bool = True, until: float | None = None):
    """solve_linear, with the ridge raised (x100 at a time) until no weight exceeds ``max_scale``
    times the largest starting weight: an ill-conditioned input (a Tucker core's few, correlated
    channels) lets least squares fit with huge weights that then blow up fine-tuning."""
    scale = max(float(np.max(np.abs(start[0]))), 1e-3) if start is not None and max_scale else None
    ridge = 1e-9
    cut = False
    while True:
        w, b = solve_linear(rows_a, rows_y, relu=relu, ridge=ridge, iterations=iterations,
                            **({} if refine else {"active_set_budget": 0}), deadline=until)
        cut = cut or (relu and until is not None and time.perf_counter() >= until)
        if scale is None or np.max(np.abs(w)) <= max_scale * scale or ridge >= 1e-1:
            break
        ridge *= 100
    if ridge > 1e-9:
        res.notes.append(f"'{name}': least squares with ridge {ridge:g} (weights kept to the scale "
                         "of the starting ones)")
    if cut:
        res.notes.append(f"'{name}': least squares through the ReLU cut short: the time budget")
    return w, b


# SGD is restarted at a tenth of the rate (from the unit's starting weights) when its loss stops
# being finite or grows past this many times its first value; after this many rates it gives up.
DIVERGENCE_FACTOR = 10.0
SGD_ATTEMPTS = 4


def _sgd(run: _Run, unit: Unit, weights: netio.Weights, d: _UnitData, tick: Callable,
         res: UnitResult | None = None, until: float | None = None) -> netio.Weights | None:
    """SGD in Caffe on the unit as a net of its own (module doc, step 4); the new layers' weights,
    or None when SGD diverged at every rate tried. A diverging run (loss not finite, or above
    DIVERGENCE_FACTOR x its first value) starts again from ``weights`` at a tenth of the rate;
    each restart is noted in ``res.notes``. At ``until`` (a perf_counter time) it stops where it
    is (after one iteration at least), noted, and ``res.iterations`` says how far it got."""
    lr = run.opt.base_lr
    for _ in range(SGD_ATTEMPTS):
        try:
            learned, done = _sgd_at(run, unit, weights, d, tick, lr, until)
            if res is not None:
                res.iterations = done
                if done < run.opt.iters:
                    res.notes.append(f"SGD stopped at iteration {done} of {run.opt.iters}: the time budget")
            return learned
        except Diverged as bad:
            what = f"SGD diverged at lr {lr:g} (iteration {bad.it}, loss {bad.loss:.4g})"
            lr /= 10
            if res is not None:
                res.notes.append(f"{what}; restarted at lr {lr:g}" if _ < SGD_ATTEMPTS - 1 else
                                 f"{what}; gave up after {SGD_ATTEMPTS} rates, SGD weights not kept")
    return None


def _sgd_at(run: _Run, unit: Unit, weights: netio.Weights, d: _UnitData, tick: Callable,
            lr: float, until: float | None = None) -> tuple[netio.Weights, int]:
    from deeprebirth.runtime.pycaffe import make_solver  # noqa: PLC0415
    opt = run.opt
    scale = {o: 1.0 / (float(np.prod(run.shapes[o][1:])) * max(float(np.mean(np.square(d.train_t[o]))), 1e-12))
             for o in unit.outputs}
    train = unit_net(run.student_net, unit, run.shapes, opt.batch, train=True, loss_weights=scale,
                     param_counts=run.param_counts)
    sp = pb.SolverParameter(base_lr=lr, lr_policy="step", gamma=0.1,
                            stepsize=max(1, int(opt.iters * 0.7)), momentum=opt.momentum,
                            weight_decay=0.0, max_iter=opt.iters, display=0, type="SGD",
                            random_seed=opt.seed)
    solver = make_solver(train, sp)
    for lname, arrays in weights.items():
        if lname in solver.net.params:
            for blob, arr in zip(solver.net.params[lname], arrays):
                blob.data[...] = arr.reshape(blob.data.shape)
    n = len(run.train_images)
    rng = np.random.default_rng(opt.seed)      # the same batches at every rate tried
    order = rng.permutation(n)
    pos, first, done = 0, None, 0
    for it in range(opt.iters):
        if until is not None and it > 0 and time.perf_counter() >= until:
            break
        if pos + opt.batch > n and pos > 0:
            order, pos = rng.permutation(n), 0
        idx = np.take(order, np.arange(pos, pos + opt.batch), mode="wrap")   # wraps when n < batch
        pos += opt.batch
        for b in unit.inputs:
            solver.net.blobs[b].data[...] = d.train_in[b][idx]
        for o in unit.outputs:
            solver.net.blobs[f"target:{o}"].data[...] = d.train_t[o][idx]
        solver.step(1)
        loss = sum(float(solver.net.blobs[f"loss:{o}"].data.sum()) * scale[o] for o in unit.outputs)
        first = loss if first is None else first
        if not math.isfinite(loss) or loss > DIVERGENCE_FACTOR * max(first, 1e-12):
            raise Diverged(it + 1, loss)
        done = it + 1
        tick(done, opt.iters)
    learned = {name: [b.data.copy() for b in solver.net.params[name]] for name in unit.new
               if name in solver.net.params}
    if not all(np.isfinite(a).all() for arrays in learned.values() for a in arrays):
        raise Diverged(done, float("nan"))
    return learned, done


# ----------------------------------------------------------------------------------------------
# A slim output directory


def preprocess_for(slim_dir: Path, deploy: "pb.NetParameter", train_val: str | os.PathLike | None = None):
    """The net input's preprocessing, as `rebirth eval` takes it (preprocess.preprocess_for on the
    given train_val, else SLIM_DIR's)."""
    inputs = trainfiles.deploy_inputs(deploy)
    if len(inputs) != 1 or inputs[0][1] is None:
        raise RebirthError(f"{slim_dir}/deploy.prototxt: relearn needs a net with one image input "
                           f"(it has {len(inputs)})")
    return preprocess.preprocess_for(inputs[0][1], train_val or preprocess.default_train_val(slim_dir))


def load_images(source, pre, count: int, heldout: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` training and ``heldout`` held-out images of ``source`` (disjoint, drawn at random
    with ``seed``), preprocessed to net inputs."""
    n = len(source)
    if n < 2:
        raise RebirthError(f"{source.name}: has {n} image(s); relearn needs at least 2 (training and held out)")
    heldout = max(1, min(heldout, n // 5 if n < count + heldout else heldout))
    count = max(1, min(count, n - heldout))
    order = np.random.default_rng(seed).permutation(n)[:count + heldout]
    images = pre.apply([source.image(int(i)) for i in order])
    return images[:count].astype(np.float32), images[count:].astype(np.float32)


def output_dir(slim_dir: str | os.PathLike, outdir: str | os.PathLike | None = None) -> Path:
    """Where relearn writes: ``outdir``, by default SLIM_DIR itself."""
    return Path(outdir) if outdir else Path(slim_dir)


def relearn_dir(slim_dir: str | os.PathLike, source_spec: "str | sources.Source",
                outdir: str | os.PathLike | None = None, weights: str | os.PathLike | None = None,
                teacher: str | os.PathLike | None = None,
                teacher_weights: str | os.PathLike | None = None, train_val: str | os.PathLike | None = None,
                options: Options | None = None, progress: Callable | None = None, force: bool = False) -> dict:
    """`rebirth relearn` as a library call: everything read and checked first, then re-learned, then
    OUTDIR/weights.caffemodel and OUTDIR/relearn.json written (atomically, never over an input).
    Interrupted (Ctrl-C), it leaves nothing it made (undo.removed_if_interrupted). ``source_spec``:
    a SOURCE, or a Source already opened (recover's images without those it holds out)."""
    from deeprebirth.learning import sources as data  # noqa: PLC0415

    opt = options or Options()
    slim_dir = Path(slim_dir)
    plan = folders.relearn_plan(slim_dir)
    deploy_path = slim_dir / "deploy.prototxt"
    deploy = netio.strip_weights(netio.read_net(deploy_path))
    t_deploy = teacher or plan["teacher"].get("deploy")
    t_weights = teacher_weights or plan["teacher"].get("weights")
    if not t_deploy:
        raise RebirthError(f"{slim_dir}/report.json names no teacher net: give {{opt:teacher}}")
    if not t_weights:
        raise RebirthError(f"{slim_dir}/report.json names no teacher weights (slim was given no weights): "
                           "give {opt:teacher_weights}")
    for what, path in (("teacher net", t_deploy), ("teacher weights", t_weights)):
        if not Path(path).is_file():
            raise RebirthError(f"{path}: the {what} is missing")
    from deeprebirth.graph.model import load_model  # noqa: PLC0415
    teacher_model = load_model(t_deploy, t_weights)
    start = Path(weights) if weights else slim_dir / "init.caffemodel"
    if not start.is_file():
        raise RebirthError(f"{start}: no such weights file (slim was given no weights: give {{opt:weights}})")
    start_net = netio.read_weights(start)
    arrays = netio.weights_of(start_net)
    graph = Graph(deploy, strict=False)
    from deeprebirth.graph.model import check_weights  # noqa: PLC0415
    known = {n.name for n in graph.nodes}
    spare = {k: v for k, v in arrays.items() if k not in known}
    arrays = {k: v for k, v in arrays.items() if k in known}
    check_weights(graph, arrays, str(start))
    missing = [n.name for n in graph.nodes if n.param_shapes and n.name not in arrays]
    if missing:
        raise RebirthError(f"{start}: has no weights for layer '{missing[0]}' of {deploy_path}")
    units = [Unit.from_dict(u) for u in plan["units"]]
    if opt.only:
        names = {part for u in units for part in [u.name, *u.name.split("+")]}
        unknown = [n for n in opt.only if n not in names]
        if unknown:
            raise RebirthError(f"{{opt:only}}: no unit named '{unknown[0]}' "
                               f"(units: {', '.join(u.name for u in units)})")
    if not units:
        raise RebirthError(f"{slim_dir}: the slim net has no regenerated layers: nothing to re-learn")
    inputs = [deploy_path, start, t_deploy, t_weights]
    out = output_dir(slim_dir, outdir)
    with undo.removed_if_interrupted(out, OUTPUT_FILES), outputs.claimed_dir(out, OUTPUT_FILES, inputs, force):
        pre = preprocess_for(slim_dir, deploy, train_val)
        source = source_spec if isinstance(source_spec, data.Source) else data.open_source(source_spec)
        train, held = load_images(source, pre, opt.train_images, opt.heldout_images, opt.seed)
        if 0 < len(train) < opt.batch:   # fewer images than a batch (a small SOURCE or --count): one batch of all
            opt = dataclasses.replace(opt, batch=len(train))
        t0 = time.perf_counter()
        new_weights, results = relearn(deploy, arrays, teacher_model.net, teacher_model.weights, units,
                                       train, held, opt, progress)
        doc = {
            "slim_dir": str(slim_dir), "teacher": {"deploy": str(t_deploy), "weights": str(t_weights)},
            "start_weights": str(start), "source": source.name, "preprocess": pre.describe(),
            "train_images": len(train), "heldout_images": len(held), "options": {
                k: v for k, v in opt.__dict__.items()}, "seconds": round(time.perf_counter() - t0, 1),
            "units": [r.as_dict() for r in results],
        }
        blind = output_blind(deploy, new_weights, held, deploy_path)
        if blind:
            doc["input_blind"] = blind
        w_path = netio.write_weights(with_spare(deploy, new_weights, start_net, spare), out / "weights.caffemodel",
                                     inputs)
        j_path = outputs.atomic_write(out / "relearn.json", json.dumps(doc, indent=2) + "\n", inputs)
        outputs.record_files(out, OUTPUT_FILES)
        doc["files"] = [str(w_path), str(j_path)]
        return doc


def with_spare(deploy: "pb.NetParameter", weights: dict, start_net: "pb.NetParameter", spare: dict):
    """The deploy net with ``weights``, plus the layers of the start caffemodel that the deploy
    net lacks (``spare``: a train_val's auxiliary heads), kept as they were."""
    full = pb.NetParameter()
    full.CopyFrom(deploy)
    for layer in start_net.layer:
        if layer.name in spare:
            extra = full.layer.add()
            extra.CopyFrom(layer)
            extra.ClearField("blobs")
    return netio.with_weights(full, {**weights, **spare})


def output_blind(deploy: "pb.NetParameter", weights: dict, held: np.ndarray, source) -> str | None:
    """Why the relearned net gives its first 16 held-out images one and the same output
    (evaluate.blind_to_input), or None when it tells them apart (or there are fewer than two).
    Such a net cannot be fine-tuned (finetune refuses it): relearn says so at once."""
    if len(held) < 2:
        return None
    from deeprebirth.graph.model import Model  # noqa: PLC0415
    from deeprebirth.learning import evaluate as ev  # noqa: PLC0415
    runner = ev.Runner.build(Model(deploy, weights, source=str(source)))
    return ev.blind_to_input(runner, held[:16])


def relearn_command(slim_dir, source_spec, outdir=None, weights=None, teacher=None, teacher_weights=None,
                    train_val=None, options: Options | None = None,
                    progress: Callable[[int], object] | None = None, force: bool = False) -> dict:
    """What `rebirth relearn` does, as one call that `engine.isolate.call` runs in a child process
    (so a Caffe CHECK failure is a one-line error): ``progress(1)`` after every SGD iteration and
    after every unit (so a run with --iters 0 shows progress too)."""
    def tick(done_units, n_units, name, it, iters):
        if progress is not None:   # one per SGD iteration, and one per finished unit
            progress(1)
    return relearn_dir(slim_dir, source_spec, outdir, weights, teacher, teacher_weights, train_val, options, tick,
                       force=force)
