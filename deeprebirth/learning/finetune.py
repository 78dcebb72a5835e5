"""`rebirth finetune` as a library: train a `rebirth slim` output in Caffe, fed from any SOURCE.

    result = finetune("slim/", train=data.open_source("fashion-mnist:train"),
                      val=data.open_source("fashion-mnist:test[:1000]"), iters=2000, outdir="slim/finetune")

What runs is Caffe's own solver (pycaffe ``caffe.get_solver`` + ``solver.step``) on the slim
directory's ``solver.prototxt`` and ``train_val.prototxt`` (TRAIN phase). The train_val's data
layer is replaced by an ``Input`` layer with the same tops and shapes (batch size from the data
layer, or ``batch``), and before each step its blobs are set from ``Source.batches(...,
train=True, shuffle=True, loop=True)`` preprocessed as that layer's ``transform_param`` says; so
every SOURCE kind trains the same way, whatever data layer the train_val names.

Labels: the train_val's own losses (SoftmaxWithLoss ...) read the source's labels.

Distillation (``distill=True``, for images without labels): the whole slim net learns to
reproduce the teacher's logits. The train_val's losses and accuracies (and what reads the label)
are removed, and one ``EuclideanLoss`` compares the student's logits (the input of its output
Softmax, else its last InnerProduct) with the teacher's, computed in pycaffe on the very same
(augmented) batch: loss = 1/(2N) sum_n ||z_student(n) - z_teacher(n)||^2. Logits rather than
SoftmaxWithLoss on the teacher's argmax because they carry the teacher's whole ranking of the
classes (which top-5 and KL measure), not just its top-1, and need no temperature (regressing
logits is the T -> infinity limit of soft-target distillation). The teacher is the original model
named in SLIM_DIR/report.json (``relearn.teacher``, else ``model`` and ``weights``), unless
``teacher`` names another (e.g. the original model for a net made from a slim net: a `tucker`
output's report names the Slim net it was decomposed from).
"""
from __future__ import annotations

import json
import math
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable
from pathlib import Path

import numpy as np

from deeprebirth import outputs
from deeprebirth import __version__
from deeprebirth.learning import sources as data
from deeprebirth.learning import evaluate as ev
from deeprebirth.caffe import netio
from deeprebirth.caffe.folders import SlimDir, read_slim_dir
from deeprebirth.learning import preprocess
from deeprebirth.transforms import trainfiles
from deeprebirth.caffe import proto as pb
from deeprebirth.runtime import pycaffe
from deeprebirth.errors import Diverged, RebirthError
from deeprebirth.graph.dag import Graph
from deeprebirth.graph.kinds import DATA_TYPES
from deeprebirth.graph.model import load_model

SNAPSHOT_PREFIX = "finetune"
OUTPUT_FILES = ("weights.caffemodel", "deploy.prototxt", "finetune.json")
TEACHER_LOGITS = "teacher_logits"
DISTILL_LOSS = "distill_loss"
# Batch-size fields of the data layers Caffe knows.
_BATCH_FIELDS = ("image_data_param", "data_param", "hdf5_data_param", "memory_data_param", "window_data_param")


# ----------------------------------------------------------------------------------------------
# The train net


@dataclass
class TrainNet:
    net: "pb.NetParameter"       # TRAIN phase, data layer replaced by Input
    image: str                   # blob fed with images
    label: str | None            # blob fed with labels (None when distilling)
    batch: int
    pre: preprocess.Preprocess
    classes: int
    logits: str                  # the student's logits blob
    losses: dict[str, float]     # loss top -> loss weight


def _data_batch(layer: "pb.LayerParameter") -> int | None:
    for field in _BATCH_FIELDS:
        if layer.HasField(field) and getattr(layer, field).batch_size:
            return int(getattr(layer, field).batch_size)
    if layer.HasField("dummy_data_param") and len(layer.dummy_data_param.shape):
        return int(layer.dummy_data_param.shape[0].dim[0])
    return None


def _is_loss(layer: "pb.LayerParameter") -> bool:
    return layer.type.endswith("Loss") or (len(layer.loss_weight) and any(w != 0 for w in layer.loss_weight))


