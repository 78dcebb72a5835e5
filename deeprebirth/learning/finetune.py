"""`rebirth finetune` as a library: train a `rebirth slim` output in Caffe, fed from any SOURCE.

    result = finetune("slim/", data.open_source("fashion-mnist:train"), data.open_source("fashion-mnist:test[:1000]"),
                      "slim/finetune", Options(iters=2000))

What runs is Caffe's own solver (pycaffe ``caffe.get_solver`` + ``solver.step``) on the slim
directory's ``solver.prototxt`` (``solver``: its settings, the safe defaults, snapshots) and the
TRAIN phase of its ``train_val.prototxt``, whose data layer is replaced by an ``Input`` layer
(``trainnet``: labels, or distillation against the teacher's logits). Before each step the input
blobs are set from ``Source.batches(..., train=True, shuffle=True, loop=True)`` preprocessed as
that layer's ``transform_param`` says; so every SOURCE kind trains the same way, whatever data
layer the train_val names. After each step the loss and logits are checked (``health``: a run that
diverges or collapses starts again at a lower rate); every ``test_interval`` iterations the deploy
net is validated and the best validated weights remembered (``keeping``).

The teacher of a distillation is the original model named in SLIM_DIR/report.json
(``relearn.teacher``, else ``model`` and ``weights``), unless ``Options.teacher`` names another
(e.g. the original model for a net made from a slim net: a `tucker` output's report names the Slim
net it was decomposed from).
"""
from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from deeprebirth import __version__, errors, outputs
from deeprebirth.caffe import netio
from deeprebirth.caffe import proto as pb
from deeprebirth.caffe.folders import SlimDir, read_slim_dir
from deeprebirth.errors import Diverged, RebirthError
from deeprebirth.graph.model import load_model
from deeprebirth.learning import evaluate as ev
from deeprebirth.learning import health, preprocess
from deeprebirth.learning import keeping as kp
from deeprebirth.learning import solver as sv
from deeprebirth.learning import sources as data
from deeprebirth.learning.teacher_memo import Memo
from deeprebirth.learning.trainnet import DISTILL_LOSS, TEACHER_LOGITS, TrainNet, build_train_net

OUTPUT_FILES = ("weights.caffemodel", "deploy.prototxt", "finetune.json")
"""What finetune writes into its output folder (besides the marker and the snapshots)."""
END_SECONDS = 5.0
"""With a time budget: the seconds kept for the end besides its validation (the snapshot, the
weights and finetune.json written). The loop stops that long plus twice a validation's measured
time before the deadline (the last validation takes longer on a machine that slowed down:
measured, GoogLeNet-Slim given 15 minutes under a load of 8 ended 2 s before the deadline with
one validation's time kept)."""
CALIBRATION_IMAGES = 64
"""With a time budget: the validation images timed to estimate a whole validation's time."""


@dataclass
class Options:
    """How ``finetune`` trains. None: as the slim directory's solver.prototxt / train_val say."""
    iters: int | None = None             # train to this iteration (the solver's max_iter)
    batch: int | None = None             # images per step (the train_val data layer's)
    base_lr: float | None = None         # the solver's base_lr (see solver.safe_defaults)
    stepsize: int | None = None          # the solver's stepsize; needs schedule "solver"
    schedule: str = "anneal"             # solver.SCHEDULES: "anneal" (poly to 0 over the run) or "solver"
    test_interval: int | None = None     # validate every N iterations (the solver's test_interval)
    val_limit: int | None = None         # validate on the first N validation images only
    val_batch: int = 50                  # images per validation forward pass
    snapshot: int | None = None          # snapshot every N iterations (the solver's); one is always taken at the end
    resume: str | None = None            # a .solverstate to continue from (its iteration and momentum)
    weights: str | None = None           # the start weights (SLIM_DIR/init.caffemodel)
    distill: bool = False                # against the teacher's logits instead of labels
    with_labels: bool = False            # with distill: keep the label loss too
    teacher: str | None = None           # with distill: this model instead of the one SLIM_DIR names
    teacher_weights: str | None = None   # the teacher's .caffemodel
    seed: int = 0                        # Caffe's random_seed, the image order and augmentation
    holdout: bool = True                 # without val: validate on images held out of train (sources.hold_out)
    force: bool = False                  # write beside files in the output folder rebirth did not write
    time_budget: float | None = None     # seconds the run may take: iterations (and the annealed schedule)
    #                                      fitted to it after measuring the first steps (``iters`` is then a cap),
    #                                      and a hard stop before it; ``progress`` then also gets a solver.Planned


class StopOnSignals:
    """Given to ``finetune`` as ``stop``: SIGINT/SIGTERM during training set ``signal`` (its name)
    instead of killing the run; the loop stops after the current iteration, and the run is
    snapshotted and written as if it had ended there (Caffe's own `caffe train` snapshots on
    SIGINT likewise), with the iteration it reached. A second signal acts as usual. Outside the
    main thread (where handlers cannot be set) nothing changes. Without it, Ctrl-C is a
    KeyboardInterrupt like anywhere else."""

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
        self._old = {}
        return False


