"""Whether a fine-tuning run is still learning: a loss that diverged, logits that collapsed to a
uniform output, a validation score back at chance (each makes the run start again at a lower
rate), and start weights blind to their input (the run does not start)."""
from __future__ import annotations

import math

import numpy as np

from deeprebirth.errors import Diverged, RebirthError
from deeprebirth.learning import evaluate as ev

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
# image), while the same start over 10,000 iterations reached 85.47 % (README before 2026-12).
COLLAPSE_WINDOW = 50
COLLAPSE_SPREAD = 0.05
# That check fires late when the logits die slowly: on the run above the gap between them was 48.6
# at the start, 1.0 by iteration 100 and 0.10 only by 2,700. Validation sees it first (10.35 %
# top-1 at the first validation, iteration 4,000): a validation score (top-1, or agreement with
# the teacher when distilling) that falls back to within CHANCE_MARGIN of the way from the best
# so far to chance (1/classes), from a best at least a quarter of the way from chance to 100 %, is
# handled as a collapse too.
CHANCE_MARGIN = 0.1


def check_divergence(losses: list[float], it: int, floor: float = 0.0) -> None:
    """Diverged when the last loss is not finite, or the mean of the last DIVERGENCE_WINDOW exceeds
    both DIVERGENCE_FACTOR x ``losses[0]`` (the loss at the starting weights: the first step's
    forward) and ``floor``. For distillation the floor is the loss of a net whose logits are all
    0 (``zero_output_loss``): a start already close to its teacher has a loss so small that SGD's
    noise alone takes it past 10x (measured on the BatchNorm-folded ResNet slim net, a start at
    loss 1.16 (relative output error 0.168) ran between 1.1 and 2.6 at base_lr 0.01 and came back
    to 0.72), which is no divergence while the net still does better than saying nothing."""
    loss = losses[-1]
    if not math.isfinite(loss):
        raise Diverged(it, loss)
    w = DIVERGENCE_WINDOW
    if len(losses) > w:
        recent = float(np.mean(losses[-w:]))
        if recent > max(DIVERGENCE_FACTOR * max(losses[0], 1e-12), floor):
            raise Diverged(it, recent)


def zero_output_loss(teacher_logits: np.ndarray, weight: float = 1.0) -> float:
    """The distillation loss (EuclideanLoss, 1/(2N) sum ||z - t||^2, times its ``weight``) of a net
    whose logits are all 0, on the batch of teacher logits ``teacher_logits`` (N x ...)."""
    t = np.asarray(teacher_logits, dtype=np.float64).reshape(len(teacher_logits), -1)
    return float(weight * np.square(t).sum() / (2 * max(1, len(t))))


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


def back_to_chance(scores: list[float], classes: int) -> bool:
    """Whether the last validation score (top-1 or agreement, in [0, 1]) is back at chance after
    the run was clearly above it: last <= chance + CHANCE_MARGIN * (best - chance), from a best
    >= chance + (1 - chance) / 4."""
    if len(scores) < 2 or classes < 2:
        return False
    chance, best = 1.0 / classes, max(scores[:-1])
    return best >= chance + (1 - chance) / 4 and scores[-1] <= chance + CHANCE_MARGIN * (best - chance)


def restart_note(bad: Diverged, base_lr: float) -> str:
    """What the run's notes say when ``bad`` at ``base_lr`` makes it start again at a tenth of it."""
    what = (f"the net collapsed at iteration {bad.it} ({bad.collapse}; loss {bad.loss:.4g})" if bad.collapse
            else f"the loss diverged at iteration {bad.it} ({bad.loss:.4g})")
    return f"{what} at base_lr {base_lr:g}; started again at base_lr {base_lr / 10:g}"


def check_input_blind(runner: "ev.Runner", x: np.ndarray, start, what: str) -> None:
    """A RebirthError when the start weights (named ``start``), held by ``runner``, give every image
    of the batch ``x`` (``what`` images) the same logits (evaluate.blind_to_input): the run could
    not change that, so it does not start."""
    why = ev.blind_to_input(runner, x)
    if why:
        raise RebirthError(f"{start}: the net gives every {what} image the same output: {why}, and no training "
                           "step reaches the layers below it. Start from other weights (relearn the units below "
                           "that blob, or a gentler decomposition)")