def build_train_net(sd: SlimDir, batch: int | None = None, distill: bool = False, labels: bool = False) -> TrainNet:
    """The TRAIN net fed from pycaffe (module doc); with ``distill`` the EuclideanLoss against the
    teacher's logits replaces the train_val's losses, or with ``labels`` too is added to them."""
    src = str(sd.path / "train_val.prototxt")
    tv = netio.filter_phase(sd.train_val, pb.TRAIN)
    readers = [layer for layer in tv.layer if layer.type in DATA_TYPES and layer.type != "Input"]
    if len(readers) != 1:
        raise RebirthError(f"{src}: expected one data layer in the TRAIN phase, found {len(readers)}")
    reader = readers[0]
    inputs = dict(trainfiles.deploy_inputs(sd.deploy))
    image = reader.top[0]
    if image not in inputs or inputs[image] is None or len(inputs[image]) != 4:
        raise RebirthError(f"{src}: data layer '{reader.name}' makes '{image}', which is not the deploy net's "
                           "N x C x H x W input")
    label = reader.top[1] if len(reader.top) > 1 else None
    if len(reader.top) > 2:
        raise RebirthError(f"{src}: data layer '{reader.name}' has {len(reader.top)} tops; expected image and label")
    batch = batch or _data_batch(reader) or trainfiles.RECIPE["batch"]
    iter_size = max(1, sd.solver.iter_size)
    batch *= iter_size  # one step = iter_size batches of equal weight = one batch that much larger
    _, c, h, w = inputs[image]
    pre = preprocess.from_layer(reader, (batch, c, h, w), base_dir=sd.path, default=True)
    logits = trainfiles.logits_blob(sd.deploy)
    shapes = Graph(sd.deploy, strict=False).shapes
    logit_shape = shapes.get(logits)
    if not logit_shape:
        raise RebirthError(f"{sd.path / 'deploy.prototxt'}: cannot infer the shape of the logits '{logits}'")
    classes = int(np.prod(logit_shape[1:]))

    net = pb.NetParameter()
    net.CopyFrom(tv)
    del net.layer[:]
    feed = pb.LayerParameter(name=reader.name, type="Input")
    feed.top.append(image)
    feed.input_param.shape.add(dim=[batch, c, h, w])
    keep_labels = label is not None and (labels or not distill)
    if keep_labels:
        feed.top.append(label)
        feed.input_param.shape.add(dim=[batch])
    kept = [layer for layer in tv.layer if layer is not reader]
    if distill and not keep_labels:
        dropped = {label} if label else set()
        body = []
        for layer in kept:
            if _is_loss(layer) or layer.type == "Accuracy" or any(b in dropped for b in layer.bottom):
                dropped.update(t for t in layer.top if t not in layer.bottom)
                continue
            body.append(layer)
        kept = body
    net.layer.append(feed)
    if distill:
        t = pb.LayerParameter(name=TEACHER_LOGITS, type="Input")
        t.top.append(TEACHER_LOGITS)
        t.input_param.shape.add(dim=[batch, *logit_shape[1:]])
        net.layer.append(t)
    net.layer.extend(kept)
    if distill:
        loss = net.layer.add(name=DISTILL_LOSS, type="EuclideanLoss")
        loss.bottom.extend([logits, TEACHER_LOGITS])
        loss.top.append(DISTILL_LOSS)
    losses = {}
    for layer in net.layer:
        if _is_loss(layer):
            for i, top in enumerate(layer.top):
                weight = layer.loss_weight[i] if i < len(layer.loss_weight) else (1.0 if i == 0 else 0.0)
                if weight:
                    losses[top] = float(weight)
    if not losses:
        raise RebirthError(f"{src}: has no loss layer in the TRAIN phase to train with")
    return TrainNet(net, image, label if keep_labels else None, batch, pre, classes, logits, losses)


def _read_solverstate(path: Path) -> "pb.SolverState":
    raw = netio._read_bytes(path)
    state = pb.SolverState()
    try:
        state.ParseFromString(raw)
    except Exception:  # noqa: BLE001 -- protobuf's DecodeError
        state = None
    if state is None or not state.learned_net or not state.HasField("iter"):
        raise RebirthError(f"{path}: not a Caffe .solverstate snapshot")
    return state


def snapshot_iteration(path: str | os.PathLike) -> int:
    """The iteration a .solverstate snapshot was taken at (a one-line error if it is not one)."""
    return int(_read_solverstate(Path(path)).iter)


def _check_solverstate(path: Path, sd: SlimDir) -> tuple[Path, str | None]:
    """What Caffe's solver.restore would abort on, as one-line errors: not a SolverState, its
    weights file (learned_net) missing or not fitting the slim net. Caffe reads the weights from
    the absolute path it wrote into the snapshot; when a run's folder was moved, that path is gone
    but the pair Caffe writes (``X_iter_N.solverstate`` beside ``X_iter_N.caffemodel``) still sits
    together: then the snapshot is restored from a copy naming the weights beside it.
    Returns (None, None) when the snapshot restores as it is, else (the corrected snapshot's bytes,
    a note)."""
    state = _read_solverstate(path)
    learned = Path(state.learned_net)
    if not learned.is_absolute():
        learned = path.parent / learned
    if learned.is_file():
        load_model(sd.path / "deploy.prototxt", learned)
        return None, None
    beside = path.with_suffix(".caffemodel")
    if not beside.is_file():
        raise RebirthError(f"{path}: its weights {state.learned_net} are missing (and there is no {beside.name} "
                           "beside it)")
    load_model(sd.path / "deploy.prototxt", beside)
    state.learned_net = str(beside.resolve())
    note = f"the snapshot names its weights at {learned}, which is gone (the folder was moved?): restored with {beside}"
    return state.SerializeToString(), note + " beside it"


def make_solver_param(sd: SlimDir, outdir: Path, iters: int | None = None, base_lr: float | None = None,
                      stepsize: int | None = None) -> "pb.SolverParameter":
    s = pb.SolverParameter()
    s.CopyFrom(sd.solver)
    if iters is not None:
        s.max_iter = iters
    if base_lr is not None:
        s.base_lr = base_lr
    if stepsize is not None:
        s.stepsize = stepsize
    for field in ("test_iter", "test_net", "test_net_param", "test_state"):
        s.ClearField(field)
    s.test_interval = 0          # validation runs here, on --val, with the deploy net
    s.test_initialization = False
    s.snapshot = 0               # snapshots are taken here (solver.snapshot())
    s.snapshot_prefix = str((outdir / SNAPSHOT_PREFIX).resolve())
    s.display = 0
    s.iter_size = 1              # folded into the batch (build_train_net)
    return s


# ----------------------------------------------------------------------------------------------
# Safe defaults: what keeps a short fine-tune from wrecking re-learned weights (README, "Fine-tuning")

