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

The report gives, per unit, the relative error ``sum (y - t)^2 / sum t^2`` and R^2 of its outputs on
the held-out images at the initial weights, after the teacher/least-squares initialisation and after
SGD, with iterations and seconds.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from deeprebirth.caffe import netio
from deeprebirth.caffe import proto as pb
from deeprebirth.errors import RebirthError
from deeprebirth.graph.dag import DATA_TYPES, Graph, conv_geometry

REPORT_VERSION = 2
LS_TYPES = ("Convolution",)
INPLACE_OK = ("ReLU",)


# ----------------------------------------------------------------------------------------------
# Planning: which units, their inputs and outputs (pure: nets in, lists out)


@dataclass
class Unit:
    name: str                       # substructure name(s), e.g. "conv1" or "inception_4b+inception_4c"
    layers: list[str]               # the slim net's layers computing the outputs from the inputs, in order
    new: list[str]                  # those that learn
    inputs: list[str]               # blobs of the slim net the unit reads
    teacher_inputs: list[str]       # the teacher's matching blobs
    outputs: list[str]              # blobs of the slim net the unit writes
    targets: list[str]              # the teacher's matching blobs

    def as_dict(self) -> dict:
        return {"name": self.name, "layers": self.layers, "new": self.new, "inputs": self.inputs,
                "teacher_inputs": self.teacher_inputs, "outputs": self.outputs, "targets": self.targets}

    @classmethod
    def from_dict(cls, d: dict) -> "Unit":
        return cls(d["name"], list(d["layers"]), list(d["new"]), list(d["inputs"]), list(d["teacher_inputs"]),
                   list(d["outputs"]), list(d["targets"]))


def _body(net: "pb.NetParameter") -> list["pb.LayerParameter"]:
    return [layer for layer in net.layer if layer.type not in DATA_TYPES]


def blob_matches(teacher: "pb.NetParameter", student: "pb.NetParameter") -> dict[str, str]:
    """Student blob -> teacher blob, for the blobs both nets agree on (see the module doc)."""
    ts = Graph(teacher, strict=False).shapes
    ss = Graph(student, strict=False).shapes
    out = {b: b for b, shape in ss.items() if shape is not None and ts.get(b) == shape}
    theirs = {layer.name: layer for layer in teacher.layer}
    for layer in student.layer:
        other = theirs.get(layer.name)
        if other is None or other.type != layer.type or len(other.bottom) != len(layer.bottom):
            continue
        for b_s, b_t in zip(layer.bottom, other.bottom):
            if b_s not in out and ss.get(b_s) is not None and ss.get(b_s) == ts.get(b_t):
                out[b_s] = b_t
    return out


