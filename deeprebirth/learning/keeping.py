"""Which weights a fine-tuning run keeps: every validation closes a record of the run's history
(``Validator``), the validated weights with the best score are remembered (the start's among
them), and at the end the best are kept. Scored by top-1 (labels), the last weights are kept
instead when the best's lead over them is within the validation images' noise
(``kept_iteration``). Scored by fidelity to the teacher (label-free distillation: the relative
output error, then KL), the best are kept, always: a continuous measure has no such noise floor
to allow, and a step that takes the net further from the teacher is never the one written
(``fidelity_kept``)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from deeprebirth.errors import Diverged
from deeprebirth.learning import evaluate as ev
from deeprebirth.learning import health, preprocess
from deeprebirth.learning import solver as sv
from deeprebirth.learning import sources as data


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


def fidelity_kept(history: list[dict], first: int = 0) -> int | None:
    """The iteration of the validated record (from iteration ``first`` on, the start's included)
    closest to the teacher: the lowest relative output error (``val_rel_error``), then the lowest
    KL, the earliest on a tie (so weights that only match the start are not preferred to it);
    None when no record has the error."""
    rows = [h for h in history if h.get("val_rel_error") is not None and h["iteration"] >= first]
    if not rows:
        return None
    return min(rows, key=lambda h: (h["val_rel_error"], h.get("val_kl", 0.0), h["iteration"]))["iteration"]


def by_fidelity(history: list[dict]) -> bool:
    """Whether a run's validations are ranked by fidelity to the teacher (no labels: relative
    output error and KL) rather than by top-1."""
    return not any("val_top1" in h for h in history) and any("val_rel_error" in h for h in history)


def validation_scores(history: list[dict], first: int = 0) -> list[tuple[int, float]]:
    """(iteration, score) of a run's validated records from iteration ``first`` on, in order: top-1
    when the run validated on labels, else agreement with the teacher (label-free validation)."""
    key = "val_top1" if any("val_top1" in h for h in history) else "val_agreement"
    return [(h["iteration"], h[key]) for h in history if key in h and h["iteration"] >= first]


def score(entry: dict) -> tuple | None:
    """How a validation record ranks (higher is better): top-1 (then top-5), else fidelity to the
    teacher, -relative output error (then -KL), else agreement (then -KL)."""
    if "val_top1" in entry:
        return (entry["val_top1"], entry.get("val_top5", 0.0))
    if entry.get("val_rel_error") is not None:
        return (-entry["val_rel_error"], -entry.get("val_kl", 0.0))
    if "val_agreement" in entry:
        return (entry["val_agreement"], -entry.get("val_kl", 0.0))
    return None


def score_text(entry: dict) -> str:
    if "val_top1" in entry:
        return f"top-1 {100 * entry['val_top1']:.2f} %"
    if entry.get("val_rel_error") is not None:
        return (f"relative output error {entry['val_rel_error']:.4g}, KL {entry.get('val_kl', 0.0):.4g}, "
                f"agreement {100 * entry.get('val_agreement', 0.0):.2f} %")
    return f"agreement {100 * entry['val_agreement']:.2f} %, KL {entry.get('val_kl', 0.0):.4f}"


@dataclass
class Validation:
    """What validating a run needs."""
    runner: "ev.Runner"                  # the deploy net; it gets the solver's weights before each validation
    pre: "preprocess.Preprocess"         # its preprocessing (the train_val's TEST data layer)
    source: "data.Source | None"         # the validation images (None: the start is checked on training images)
    teacher: "ev.Runner | None"          # for agreement and KL
    classes: int
    start: str | None                    # the start weights (named when they are blind to the input)
    limit: int | None = None
    batch: int = 50
    val_what: str = "{opt:val}"          # what the validation images are called in messages ("held-out")


class Validator:
    """Closes one record of the history: mean loss since the last, learning rate, and the
    validation metrics of the weights the solver holds now; remembers the best validated weights."""

    def __init__(self, check: Validation, sparam, history: list[dict], started: float, log, first: int = 0):
        self.check, self.sparam, self.history, self.started, self.log = check, sparam, history, started, log
        self.val = check.source
        self.losses: list[float] = []
        self.scores: list[float] = []    # this attempt's validation scores (back_to_chance)
        self.net = None                  # the solver's train net (set by the loop)
        self.best: tuple[float, int, dict] | None = None   # (score, iteration, deploy weights)
        self.images = 0                  # images of the last validation
        self.first = first               # the iteration this run starts from (a resumed run's snapshot)
        self.first_record = len(history)  # records before it come from the run resumed
        self.adopted: dict | None = None  # the validation record of the weights ``adopt`` began with

    def adopt(self, record: dict, weights: dict) -> None:
        """Begin with the weights a resumed run kept (``record``: their validation record, from
        before this run's first iteration): they stay the best until a validation beats them."""
        now = score(record)
        if now is not None:
            self.best = (now, int(record["iteration"]), weights)
            self.adopted = {k: v for k, v in record.items() if k == "iteration" or k.startswith("val_")}

    def __call__(self, it: int) -> dict:
        entry = {"iteration": it, "loss": (float(np.mean(self.losses)) if self.losses else None),
                 "lr": sv.lr(self.sparam, it), "seconds": round(time.perf_counter() - self.started, 2)}
        self.losses.clear()
        if self.val is not None:
            runner = self._runner_now()
            if it == self.first and not self.history[self.first_record:]:
                self._check_input_blind(runner, self.val, self.check.val_what)
            c = self.check
            res = ev.run_evaluation(runner, self.val, c.pre, batch=c.batch, teacher=c.teacher, limit=c.limit)
            for key in ("top1", "top5", "agreement", "kl", "rel_error"):
                if res.get(key) is not None:
                    entry[f"val_{key}"] = res[key]
            self.images = res.get("images", 0)
            self._keep_if_best(entry, runner)
        self.history.append(entry)
        if self.log is not None:
            self.log(entry)
        self._check_chance(entry)
        return entry

    def _runner_now(self):
        """The deploy net holding the solver's weights as they are now."""
        runner = self.check.runner
        runner.caffe_net.set_weights({k: [b.data for b in v] for k, v in self.net.params.items()
                                      if k in runner.caffe_net.net.params})
        return runner

    def check_start(self, train: "data.Source") -> None:
        """Without validation images: the start weights checked on 16 training images."""
        self._check_input_blind(self._runner_now(), train, "training")

    def _check_input_blind(self, runner, source: "data.Source", what: str) -> None:
        """health.check_input_blind on the first 16 images of ``source``."""
        x, _ = next(source.batches(self.check.pre, min(16, len(source)), limit=16))
        health.check_input_blind(runner, x, self.check.start, what)

    def _check_chance(self, entry: dict) -> None:
        """Diverged(collapse=...) when this run's validation score is back at chance (health.back_to_chance)."""
        key = "val_top1" if "val_top1" in entry else "val_agreement" if "val_agreement" in entry else None
        if key is None:
            return
        self.scores.append(entry[key])
        classes = self.check.classes
        if health.back_to_chance(self.scores, classes):
            what = "top-1" if key == "val_top1" else "agreement with the teacher"
            raise Diverged(entry["iteration"], entry["loss"] if entry["loss"] is not None else float("nan"),
                           collapse=f"validation {what} {100 * entry[key]:.2f} %, back at chance "
                                    f"({100 / classes:.0f} %) from {100 * max(self.scores[:-1]):.2f} %")

    def _keep_if_best(self, entry: dict, runner) -> None:
        """Remember the validated weights with the best score (``score``: top-1, else the relative
        output error and KL, else agreement); the earliest wins a tie, so weights that only match
        the start are not preferred to it."""
        now = score(entry)
        if now is not None and (self.best is None or now > self.best[0]):
            self.best = (now, entry["iteration"], {k: [b.data.copy() for b in v]
                                                   for k, v in runner.caffe_net.net.params.items()})

    def kept(self, final: int) -> int | None:
        """The iteration whose weights weights.caffemodel holds (kept_iteration over this history)."""
        if self.best is None:
            return None
        if by_fidelity(self.history[self.first_record:]):
            return self.best[1]
        scores = validation_scores(self.history, self.first)
        if self.best[1] < self.first:      # the resumed run's kept weights lead: they stand in for the start
            earlier = dict(validation_scores(self.history)).get(self.best[1])
            if earlier is None:            # their record is not in this history: nothing to weigh them by
                return self.best[1]
            scores = [(self.best[1], earlier), *scores]
        return kept_iteration(scores, self.best[1], final, self.images)

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
        entry, top = (next((h for h in self.history if h["iteration"] == it), None) or self.adopted
                      for it in (kept, self.best[1]))
        record = {"iteration": kept, **{k: v for k, v in entry.items() if k.startswith("val_")}}
        start = next((h for h in self.history[self.first_record:] if h["iteration"] == self.first), None)
        if start is not None:
            record["start"] = {k: v for k, v in start.items() if k.startswith("val_")}
        record["start_kept"] = kept == self.first and final != self.first
        if record["start_kept"]:
            notes.append("no validated iteration came closer to the teacher than the start"
                         if by_fidelity(self.history[self.first_record:]) else
                         "no validated iteration scored above the start")
            notes[-1] += (f" ({score_text(entry)} on the validation images): weights.caffemodel holds the start "
                          "weights; the last iteration's are in the final snapshot")
        elif kept != final:
            notes.append(f"weights.caffemodel holds iteration {kept}'s weights, the best on the "
                         f"validation images ({score_text(entry)}); the last iteration's are in the "
                         "final snapshot")
        elif kept != self.best[1]:
            key = "val_top1" if "val_top1" in top else "val_agreement"
            se = lead_within_noise(top[key], entry[key], self.images)
            notes.append(f"weights.caffemodel holds the last iteration's weights ({score_text(entry)}): iteration "
                         f"{self.best[1]}'s {100 * top[key]:.2f} % leads them by no more than the standard error of "
                         f"{self.images:,} validation images ({100 * se:.2f} pt), a difference the validation "
                         "images cannot tell from noise; a larger {opt:val} can")
            record["highest"] = {"iteration": self.best[1], **{k: v for k, v in top.items() if k.startswith("val_")}}
        return record