# A run whose loss stops being finite, or whose mean over the last DIVERGENCE_WINDOW iterations
# exceeds DIVERGENCE_FACTOR x its loss at the starting weights, starts again from its starting weights
# at a tenth of the rate; after DIVERGENCE_ATTEMPTS rates it stops with a one-line error.
DIVERGENCE_FACTOR = 10.0
DIVERGENCE_WINDOW = 5
DIVERGENCE_ATTEMPTS = 4
# A run whose logits stop telling the classes apart (for every image of the batch they lie within
# COLLAPSE_SPREAD of each other: a softmax within about 5 % of uniform) for COLLAPSE_WINDOW
# iterations in a row, when they did at the start, has collapsed: e.g. every ReLU before the
# classifier is dead, its loss stays finite (ln(classes) with labels) and no later step revives it.
# It is handled as a divergence. Measured: a Slim-Tucker net at base_lr 0.01 for 20,000 iterations
# collapsed to 10 % within its first 4,000 (logits within 0.01 of each other, the same for every
# image), while the same start over 10,000 iterations reached 85.47 % (README, "Fine-tuning").
COLLAPSE_WINDOW = 50
COLLAPSE_SPREAD = 0.05
# That check fires late when the logits die slowly: on the run above the gap between them was 48.6
# at the start, 1.0 by iteration 100 and 0.10 only by 2,700. Validation sees it first (10.35 %
# top-1 at the first validation, iteration 4,000): a validation score (top-1, or agreement with
# the teacher when distilling) that falls back to within CHANCE_MARGIN of the way from the best
# so far to chance (1/classes), from a best at least a quarter of the way from chance to 100 %, is
# handled as a collapse too.
CHANCE_MARGIN = 0.1
# Linear warm-up: the first WARMUP_FRACTION of the iterations (at most WARMUP_MAX) ramp the rate
# from 1/W to 1 (W = warm-up length) when training starts from trained or re-learned weights.
WARMUP_FRACTION = 0.2
WARMUP_MAX = 100
# Caffe's clip_gradients (the L2 norm of all parameter gradients together) when the solver sets none.
CLIP_GRADIENTS = 10.0


def _trained_start(st: _Setup) -> bool:
    """Whether the regenerated layers start from learned values (a relearn output, a snapshot, a
    Tucker decomposition) rather than the fillers' random ones in SLIM_DIR/init.caffemodel."""
    if st.resume is not None or "tucker" in st.sd.report:
        return True
    return st.start_weights is not None and (st.sd.init_weights is None or
                                            not outputs.same_file(Path(st.start_weights), Path(st.sd.init_weights)))


SCHEDULES = ("anneal", "solver")


def safe_defaults(st: _Setup, sparam: "pb.SolverParameter", seed: int, base_lr_given: bool = False,
                  schedule: str = "anneal") -> None:
    """The solver and train-net settings that make ``finetune`` safe with no tuning flag:

    * ``random_seed`` = ``seed`` (Caffe's fillers and Dropout masks; the batch order is seeded too),
      so two runs with one seed give the same losses;
    * from trained or re-learned weights, the regenerated layers learn at lr_mult 1/2 (weights/
      biases) like the others instead of the train_val's 10/20 (the paper's 10x is for Xavier-random
      layers over 90,000 iterations), and the rate warms up linearly over the first iterations;
    * ``clip_gradients`` CLIP_GRADIENTS unless the solver sets one: a BatchNorm-folded net's first
      gradients can be orders of magnitude larger than its trained scale allows;
    * with ``schedule="anneal"`` (the default) the rate falls linearly to 0 at the run's last
      iteration (Caffe's ``poly``, power 1) instead of the solver's policy, whose steps are set
      for the paper's 90,000 iterations; and from learned weights, unless ``--base-lr`` is given,
      every layer starts at the rate the regenerated layers had (base_lr x their lr_mult, 0.01
      for the paper's solver). Measured on Fashion-MNIST's GoogLeNet-Slim (README, "Fine-tuning"):
      2,000 iterations from relearned weights end at 86.84 % top-1 on the solver's constant 0.001,
      88.04 % annealed from 0.001 and 88.45 % annealed from 0.01; distillation 86.17 % -> 88.95 %.
    """
    sparam.random_seed = int(seed)
    if sparam.clip_gradients < 0:
        sparam.clip_gradients = CLIP_GRADIENTS
    if schedule == "anneal":
        sparam.lr_policy = "poly"
        sparam.power = 1.0
    st.schedule = schedule
    if not _trained_start(st):
        return
    lowered, top_mult = [], 1.0
    for layer in st.tn.net.layer:
        for i, spec in enumerate(layer.param):
            cap = 1.0 if i == 0 else 2.0
            if spec.HasField("lr_mult") and spec.lr_mult > cap:
                if i == 0:
                    top_mult = max(top_mult, float(spec.lr_mult))
                spec.lr_mult = cap
                lowered.append(layer.name)
    if lowered:
        st.new_lr_mult = 1.0
        if schedule == "anneal" and not base_lr_given:
            sparam.base_lr *= top_mult
            st.notes.append(f"{len(set(lowered))} regenerated layer(s) learn at lr_mult 1 (not the train_val's "
                            f"{top_mult:g}x) and every layer starts at their rate, base_lr {sparam.base_lr:g}, "
                            "annealed to 0 at the last iteration: training starts from learned weights")
        else:
            st.notes.append(f"{len(set(lowered))} regenerated layer(s) learn at lr_mult 1 (not the train_val's "
                            f"{top_mult:g}x): training starts from learned weights")
    st.warmup = min(WARMUP_MAX, max(1, int(round(WARMUP_FRACTION * sparam.max_iter))))


