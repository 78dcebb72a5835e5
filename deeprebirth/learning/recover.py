"""Label-free recovery: a slim net from its init weights to recovered weights, from images alone.

    doc = recover("slim/", "my-images/", outdir="slim/recovered")

Two steps, neither of which reads a label (a folder of unlabelled images is enough; only when the
distillation is asked to keep the label loss, ``with_labels``, does it read them):

1. ``relearn`` (deeprebirth.learning.relearn): every regenerated unit, bottom to top, against the
   teacher's feature map at its output (least squares, then SGD). Each unit is fitted on its own
   output, so errors still add up through the net: on the BN teacher's conv1 unit a relative error
   of 0.10 at the unit became 0.69 at the penultimate features.
2. ``finetune`` with ``distill`` (deeprebirth.learning.finetune): the whole net, from the re-learned
   weights, against the teacher's logits on the same images (EuclideanLoss), which removes the
   error that accumulated through the net. It runs with finetune's safe defaults (regenerated
   layers at lr_mult 1, warm-up, clipped gradients, a diverging run restarted at a lower rate) and
   keeps the weights closest to the teacher (the lowest relative output error, then KL:
   keeping.fidelity_kept; the re-learned start is a candidate, so the result is never further from
   the teacher than relearn left it) on ``val``, or without it on every tenth image of
   ``images``, held out of both steps (sources.hold_out).

The run is bounded by a time budget (``time_budget``, DEFAULT_TIME_BUDGET unless iterations are
asked for): relearn's SGD stops at RELEARN_SHARE of it, and the distillation fits its iterations to
what is left.

OUTDIR gets ``relearn/`` (relearn's weights.caffemodel and relearn.json), then weights.caffemodel,
deploy.prototxt and finetune.json from the distillation, and recover.json (both steps' summaries).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Callable

from deeprebirth import errors, outputs
from deeprebirth.caffe.folders import read_slim_dir
from deeprebirth.learning import finetune as ft
from deeprebirth.learning import relearn as rl
from deeprebirth.learning import solver as sv
from deeprebirth.learning import sources as data
from deeprebirth.learning import undo
from deeprebirth.learning.trainnet import build_train_net

# Distillation iterations when none are asked for, measured on Table 3's GoogLeNet-Slim for
# Fashion-MNIST (the README's "Label-free recovery" before 2026-12, in git; batch 64, finetune's annealed
# default rate; teacher 91.84 %): 2,000 reached 88.95 % top-1, 10,000 90.52 % (48 minutes here, two
# or three jobs on two cores) and 20,000 91.05 % (85 minutes), the only run within 1 pt of the
# teacher: the default.
# With validation images the best validated weights are kept (keeping.kept_iteration); fewer
# iterations trade accuracy for time. Asked for with ``iters`` only: with neither ``iters`` nor a
# time budget, recover runs for DEFAULT_TIME_BUDGET instead.
DISTILL_ITERS = 20_000
# What recover takes, relearn included, when given neither iterations nor a time budget: the
# distillation's iterations are fitted to what relearn leaves of it (finetune.Options.time_budget).
# 20,000 iterations of the BatchNorm ResNet slim net took many hours on this 2-core machine under
# load (0.25-1 s each); 30 minutes give it 2,000-7,000, and the best validated weights are kept.
DEFAULT_TIME_BUDGET = 30 * 60.0

RELEARN_SHARE = 0.3
"""The part of a budgeted run relearn may take: its SGD stops there (relearn.Options.time_budget).
On the GoogLeNet-style nets' 26-minute recoveries here relearn took 100-170 s (7-11 %), so this bounds
only short budgets and loaded machines (a 4-minute run took 8.4 minutes before relearn was bounded)."""

MIN_DISTILL_SECONDS = 10.0
"""The least time a budgeted distillation is given after relearn (it measures its first steps)."""

OUTPUT_NAMES = ("relearn", "recover.json", *ft.OUTPUT_FILES, f"{sv.SNAPSHOT_PREFIX}_iter_*")
"""What recover makes in its output folder (besides the marker): relearn's folder, recover.json,
finetune's files and snapshots."""


def output_dir(slim_dir: str | os.PathLike, outdir: str | os.PathLike | None = None) -> Path:
    """Where recover writes: ``outdir``, by default SLIM_DIR/recovered."""
    return Path(outdir) if outdir is not None else Path(slim_dir) / "recovered"


