"""Caffe's solver as `rebirth finetune` sets it up: the slim directory's solver.prototxt with
validation and snapshots taken over by the loop, the safe defaults that keep a short fine-tune from
wrecking re-learned weights (docs/recovery.md), the warm-up, the learning rate Caffe uses at
an iteration, and snapshots (``.solverstate``) checked and restored."""
from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from deeprebirth import outputs
from deeprebirth.caffe import netio
from deeprebirth.caffe import proto as pb
from deeprebirth.caffe.folders import SlimDir
from deeprebirth.errors import RebirthError
from deeprebirth.graph.model import load_model
from deeprebirth.runtime import pycaffe

SNAPSHOT_PREFIX = "finetune"

# Linear warm-up: the first WARMUP_FRACTION of the iterations (at most WARMUP_MAX) ramp the rate
# from 1/W to 1 (W = warm-up length) when training starts from trained or re-learned weights.
WARMUP_FRACTION = 0.2
WARMUP_MAX = 100
# Caffe's clip_gradients (the L2 norm of all parameter gradients together) when the solver sets none.
CLIP_GRADIENTS = 10.0

SCHEDULES = ("anneal", "solver")


def make_solver_param(sd: SlimDir, outdir: Path, iters: int | None = None, base_lr: float | None = None,
                      stepsize: int | None = None) -> "pb.SolverParameter":
    """SLIM_DIR's solver with ``iters``/``base_lr``/``stepsize`` when given; Caffe's own tests,
    snapshots and display turned off (the loop validates on the deploy net and snapshots itself)."""
    s = pb.SolverParameter()
    s.CopyFrom(sd.solver)
    if iters is not None:
        s.max_iter = iters
    if base_lr is not None:
        s.base_lr = base_lr
    if stepsize is not None:
        s.stepsize = stepsize
    for name in ("test_iter", "test_net", "test_net_param", "test_state"):
        s.ClearField(name)
    s.test_interval = 0          # validation runs in the loop, on the validation images, with the deploy net
    s.test_initialization = False
    s.snapshot = 0               # snapshots are taken by the loop (solver.snapshot())
    s.snapshot_prefix = str((outdir / SNAPSHOT_PREFIX).resolve())
    s.display = 0
    s.iter_size = 1              # folded into the batch (trainnet.build_train_net)
    return s


# ----------------------------------------------------------------------------------------------
# Safe defaults


def trained_start(sd: SlimDir, start_weights: str | None, resume: str | None) -> bool:
    """Whether the regenerated layers start from learned values (a relearn output, a snapshot, a
    Tucker decomposition) rather than the fillers' random ones in SLIM_DIR/init.caffemodel."""
    if resume is not None or "tucker" in sd.report:
        return True
    return start_weights is not None and (sd.init_weights is None or
                                          not outputs.same_file(Path(start_weights), Path(sd.init_weights)))


@dataclass
class SafeSettings:
    """What ``safe_defaults`` decided besides the solver's fields."""
    warmup: int = 0                      # iterations of linear warm-up
    new_lr_mult: float | None = None     # the regenerated layers' lr_mult when lowered
    notes: list[str] = field(default_factory=list)