def _warmup_factor(st: _Setup, it: int) -> float:
    return 1.0 if it >= st.warmup else (it + 1) / (st.warmup + 1)


def _start_solver(st: _Setup, sparam, resume):
    solver = pycaffe.make_solver(st.tn.net, sparam, st.outdir)
    if resume is not None and st.restore is not None:
        fd, tmp = tempfile.mkstemp(prefix="rebirth-", suffix=".solverstate")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(st.restore)
            solver.restore(tmp)
        finally:
            os.unlink(tmp)
    elif resume is not None:
        solver.restore(str(resume))
    elif st.start_weights:
        solver.net.copy_from(st.start_weights)
    return solver


def _restart_note(st: _Setup, sparam, bad: Diverged, log) -> None:
    what = (f"the net collapsed at iteration {bad.it} ({bad.collapse}; loss {bad.loss:.4g})" if bad.collapse
            else f"the loss diverged at iteration {bad.it} ({bad.loss:.4g})")
    note = f"{what} at base_lr {sparam.base_lr:g}; started again at base_lr {sparam.base_lr / 10:g}"
    sparam.base_lr /= 10
    st.notes.append(note)
    if log is not None:
        log(f"note: {note}")


def logit_spread(logits: np.ndarray) -> float:
    """The largest gap between an image's logits, over the batch (about 0: a uniform softmax for
    every image; Dropout in the TRAIN net does not lift a dead net's logits above it)."""
    z = np.asarray(logits, dtype=np.float64).reshape(len(logits), -1)
    return float(np.ptp(z, axis=1).max()) if z.shape[1] > 1 else 1.0


def collapsed(spreads: list[float]) -> bool:
    """Whether the logits told the classes apart at the start and have not for the last
    COLLAPSE_WINDOW iterations."""
    return (len(spreads) > COLLAPSE_WINDOW and spreads[0] > COLLAPSE_SPREAD
            and max(spreads[-COLLAPSE_WINDOW:]) <= COLLAPSE_SPREAD)


def lead_within_noise(best: float, last: float, images: int) -> float | None:
    """The standard error of an accuracy ``best`` measured on ``images`` images, sqrt(p (1 - p) / n),
    when the best validated weights lead the last ones by no more than it (so the pick may be the
    validation set's noise, not a better net); None when the lead is larger. On Table 3's 2,000
    held-out images at 92.5 % it is 0.59 pt: a pick of 92.55 % over 92.40 % read 91.67 % against
    92.02 % on the 10,000 test images."""
    se = math.sqrt(max(best * (1.0 - best), 0.0) / images) if images > 0 else 0.0
    return se if best - last <= se else None


def kept_iteration(scores: list[tuple[int, float]], best: int, final: int, images: int) -> int:
    """Which validated weights a run keeps, from ``scores`` (iteration, top-1 or agreement) in
    order, the first at the run's start: the ``best`` iteration's (the highest score, the earliest
    on a tie), except that the ``final`` iteration's are kept when the best leads them by no more
    than the standard error of ``images`` validation images (lead_within_noise) and they are not
    below the start. So a run never ends below its start on the validation images, and a lead the
    validation images cannot resolve does not send back weights trained less. Measured on eleven
    Table 3 runs whose best led their last within that error (2,000 held-out images; labels,
    distillation, Tucker; three teachers; scripts/measure_val_pick.py): the last weights read
    higher on the 10,000 test images in 9 of them, by 0.28 pt on average (sd 0.40 pt)."""
    if best == final or not scores or scores[-1][0] != final:
        return best
    top = dict(scores)[best]
    start, last = scores[0][1], scores[-1][1]
    return final if last >= start and lead_within_noise(top, last, images) is not None else best


def validation_scores(history: list[dict], first: int = 0) -> list[tuple[int, float]]:
    """(iteration, score) of a run's validated records from iteration ``first`` on, in order: top-1
    when the run validated on labels, else agreement with the teacher (label-free --val)."""
    key = "val_top1" if any("val_top1" in h for h in history) else "val_agreement"
    return [(h["iteration"], h[key]) for h in history if key in h and h["iteration"] >= first]


def back_to_chance(scores: list[float], classes: int) -> bool:
    """Whether the last validation score (top-1 or agreement, in [0, 1]) is back at chance after
    the run was clearly above it: last <= chance + CHANCE_MARGIN * (best - chance), from a best
    >= chance + (1 - chance) / 4."""
    if len(scores) < 2 or classes < 2:
        return False
    chance, best = 1.0 / classes, max(scores[:-1])
    return best >= chance + (1 - chance) / 4 and scores[-1] <= chance + CHANCE_MARGIN * (best - chance)


def _check_divergence(losses: list[float], it: int) -> None:
    loss = losses[-1]
    if not math.isfinite(loss):
        raise Diverged(it, loss)
    w = DIVERGENCE_WINDOW
    if len(losses) > w:   # losses[0] is the loss at the starting weights (the first step's forward)
        recent = float(np.mean(losses[-w:]))
        if recent > DIVERGENCE_FACTOR * max(losses[0], 1e-12):
            raise Diverged(it, recent)


# ----------------------------------------------------------------------------------------------
# Training


