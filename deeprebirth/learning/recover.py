"""Label-free recovery: a slim net from its init weights to recovered weights, from images alone.

    doc = recover("slim/", "my-images/", outdir="slim/recovered")

Two steps, neither of which reads a label (a folder of unlabelled images is enough):

1. ``relearn`` (deeprebirth.learning.relearn): every regenerated unit, bottom to top, against the
   teacher's feature map at its output (least squares, then SGD). Each unit is fitted on its own
   output, so errors still add up through the net: on the BN teacher's conv1 unit a relative error
   of 0.10 at the unit became 0.69 at the penultimate features.
2. ``finetune --distill`` (deeprebirth.learning.finetune): the whole net, from the re-learned
   weights, against the teacher's logits on the same images (EuclideanLoss), which removes the
   error that accumulated through the net. It runs with finetune's safe defaults (regenerated
   layers at lr_mult 1, warm-up, clipped gradients, a diverging run restarted at a lower rate) and,
   with ``val``, keeps the weights that agree best with the teacher (finetune.kept_iteration).

OUTDIR gets ``relearn/`` (relearn's weights.caffemodel and relearn.json), then weights.caffemodel,
deploy.prototxt and finetune.json from the distillation, and recover.json (both steps' summaries).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from deeprebirth import outputs
from deeprebirth.caffe.folders import read_slim_dir
from deeprebirth.learning import finetune as ft
from deeprebirth.learning import relearn as rl
from deeprebirth.learning import sources as data

# Distillation iterations when none are asked for, measured on Table 3's GoogLeNet-Slim for
# Fashion-MNIST (README, "Label-free recovery"; batch 64, finetune's annealed default rate; teacher
# 91.84 %): 2,000 reached 88.95 % top-1, 10,000 90.52 % (48 minutes here, two or three jobs on two
# cores) and 20,000 91.05 % (85 minutes), the only run within 1 pt of the teacher: the default.
# With --val the best validated weights are kept (finetune.kept_iteration); --iters trades accuracy for time.
DISTILL_ITERS = 20_000


def recover(slim_dir: str | os.PathLike, images: str, val: str | None = None,
            outdir: str | os.PathLike | None = None, *, relearn_options: rl.Options | None = None,
            iters: int = DISTILL_ITERS, batch: int | None = None, base_lr: float | None = None,
            test_interval: int | None = None, val_limit: int | None = None, seed: int = 0,
            progress: Callable[[int], object] | None = None, log=None) -> dict:
    """Re-learn, then distil (module doc); returns what recover.json holds."""
    sd = read_slim_dir(slim_dir)
    sd.teacher()                              # names the teacher, or a one-line error before any work
    train = data.open_source(images)
    val_source = data.open_source(val) if val else None
    out = Path(outdir) if outdir is not None else sd.path / "recovered"
    # OUTDIR is ours before any work, with its relearn/ sub-folder listed in the marker, so the
    # distillation step that writes beside it finds nothing foreign there.
    with outputs.claimed_dir(out, ["relearn", "recover.json", *ft.OUTPUT_FILES], [sd.path / "deploy.prototxt"]):
        outputs.record_files(out, ["relearn", "recover.json"])
        relearned = rl.relearn_dir(sd.path, images, out / "relearn", options=relearn_options,
                                   progress=_unit_ticks(progress))
        interval = test_interval if test_interval is not None else max(1, iters // 5)
        tuned = ft.finetune(sd, train, val_source, iters=iters, batch=batch, base_lr=base_lr, test_interval=interval,
                            weights=str(out / "relearn" / "weights.caffemodel"), outdir=out, distill=True,
                            val_limit=val_limit, seed=seed, progress=progress, log=log)
        doc = {"slim_dir": str(sd.path), "images": train.name, "val": val_source.name if val_source else None,
               "labels_read": False, "relearn": relearned, "finetune": tuned,
               "weights": str(out / "weights.caffemodel")}
        outputs.atomic_write(out / "recover.json", json.dumps(doc, indent=2) + "\n")
        return doc


def _unit_ticks(progress):
    def tick(done_units, n_units, name, it, iters):
        if iters and progress is not None:
            progress(1)
    return tick