def safe_defaults(net: "pb.NetParameter", sparam: "pb.SolverParameter", seed: int, trained: bool,
                  base_lr_given: bool = False, schedule: str = "anneal", label_free: bool = False) -> SafeSettings:
    """The solver and train-net settings that make ``finetune`` safe with no tuning parameter
    (``net`` is the train net, edited in place; ``trained``: ``trained_start``):

    * ``random_seed`` = ``seed`` (Caffe's fillers and Dropout masks; the batch order is seeded too),
      so two runs with one seed give the same losses;
    * from trained or re-learned weights, the regenerated layers learn at lr_mult 1/2 (weights/
      biases) like the others instead of the train_val's 10/20 (the paper's 10x is for Xavier-random
      layers over 90,000 iterations), and the rate warms up linearly over the first iterations;
    * ``clip_gradients`` CLIP_GRADIENTS unless the solver sets one: a BatchNorm-folded net's first
      gradients can be orders of magnitude larger than its trained scale allows;
    * with ``schedule="anneal"`` (the default) the rate falls linearly to 0 at the run's last
      iteration (Caffe's ``poly``, power 1) instead of the solver's policy, whose steps are set
      for the paper's 90,000 iterations; and from learned weights, unless a base_lr is given,
      every layer starts at the rate the regenerated layers had (base_lr x their lr_mult, 0.01
      for the paper's solver). Measured on Fashion-MNIST's GoogLeNet-Slim (README before 2026-12):
      2,000 iterations from relearned weights end at 86.84 % top-1 on the solver's constant 0.001,
      88.04 % annealed from 0.001 and 88.45 % annealed from 0.01; distillation 86.17 % -> 88.95 %.
    * ``label_free`` (distillation without labels): no weight decay. The teacher's outputs are
      the target, and decay pulls every weight off it: measured on the BatchNorm ResNet's exactly
      folded net (a start equal to its teacher), 200 iterations at base_lr 0.001 moved the output
      by a relative 8.3e-5 with the solver's weight_decay 0.0002 and by nothing (1.5e-7, float
      rounding) without it.
    """
    settings = SafeSettings()
    sparam.random_seed = int(seed)
    if label_free and sparam.weight_decay:
        settings.notes.append(f"no weight decay (the solver's {sparam.weight_decay:g}): distillation without labels "
                              "has the teacher's outputs as its only target, and decay pulls the weights off them")
        sparam.weight_decay = 0.0
    if sparam.clip_gradients < 0:
        sparam.clip_gradients = CLIP_GRADIENTS
    if schedule == "anneal":
        sparam.lr_policy = "poly"
        sparam.power = 1.0
    if not trained:
        return settings
    lowered, top_mult = _lower_lr_mults(net)
    if lowered:
        settings.new_lr_mult = 1.0
        said = f"{lowered} regenerated layer(s) learn at lr_mult 1 (not the train_val's {top_mult:g}x)"
        if schedule == "anneal" and not base_lr_given:
            sparam.base_lr *= top_mult
            settings.notes.append(f"{said} and every layer starts at their rate, base_lr {sparam.base_lr:g}, "
                                  "annealed to 0 at the last iteration: training starts from learned weights")
        else:
            settings.notes.append(f"{said}: training starts from learned weights")
    settings.warmup = min(WARMUP_MAX, max(1, int(round(WARMUP_FRACTION * sparam.max_iter))))
    return settings


def _lower_lr_mults(net: "pb.NetParameter") -> tuple[int, float]:
    """Caps every lr_mult at 1 (weights) and 2 (biases); returns how many layers were lowered and
    the largest weight lr_mult that was."""
    lowered, top_mult = set(), 1.0
    for layer in net.layer:
        for i, spec in enumerate(layer.param):
            cap = 1.0 if i == 0 else 2.0
            if spec.HasField("lr_mult") and spec.lr_mult > cap:
                if i == 0:
                    top_mult = max(top_mult, float(spec.lr_mult))
                spec.lr_mult = cap
                lowered.add(layer.name)
    return len(lowered), top_mult


def warmup_factor(warmup: int, it: int) -> float:
    """The share of the rate iteration ``it`` takes during a linear warm-up of ``warmup`` iterations."""
    return 1.0 if it >= warmup else (it + 1) / (warmup + 1)


def lr(s: "pb.SolverParameter", it: int) -> float:
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


# ----------------------------------------------------------------------------------------------
# Snapshots


def snapshot_name(outdir: Path, it: int) -> str:
    """The .solverstate Caffe writes into ``outdir`` at iteration ``it``."""
    return str(outdir / f"{SNAPSHOT_PREFIX}_iter_{it}.solverstate")


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


def check_solverstate(path: Path, sd: SlimDir) -> tuple[bytes | None, str | None]:
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


def start_solver(net: "pb.NetParameter", sparam: "pb.SolverParameter", outdir: Path, resume: str | None = None,
                 restore: bytes | None = None, start_weights: str | None = None):
    """Caffe's solver on ``net``, holding the snapshot ``resume`` (``restore``: its corrected bytes,
    check_solverstate), else ``start_weights``, else the fillers' values."""
    solver = pycaffe.make_solver(net, sparam, outdir)
    if resume is not None and restore is not None:
        fd, tmp = tempfile.mkstemp(prefix="rebirth-", suffix=".solverstate")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(restore)
            solver.restore(tmp)
        finally:
            os.unlink(tmp)
    elif resume is not None:
        solver.restore(str(resume))
    elif start_weights:
        solver.net.copy_from(start_weights)
    return solver