@dataclass
class _Setup:
    """Everything a fine-tuning run needs, read and checked before Caffe trains."""
    sd: SlimDir
    outdir: Path
    tn: TrainNet
    start_weights: str | None
    resume: str | None
    teacher: "ev.Runner | None"
    val_runner: "ev.Runner | None"
    val_pre: "preprocess.Preprocess | None"
    notes: list[str]
    warmup: int = 0                      # iterations of linear warm-up (safe_defaults)
    new_lr_mult: float | None = None     # the regenerated layers' lr_mult when lowered (safe_defaults)
    schedule: str = "anneal"             # "anneal" (poly to 0 over the run) or "solver" (safe_defaults)
    restore: bytes | None = None         # resume's snapshot naming the weights beside it (_check_solverstate)
    teacher_option: dict | None = None   # --teacher/--teacher-weights as given (the resume line repeats them)


def finetune(slim_dir, train: data.Source, val: data.Source | None = None, *, iters: int | None = None,
             batch: int | None = None, base_lr: float | None = None, stepsize: int | None = None,
             test_interval: int | None = None, snapshot: int | None = None, resume: str | None = None,
             weights: str | None = None, outdir: str | os.PathLike | None = None, distill: bool = False,
             val_limit: int | None = None, val_batch: int = 50, seed: int = 0,
             progress: Callable[[int], object] | None = None, log=None, force: bool = False,
             schedule: str = "anneal", with_labels: bool = False, teacher=None, teacher_weights=None) -> dict:
    """Fine-tune ``slim_dir`` on ``train`` (see the module doc); returns what finetune.json holds.
    ``teacher`` (a model spec, with ``teacher_weights``) replaces the teacher SLIM_DIR names.
    ``progress(n)`` is called after every n iterations, ``log(line)`` with every validation."""
    if schedule not in SCHEDULES:
        raise RebirthError(f"schedule {schedule!r}: expected one of {', '.join(SCHEDULES)}")
    if stepsize is not None and schedule != "solver":
        raise RebirthError("--stepsize sets the solver's step policy: add --schedule solver")
    if with_labels and not distill:
        raise RebirthError("--with-labels adds the label loss to --distill's: it needs --distill")
    if distill and not with_labels:   # label-free: a labelled source's labels are hidden, also from --val
        train, val = data.unlabelled(train), data.unlabelled(val)
    if teacher is not None and not distill:
        raise RebirthError("--teacher names the model --distill learns from: it needs --distill")
    st = _setup(slim_dir, train, val, batch, resume, weights, outdir, distill, with_labels, teacher, teacher_weights)
    with outputs.claimed_dir(st.outdir, OUTPUT_FILES, [p for p in (st.start_weights, st.resume) if p], force):
        if log is not None:
            for note in st.notes:
                log(f"note: {note}")
        sparam = make_solver_param(st.sd, st.outdir, iters, base_lr, stepsize)
        safe_defaults(st, sparam, seed, base_lr_given=base_lr is not None, schedule=schedule)
        if val is None and _trained_start(st):
            st.notes.append("without --val, weights.caffemodel holds the last iteration's weights: a run's first "
                            "hundred iterations can cost points it wins back later, so pass --val to keep the best")
        interval = test_interval if test_interval is not None else int(st.sd.solver.test_interval or 0)
        snap_every = snapshot if snapshot is not None else int(st.sd.solver.snapshot or 0)
        started = time.perf_counter()
        first_lr = sparam.base_lr
        with _Interrupt() as stop:
            for attempt in range(DIVERGENCE_ATTEMPTS):
                solver = _start_solver(st, sparam, resume)
                start = int(solver.iter)
                history = _previous_history(st.outdir, start) if resume is not None else []
                validate = _Validator(st, val, val_limit, val_batch, sparam, history, started, log, first=start)
                try:
                    snapshots = _train(st, solver, train, sparam, validate, interval, snap_every, seed, progress, stop)
                    max_iter = int(solver.iter) if stop.signal else int(sparam.max_iter)
                    if not stop.signal and (validate.losses or not history or history[-1]["iteration"] != max_iter):
                        validate(max_iter)     # may find the run back at chance (a collapse): in the try
                    break
                except Diverged as bad:
                    if attempt == DIVERGENCE_ATTEMPTS - 1:
                        how = f"collapsed ({bad.collapse})" if bad.collapse else "diverged"
                        raise RebirthError(f"the loss diverged at base_lr {first_lr:g} and at {DIVERGENCE_ATTEMPTS - 1} "
                                           f"lower rates (last: {how} at iteration {bad.it}, loss {bad.loss:.4g} at "
                                           f"base_lr {sparam.base_lr:g}); lower --base-lr") from None
                    _restart_note(st, sparam, bad, log)
        if start < max_iter or not (st.outdir / f"{SNAPSHOT_PREFIX}_iter_{max_iter}.solverstate").exists():
            solver.snapshot()
            snapshots.append(_snapshot_name(st.outdir, max_iter))
        result = _record(st, train, val, distill, sparam, start, history, snapshots, started, with_labels)
        if stop.signal:
            result["interrupted"] = {"signal": stop.signal, "iteration": max_iter}
        result["best"] = validate.best_record(max_iter, st.notes)
        _write_outputs(st, solver, result, validate.best_weights(max_iter))
        outputs.record_files(st.outdir, [*OUTPUT_FILES, *(Path(p).name for p in snapshots),
                                       *(Path(p).name.replace(".solverstate", ".caffemodel") for p in snapshots)])
        return result