def recover(slim_dir: str | os.PathLike, images: str, val: str | None = None,
            outdir: str | os.PathLike | None = None, *, relearn_options: rl.Options | None = None,
            options: ft.Options | None = None, progress: Callable[[int], object] | None = None, log=None,
            flags: dict[str, str] | None = None, time_budget: float | None = None,
            stop: ft.StopOnSignals | None = None, go_on: bool = False,
            started_hook: Callable[[], object] | None = None) -> dict:
    """Re-learn, then distil (module doc); returns what recover.json holds. ``options`` are the
    distillation's (finetune.Options; ``distill`` and the start ``weights`` are set here).
    ``options.with_labels`` keeps the label loss in the distillation (the images must carry labels;
    relearn still reads none). ``time_budget`` (seconds, else ``options.time_budget``) bounds the
    whole run: relearn's time counts, and the distillation's iterations (``options.iters`` then a
    cap) and schedule are fitted to what it leaves (finetune.Options.time_budget); with neither a
    budget nor ``iters`` the budget is DEFAULT_TIME_BUDGET. With ``iters`` alone they are run as given, validated every
    fifth of them unless ``test_interval`` says otherwise. Interrupted (Ctrl-C), it leaves nothing
    it made (undo.removed_if_interrupted). ``flags``: how the caller spells the parameters the
    notes name (``{opt:NAME}``) in recover.json and finetune.json (others keep their names).

    ``stop`` (finetune.StopOnSignals): Ctrl-C or SIGTERM during the distillation ends it with its
    work written (a snapshot, weights.caffemodel, finetune.json) and recover.json says
    ``interrupted`` (during relearn it still leaves nothing). ``go_on``: when OUTDIR holds such a
    run, or a finished one (``previous_run``), this one goes on from it: relearn's weights stay,
    and the distillation resumes from its last snapshot at its rate (``resumed_options``), fitted
    to the whole ``time_budget``; recover.json says ``resumed``. ``started_hook()`` is called once
    the inputs are checked, before any work (where the command says what it runs: after a one-line
    error about the inputs, nothing)."""
    started = time.perf_counter()
    sd = read_slim_dir(slim_dir)
    sd.teacher()                              # names the teacher, or a one-line error before any work
    build_train_net(sd, distill=True)         # the distillation's net, checked before relearn starts
    train = data.open_source(images)
    val_source = data.open_source(val) if val else None
    out = output_dir(sd.path, outdir)
    previous = previous_run(out) if go_on else None
    distill = options or ft.Options()
    budget = budget_of(distill.iters, time_budget if time_budget is not None else distill.time_budget)
    iters = distill.iters if distill.iters is not None or budget is not None else DISTILL_ITERS
    interval = distill.test_interval if distill.test_interval is not None or budget is not None else max(1, iters // 5)
    if distill.with_labels:       # the distillation keeps the label loss (accelerate --labels)
        data.require_labels(train, "{opt:labels}")
    distill = dataclasses.replace(distill, iters=iters, distill=True,
                                  weights=str(out / "relearn" / "weights.caffemodel"), test_interval=interval,
                                  time_budget=None)
    if started_hook is not None:
        started_hook()
    # OUTDIR is ours before any work; its marker lists relearn/ once relearn has written it, and
    # recover.json once that is written (the distillation's claim finds relearn/ by its own marker).
    with undo.removed_if_interrupted(out, OUTPUT_NAMES), \
            outputs.claimed_dir(out, ["recover.json", *ft.OUTPUT_FILES], [sd.path / "deploy.prototxt"]):
        if previous is None:
            relearned = rl.relearn_dir(sd.path, _relearn_images(images, train, val_source, distill),
                                       out / "relearn", options=relearn_budget(relearn_options, budget),
                                       progress=_unit_ticks(progress))
            outputs.record_files(out, ["relearn"])
            relearn_seconds = time.perf_counter() - started
        else:                     # relearn is done: its weights and record stay
            relearned, relearn_seconds = previous["relearn"], 0.0
            distill = resumed_options(distill, previous["finetune"], out)
        name_of = (lambda name: flags.get(name, name)) if flags else str
        if budget is not None:    # what relearn left of the budget (a few seconds at least: the calibration)
            distill = dataclasses.replace(distill, time_budget=max(MIN_DISTILL_SECONDS, budget - relearn_seconds))
        tuned = ft.finetune(sd, train, val_source, out, distill, progress=progress, log=log, stop=stop,
                            name_of=name_of)
        doc = {"slim_dir": str(sd.path), "images": train.name, "val": val_source.name if val_source else None,
               "heldout": tuned.get("heldout"), "labels_read": distill.with_labels, "relearn": relearned,
               "finetune": tuned,
               "weights": str(out / "weights.caffemodel"), "time_budget": budget,
               "relearn_seconds": round(relearn_seconds if previous is None else
                                        previous.get("relearn_seconds") or 0.0, 2),
               "seconds": round(time.perf_counter() - started, 2)}
        if previous is not None and distill.resume:
            doc["resumed"] = {"from": distill.resume, "iteration": tuned.get("start_iteration"),
                              "earlier_seconds": previous.get("seconds")}
        elif previous is not None:
            doc["restarted"] = ("the earlier distillation left no snapshot past its start to go on from: it "
                                "started again from relearn's weights")
        if tuned.get("interrupted"):
            doc["interrupted"] = tuned["interrupted"]
        outputs.atomic_write(out / "recover.json", errors.render(json.dumps(doc, indent=2), name_of) + "\n")
        outputs.record_files(out, ["recover.json"])
        return doc


def previous_run(out: str | os.PathLike) -> dict | None:
    """The recover.json of a run in ``out`` that got to its distillation (finished, or stopped by
    a signal), with relearn's weights there: what a ``go_on`` run continues; None when there is none."""
    out = Path(out)
    try:
        doc = json.loads((out / "recover.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("finetune"), dict) \
            or not (out / "relearn" / "weights.caffemodel").is_file():
        return None
    return doc


def interrupted_run(out: str | os.PathLike) -> dict | None:
    """previous_run when a signal stopped its distillation; None otherwise."""
    doc = previous_run(out)
    return doc if doc is not None and doc.get("interrupted") else None


def resumed_options(distill: ft.Options, tuned: dict, out: Path) -> ft.Options:
    """The distillation's options going on from the earlier run ``tuned`` (its finetune.json;
    finished or interrupted) in ``out``: from its last snapshot, at the rate it trained at (the
    probe that chose it is not run again: it starts from the re-learned weights). A run stopped
    before its first step (during the probe) or whose snapshot is gone starts again from
    relearn's weights."""
    snaps = [out / Path(s).name for s in tuned.get("snapshots") or []]
    if not snaps or not snaps[-1].is_file() or not tuned.get("iterations") or tuned.get("base_lr") is None:
        return distill
    return dataclasses.replace(distill, resume=str(snaps[-1]), weights=None, base_lr=float(tuned["base_lr"]))


def budget_of(iters: int | None, time_budget: float | None) -> float | None:
    """The time budget a recover run has (seconds, or None: ``iters`` iterations as given): the one
    given, else DEFAULT_TIME_BUDGET when no ``iters`` are given either."""
    if time_budget is not None:
        return float(time_budget)
    return DEFAULT_TIME_BUDGET if iters is None else None


def relearn_budget(options: rl.Options | None, budget: float | None) -> rl.Options:
    """relearn's options within a recover run of ``budget`` seconds: at most RELEARN_SHARE of it
    (or the bound already set, when smaller); unchanged without a budget."""
    opt = options or rl.Options()
    if budget is None:
        return opt
    share = RELEARN_SHARE * budget
    bound = share if opt.time_budget is None else min(opt.time_budget, share)
    return dataclasses.replace(opt, time_budget=bound)


def _relearn_images(images: str, train: data.Source, val: data.Source | None,
                    distill: ft.Options) -> "str | data.Source":
    """What relearn reads: ``images`` (opened: ``train``), without the images the distillation
    holds out for validation when no ``val`` is given (finetune splits ``train`` the same way,
    sources.hold_out), so neither step learns from the images the kept weights are chosen on."""
    part, held = data.hold_out(train) if val is None and distill.holdout else (train, None)
    return part if held is not None else images


def _unit_ticks(progress):
    """relearn's progress as recover's: one tick an SGD iteration, and at the first a plan of them
    all (units x iterations, so the first minute shows a percentage and the time left); the
    distillation's own plan replaces it."""
    planned = []

    def tick(done_units, n_units, name, it, iters):
        if not iters or progress is None:
            return
        if not planned:
            planned.append(True)
            progress(sv.Planned(n_units * iters, 0.0, f"re-learning {n_units} unit(s) bottom to top, {iters:,} "
                                                      "SGD iterations each, then the distillation", part=True))
        progress(1)
    return tick