def plan_units(teacher: "pb.NetParameter", student: "pb.NetParameter", new_layers: Iterable[str],
               substructure_of: dict[str, str] | None = None) -> list[Unit]:
    """The units to re-learn, bottom to top (see the module doc). ``substructure_of`` names a new
    layer's substructure (from the slim report); units are named after theirs."""
    new = set(new_layers)
    matched = blob_matches(teacher, student)
    inputs = set(Graph(student, strict=False).input_blobs)
    layers = _body(student)
    parent = list(range(len(layers)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    touching: dict[str, list[int]] = {}
    for i, layer in enumerate(layers):
        for b in set(layer.bottom) | set(layer.top):
            if b not in matched and b not in inputs:
                touching.setdefault(b, []).append(i)
    for members in touching.values():
        for j in members[1:]:
            parent[find(j)] = find(members[0])
    groups: dict[int, list[int]] = {}
    for i in range(len(layers)):
        groups.setdefault(find(i), []).append(i)

    units = []
    for idx in sorted(groups.values(), key=min):
        names = [layers[i].name for i in idx]
        if not any(n in new for n in names):
            continue
        written = {t for i in idx for t in layers[i].top}
        read = [b for i in idx for b in layers[i].bottom]
        ins = list(dict.fromkeys(b for b in read if b not in written or _read_before_written(layers, idx, b)))
        outs = [b for b in dict.fromkeys(t for i in idx for t in layers[i].top) if b in matched]
        # In-place layers after the unit that modify one of its outputs belong to it (pycaffe's blob
        # holds the final value, and so does the teacher's).
        last = max(idx)
        extra = [j for j in range(last + 1, len(layers))
                 if list(layers[j].bottom) == list(layers[j].top) and len(layers[j].top) == 1
                 and layers[j].top[0] in outs]
        idx = sorted(set(idx) | set(extra))
        subs = [substructure_of.get(n) for n in names if n in new] if substructure_of else []
        label = "+".join(dict.fromkeys(s for s in subs if s)) or names[0]
        units.append(Unit(label, [layers[i].name for i in idx], [n for n in names if n in new], ins,
                          [matched.get(b, b) for b in ins], outs, [matched[b] for b in outs]))
    return units


def _read_before_written(layers, idx, blob) -> bool:
    first_read = min((i for i in idx if blob in layers[i].bottom), default=None)
    first_write = min((i for i in idx if blob in layers[i].top), default=None)
    return first_read is not None and first_write is not None and first_read <= first_write and \
        not (list(layers[first_read].bottom) == list(layers[first_read].top))


def plan_report(teacher_deploy: str | None, teacher_weights: str | None, teacher: "pb.NetParameter",
                student: "pb.NetParameter", new_layers: Iterable[str], changes: Iterable) -> dict:
    """The ``relearn`` section of a slim report: the teacher's files and the units."""
    substructure_of = {}
    for c in changes:
        for n in list(c.regenerated) + list(c.added):
            substructure_of.setdefault(n, c.substructure)
    units = plan_units(teacher, student, new_layers, substructure_of)
    return {
        "version": REPORT_VERSION,
        "teacher": {"deploy": os.path.abspath(teacher_deploy) if teacher_deploy else None,
                    "weights": os.path.abspath(teacher_weights) if teacher_weights else None},
        "units": [u.as_dict() for u in units],
    }


# ----------------------------------------------------------------------------------------------
# Least squares (pure numpy: patches of blobs computed by Caffe)


def patches(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], pad: tuple[int, int],
            dilation: tuple[int, int] = (1, 1)) -> np.ndarray:
    """im2col as Caffe orders it: ``x`` N x C x H x W -> N x Ho x Wo x (C*kh*kw), channel-major
    then kernel row then column, matching a Convolution weight reshaped to O x (C*kh*kw)."""
    n, c, h, w = x.shape
    kh, kw = kernel
    sh, sw = stride
    ph, pw = pad
    dh, dw = dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    wo = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    cols = np.empty((n, ho, wo, c, kh, kw), dtype=np.float64)
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dh, j * dw
            cols[:, :, :, :, i, j] = xp[:, :, r0:r0 + sh * (ho - 1) + 1:sh, c0:c0 + sw * (wo - 1) + 1:sw] \
                .transpose(0, 2, 3, 1)
    return cols.reshape(n, ho, wo, c * kh * kw)


def solve_linear(a: np.ndarray, y: np.ndarray, relu: bool = False, ridge: float = 1e-9,
                 iterations: int = 100, tol: float = 1e-10,
                 active_set_budget: float = 2e10) -> tuple[np.ndarray, np.ndarray]:
    """Weights W (d x o) and bias b (o) minimising ||a W + b - y||^2 + ridge' ||W||^2 with
    ridge' = ridge * mean(diag(a^T a)); with ``relu`` the model is relu(a W + b) ~ y (y >= 0),
    solved by alternating projections (see the module doc), then refined on the active set."""
    a1 = np.concatenate([a, np.ones((a.shape[0], 1))], axis=1)
    gram = a1.T @ a1
    lam = ridge * max(float(np.mean(np.diag(gram))), 1e-12)
    reg = np.eye(gram.shape[0]) * lam
    reg[-1, -1] = 0.0  # the bias is not shrunk
    chol = np.linalg.cholesky(gram + reg + np.eye(gram.shape[0]) * 1e-12 * lam)

    def fit(target: np.ndarray) -> np.ndarray:
        z = np.linalg.solve(chol, a1.T @ target)
        return np.linalg.solve(chol.T, z)

    w = fit(y)
    if relu:
        off = y <= 0
        prev = None
        for _ in range(iterations):
            pred = a1 @ w
            target = np.where(off, np.minimum(pred, 0.0), y)
            w = fit(target)
            if prev is not None and np.max(np.abs(w - prev)) <= tol * max(1.0, float(np.max(np.abs(w)))):
                break
            prev = w
        # Active-set refinement, one output at a time: fit exactly on the rows where the target is
        # positive or the prediction still is (the others only need a non-positive pre-activation).
        # It costs a Gram matrix per output, so only where that is affordable.
        if a1.shape[0] * a1.shape[1] ** 2 * y.shape[1] <= active_set_budget:
            for _ in range(3):
                pred = a1 @ w
                changed = False
                for j in range(y.shape[1]):
                    rows = (y[:, j] > 0) | (pred[:, j] > 0)
                    if rows.sum() < a1.shape[1]:
                        continue
                    aj = a1[rows]
                    g = aj.T @ aj + reg
                    new = np.linalg.solve(g + np.eye(g.shape[0]) * 1e-12 * lam, aj.T @ y[rows, j])
                    changed |= not np.allclose(new, w[:, j], rtol=0, atol=1e-12)
                    w[:, j] = new
                if not changed:
                    break
    return w[:-1], w[-1]


def relative_error(pred: np.ndarray, target: np.ndarray) -> float:
    denom = float(np.sum(np.square(target, dtype=np.float64)))
    return float(np.sum(np.square(pred - target, dtype=np.float64)) / denom) if denom else float("nan")


def r_squared(pred: np.ndarray, target: np.ndarray) -> float:
    """1 - SSE/SST with the total around each channel's mean (axis 1)."""
    axes = tuple(i for i in range(target.ndim) if i != 1) if target.ndim > 1 else (0,)
    mean = target.mean(axis=axes, keepdims=True)
    sst = float(np.sum(np.square(target - mean, dtype=np.float64)))
    sse = float(np.sum(np.square(pred - target, dtype=np.float64)))
    return 1.0 - sse / sst if sst else float("nan")


def prune_filters(teacher: list[np.ndarray], shapes: list[tuple[int, ...]]) -> list[np.ndarray] | None:
    """The teacher's filters of largest L1 norm, when the new layer has fewer outputs and otherwise the
    same weight shape; None when that does not apply."""
    if not teacher or len(teacher) != len(shapes) or teacher[0].ndim != len(shapes[0]):
        return None
    w = teacher[0]
    if tuple(w.shape[1:]) != tuple(shapes[0][1:]) or w.shape[0] < shapes[0][0]:
        return None
    keep = np.sort(np.argsort(-np.abs(w).reshape(w.shape[0], -1).sum(axis=1), kind="stable")[:shapes[0][0]])
    out = [w[keep].copy()]
    for arr, shape in zip(teacher[1:], shapes[1:]):
        if arr.ndim != 1 or arr.shape[0] != w.shape[0] or tuple(shape) != (shapes[0][0],):
            return None
        out.append(arr[keep].copy())
    return out


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
    seed: int = 0
    only: list[str] | None = None


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


def _collect(net, images: np.ndarray, blobs: list[str], batch: int) -> dict[str, np.ndarray]:
    out: dict[str, list[np.ndarray]] = {b: [] for b in blobs}
    name = net.input_names[0]
    for i in range(0, len(images), batch):
        net.fill_inputs(inputs={name: images[i:i + batch]})
        net.net.forward()
        for b in blobs:
            out[b].append(net.net.blobs[b].data.copy())
    return {b: np.concatenate(v) for b, v in out.items()}


class _UnitRunner:
    """Feeds cached arrays through a unit's net in pycaffe."""

    def __init__(self, student_net, unit: Unit, shapes, weights: netio.Weights, batch: int):
        from deeprebirth.runtime.pycaffe import CaffeNet  # noqa: PLC0415
        self.unit = unit
        self.net = CaffeNet(unit_net(student_net, unit, shapes, batch), weights)

    def set_weights(self, weights: netio.Weights) -> None:
        self.net.set_weights({k: v for k, v in weights.items() if k in self.net.net.params})

    def run(self, feeds: dict[str, np.ndarray], blobs: list[str], batch: int) -> dict[str, np.ndarray]:
        n = len(next(iter(feeds.values())))
        out: dict[str, list[np.ndarray]] = {b: [] for b in blobs}
        for i in range(0, n, batch):
            self.net.fill_inputs(inputs={k: v[i:i + batch] for k, v in feeds.items()})
            self.net.net.forward()
            for b in blobs:
                out[b].append(self.net.net.blobs[b].data.copy())
        return {b: np.concatenate(v) for b, v in out.items()}


def _errors(pred: dict[str, np.ndarray], target: dict[str, np.ndarray]) -> dict:
    p = np.concatenate([pred[k].reshape(len(pred[k]), -1) for k in sorted(pred)], axis=1)
    t = np.concatenate([target[k].reshape(len(target[k]), -1) for k in sorted(target)], axis=1)
    rel = relative_error(p, t)
    r2 = float(np.mean([r_squared(pred[k], target[k]) for k in sorted(pred)]))
    return {"rel": rel, "r2": r2}


def relearn(student_net: "pb.NetParameter", weights: netio.Weights, teacher_net: "pb.NetParameter",
            teacher_weights: netio.Weights, units: list[Unit], train_images: np.ndarray,
            heldout_images: np.ndarray, options: Options | None = None,
            progress: Callable | None = None) -> tuple[netio.Weights, list[UnitResult]]:
    """Re-learn ``units`` of the slim net bottom to top; returns the new weights and a result per
    unit. Images are preprocessed net inputs (N x C x H x W float32)."""
    from deeprebirth.runtime.pycaffe import CaffeNet, import_caffe, make_solver  # noqa: PLC0415

    opt = options or Options()
    import_caffe()
    weights = {k: [np.array(a, dtype=np.float32) for a in v] for k, v in weights.items()}
    graph = Graph(student_net, strict=False)
    shapes = {b: tuple(s) for b, s in graph.shapes.items() if s is not None}
    param_counts = {n.name: len(n.param_shapes) for n in graph.nodes}
    param_shapes = {n.name: [tuple(s) for s in n.param_shapes] for n in graph.nodes}
    teacher = CaffeNet(teacher_net, teacher_weights)
    results = []
    rng = np.random.default_rng(opt.seed)
    todo = [u for u in units if opt.only is None or u.name in opt.only
            or any(part in opt.only for part in u.name.split("+"))]
    for k, unit in enumerate(todo):
        t0 = time.perf_counter()
        res = UnitResult(unit.name, unit.new, unit.inputs, unit.outputs, unit.targets)
        student = CaffeNet(student_net, weights)
        feeds_from = teacher if opt.input == "teacher" else student
        in_names = unit.teacher_inputs if opt.input == "teacher" else unit.inputs
        tr_t = _collect(teacher, train_images, unit.targets, opt.batch)
        ho_t = _collect(teacher, heldout_images, unit.targets, opt.batch)
        tr_in = _collect(feeds_from, train_images, in_names, opt.batch)
        ho_in = _collect(feeds_from, heldout_images, in_names, opt.batch)
        tr_in = {s: tr_in[t] for s, t in zip(unit.inputs, in_names)}
        ho_in = {s: ho_in[t] for s, t in zip(unit.inputs, in_names)}
        tr_t = {o: tr_t[t] for o, t in zip(unit.outputs, unit.targets)}
        ho_t = {o: ho_t[t] for o, t in zip(unit.outputs, unit.targets)}
        runner = _UnitRunner(student_net, unit, shapes, weights, opt.batch)
        res.error["initial"] = _errors(runner.run(ho_in, unit.outputs, opt.batch), ho_t)
        res.seconds["targets"] = round(time.perf_counter() - t0, 2)

        # Teacher / pruned initialisation, then least squares.
        t1 = time.perf_counter()
        for name in unit.new if opt.least_squares and opt.teacher_init else ():
            theirs = teacher_weights.get(name)
            if theirs is None:
                continue
            mine = param_shapes[name]
            if [tuple(a.shape) for a in theirs] == mine:
                weights[name] = [a.astype(np.float32).copy() for a in theirs]
                res.init[name] = "teacher"
            else:
                pruned = prune_filters(theirs, mine)
                if pruned is not None:
                    weights[name] = [a.astype(np.float32) for a in pruned]
                    res.init[name] = "pruned"
        runner.set_weights(weights)
        if opt.least_squares:
            channels = {b: s[1] for b, s in shapes.items() if len(s) > 1}
            for name in unit.new:
                layer = next(la for la in student_net.layer if la.name == name)
                if layer.type not in LS_TYPES:
                    continue
                geo = conv_geometry(layer)
                group = layer.convolution_param.group or 1
                flow = _flow(student_net, unit, name, channels)
                if flow is None or group != 1:
                    why = "grouped" if group != 1 else "its output reaches no target linearly"
                    res.notes.append(f"'{name}': no least squares ({why})")
                    continue
                out_blob, offset, through_relu = flow
                n_out = param_shapes[name][0][0]
                bottom = layer.bottom[0]
                n_img = max(1, min(len(train_images), opt.ls_rows // max(1, shapes[layer.top[0]][2] * shapes[layer.top[0]][3])))
                sel = np.sort(rng.choice(len(train_images), size=min(n_img, len(train_images)), replace=False))
                feed = {k2: v[sel] for k2, v in tr_in.items()}
                x = feed[bottom] if bottom in feed else runner.run(feed, [bottom], opt.batch)[bottom]
                a = patches(x.astype(np.float64), tuple(geo["kernel"]), tuple(geo["stride"]), tuple(geo["pad"]),
                            tuple(geo["dilation"]))
                y = tr_t[out_blob][sel][:, offset:offset + n_out].transpose(0, 2, 3, 1)
                if y.shape[1:3] != a.shape[1:3]:
                    res.notes.append(f"'{name}': no least squares (its output is {a.shape[1]}x{a.shape[2]}, "
                                     f"the target {y.shape[1]}x{y.shape[2]})")
                    continue
                rows_a = a.reshape(-1, a.shape[-1])
                rows_y = y.reshape(-1, n_out).astype(np.float64)
                # An ill-conditioned input (e.g. a Tucker core's few, correlated channels) lets least
                # squares fit with huge weights that then blow up fine-tuning: raise the ridge until
                # the weights stay within max_weight_scale x the scale of the layer's starting weights.
                scale = max(float(np.max(np.abs(weights[name][0]))), 1e-3) \
                    if name in weights and opt.max_weight_scale else None
                ridge = 1e-9
                while True:
                    w, b = solve_linear(rows_a, rows_y, relu=through_relu, ridge=ridge)
                    if scale is None or np.max(np.abs(w)) <= opt.max_weight_scale * scale or ridge >= 1e-1:
                        break
                    ridge *= 100
                if ridge > 1e-9:
                    res.notes.append(f"'{name}': least squares with ridge {ridge:g} (weights kept to the scale "
                                     "of the starting ones)")
                if res.init.get(name) == "teacher" and len(weights[name]) in (1, 2):
                    # Keep the teacher's own filters when they already fit better (an exact change).
                    tw = weights[name][0].reshape(n_out, -1).T.astype(np.float64)
                    tb = weights[name][1].astype(np.float64) if len(weights[name]) > 1 else np.zeros(n_out)
                    act = (lambda z: np.maximum(z, 0)) if through_relu else (lambda z: z)
                    if np.sum((act(rows_a @ tw + tb) - rows_y) ** 2) <= np.sum((act(rows_a @ w + b) - rows_y) ** 2):
                        continue
                arrays = [w.T.reshape(param_shapes[name][0]).astype(np.float32)]
                if len(param_shapes[name]) > 1:
                    arrays.append(b.astype(np.float32))
                elif np.any(np.abs(b) > 1e-6):
                    res.notes.append(f"'{name}': has no bias term; the least-squares bias was dropped")
                weights[name] = arrays
                res.init[name] = "least-squares"
                runner.set_weights(weights)
        res.error["least_squares"] = _errors(runner.run(ho_in, unit.outputs, opt.batch), ho_t)
        res.seconds["least_squares"] = round(time.perf_counter() - t1, 2)
        best = ("least_squares", res.error["least_squares"]["rel"], {n: weights[n] for n in unit.new if n in weights})
        if res.error["initial"]["rel"] < best[1]:
            best = ("initial", res.error["initial"]["rel"], None)

        # SGD in Caffe.
        t2 = time.perf_counter()
        if opt.iters > 0:
            scale = {o: 1.0 / (float(np.prod(shapes[o][1:])) * max(float(np.mean(np.square(tr_t[o]))), 1e-12))
                     for o in unit.outputs}
            train = unit_net(student_net, unit, shapes, opt.batch, train=True, loss_weights=scale,
                             param_counts=param_counts)
            sp = pb.SolverParameter(base_lr=opt.base_lr, lr_policy="step", gamma=0.1,
                                    stepsize=max(1, int(opt.iters * 0.7)), momentum=opt.momentum,
                                    weight_decay=0.0, max_iter=opt.iters, display=0, type="SGD",
                                    random_seed=opt.seed)
            solver = make_solver(train, sp)
            for lname, arrays in weights.items():
                if lname in solver.net.params:
                    for blob, arr in zip(solver.net.params[lname], arrays):
                        blob.data[...] = arr.reshape(blob.data.shape)
            n = len(train_images)
            order = rng.permutation(n)
            pos = 0
            for it in range(opt.iters):
                if pos + opt.batch > n:
                    order, pos = rng.permutation(n), 0
                idx = order[pos:pos + opt.batch]
                pos += opt.batch
                for b in unit.inputs:
                    solver.net.blobs[b].data[...] = tr_in[b][idx]
                for o in unit.outputs:
                    solver.net.blobs[f"target:{o}"].data[...] = tr_t[o][idx]
                solver.step(1)
                if progress:
                    progress(k, len(todo), unit.name, it + 1, opt.iters)
            learned = {name: [b.data.copy() for b in solver.net.params[name]] for name in unit.new
                       if name in solver.net.params}
            runner.set_weights(learned)
            res.error["sgd"] = _errors(runner.run(ho_in, unit.outputs, opt.batch), ho_t)
            res.iterations = opt.iters
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
        results.append(res)
        if progress:
            progress(k + 1, len(todo), unit.name, 0, 0)
    return weights, results


# ----------------------------------------------------------------------------------------------
# A slim output directory


def load_plan(slim_dir: str | os.PathLike) -> dict:
    """SLIM_DIR/report.json's ``relearn`` section, checked."""
    slim_dir = Path(slim_dir)
    if not slim_dir.is_dir():
        raise RebirthError(f"{slim_dir}: not a directory (expected the output directory of `rebirth slim`)")
    path = slim_dir / "report.json"
    if not path.is_file():
        raise RebirthError(f"{slim_dir}: has no report.json (expected the output directory of `rebirth slim`)")
    try:
        report = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise RebirthError(f"{path}: not a readable JSON report ({exc})") from None
    plan = report.get("relearn") if isinstance(report, dict) else None
    if not isinstance(plan, dict) or plan.get("version") != REPORT_VERSION or "units" not in plan:
        raise RebirthError(f"{path}: written by an older rebirth (no 'relearn' section of version "
                           f"{REPORT_VERSION}); run `rebirth slim` again")
    for name in ("deploy.prototxt",):
        if not (slim_dir / name).is_file():
            raise RebirthError(f"{slim_dir}: {name} is missing")
    return plan


def preprocess_for(slim_dir: Path, deploy: "pb.NetParameter", train_val: str | os.PathLike | None = None):
    """The net input's preprocessing, as `rebirth eval` takes it: from a train_val's TEST data layer
    (the given one, else SLIM_DIR's) when it has a ``transform_param``, else the usual defaults."""
    from deeprebirth.learning import evaluate  # noqa: PLC0415
    from deeprebirth.transforms.trainfiles import deploy_inputs  # noqa: PLC0415

    inputs = deploy_inputs(deploy)
    if len(inputs) != 1 or inputs[0][1] is None:
        raise RebirthError(f"{slim_dir}/deploy.prototxt: relearn needs a net with one image input "
                           f"(it has {len(inputs)})")
    return evaluate.preprocess_for(inputs[0][1], train_val or evaluate.default_train_val(slim_dir))


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


def relearn_dir(slim_dir: str | os.PathLike, source_spec: str, outdir: str | os.PathLike | None = None,
                weights: str | os.PathLike | None = None, teacher: str | os.PathLike | None = None,
                teacher_weights: str | os.PathLike | None = None, train_val: str | os.PathLike | None = None,
                options: Options | None = None, progress: Callable | None = None) -> dict:
    """`rebirth relearn` as a library call: everything read and checked first, then re-learned, then
    OUTDIR/weights.caffemodel and OUTDIR/relearn.json written (atomically, never over an input)."""
    from deeprebirth.learning import sources as data  # noqa: PLC0415

    opt = options or Options()
    slim_dir = Path(slim_dir)
    plan = load_plan(slim_dir)
    deploy_path = slim_dir / "deploy.prototxt"
    deploy = netio.strip_weights(netio.read_net(deploy_path))
    t_deploy = teacher or plan["teacher"].get("deploy")
    t_weights = teacher_weights or plan["teacher"].get("weights")
    if not t_deploy:
        raise RebirthError(f"{slim_dir}/report.json names no teacher net: give --teacher")
    if not t_weights:
        raise RebirthError(f"{slim_dir}/report.json names no teacher weights (slim ran without --weights): "
                           "give --teacher-weights")
    for what, path in (("teacher net", t_deploy), ("teacher weights", t_weights)):
        if not Path(path).is_file():
            raise RebirthError(f"{path}: the {what} is missing")
    from deeprebirth.caffe.model import load_model  # noqa: PLC0415
    teacher_model = load_model(t_deploy, t_weights)
    start = Path(weights) if weights else slim_dir / "init.caffemodel"
    if not start.is_file():
        raise RebirthError(f"{start}: no such weights file (slim ran without --weights: give --weights)")
    start_net = netio.read_weights(start)
    arrays = netio.weights_of(start_net)
    graph = Graph(deploy, strict=False)
    from deeprebirth.caffe.model import check_weights  # noqa: PLC0415
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
            raise RebirthError(f"--only: no unit named '{unknown[0]}' (units: {', '.join(u.name for u in units)})")
    if not units:
        raise RebirthError(f"{slim_dir}: the slim net has no regenerated layers: nothing to re-learn")
    pre = preprocess_for(slim_dir, deploy, train_val)
    source = data.open_source(source_spec)
    train, held = load_images(source, pre, opt.train_images, opt.heldout_images, opt.seed)
    out = Path(outdir) if outdir else slim_dir
    inputs = [deploy_path, start, t_deploy, t_weights]
    for name in ("weights.caffemodel", "relearn.json"):
        for src in inputs:
            if netio.same_file(out / name, Path(src)):
                raise RebirthError(f"{out / name}: refusing to overwrite an input file (give -o)")
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
    full = pb.NetParameter()
    full.CopyFrom(deploy)
    for layer in start_net.layer:
        if layer.name in spare:
            extra = full.layer.add()
            extra.CopyFrom(layer)
            extra.ClearField("blobs")
    merged = dict(new_weights)
    merged.update(spare)
    out.mkdir(parents=True, exist_ok=True)
    w_path = netio.write_weights(netio.with_weights(full, merged), out / "weights.caffemodel", inputs)
    j_path = netio.atomic_write(out / "relearn.json", json.dumps(doc, indent=2) + "\n", inputs)
    doc["files"] = [str(w_path), str(j_path)]
    return doc


def summary(doc: dict) -> list[str]:
    lines = [f"re-learned {len(doc['units'])} unit(s) of {doc['slim_dir']} against {doc['teacher']['deploy']} "
             f"on {doc['train_images']} images of {doc['source']} ({doc['heldout_images']} held out), "
             f"{doc['seconds']} s"]
    rows = [("unit", "initial", "least sq.", "SGD", "kept", "iters", "s")]
    for u in doc["units"]:
        e = u["error"]
        f = lambda k: f"{e[k]['rel']:.4f}" if k in e else "-"  # noqa: E731
        rows.append((u["name"], f("initial"), f("least_squares"), f("sgd"), u["kept"], str(u["iterations"]),
                     str(u["seconds"].get("total", ""))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines.append("relative error of each unit's output on the held-out images (sum (y-t)^2 / sum t^2):")
    for r in rows:
        lines.append("  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    for u in doc["units"]:
        for note in u["notes"]:
            lines.append(f"  note: {u['name']}: {note}")
    if doc.get("files"):
        lines.append("wrote " + ", ".join(doc["files"]))
    return lines


def selected_units(plan: dict, only: list[str] | None) -> list[dict]:
    """The plan's units that ``only`` selects (all without it)."""
    return [u for u in plan["units"] if only is None or u["name"] in only
            or any(part in only for part in u["name"].split("+"))]


def relearn_command(slim_dir, source_spec, outdir=None, weights=None, teacher=None, teacher_weights=None,
                    train_val=None, options: Options | None = None,
                    progress: Callable[[int], object] | None = None) -> dict:
    """What `rebirth relearn` does, as one call that `engine.isolate.call` runs in a child process
    (so a Caffe CHECK failure is a one-line error): ``progress(1)`` after every SGD iteration."""
    tick = None
    if progress is not None:
        def tick(done_units, n_units, name, it, iters):
            if iters:
                progress(1)
    return relearn_dir(slim_dir, source_spec, outdir, weights, teacher, teacher_weights, train_val, options, tick)