class _Interrupt:
    """SIGINT/SIGTERM during training set ``signal`` (its name) instead of killing the run; the
    loop stops after the current iteration, and the run is snapshotted and written as if it had
    ended there (Caffe's own `caffe train` snapshots on SIGINT likewise). A second signal acts
    as usual. Outside the main thread (where handlers cannot be set) nothing changes."""

    def __init__(self):
        self.signal: str | None = None
        self._old: dict = {}

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name
        for sig, old in self._old.items():  # a second Ctrl-C stops at once
            signal.signal(sig, old)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def _setup(slim_dir, train, val, batch, resume, weights, outdir, distill, with_labels=False,
           teacher_spec=None, teacher_weights=None) -> _Setup:
    sd = read_slim_dir(slim_dir) if not isinstance(slim_dir, SlimDir) else slim_dir
    outdir = Path(outdir) if outdir is not None else sd.path / "finetune"
    if outdir.exists() and not outdir.is_dir():
        raise RebirthError(f"{outdir}: exists and is not a directory")
    if not distill or with_labels:
        data.require_labels(train, "--with-labels" if distill else "finetune without --distill")
    tn = build_train_net(sd, batch, distill, with_labels)
    start_weights = None
    restore = moved = None
    if resume is not None:
        restore, moved = _check_solverstate(Path(resume), sd)
    elif weights is not None:
        if not Path(weights).is_file():
            raise RebirthError(f"{weights}: no such file")
        start_weights = str(weights)
    elif sd.init_weights is not None:
        start_weights = str(sd.init_weights)
    notes = [moved] if moved else []
    if start_weights is None and resume is None:
        notes.append(f"{sd.path} has no init.caffemodel (slim ran without --weights) and no --weights was "
                     "given: training starts from the train_val's fillers")
    # Check that the starting weights fit the slim net before Caffe sees them (it aborts on a mismatch).
    if start_weights:
        load_model(sd.path / "deploy.prototxt", start_weights)
    teacher = None
    if distill or (val is not None and not val.has_labels):
        t_deploy, t_weights = (teacher_spec, teacher_weights) if teacher_spec else sd.teacher()
        teacher = ev.Runner.build(ev.load(t_deploy, t_weights, "--teacher" if teacher_spec else "the teacher",
                                           "--teacher-weights"))
        _, c, h, w = teacher.input_shape
        if (c, h, w) != (tn.pre.channels, *tn.pre.out_size):
            raise RebirthError(f"the teacher {t_deploy} takes {c}x{h}x{w} images, the slim net "
                               f"{tn.pre.channels}x{tn.pre.out_size[0]}x{tn.pre.out_size[1]}")
    # the deploy net also without --val: the start is checked on training images then (input_blind)
    val_runner = ev.Runner.build(load_model(sd.path / "deploy.prototxt"))
    val_pre = preprocess.from_layer(preprocess.data_layer(sd.train_val, pb.TEST), val_runner.input_shape,
                                    base_dir=sd.path, default=True)
    ev.check_fits(val_runner, val_pre)
    if val_runner.caffe_net.net.blobs[val_runner.output].data.reshape(
            val_runner.input_shape[0], -1).shape[1] != tn.classes:
        raise RebirthError(f"{sd.path / 'deploy.prototxt'}: the output has a different size from the logits")
    given = {"model": str(teacher_spec), "weights": str(teacher_weights) if teacher_weights else None} \
        if teacher_spec else None
    return _Setup(sd, outdir, tn, start_weights, resume, teacher, val_runner, val_pre, notes, restore=restore,
                  teacher_option=given)