@dataclass
class _Setup:
    """Everything a fine-tuning run needs, read and checked before Caffe trains."""
    sd: SlimDir
    outdir: Path
    opt: Options
    tn: TrainNet
    start_weights: str | None
    teacher: "ev.Runner | None"
    val_runner: "ev.Runner"
    val_pre: "preprocess.Preprocess"
    notes: list[str]
    restore: bytes | None = None         # the resumed snapshot naming the weights beside it (check_solverstate)
    heldout: bool = False                # the validation images are held out of the training source
    safe: sv.SafeSettings = field(default_factory=sv.SafeSettings)
    interval: int | None = None          # the validation interval fitted to a time budget
    measured: tuple[float, float] | None = None   # seconds per step and per validation (_calibrate)
    teacher_cost: "sv.TeacherCost | None" = None  # the teacher's part of a step, paid per new input (_calibrate)
    probe: dict | None = None            # the rates probed from the start (_choose_rate)
    earlier: tuple[dict, dict] | None = None      # the resumed run's kept weights (_earlier_best)

    @property
    def trained(self) -> bool:
        return sv.trained_start(self.sd, self.start_weights, self.opt.resume)

    def validation(self, val: "data.Source | None") -> kp.Validation:
        start = self.start_weights or self.opt.resume or self.sd.init_weights
        return kp.Validation(self.val_runner, self.val_pre, val, self.teacher, self.tn.classes, start,
                             self.opt.val_limit, self.opt.val_batch,
                             val_what="held-out" if self.heldout else "{opt:val}")


@dataclass
class _Run:
    """A run that ended: the solver as it ended, its validator, and what it went through."""
    solver: object
    validator: kp.Validator
    start: int                           # the iteration it started from
    last: int                            # the iteration it reached
    snapshots: list[str]
    stopped: str | None = None           # the signal that stopped it early (StopOnSignals)
    out_of_time: bool = False            # the time budget ran out before the last iteration
    fit: sv.Fit | None = None            # the iterations fitted to the time budget
    refits: list[dict] = field(default_factory=list)   # the fits made again on the way (_Refit)


def finetune(slim_dir, train: data.Source, val: data.Source | None = None, outdir: str | os.PathLike | None = None,
             options: Options | None = None, *, progress: Callable[[int], object] | None = None,
             log: Callable[[object], object] | None = None, stop: StopOnSignals | None = None,
             name_of: Callable[[str], str] = str) -> dict:
    """Fine-tune ``slim_dir`` on ``train`` (see the module doc) into ``outdir`` (default
    SLIM_DIR/finetune); returns what finetune.json holds. ``progress(n)`` is called after every n
    iterations, and with a solver.Planned when the run plans its iterations (a time budget fitted,
    the rate probed: its text says what it does); ``log(item)`` with every note (text) and
    validation record (a history entry);
    ``stop`` (StopOnSignals) lets SIGINT/SIGTERM end the run early with its work written (the
    result's ``interrupted`` says where). The notes name the caller's parameters as ``{opt:NAME}``;
    finetune.json spells them by ``name_of`` (the cli: its flags; default: their names)."""
    opt = options or Options()
    started = time.perf_counter()      # the time budget counts from here
    _check_options(opt)
    given = train
    train, val, heldout, split_note = _hold_out(train, opt) if val is None else (train, val, None, None)
    if opt.distill and not opt.with_labels:   # label-free: a labelled source's labels are hidden, also from val
        train, val = data.unlabelled(train), data.unlabelled(val)
    st = _setup(slim_dir, train, val, outdir, opt)
    st.notes += [split_note] if split_note else []
    st.heldout = heldout is not None
    st.earlier = _earlier_best(st, val, heldout)
    with outputs.claimed_dir(st.outdir, OUTPUT_FILES, [p for p in (st.start_weights, opt.resume) if p], opt.force):
        if log is not None:
            for note in st.notes:
                log(f"note: {note}")
        sparam = sv.make_solver_param(st.sd, st.outdir, opt.iters, opt.base_lr, opt.stepsize)
        st.safe = sv.safe_defaults(st.tn.net, sparam, opt.seed, st.trained, opt.base_lr is not None, opt.schedule,
                                   label_free=opt.distill and not opt.with_labels)
        st.notes += st.safe.notes
        if val is None and st.trained:
            st.notes.append("without {opt:val}, weights.caffemodel holds the last iteration's weights: a run's first "
                            "hundred iterations can cost points it wins back later, so pass {opt:val} to keep the "
                            "best")
        run = _attempts(st, train, val, sparam, started, progress, log, stop)
        if run.start < run.last or not Path(sv.snapshot_name(st.outdir, run.last)).exists():
            run.solver.snapshot()
            run.snapshots.append(sv.snapshot_name(st.outdir, run.last))
        best = run.validator.best_record(run.last, st.notes)
        result = _record(st, train, val, sparam, run, started)
        result["best"] = best
        result["heldout"] = heldout
        if heldout is not None:   # what a resume or a second run is given: they split it alike
            result["train"], result["val"] = given.name, None
        _write_outputs(st, run.solver, result, run.validator.best_weights(run.last), name_of)
        outputs.record_files(st.outdir, [*OUTPUT_FILES, *(Path(p).name for p in run.snapshots),
                                         *(Path(p).name.replace(".solverstate", ".caffemodel") for p in run.snapshots)])
        return result


def _hold_out(train: data.Source, opt: Options) -> tuple[data.Source, data.Source | None, dict | None, str | None]:
    """Without validation images: (training images, held-out images, their record for
    finetune.json, a note), the held-out images spread over ``train`` (sources.hold_out), validated
    on as ``val`` would be; a source too small to split is trained on whole (no held-out images,
    a note says so)."""
    if not opt.holdout:
        return train, None, None, None
    part, held = data.hold_out(train)
    if held is None:
        return train, None, None, (f"{len(train):,} training images are too few to hold some out for validation "
                                   f"(a split takes {data.HOLDOUT_MIN * data.HOLDOUT_SHARE:,} or more): all are "
                                   "trained on and none validated on")
    record = {"source": held.name, "images": len(held), "train": part.name, "train_images": len(part),
              "of": train.name}
    note = (f"without {{opt:val}}, {len(held):,} of the {len(train):,} training images (every "
            f"{len(train) // len(held)}th) are held out and validated on as {{opt:val}} would be (the best weights "
            f"are kept, never below the start): {held.name}; training reads the other {len(part):,}")
    return part, held, record, note