# ----------------------------------------------------------------------------------------------
# Time budgets: a run's iterations fitted to the time it may take

# What a run given a time budget measures before it fits its iterations: CALIBRATION_STEPS steps
# of the solver at rate 0 (the weights do not move), the first left out of the mean (Caffe
# allocates its buffers then).
CALIBRATION_STEPS = 6
# The share of the time left that the fitted iterations may take: a shared machine's iterations
# slow down by a few per cent from one minute to the next.
BUDGET_SAFETY = 0.9
# Validations of a run fitted to a time budget (besides the start's): the kept weights are the
# best of these, so more of them find a better iterate at the cost of their time.
BUDGET_VALIDATIONS = 10
# The most of the usable time the validations may take: a short budget validates fewer times
# (at least once) rather than leave no time to train (a 5-minute accelerate had 42 s left for a
# distillation whose ten validations of 3.4 s each took all of it: it ran one iteration).
VALIDATION_SHARE = 0.25
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds from ``90s``, ``30m``, ``1h``, ``1h30m``, ``2.5m`` or a plain number of seconds; a
    RebirthError naming ``{opt:time}`` for anything else or a duration of 0."""
    s = str(text).strip().lower().replace(" ", "")
    total, number, matched = 0.0, "", False
    try:
        if s and s.replace(".", "", 1).isdigit():
            total, matched = float(s), True
        else:
            for ch in s:
                if ch.isdigit() or ch == ".":
                    number += ch
                elif ch in _UNITS and number:
                    total, number, matched = total + float(number) * _UNITS[ch], "", True
                else:
                    raise ValueError(ch)
            if number:
                raise ValueError(number)
    except ValueError:
        matched = False
    if not matched or total <= 0:
        raise RebirthError(f"{{opt:time}} {text!r}: expected a duration such as 90s, 30m, 1h or 1h30m")
    return total


def format_duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``1 h 05 min``: a duration as the notes and progress lines give it."""
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = int(round(seconds / 60))
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


@dataclass
class Fit:
    """Iterations fitted to a time budget (``fit_iterations``) and what they were fitted from."""
    iters: int                    # iterations to train
    test_interval: int            # validate every this many
    seconds_per_iter: float
    seconds_per_validation: float
    seconds_left: float           # the time there was to fit them into
    expected: float               # the seconds the iterations and validations should take
    capped: bool = False          # the iterations asked for (a cap) were fewer than the time allowed
    teacher: "TeacherCost | None" = None   # the teacher's cost it was fitted with
    done: int = 0                 # iterations the run had trained when fitted (a re-fit), counted in ``iters``


@dataclass
class TeacherCost:
    """The teacher's share of a distillation step when its outputs are remembered by input
    (teacher_memo.Memo): ``seconds_per_image`` of a forward pass, paid only for an input not seen
    before; ``images`` in the training source, each in ``variants`` forms (2 with mirroring)."""
    seconds_per_image: float
    batch: int
    images: int
    variants: int = 1


def memo_misses(drawn: float, images: int, variants: int = 1) -> float:
    """Expected inputs not seen before among the first ``drawn`` of a training run that goes
    through ``images`` images epoch by epoch (each once an epoch, in a new order), each drawn in
    one of ``variants`` equally likely forms (a mirror: 2): after k draws an image has shown
    v (1 - (1 - 1/v)^k) of its forms, and an epoch's new forms come in proportion to its progress."""
    if images <= 0:
        return float(drawn)
    v = max(1, int(variants))
    epochs = float(drawn) / images
    k = math.floor(epochs)
    unseen = (1.0 - 1.0 / v) ** k
    return images * (v * (1.0 - unseen) + (epochs - k) * unseen)


def teacher_seconds(teacher: TeacherCost | None, steps: float, done: float = 0.0) -> float:
    """The teacher's seconds over ``steps`` steps after the run's first ``done``: its misses among
    the inputs they draw (memo_misses), each a forward pass."""
    if teacher is None:
        return 0.0
    t = teacher
    return (memo_misses((done + steps) * t.batch, t.images, t.variants)
            - memo_misses(done * t.batch, t.images, t.variants)) * t.seconds_per_image