class _Validator:
    """Closes one record of the history: mean loss since the last, learning rate, and the
    validation metrics of the weights the solver holds now."""

    def __init__(self, st: _Setup, val, val_limit, val_batch, sparam, history: list[dict], started: float, log,
                 first: int = 0):
        self.st, self.val, self.val_limit, self.val_batch = st, val, val_limit, val_batch
        self.sparam, self.history, self.started, self.log = sparam, history, started, log
        self.losses: list[float] = []
        self.scores: list[float] = []    # this attempt's validation scores (back_to_chance)
        self.net = None
        self.best: tuple[float, int, dict] | None = None   # (score, iteration, deploy weights)
        self.images = 0                  # images of the last validation
        self.first = first               # the iteration this run starts from (a resumed run's snapshot)
        self.first_record = len(history)  # records before it come from the run resumed

    def __call__(self, it: int) -> dict:
        entry = {"iteration": it, "loss": (float(np.mean(self.losses)) if self.losses else None),
                 "lr": _lr(self.sparam, it), "seconds": round(time.perf_counter() - self.started, 2)}
        self.losses.clear()
        if self.val is not None:
            runner = self._runner_now()
            if it == self.first and not self.history[self.first_record:]:
                self._check_input_blind(runner)
            res = ev.run_evaluation(runner, self.val, self.st.val_pre, batch=self.val_batch, teacher=self.st.teacher,
                                    limit=self.val_limit)
            for key in ("top1", "top5", "agreement", "kl"):
                if key in res:
                    entry[f"val_{key}"] = res[key]
            self.images = res.get("images", 0)
            self._keep_if_best(entry, runner)
        self.history.append(entry)
        if self.log is not None:
            self.log(entry)
        self._check_chance(entry)
        return entry

    def _runner_now(self):
        """The deploy net (``val_runner``) holding the solver's weights as they are now."""
        runner = self.st.val_runner
        runner.caffe_net.set_weights({k: [b.data for b in v] for k, v in self.net.params.items()
                                      if k in runner.caffe_net.net.params})
        return runner

    def check_start(self, train: data.Source) -> None:
        """Without --val: the start weights checked on 16 training images (``_check_input_blind``)."""
        self._check_input_blind(self._runner_now(), train, "training")

    def _check_input_blind(self, runner, source=None, what: str = "--val") -> None:
        """A RebirthError when the start weights give every image of ``source`` (the first 16 of
        --val, or of the training images without it) the same logits (evaluate.blind_to_input):
        the run could not change that, so it does not start."""
        source = self.val if source is None else source
        x, _ = next(source.batches(self.st.val_pre, min(16, len(source)), limit=16))
        why = ev.blind_to_input(runner, x)
        if why:
            start = self.st.start_weights or self.st.sd.init_weights
            raise RebirthError(f"{start}: the net gives every {what} image the same output: {why}, and no training "
                               "step reaches the layers below it. Start from other weights (relearn the units below "
                               "that blob, or a gentler decomposition)")

    def _check_chance(self, entry: dict) -> None:
        """Diverged(collapse=...) when this run's validation score is back at chance (back_to_chance)."""
        key = "val_top1" if "val_top1" in entry else "val_agreement" if "val_agreement" in entry else None
        if key is None:
            return
        self.scores.append(entry[key])
        if back_to_chance(self.scores, self.st.tn.classes):
            what = "top-1" if key == "val_top1" else "agreement with the teacher"
            raise Diverged(entry["iteration"], entry["loss"] if entry["loss"] is not None else float("nan"),
                           collapse=f"validation {what} {100 * entry[key]:.2f} %, back at chance "
                                    f"({100 / self.st.tn.classes:.0f} %) from {100 * max(self.scores[:-1]):.2f} %")


    def _keep_if_best(self, entry: dict, runner) -> None:
        """Remember the validated weights with the best score (top-1, else agreement, then -KL);
        the earliest wins a tie, so weights that only match the start are not preferred to it."""
        score = _score(entry)
        if score is not None and (self.best is None or score > self.best[0]):
            self.best = (score, entry["iteration"], {k: [b.data.copy() for b in v]
                                                     for k, v in runner.caffe_net.net.params.items()})

    def kept(self, final: int) -> int | None:
        """The iteration whose weights weights.caffemodel holds (kept_iteration over this history)."""
        if self.best is None:
            return None
        return kept_iteration(validation_scores(self.history, self.first), self.best[1], final, self.images)

    def best_weights(self, final: int) -> dict | None:
        """The best validated weights when they, not the final ones, are kept."""
        kept = self.kept(final)
        return self.best[2] if kept is not None and kept != final else None

    def best_record(self, final: int, notes: list[str]) -> dict | None:
        """The validation record of the kept weights, and a note when they are not simply the last
        or not the highest on the validation images."""
        kept = self.kept(final)
        if kept is None:
            return None
        entry = next(h for h in self.history if h["iteration"] == kept)
        top = next(h for h in self.history if h["iteration"] == self.best[1])
        record = {"iteration": kept, **{k: v for k, v in entry.items() if k.startswith("val_")}}
        if kept != final:
            notes.append(f"weights.caffemodel holds iteration {kept}'s weights, the best on the "
                         f"validation images ({_score_text(entry)}); the last iteration's are in the "
                         "final snapshot")
        elif kept != self.best[1]:
            key = "val_top1" if "val_top1" in top else "val_agreement"
            se = lead_within_noise(top[key], entry[key], self.images)
            notes.append(f"weights.caffemodel holds the last iteration's weights ({_score_text(entry)}): iteration "
                         f"{self.best[1]}'s {100 * top[key]:.2f} % leads them by no more than the standard error of "
                         f"{self.images:,} validation images ({100 * se:.2f} pt), a difference the validation "
                         "images cannot tell from noise; a larger --val can")
            record["highest"] = {"iteration": self.best[1], **{k: v for k, v in top.items() if k.startswith("val_")}}
        return record


def _score(entry: dict) -> tuple | None:
    if "val_top1" in entry:
        return (entry["val_top1"], entry.get("val_top5", 0.0))
    if "val_agreement" in entry:
        return (entry["val_agreement"], -entry.get("val_kl", 0.0))
    return None


def _score_text(entry: dict) -> str:
    if "val_top1" in entry:
        return f"top-1 {100 * entry['val_top1']:.2f} %"
    return f"agreement {100 * entry['val_agreement']:.2f} %, KL {entry.get('val_kl', 0.0):.4f}"


