"""Label-free recovery: a slim net from its init weights to recovered weights, from images alone.

    doc = recover("slim/", "my-images/", outdir="slim/recovered")

Two steps, neither of which reads a label (a folder of unlabelled images is enough):

1. ``relearn`` (deeprebirth.learning.relearn): every regenerated unit, bottom to top, against the
   teacher's feature map at its output (least squares, then SGD). Each unit is fitted on its own
   output, so errors still add up through the net: on the BN teacher's conv1 unit a relative error
   of 0.10 at the unit became 0.69 at the penultimate features.
2. ``finetune`` with ``distill`` (deeprebirth.learning.finetune): the whole net, from the re-learned
   weights, against the teacher's logits on the same images (EuclideanLoss), which removes the
   error that accumulated through the net. It runs with finetune's safe defaults (regenerated
   layers at lr_mult 1, warm-up, clipped gradients, a diverging run restarted at a lower rate) and
   keeps the weights that agree best with the teacher (keeping.kept_iteration) on ``val``, or
   without it on the last images of ``images``, held out of both steps (sources.hold_out).

OUTDIR gets ``relearn/`` (relearn's weights.caffemodel and relearn.json), then weights.caffemodel,
deploy.prototxt and finetune.json from the distillation, and recover.json (both steps' summaries).
"""
from __future__ import annotations

import dataclasses
import json
import os
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
# iterations trade accuracy for time.
DISTILL_ITERS = 20_000

OUTPUT_NAMES = ("relearn", "recover.json", *ft.OUTPUT_FILES, f"{sv.SNAPSHOT_PREFIX}_iter_*")
"""What recover makes in its output folder (besides the marker): relearn's folder, recover.json,
finetune's files and snapshots."""


def output_dir(slim_dir: str | os.PathLike, outdir: str | os.PathLike | None = None) -> Path:
    """Where recover writes: ``outdir``, by default SLIM_DIR/recovered."""
    return Path(outdir) if outdir is not None else Path(slim_dir) / "recovered"


def recover(slim_dir: str | os.PathLike, images: str, val: str | None = None,
            outdir: str | os.PathLike | None = None, *, relearn_options: rl.Options | None = None,
            options: ft.Options | None = None, progress: Callable[[int], object] | None = None, log=None,
            flags: dict[str, str] | None = None) -> dict:
    """Re-learn, then distil (module doc); returns what recover.json holds. ``options`` are the
    distillation's (finetune.Options; ``distill`` and the start ``weights`` are set here; ``iters``
    defaults to DISTILL_ITERS and ``test_interval`` to a fifth of them). Interrupted (Ctrl-C), it
    leaves nothing it made (undo.removed_if_interrupted). ``flags``: how the caller spells the
    parameters the notes name (``{opt:NAME}``) in recover.json and finetune.json (others keep
    their names)."""
    sd = read_slim_dir(slim_dir)
    sd.teacher()                              # names the teacher, or a one-line error before any work
    build_train_net(sd, distill=True)         # the distillation's net, checked before relearn starts
    train = data.open_source(images)
    val_source = data.open_source(val) if val else None
    out = output_dir(sd.path, outdir)
    distill = options or ft.Options()
    iters = distill.iters if distill.iters is not None else DISTILL_ITERS
    distill = dataclasses.replace(distill, iters=iters, distill=True, with_labels=False,
                                  weights=str(out / "relearn" / "weights.caffemodel"),
                                  test_interval=distill.test_interval if distill.test_interval is not None
                                  else max(1, iters // 5))
    # OUTDIR is ours before any work; its marker lists relearn/ once relearn has written it, and
    # recover.json once that is written (the distillation's claim finds relearn/ by its own marker).
    with undo.removed_if_interrupted(out, OUTPUT_NAMES), \
            outputs.claimed_dir(out, ["recover.json", *ft.OUTPUT_FILES], [sd.path / "deploy.prototxt"]):
        relearned = rl.relearn_dir(sd.path, _relearn_images(images, train, val_source, distill), out / "relearn",
                                   options=relearn_options, progress=_unit_ticks(progress))
        outputs.record_files(out, ["relearn"])
        name_of = (lambda name: flags.get(name, name)) if flags else str
        tuned = ft.finetune(sd, train, val_source, out, distill, progress=progress, log=log, name_of=name_of)
        doc = {"slim_dir": str(sd.path), "images": train.name, "val": val_source.name if val_source else None,
               "heldout": tuned.get("heldout"), "labels_read": False, "relearn": relearned, "finetune": tuned,
               "weights": str(out / "weights.caffemodel")}
        outputs.atomic_write(out / "recover.json", errors.render(json.dumps(doc, indent=2), name_of) + "\n")
        outputs.record_files(out, ["recover.json"])
        return doc


def _relearn_images(images: str, train: data.Source, val: data.Source | None,
                    distill: ft.Options) -> "str | data.Source":
    """What relearn reads: ``images`` (opened: ``train``), without the images the distillation
    holds out for validation when no ``val`` is given (finetune splits ``train`` the same way,
    sources.hold_out), so neither step learns from the images the kept weights are chosen on."""
    part, held = data.hold_out(train) if val is None and distill.holdout else (train, None)
    return part if held is not None else images


def _unit_ticks(progress):
    def tick(done_units, n_units, name, it, iters):
        if iters and progress is not None:
            progress(1)
    return tick