def _check_options(opt: Options) -> None:
    if opt.schedule not in sv.SCHEDULES:
        raise RebirthError(f"{{opt:schedule}} {opt.schedule!r}: expected one of {', '.join(sv.SCHEDULES)}")
    if opt.stepsize is not None and opt.schedule != "solver":
        raise RebirthError("{opt:stepsize} sets the solver's step policy: add {opt:schedule} solver")
    if opt.with_labels and not opt.distill:
        raise RebirthError("{opt:with_labels} adds the label loss to {opt:distill}'s: it needs {opt:distill}")
    if opt.teacher is not None and not opt.distill:
        raise RebirthError("{opt:teacher} names the model {opt:distill} learns from: it needs {opt:distill}")
    if opt.teacher_weights is not None and opt.teacher is None:
        raise RebirthError("{opt:teacher_weights} needs {opt:teacher}")
    if opt.resume is not None and opt.weights is not None:
        raise RebirthError("{opt:resume} and {opt:weights} exclude each other (a snapshot holds its own weights)")
    if opt.time_budget is not None and not opt.time_budget > 0:
        raise RebirthError(f"{{opt:time}} {opt.time_budget!r}: expected a positive duration")


def _attempts(st: _Setup, train, val, sparam, started: float, progress, log, stop: StopOnSignals | None) -> _Run:
    """The run, from its start weights at one rate after the other (health.DIVERGENCE_ATTEMPTS),
    until one neither diverges nor collapses."""
    first_lr, attempts = sparam.base_lr, 0
    deadline = started + st.opt.time_budget if st.opt.time_budget is not None else None
    with stop if stop is not None else nullcontext():
        if deadline is not None:
            st.measured = _calibrate(st, train, val, sparam)
        _choose_rate(st, train, val, sparam, deadline, log, progress, stop)
        first_lr = sparam.base_lr
        while True:
            fit = _fit_to_time(st, train, val, sparam, deadline, progress, log) if deadline is not None else None
            solver = sv.start_solver(st.tn.net, sparam, st.outdir, st.opt.resume, st.restore, st.start_weights)
            start = int(solver.iter)
            history = _previous_history(st.outdir, start) if st.opt.resume is not None else []
            validate = kp.Validator(st.validation(val), sparam, history, started, log, first=start)
            if st.earlier is not None:
                validate.adopt(*st.earlier)
            refit = _Refit(st, sparam, fit, deadline, progress, log) if fit is not None else None
            try:
                snapshots, solver = _train(st, solver, train, sparam, validate, progress, stop, refit)
                stopped = stop.signal if stop is not None else None
                out_of_time = not stopped and int(solver.iter) < int(sparam.max_iter)
                last = int(solver.iter) if stopped or out_of_time else int(sparam.max_iter)
                if not stopped and (validate.losses or not history or history[-1]["iteration"] != last):
                    validate(last)     # may find the run back at chance (a collapse): in the try
                return _Run(solver, validate, start, last, snapshots, stopped, out_of_time, fit,
                            refit.records if refit is not None else [])
            except Diverged as bad:
                attempts += 1
                if attempts == health.DIVERGENCE_ATTEMPTS:
                    how = f"collapsed ({bad.collapse})" if bad.collapse else "diverged"
                    raise RebirthError(f"the loss diverged at base_lr {first_lr:g} and at {attempts - 1} lower rates "
                                       f"(last: {how} at iteration {bad.it}, loss {bad.loss:.4g} at base_lr "
                                       f"{sparam.base_lr:g}); lower {{opt:base_lr}}") from None
                note = health.restart_note(bad, sparam.base_lr)
                sparam.base_lr /= 10
                st.notes.append(note)
                if log is not None:
                    log(f"note: {note}")