def _train(st: _Setup, solver, train: data.Source, sparam, validate: _Validator, interval: int, snap_every: int,
           seed: int, progress, stop: "_Interrupt | None" = None) -> list[str]:
    """Caffe's solver, one step at a time, its input blobs set from ``train``; the snapshots taken."""
    tn, net = st.tn, solver.net
    validate.net = net
    start, max_iter = int(solver.iter), int(sparam.max_iter)
    gen = train.batches(tn.pre, tn.batch, train=True, shuffle=True, loop=True, seed=seed + start)
    snapshots: list[str] = []
    run_losses: list[float] = []
    spreads: list[float] = []          # logit_spread per iteration (collapse)
    if validate.val is not None and start < max_iter and not any(h["iteration"] == start for h in validate.history):
        validate(start)
    elif validate.val is None and start < max_iter and not validate.history:   # a fresh run without --val
        validate.check_start(train)
    for it in range(start, max_iter):
        if stop is not None and stop.signal:
            break
        x, y = next(gen)
        net.blobs[tn.image].data[...] = x
        if tn.label is not None:
            bad = y[(y < 0) | (y >= tn.classes)]
            if bad.size:
                raise RebirthError(f"{train.name}: label {int(bad[0])} but the net has {tn.classes} classes")
            net.blobs[tn.label].data[...] = y
        if st.teacher is not None and TEACHER_LOGITS in net.blobs:
            net.blobs[TEACHER_LOGITS].data[...] = st.teacher.logits_of(x).reshape(net.blobs[TEACHER_LOGITS].data.shape)
        factor = _warmup_factor(st, it)
        for t, w in tn.losses.items():   # Caffe reads a loss top's weight from its diff: scales the step
            net.blobs[t].diff[...] = w * factor
        solver.step(1)
        loss = sum(w * float(net.blobs[t].data.sum()) for t, w in tn.losses.items())
        run_losses.append(loss)
        _check_divergence(run_losses, it + 1)
        spreads.append(logit_spread(net.blobs[tn.logits].data))
        if collapsed(spreads):
            raise Diverged(it + 1, loss, collapse="a uniform output for every image")   # for COLLAPSE_WINDOW its
        validate.losses.append(loss)
        if progress:
            progress(1)
        done = it + 1
        if interval and done % interval == 0 and done < max_iter:
            validate(done)
        if snap_every and done % snap_every == 0 and done < max_iter:
            solver.snapshot()
            snapshots.append(_snapshot_name(st.outdir, done))
    return snapshots


def _record(st: _Setup, train, val, distill, sparam, start, history, snapshots, started, with_labels=False) -> dict:
    """What finetune.json holds."""
    tn, teacher = st.tn, st.teacher
    return {
        "tool": f"rebirth {__version__}",
        "slim_dir": os.path.abspath(st.sd.path),
        "outdir": str(st.outdir),
        "mode": ("distill+labels" if with_labels else "distill") if distill else "labels",
        "loss": (f"EuclideanLoss between the slim net's logits '{tn.logits}' and the teacher's"
                 if distill and not with_labels else ", ".join(f"{t} (weight {w:g})" for t, w in tn.losses.items())),
        "teacher": ({"model": teacher.model.source, "weights": teacher.model.weights_source}
                    if teacher is not None else None),
        "teacher_option": st.teacher_option,
        "train": train.name, "val": val.name if val is not None else None,
        "start_weights": st.start_weights, "resumed_from": str(st.resume) if st.resume else None,
        "start_iteration": start, "iterations": int(sparam.max_iter), "batch": tn.batch,
        "base_lr": sparam.base_lr, "lr_policy": sparam.lr_policy, "stepsize": sparam.stepsize,
        "preprocess": tn.pre.describe(),
        "history": history,
        "snapshots": snapshots,
        "weights": str(st.outdir / "weights.caffemodel"),
        "seconds": round(time.perf_counter() - started, 2),
        "notes": st.notes,
        "clip_gradients": sparam.clip_gradients, "random_seed": int(sparam.random_seed),
        "warmup": st.warmup, "new_layers_lr_mult": st.new_lr_mult, "schedule": st.schedule,
    }


def _write_outputs(st: _Setup, solver, result: dict, best: dict | None = None) -> None:
    """OUTDIR/weights.caffemodel (the deploy net's layers: ``best`` when given, else the solver's
    last), deploy.prototxt and finetune.json."""
    final = {name: [b.data.copy() for b in blobs] for name, blobs in solver.net.params.items()}
    if best is not None:
        final.update(best)
    deploy_names = {layer.name for layer in st.sd.deploy.layer}
    weights_net = netio.with_weights(st.sd.deploy, {k: v for k, v in final.items() if k in deploy_names})
    inputs = [p for p in (st.start_weights, st.resume) if p]
    netio.write_weights(weights_net, st.outdir / "weights.caffemodel", inputs)
    if not outputs.same_file(st.outdir / "deploy.prototxt", st.sd.path / "deploy.prototxt"):
        outputs.atomic_write(st.outdir / "deploy.prototxt", (st.sd.path / "deploy.prototxt").read_text())
    outputs.atomic_write(st.outdir / "finetune.json", json.dumps(result, indent=2) + "\n")


def _snapshot_name(outdir: Path, it: int) -> str:
    return str(outdir / f"{SNAPSHOT_PREFIX}_iter_{it}.solverstate")


def _previous_history(outdir: Path, start: int) -> list[dict]:
    try:
        old = json.loads((outdir / "finetune.json").read_text())
        return [h for h in old.get("history", []) if h.get("iteration", 0) <= start]
    except (OSError, ValueError, AttributeError):
        return []


def _lr(s: "pb.SolverParameter", it: int) -> float:
    """Caffe's learning rate at iteration ``it`` for the common policies (for the history only)."""
    if s.lr_policy == "step" and s.stepsize:
        return s.base_lr * s.gamma ** (it // s.stepsize)
    if s.lr_policy == "multistep":
        return s.base_lr * s.gamma ** sum(1 for v in s.stepvalue if it >= v)
    if s.lr_policy == "inv":
        return s.base_lr * (1 + s.gamma * it) ** (-s.power)
    if s.lr_policy == "poly" and s.max_iter:
        return s.base_lr * (1 - it / s.max_iter) ** s.power
    if s.lr_policy == "exp":
        return s.base_lr * s.gamma ** it
    return s.base_lr