def _steps_within(usable: float, per_iter: float, teacher: TeacherCost | None, done: int = 0) -> int:
    """The most steps after the run's first ``done`` whose time, ``per_iter`` each plus the
    teacher's misses, fits into ``usable``."""
    if teacher is None:
        return int(usable // per_iter)

    def cost(n: int) -> float:
        return n * per_iter + teacher_seconds(teacher, n, done)

    lo, hi = 0, max(1, int(usable // per_iter))
    while lo < hi:                          # the cost grows with n: the largest n within
        mid = (lo + hi + 1) // 2
        if cost(mid) <= usable:
            lo = mid
        else:
            hi = mid - 1
    return lo


def fit_iterations(seconds_left: float, seconds_per_iter: float, seconds_per_validation: float = 0.0,
                   validations: int = BUDGET_VALIDATIONS, reserve: float = 0.0, cap: int | None = None,
                   safety: float = BUDGET_SAFETY, teacher: TeacherCost | None = None, done: int = 0) -> Fit:
    """The iterations that fit into ``seconds_left`` at ``seconds_per_iter`` each (measured), with
    ``validations`` validations of ``seconds_per_validation`` on the way and ``reserve`` seconds
    kept for the end (the last validation, writing the weights), using only ``safety`` of the time
    (a shared machine slows down); at least 1, and at most ``cap`` when one is given. The
    validation interval spreads ``validations`` over them (the last at the run's end). With
    ``teacher``, ``seconds_per_iter`` is the step without the teacher's forward pass, which is paid
    per input not seen before (memo_misses). ``done``: the run has trained that many iterations
    already (a re-fit on the way, ``Fit.done``): the fitted ``iters`` count them, the time and
    ``cap`` only those to come, whose teacher misses are those after them."""
    per_iter = max(float(seconds_per_iter), 1e-6)
    validations = validations_within(seconds_left, seconds_per_validation, validations, reserve, safety)
    usable = max(0.0, safety * float(seconds_left) - float(reserve) - validations * float(seconds_per_validation))
    steps = max(1, _steps_within(usable, per_iter, teacher, done))
    capped = cap is not None and cap < steps
    if capped:
        steps = int(cap)
    interval = max(1, -(-steps // max(1, validations)))
    train_s = steps * per_iter + teacher_seconds(teacher, steps, done)
    expected = train_s + -(-steps // interval) * float(seconds_per_validation) + float(reserve)
    return Fit(done + steps, interval, per_iter, float(seconds_per_validation), float(seconds_left), expected, capped,
               teacher, done)


#: A run fitted to a time budget fits itself again on the way, once it has run these shares of
#: its fitted iterations, to the time left at the pace it has kept: its first fit goes by
#: CALIBRATION_STEPS steps at rate 0, which on a shared machine were off by -20 % to +50 % (the
#: label-free distillations of the Fashion-MNIST GoogLeNets, issue 31: one ran out of time before
#: its rate reached 0, another ended with a third of its budget unused).
REFIT_SHARES = (0.2, 0.5)
#: ... and changes course only when the iterations to come change by more than this share of them
#: (a change restarts the solver from a snapshot of itself: a second or two).
REFIT_CHANGE = 0.1


def refit_due(done: int, start: int, target: int, refits: int) -> bool:
    """Whether a run at iteration ``done`` (started at ``start``, fitted to end at ``target``)
    that has fitted itself again ``refits`` times is due for its next re-fit (REFIT_SHARES)."""
    if refits >= len(REFIT_SHARES) or done >= target:
        return False
    return done - start >= REFIT_SHARES[refits] * (target - start)


def refit_changes(to_come: int, refitted_to_come: int) -> bool:
    """Whether a re-fit that makes ``refitted_to_come`` of the ``to_come`` iterations left is worth
    a restart (REFIT_CHANGE)."""
    return abs(refitted_to_come - to_come) > REFIT_CHANGE * max(1, to_come)


def measured_step(seconds: float, teacher_seconds_spent: float, steps: int) -> float:
    """Seconds per step without the teacher's passes, from ``steps`` steps that took ``seconds``
    of which ``teacher_seconds_spent`` were the teacher's."""
    return max(1e-6, (float(seconds) - float(teacher_seconds_spent)) / max(1, steps))


def validations_within(seconds_left: float, seconds_per_validation: float, validations: int,
                       reserve: float = 0.0, safety: float = BUDGET_SAFETY) -> int:
    """How many of ``validations`` a run fitted to ``seconds_left`` makes: as many as take at most
    VALIDATION_SHARE of the usable time (``safety`` of it, less ``reserve``), one at least (none
    when none are asked for)."""
    if validations <= 0 or seconds_per_validation <= 0:
        return max(0, validations)
    usable = max(0.0, safety * float(seconds_left) - float(reserve))
    return max(1, min(validations, int(VALIDATION_SHARE * usable // float(seconds_per_validation))))


@dataclass
class FitCurve:
    """Seconds the first ``k`` iterations of ``fit`` should take, validations included (a callable
    that pickles: progress crosses from the child process): the teacher's misses make the first
    epoch the slowest (memo_misses), so the time left is not the first iterations' pace times
    those to come."""
    fit: Fit

    def __call__(self, k: float) -> float:
        f = self.fit
        k = min(max(0.0, float(k)), float(f.iters - f.done))       # counted from the fit (a re-fit: f.done)
        return k * f.seconds_per_iter + teacher_seconds(f.teacher, k, f.done) + \
            k / max(1, f.test_interval) * f.seconds_per_validation


@dataclass
class Planned:
    """What a run given a time budget passes to its ``progress`` callable (instead of a number of
    iterations) once it has measured itself: the iterations still to come, the seconds they should
    take, and a line saying so (``{opt:NAME}`` placeholders)."""
    remaining: int
    seconds: float
    text: str
    curve: Callable[[float], float] | None = None   # seconds the first k of them should take (None: k/remaining)
    part: bool = False            # more work follows these, in the same time budget (recover's re-learning)


# ----------------------------------------------------------------------------------------------
# The distillation's rate, probed from its start

# Label-free distillation from learned weights, when no base_lr is given and the run has at least
# PROBE_MIN_ITERS iterations: the default rate, then its 1/3, 1/10, 1/30, 1/100, are each tried for
# PROBE_STEPS steps from the start (a fresh solver each, constant rate, the same batches) until one
# leaves the weights at most (1 + PROBE_TOLERANCE) times as far from the teacher on PROBE_IMAGES
# held-out images as the start was: that one, the largest the net takes, is the run's base_lr
# (warmed up and annealed as usual). What it tells apart, measured (docs/recovery.md; relative
# output error before -> after 20 steps, or 2 for the first): a rate above what the net's sharpest
# directions take blows any difference from the teacher up by orders of magnitude (the BatchNorm
# ResNet's exactly folded net at 0.01: 2e-7 -> 0.135, at 0.0033: 0.081, at 0.001: 1.9e-7), while a
# rate the net takes costs at most a transient that the anneal wins back (the ResNet slim net from a
# distilled start at 0.01: 0.22 -> 0.32, and 400 annealed iterations ended at 0.154, better than
# 0.161 at 0.001; Fashion-MNIST GoogLeNet-Slim relearned: 0.49 -> 0.77 at 0.01, the rate its shipped
# nets were distilled at; a start at 0.159: 0.163). So a doubling is tolerated, not a blow-up.
PROBE_DIVISORS = (1, 3, 10, 30, 100)
PROBE_STEPS = 20
PROBE_MIN_ITERS = 400
PROBE_IMAGES = 256
PROBE_TOLERANCE = 1.0


def probe_rates(base_lr: float) -> list[float]:
    """The rates a probe tries, largest first."""
    return [base_lr / d for d in PROBE_DIVISORS]


def _error(e) -> float:
    return float(e) if e is not None and np.isfinite(e) else float("inf")


def probe_accepts(start_error: float, error: float | None) -> bool:
    """Whether a probed rate left the weights at most 1 + PROBE_TOLERANCE times as far from the
    teacher as the start was (None or not finite: diverged)."""
    return _error(error) <= start_error * (1 + PROBE_TOLERANCE)


def pick_rate(start_error: float, errors: dict[float, float | None]) -> tuple[float, bool]:
    """The probed rate to train at, from the relative output error each left after the probe's
    steps (tried largest first): the largest ``probe_accepts``; when none is, the smallest (the
    gentlest; the start is then kept unless the run does better). Returns (rate, accepted)."""
    if not errors:
        raise ValueError("no rate was probed")
    ok = [r for r, e in errors.items() if probe_accepts(start_error, e)]
    return (max(ok), True) if ok else (min(errors), False)


def probe_done(start_error: float, errors: dict[float, float | None]) -> bool:
    """Whether a probe (rates tried largest first) can stop: the last rate tried is accepted."""
    return bool(errors) and probe_accepts(start_error, list(errors.values())[-1])