def _fit_to_time(st: _Setup, train: data.Source, val: data.Source | None, sparam, deadline: float, progress,
                 log) -> sv.Fit:
    """With a time budget: the run's first steps measured (``_calibrate``), then its iterations,
    validation interval and warm-up fitted to the time left before ``deadline`` (solver.
    fit_iterations; ``Options.iters`` a cap), set on ``sparam`` so that the annealed rate reaches 0
    at the last of them; ``progress`` gets a solver.Planned and ``log`` a note saying so."""
    per_iter, per_val = st.measured or _calibrate(st, train, val, sparam)
    left = deadline - time.perf_counter()
    validations = sv.BUDGET_VALIDATIONS if val is not None else 0
    cost = st.teacher_cost
    student = per_iter if cost is None else max(0.1 * per_iter, per_iter - cost.seconds_per_image * cost.batch)
    done = sv.snapshot_iteration(st.opt.resume) if st.opt.resume is not None else 0   # a resumed run's start
    cap = None if st.opt.iters is None else max(1, st.opt.iters - done)
    fit = sv.fit_iterations(left, student, per_val, validations, reserve=2 * per_val + END_SECONDS,
                            cap=cap, teacher=cost)
    if done:    # counted from the snapshot (not as a re-fit's done: this process's teacher memo starts empty)
        fit = replace(fit, iters=fit.iters + done)
        if st.opt.iters is not None and st.opt.iters <= done:    # the snapshot is at the iterations asked for
            fit = replace(fit, iters=done, capped=True)
    sparam.max_iter = fit.iters
    st.interval = (st.opt.test_interval if st.opt.test_interval is not None else fit.test_interval) \
        if val is not None else 0
    if st.safe.warmup:
        st.safe.warmup = min(sv.WARMUP_MAX, max(1, int(round(sv.WARMUP_FRACTION * fit.iters))))
    steps = fit.iters - done
    iterations = ("1 iteration" if steps == 1 else f"{steps:,} iterations") + (
        f" from the snapshot's {done:,} (to {fit.iters:,})" if done else "")
    what = (f"{iterations} (the {{opt:iters}} asked for)" if fit.capped else
            f"{iterations} fitted to the {sv.format_duration(left)} left of {{opt:time}}")
    teacher = "" if cost is None else (f" ({per_iter - student:.3g} s of it the teacher's, paid once for each "
                                       "image it has not seen: its outputs are remembered)")
    note = (f"{what}: {per_iter:.3g} s per iteration{teacher} and {per_val:.3g} s per validation measured, about "
            f"{sv.format_duration(fit.expected)} in all" + (", the rate annealed to 0 at the last" if
                                                             sparam.lr_policy == "poly" else ""))
    st.notes.append(note)
    if log is not None:
        log(f"note: {note}")
    if progress:
        progress(sv.Planned(steps, fit.expected, note, sv.FitCurve(fit)))
    return fit


def _choose_rate(st: _Setup, train: data.Source, val: data.Source | None, sparam, deadline: float | None,
                 log, progress=None, stop: StopOnSignals | None = None) -> None:
    """Label-free distillation from learned weights with no base_lr given and enough iterations
    (solver.PROBE_MIN_ITERS; with a time budget, as many as it would fit): the rates of
    solver.probe_rates tried from the start for solver.PROBE_STEPS steps each, largest first
    until one does not blow the start's distance to the teacher up (solver.probe_accepts: the relative
    output error on the first solver.PROBE_IMAGES validation images, else training images); the
    one solver.pick_rate picks becomes ``sparam.base_lr``, recorded in ``st.probe`` and a note.
    A ``stop`` signal ends the probe at once (the rate stays the default)."""
    opt = st.opt
    if not (opt.distill and not opt.with_labels and st.teacher is not None and st.trained
            and opt.base_lr is None and opt.schedule == "anneal" and opt.resume is None and st.start_weights):
        return
    planned = int(sparam.max_iter) if deadline is None else int(
        sv.BUDGET_SAFETY * (deadline - time.perf_counter()) // max(st.measured[0], 1e-6))
    if opt.iters is not None:
        planned = min(planned, opt.iters)
    if planned < sv.PROBE_MIN_ITERS:
        return
    images = val if val is not None else train
    if progress:
        progress(sv.Planned(planned, 0.0, f"trying rates from base_lr {sparam.base_lr:g} down, "
                                          f"{sv.PROBE_STEPS} steps each, to train at the largest that keeps the "
                                          "start near the teacher"))
    start_error = _probe_error(st, images, None)
    if start_error is None:
        return
    errors: dict[float, float | None] = {}
    for rate in sv.probe_rates(float(sparam.base_lr)):
        probe = pb.SolverParameter()
        probe.CopyFrom(sparam)
        probe.base_lr, probe.lr_policy, probe.max_iter = rate, "fixed", sv.PROBE_STEPS
        solver = sv.start_solver(st.tn.net, probe, st.outdir, start_weights=st.start_weights)
        gen = train.batches(st.tn.pre, st.tn.batch, train=True, shuffle=True, loop=True, seed=opt.seed)
        for _ in range(sv.PROBE_STEPS):
            if stop is not None and stop.signal:
                return
            x, y = next(gen)
            _feed(st, solver.net, train, x, y, 1.0)
            solver.step(1)
        errors[rate] = _probe_error(st, images, solver.net)
        if sv.probe_done(start_error, errors):
            break
    rate, better = sv.pick_rate(start_error, errors)
    default = float(sparam.base_lr)
    sparam.base_lr = rate
    st.probe = {"start_rel_error": start_error, "rel_error": {f"{r:g}": e for r, e in errors.items()},
                "base_lr": rate, "accepted": better, "steps": sv.PROBE_STEPS}
    tried = ", ".join(f"{r:g}: {e:.4g}" if e is not None else f"{r:g}: diverged" for r, e in errors.items())
    note = (f"base_lr {rate:g}, the largest of {default:g} and below whose {sv.PROBE_STEPS} steps left the start at "
            f"most {1 + sv.PROBE_TOLERANCE:g}x as far from the teacher (relative output error on "
            f"{min(len(images), sv.PROBE_IMAGES)} images: start {start_error:.4g}; {tried})" if better else
            f"every rate from {default:g} down took the start more than {1 + sv.PROBE_TOLERANCE:g}x as far from the "
            f"teacher in {sv.PROBE_STEPS} steps "
            f"(relative output error: start {start_error:.4g}; {tried}): the run trains at the smallest, base_lr "
            f"{rate:g}, and keeps the start unless it does better")
    st.notes.append(note)
    if log is not None:
        log(f"note: {note}")


def _probe_error(st: _Setup, images: data.Source, net) -> float | None:
    """The relative output error against the teacher on the first solver.PROBE_IMAGES of
    ``images`` of the deploy net with ``net``'s weights (None: the start weights); None when it is
    not finite."""
    runner = st.val_runner
    if net is None:
        runner.caffe_net.set_weights(netio.weights_of(netio.read_weights(st.start_weights)))
    else:
        runner.caffe_net.set_weights({k: [b.data for b in v] for k, v in net.params.items()
                                      if k in runner.caffe_net.net.params})
    res = ev.run_evaluation(runner, images, st.val_pre, batch=st.opt.val_batch, teacher=st.teacher,
                            limit=sv.PROBE_IMAGES)
    err = res.get("rel_error")
    return float(err) if err is not None and math.isfinite(err) else None


def _calibrate(st: _Setup, train: data.Source, val: data.Source | None, sparam) -> tuple[float, float]:
    """(seconds per training step, seconds per validation) measured on this machine now: the
    solver from the run's start at rate 0 (the weights do not move) for solver.CALIBRATION_STEPS
    steps, the first left out; and a validation's share of CALIBRATION_IMAGES images scaled to the
    validation images."""
    probe = pb.SolverParameter()
    probe.CopyFrom(sparam)
    probe.base_lr, probe.max_iter = 0.0, sv.CALIBRATION_STEPS
    solver = sv.start_solver(st.tn.net, probe, st.outdir, st.opt.resume, st.restore, st.start_weights)
    gen = train.batches(st.tn.pre, st.tn.batch, train=True, shuffle=True, loop=True, seed=st.opt.seed)
    times, teacher_s, teacher_n = [], 0.0, 0
    for step in range(sv.CALIBRATION_STEPS):
        x, y = next(gen)
        t0 = time.perf_counter()
        before = (st.teacher.seconds, st.teacher.misses) if st.teacher is not None else None
        _feed(st, solver.net, train, x, y, 1.0)
        solver.step(1)
        times.append(time.perf_counter() - t0)
        if before is not None and step:
            teacher_s += st.teacher.seconds - before[0]
            teacher_n += st.teacher.misses - before[1]
    per_iter = sum(times[1:]) / max(1, len(times) - 1)
    st.teacher_cost = _teacher_cost(st, train, teacher_s, teacher_n)
    per_val = 0.0
    if val is not None:
        n = len(val) if st.opt.val_limit is None else min(st.opt.val_limit, len(val))
        runner = st.val_runner
        runner.caffe_net.set_weights({k: [b.data for b in v] for k, v in solver.net.params.items()
                                      if k in runner.caffe_net.net.params})
        timed = min(n, CALIBRATION_IMAGES)
        t0 = time.perf_counter()
        ev.run_evaluation(runner, val, st.val_pre, batch=st.opt.val_batch, teacher=st.teacher, limit=timed)
        per_val = (time.perf_counter() - t0) * n / max(1, timed)
    return per_iter, per_val


#: Training images looked at to count the forms augmentation makes of each (_teacher_cost).
FORM_SAMPLES = 8


def _teacher_cost(st: _Setup, train: data.Source, seconds: float, images: int) -> "sv.TeacherCost | None":
    """The teacher's part of a step as _calibrate measured it (``seconds`` for ``images`` inputs
    run), when the memo can keep every input the run may draw: each training image in as many
    forms as its random crops and mirroring make (the most of a few images spread over the
    source); None when it has no room for them all (the run then pays the teacher at every step)."""
    if st.teacher is None or images <= 0 or not st.opt.distill or not len(train):
        return None
    step = max(1, len(train) // FORM_SAMPLES)
    forms = max(st.tn.pre.training_forms(*np.shape(train.image(i))[:2]) for i in range(0, len(train), step))
    if not st.teacher.room_for(len(train) * forms, st.tn.classes):
        return None
    return sv.TeacherCost(seconds / images, st.tn.batch, len(train), forms)


def _train(st: _Setup, solver, train: data.Source, sparam, validate: kp.Validator, progress,
           stop: StopOnSignals | None, refit: "_Refit | None" = None) -> tuple[list[str], object]:
    """Caffe's solver, one step at a time, its input blobs set from ``train``; the health checked
    after every step, the validations run and the snapshots taken. With ``refit`` (a time budget)
    the loop stops at ``refit.ending`` (the budget less what the end needs) and the run fits its
    iterations again on the way, at the pace it has kept; the solver may then be a new one holding
    the old one's state. Returns the snapshots taken and the solver as it ended."""
    tn, net, opt = st.tn, solver.net, st.opt
    interval = st.interval if st.interval is not None else (
        opt.test_interval if opt.test_interval is not None else int(st.sd.solver.test_interval or 0))
    snap_every = opt.snapshot if opt.snapshot is not None else int(st.sd.solver.snapshot or 0)
    validate.net = net
    start = int(solver.iter)
    gen = train.batches(tn.pre, tn.batch, train=True, shuffle=True, loop=True, seed=opt.seed + start)
    snapshots: list[str] = []
    run_losses: list[float] = []
    spreads: list[float] = []          # health.logit_spread per iteration (collapse)
    floor = None                       # the loss a diverging run passes besides 10x its start (distillation)
    pace = _Pace()
    if validate.val is not None and start < sparam.max_iter and not any(h["iteration"] == start
                                                                        for h in validate.history):
        validate(start)
    elif validate.val is None and start < sparam.max_iter and not validate.history:   # a fresh run without val
        validate.check_start(train)
    it = start
    while it < int(sparam.max_iter):
        if (stop is not None and stop.signal) or (refit is not None and time.perf_counter() >= refit.ending):
            break
        x, y = next(gen)
        t0, teacher0 = time.perf_counter(), _teacher_counts(st)
        _feed(st, net, train, x, y, sv.warmup_factor(st.safe.warmup, it))
        solver.step(1)
        pace.step(time.perf_counter() - t0, teacher0, _teacher_counts(st))
        loss = sum(w * float(net.blobs[t].data.sum()) for t, w in tn.losses.items())
        run_losses.append(loss)
        if floor is None:
            floor = (health.zero_output_loss(net.blobs[TEACHER_LOGITS].data, tn.losses.get(DISTILL_LOSS, 0.0))
                     if TEACHER_LOGITS in net.blobs and not tn.label else 0.0)
        health.check_divergence(run_losses, it + 1, floor)
        spreads.append(health.logit_spread(net.blobs[tn.logits].data))
        if health.collapsed(spreads):
            raise Diverged(it + 1, loss, collapse="a uniform output for every image")   # for COLLAPSE_WINDOW its
        validate.losses.append(loss)
        if progress:
            progress(1)
        done = it + 1
        if interval and done % interval == 0 and done < sparam.max_iter:
            t0 = time.perf_counter()
            validate(done)
            pace.validated(time.perf_counter() - t0)
        if snap_every and done % snap_every == 0 and done < sparam.max_iter:
            solver.snapshot()
            snapshots.append(sv.snapshot_name(st.outdir, done))
        if refit is not None:
            swapped = refit(done, start, solver, pace, sv.snapshot_name(st.outdir, done) in snapshots)
            if swapped is not None:
                solver, net = swapped, swapped.net
                validate.net = net
                interval = st.interval
        it = done
    return snapshots, solver


def _teacher_counts(st: _Setup) -> tuple[float, int]:
    """The teacher's (seconds, misses) so far (its memo's counters; zeros without a teacher)."""
    t = st.teacher
    return (float(t.seconds), int(t.misses)) if t is not None and hasattr(t, "misses") else (0.0, 0)


@dataclass
class _Pace:
    """What a run's steps and validations took so far (for _Refit)."""
    steps: int = 0
    seconds: float = 0.0                 # the steps' time, the teacher's passes included
    teacher_seconds: float = 0.0
    teacher_misses: int = 0
    validations: int = 0
    validation_seconds: float = 0.0

    def step(self, seconds: float, before: tuple[float, int], after: tuple[float, int]) -> None:
        self.steps += 1
        self.seconds += seconds
        self.teacher_seconds += after[0] - before[0]
        self.teacher_misses += after[1] - before[1]

    def validated(self, seconds: float) -> None:
        self.validations += 1
        self.validation_seconds += seconds


class _Refit:
    """A run fitted to a time budget fits its iterations again at solver.REFIT_SHARES of them, at
    the pace it has kept (its steps without the teacher; the teacher's seconds per image it has not
    seen; its validations), to the time left before the deadline (solver.fit_iterations from the
    iterations done). When the iterations to come change by more than solver.REFIT_CHANGE, the
    solver restarts with the new ``max_iter`` from a snapshot of itself (its weights, momentum and
    iteration; Caffe's solver cannot change its settings), so that the annealed rate reaches 0 at
    the new end; the snapshot's files are removed unless they are a snapshot the run keeps.
    ``records`` says what each re-fit found (finetune.json's ``time_budget.refits``)."""

    def __init__(self, st: _Setup, sparam, fit: sv.Fit, deadline: float, progress, log):
        self.st, self.sparam, self.fit, self.deadline = st, sparam, fit, deadline
        self.progress, self.log = progress, log
        self.records: list[dict] = []
        # when the loop stops whatever the fit: what the end needs (the last validation, the files) kept
        self.ending = deadline - 2 * fit.seconds_per_validation - END_SECONDS

    def __call__(self, done: int, start: int, solver, pace: _Pace, kept_snapshot: bool):
        st, sparam = self.st, self.sparam
        target = int(sparam.max_iter)
        if not sv.refit_due(done, start, target, len(self.records)) or pace.steps < sv.CALIBRATION_STEPS:
            return None
        student = sv.measured_step(pace.seconds, pace.teacher_seconds, pace.steps)
        cost = st.teacher_cost
        if cost is not None and pace.teacher_misses > 0:
            cost = sv.TeacherCost(pace.teacher_seconds / pace.teacher_misses, cost.batch, cost.images, cost.variants)
        per_val = (pace.validation_seconds / pace.validations if pace.validations
                   else self.fit.seconds_per_validation)
        validations = max(1, sv.BUDGET_VALIDATIONS - pace.validations) if st.interval else 0
        self.ending = self.deadline - 2 * per_val - END_SECONDS          # the end's needs, as measured
        left = self.deadline - time.perf_counter()
        cap = None if st.opt.iters is None else max(1, st.opt.iters - done)
        new = sv.fit_iterations(left, student, per_val, validations, reserve=2 * per_val + END_SECONDS, cap=cap,
                                teacher=cost, done=done - start)
        new_target = start + new.iters
        record = {"iteration": done, "iterations": new_target, "seconds_per_iteration": round(student, 4),
                  "seconds_per_validation": round(per_val, 3), "seconds_left": round(left, 2)}
        self.records.append(record)
        if not sv.refit_changes(target - done, new_target - done):
            record["kept"] = True
            return None
        state = Path(sv.snapshot_name(st.outdir, done))
        files = (state, state.with_suffix(".caffemodel"))
        if not kept_snapshot and any(f.exists() for f in files):   # not this run's (--force): never replaced
            record["kept"] = True
            record["why"] = f"{state.name} or its .caffemodel is in the output folder already"
            return None
        solver.snapshot()
        sparam.max_iter = new_target
        fresh = sv.start_solver(st.tn.net, sparam, st.outdir, resume=str(state))
        if not kept_snapshot:
            for path in files:
                path.unlink(missing_ok=True)
        if st.interval:
            st.interval = new.test_interval
        self.fit = new
        note = (f"re-fitted at iteration {done:,} to {new_target:,} iterations (was {target:,}): "
                f"{student:.3g} s per iteration without the teacher measured so far, "
                f"{sv.format_duration(left)} left of {{opt:time}}")
        st.notes.append(note)
        if self.log is not None:
            self.log(f"note: {note}")
        if self.progress:
            self.progress(sv.Planned(new_target - done, new.expected, note, sv.FitCurve(new)))
        return fresh


def _feed(st: _Setup, net, train: data.Source, x, y, factor: float) -> None:
    """The train net's inputs for one step: images, labels, the teacher's logits on the same images;
    and each loss top's weight (times the warm-up ``factor``) in its diff, which Caffe reads as
    the loss's weight, so it scales the step."""
    tn = st.tn
    net.blobs[tn.image].data[...] = x
    if tn.label is not None:
        bad = y[(y < 0) | (y >= tn.classes)]
        if bad.size:
            raise RebirthError(f"{train.name}: label {int(bad[0])} but the net has {tn.classes} classes")
        net.blobs[tn.label].data[...] = y
    if st.teacher is not None and TEACHER_LOGITS in net.blobs:
        net.blobs[TEACHER_LOGITS].data[...] = st.teacher.logits_of(x).reshape(net.blobs[TEACHER_LOGITS].data.shape)
    for t, w in tn.losses.items():
        net.blobs[t].diff[...] = w * factor


# ----------------------------------------------------------------------------------------------
# What is read and checked before training


def _setup(slim_dir, train: data.Source, val: data.Source | None, outdir, opt: Options) -> _Setup:
    sd = read_slim_dir(slim_dir) if not isinstance(slim_dir, SlimDir) else slim_dir
    outdir = Path(outdir) if outdir is not None else sd.path / "finetune"
    if outdir.exists() and not outdir.is_dir():
        raise RebirthError(f"{outdir}: exists and is not a directory")
    if not opt.distill or opt.with_labels:
        data.require_labels(train, "{opt:with_labels}" if opt.distill else "finetune without {opt:distill}")
    tn = build_train_net(sd, opt.batch, opt.distill, opt.with_labels)
    start_weights, restore, notes = _start_weights(sd, opt)
    teacher = _teacher(sd, tn, opt) if opt.distill or (val is not None and not val.has_labels) else None
    # the deploy net also without validation images: the start is checked on training images then (input_blind)
    val_runner = ev.Runner.build(load_model(sd.path / "deploy.prototxt"))
    val_pre = preprocess.from_layer(preprocess.data_layer(sd.train_val, pb.TEST), val_runner.input_shape,
                                    base_dir=sd.path, default=True)
    ev.check_fits(val_runner, val_pre)
    if val_runner.caffe_net.net.blobs[val_runner.output].data.reshape(
            val_runner.input_shape[0], -1).shape[1] != tn.classes:
        raise RebirthError(f"{sd.path / 'deploy.prototxt'}: the output has a different size from the logits")
    return _Setup(sd, outdir, opt, tn, start_weights, teacher, val_runner, val_pre, notes, restore=restore)


def _start_weights(sd: SlimDir, opt: Options) -> tuple[str | None, bytes | None, list[str]]:
    """The weights training starts from (None: a snapshot's, or the fillers'), the resumed
    snapshot's corrected bytes (solver.check_solverstate) and the notes about them; checked to fit
    the slim net before Caffe sees them (it aborts on a mismatch)."""
    start_weights = restore = moved = None
    if opt.resume is not None:
        restore, moved = sv.check_solverstate(Path(opt.resume), sd)
    elif opt.weights is not None:
        if not Path(opt.weights).is_file():
            raise RebirthError(f"{opt.weights}: no such file")
        start_weights = str(opt.weights)
    elif sd.init_weights is not None:
        start_weights = str(sd.init_weights)
    notes = [moved] if moved else []
    if start_weights is None and opt.resume is None:
        notes.append(f"{sd.path} has no init.caffemodel (slim was given no weights) and no {{opt:weights}} was "
                     "given: training starts from the train_val's fillers")
    if start_weights:
        load_model(sd.path / "deploy.prototxt", start_weights)
    return start_weights, restore, notes


def _teacher(sd: SlimDir, tn: TrainNet, opt: Options) -> "Memo":
    """The teacher in pycaffe (``opt.teacher``, else the one SLIM_DIR names), checked to take the
    slim net's images; its outputs remembered by input (teacher_memo.Memo: the same images come
    back every epoch and every validation)."""
    t_deploy, t_weights = (opt.teacher, opt.teacher_weights) if opt.teacher else sd.teacher()
    what = "{opt:teacher}" if opt.teacher else "the teacher"
    teacher = Memo(ev.Runner.build(ev.load(t_deploy, t_weights, what, "{opt:teacher_weights}")))
    _, c, h, w = teacher.input_shape
    if (c, h, w) != (tn.pre.channels, *tn.pre.out_size):
        raise RebirthError(f"the teacher {t_deploy} takes {c}x{h}x{w} images, the slim net "
                           f"{tn.pre.channels}x{tn.pre.out_size[0]}x{tn.pre.out_size[1]}")
    return teacher


# ----------------------------------------------------------------------------------------------
# What is written


def _record(st: _Setup, train, val, sparam, run: _Run, started: float) -> dict:
    """What finetune.json holds. ``iterations`` is the iteration the run reached; a run stopped
    early says so in ``interrupted`` (the signal, that iteration, and the one it was to reach)."""
    tn, teacher, opt = st.tn, st.teacher, st.opt
    distill, with_labels = opt.distill, opt.with_labels
    result = {
        "tool": f"rebirth {__version__}",
        "slim_dir": os.path.abspath(st.sd.path),
        "outdir": str(st.outdir),
        "mode": ("distill+labels" if with_labels else "distill") if distill else "labels",
        "loss": (f"EuclideanLoss between the slim net's logits '{tn.logits}' and the teacher's"
                 if distill and not with_labels else ", ".join(f"{t} (weight {w:g})" for t, w in tn.losses.items())),
        "teacher": ({"model": teacher.model.source, "weights": teacher.model.weights_source}
                    if teacher is not None else None),
        "teacher_memo": teacher.stats if teacher is not None else None,
        "teacher_option": ({"model": str(opt.teacher), "weights": str(opt.teacher_weights) if opt.teacher_weights
                            else None} if opt.teacher else None),
        "train": train.name, "val": val.name if val is not None else None,
        "start_weights": st.start_weights, "resumed_from": str(opt.resume) if opt.resume else None,
        "start_iteration": run.start, "iterations": run.last, "batch": tn.batch,
        "base_lr": sparam.base_lr, "lr_policy": sparam.lr_policy, "stepsize": sparam.stepsize,
        "preprocess": tn.pre.describe(),
        "history": run.validator.history,
        "snapshots": run.snapshots,
        "weights": str(st.outdir / "weights.caffemodel"),
        "seconds": round(time.perf_counter() - started, 2),
        "notes": st.notes,
        "clip_gradients": sparam.clip_gradients, "random_seed": int(sparam.random_seed),
        "warmup": st.safe.warmup, "new_layers_lr_mult": st.safe.new_lr_mult, "schedule": opt.schedule,
        "weight_decay": sparam.weight_decay, "rate_probe": st.probe,
    }
    if run.stopped:
        result["interrupted"] = {"signal": run.stopped, "iteration": run.last, "target": int(sparam.max_iter)}
    if run.fit is not None:
        fit = run.fit
        result["time_budget"] = {"seconds": opt.time_budget, "fitted_iterations": fit.iters,
                                 "seconds_per_iteration": round(fit.seconds_per_iter, 4),
                                 "seconds_per_validation": round(fit.seconds_per_validation, 3),
                                 "seconds_left_at_fit": round(fit.seconds_left, 2),
                                 "capped_by_iters": fit.capped, "out_of_time": run.out_of_time,
                                 "refits": run.refits}
        if run.out_of_time:
            st.notes.append(f"the time ({{opt:time}}) ran out at iteration {run.last:,} of the "
                            f"{int(sparam.max_iter):,} fitted "
                            "(the machine slowed down): the run stopped there, its rate not yet annealed "
                            "to 0")
    return result


def _write_outputs(st: _Setup, solver, result: dict, best: dict | None = None, name_of=str) -> None:
    """OUTDIR/weights.caffemodel (the deploy net's layers: ``best`` when given, else the solver's
    last), deploy.prototxt and finetune.json."""
    final = {name: [b.data.copy() for b in blobs] for name, blobs in solver.net.params.items()}
    if best is not None:
        final.update(best)
    deploy_names = {layer.name for layer in st.sd.deploy.layer}
    weights_net = netio.with_weights(st.sd.deploy, {k: v for k, v in final.items() if k in deploy_names})
    inputs = [p for p in (st.start_weights, st.opt.resume) if p]
    netio.write_weights(weights_net, st.outdir / "weights.caffemodel", inputs)
    if not outputs.same_file(st.outdir / "deploy.prototxt", st.sd.path / "deploy.prototxt"):
        outputs.atomic_write(st.outdir / "deploy.prototxt", (st.sd.path / "deploy.prototxt").read_text())
    outputs.atomic_write(st.outdir / "finetune.json", errors.render(json.dumps(result, indent=2), name_of) + "\n")


def _earlier_best(st: _Setup, val: data.Source | None, heldout: dict | None) -> tuple[dict, dict] | None:
    """A resumed run's start: the validation record and the weights (OUTDIR/weights.caffemodel)
    that the run it resumes kept, when that run was validated on the same images and took the
    snapshot resumed from. The resumed run keeps them unless one of its own validations beats
    them, so going on never ends further from the target than the run it went on from kept."""
    if st.opt.resume is None or val is None:
        return None
    try:
        old = json.loads((st.outdir / "finetune.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(old, dict):
        return None
    path, best = st.outdir / "weights.caffemodel", old.get("best")
    took_snapshot = Path(st.opt.resume).name in {Path(p).name for p in old.get("snapshots") or []}
    same_images = old.get("heldout") == heldout if heldout is not None else old.get("val") == val.name
    if not isinstance(best, dict) or "iteration" not in best or not path.is_file() or not same_images \
            or not took_snapshot:
        return None
    return best, netio.weights_of(netio.read_weights(path))


def _previous_history(outdir: Path, start: int) -> list[dict]:
    """The records of the run a snapshot of ``outdir`` was taken in, up to its iteration ``start``."""
    try:
        old = json.loads((outdir / "finetune.json").read_text())
        return [h for h in old.get("history", []) if h.get("iteration", 0) <= start]
    except (OSError, ValueError, AttributeError):
        return []
