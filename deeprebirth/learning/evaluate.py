"""`rebirth eval` as a library: accuracy of a net on a SOURCE, and its agreement with a teacher.

    pre = preprocess.Preprocess.defaults(input_shape)
    result = evaluate("slim/deploy.prototxt", "slim/weights.caffemodel", data.open_source("fashion-mnist:test"),
                      pre, teacher="teacher.prototxt", teacher_weights="teacher.caffemodel")

Nets run in pycaffe. The scores are the net's last output blob: a Softmax output (probabilities)
or logits rank the classes the same, so top-k is read from either. With labels: top-1 and top-k
(k = 5, or the number of classes when fewer). With a teacher: top-1 agreement (the two nets'
argmax equal) and the mean over images of KL(teacher || model) = sum_c p_t(c) (log p_t(c) - log p(c))
on softmax probabilities, in nats; log-probabilities come from the logits (the bottom of an output
Softmax) when the net has them, so no probability is clipped. Also with a teacher: the relative
output error ||model - teacher|| / ||teacher|| over the output blob, pooled over the images
(``relative_error``), a warning when the teacher gives every image the same class
(``one_class_warning``: agreement with it then tells nothing), and without labels an estimate of
the top-1 the model loses (``expected_drop``): the mean over images of p_t(teacher's class) -
p_t(model's class), the top-1 lost if each image's label were drawn from the teacher's own
probabilities. Every image whose class changes counts, in proportion to how sure the teacher was:
an overconfident teacher makes it the share of images changing class (the most that can be lost).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from deeprebirth import errors
from deeprebirth.caffe import builtin, folders
from deeprebirth.errors import RebirthError
from deeprebirth.graph.model import Model, load_model
from deeprebirth.learning import preprocess
from deeprebirth.learning import sources as data
from deeprebirth.runtime import pycaffe

TOP_K = 5


# ----------------------------------------------------------------------------------------------
# Models


def load(spec, weights=None, what: str = "MODEL", weights_flag: str = "{opt:weights}") -> Model:
    """A deploy model with weights, ready to run (see folders.model_files); errors name the model
    as ``what`` and its weights parameter as ``weights_flag`` (``{opt:NAME}``, errors.render)."""
    if isinstance(spec, Model):
        return spec
    deploy, weights = folders.model_files(spec, weights)
    if not Path(deploy).exists() and str(deploy) not in builtin.NAMES:
        raise RebirthError(f"{spec}: no such file, folder or built-in model ({what}; built-in: "
                           f"{', '.join(sorted(builtin.NAMES))})")
    if weights is None:
        raise RebirthError(f"{spec}: {what} needs weights ({weights_flag}, or a directory holding weights.caffemodel)")
    m = load_model(deploy, weights, check=lambda net, src: pycaffe.check_runnable(net, src, "eval"))
    return m


@dataclass
class Runner:
    """A deploy net in pycaffe, fed batches through its single image input."""

    model: Model
    caffe_net: pycaffe.CaffeNet
    input: str
    output: str
    logits: str | None   # the output Softmax's bottom, when the output is a Softmax of another blob

    @classmethod
    def build(cls, model: Model) -> "Runner":
        net = pycaffe.CaffeNet(model.net, model.weights)
        inputs = net.input_names
        if len(inputs) != 1:
            raise RebirthError(f"{model.source}: the net has {len(inputs)} inputs ({', '.join(inputs)}); "
                               "evaluation feeds one image input")
        output = list(net.net.outputs)[-1]
        logits = None
        for layer in model.net.layer:
            if output in layer.top and layer.type == "Softmax" and layer.bottom[0] != output:
                logits = layer.bottom[0]
        return cls(model, net, inputs[0], output, logits)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.caffe_net.net.blobs[self.input].data.shape)

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scores, log-probabilities), both N x K."""
        self.caffe_net.fill_inputs(inputs={self.input: x})
        self.caffe_net.net.forward()
        blobs = self.caffe_net.net.blobs
        scores = blobs[self.output].data.reshape(len(x), -1).copy()
        if self.logits is not None:
            logp = log_softmax(blobs[self.logits].data.reshape(len(x), -1))
        elif self.is_softmax_output():
            logp = np.log(np.maximum(scores.astype(np.float64), np.finfo(np.float64).tiny))
        else:
            logp = log_softmax(scores)
        return scores, logp

    def scores_and_logits(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the output blob, the logits) for ``x``, N x K each, from one pass (logits_of)."""
        scores, logp = self.run(x)
        return scores, self.logits_after_run(len(x), scores, logp)

    def logits_of(self, x: np.ndarray) -> np.ndarray:
        """The net's logits for ``x`` (N x K): the output Softmax's input, else the output itself
        when it is not a Softmax, else log-probabilities (logits up to a constant per image)."""
        scores, logp = self.run(x)
        return self.logits_after_run(len(x), scores, logp)

    def logits_after_run(self, n: int, scores: np.ndarray, logp: np.ndarray) -> np.ndarray:
        """logits_of's answer for the ``n`` images ``run`` has just run (its ``scores``, ``logp``)."""
        if self.logits is not None:
            return self.caffe_net.net.blobs[self.logits].data.reshape(n, -1).copy()
        return logp.astype(np.float32) if self.is_softmax_output() else scores

    def is_softmax_output(self) -> bool:
        return any(self.output in layer.top and layer.type == "Softmax" for layer in self.model.net.layer)


def input_blind(logits: np.ndarray) -> bool:
    """Whether every image got the same logits (two images or more): no logit differs between
    images by more than 1e-6 of the logits' size. The net's output then does not depend on its
    input; e.g. a blob whose ReLUs are dead for every image cuts the path, and no training step
    reaches the layers below it (their gradient is zero), so training cannot mend it."""
    z = np.asarray(logits, dtype=np.float64).reshape(len(logits), -1)
    return len(z) >= 2 and float(np.ptp(z, axis=0).max()) <= 1e-6 * max(float(np.abs(z).max()), 1e-30)


def dead_blob(blobs: dict) -> str | None:
    """The first blob, in the net's order, that is zero for every image (after a forward pass),
    else None."""
    return next((name for name, b in blobs.items() if b.data.size and not np.any(b.data)), None)


def blind_to_input(runner: "Runner", x: np.ndarray) -> str | None:
    """None when ``runner``'s net tells the images ``x`` apart; else why not: the first blob that is
    zero for every image ("blob 'NAME' is zero for every image (dead ReLUs)"), or a plain
    statement when no blob is all zero."""
    if not input_blind(runner.logits_of(x)):
        return None
    blob = dead_blob(runner.caffe_net.net.blobs)
    return f"blob '{blob}' is zero for every image (dead ReLUs)" if blob else "its output does not depend on its input"


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def topk_hits(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per image: is the label among the k highest scores (ties broken as Caffe's Accuracy layer
    does not matter here: scores are floats of trained nets)."""
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return (top == labels[:, None]).any(axis=1)


def _check_labels(labels: np.ndarray, classes: int, source: data.Source) -> None:
    bad = labels[(labels < 0) | (labels >= classes)]
    if bad.size:
        raise RebirthError(f"{source.name}: label {int(bad[0])} but the net has {classes} outputs (classes)")


# ----------------------------------------------------------------------------------------------
# Evaluation


class Meter:
    """Running sums of the evaluation metrics."""

    def __init__(self):
        self.n = 0
        self.top1 = self.topk = 0
        self.t_top1 = self.t_topk = 0
        self.agree = 0
        self.kl = 0.0
        self.k = TOP_K
        self.diff2 = self.ref2 = 0.0     # sums of squares: model - teacher, and teacher (relative_error)
        self.drop = 0.0                  # sum of p_t(teacher's class) - p_t(model's class) (expected_drop)
        self.t_counts = np.zeros(0, dtype=np.int64)   # images per teacher top-1 class

    def add(self, scores, logp, labels=None, t_scores=None, t_logp=None):
        self.n += len(scores)
        self.k = min(TOP_K, scores.shape[1])
        if labels is not None:
            self.top1 += int((scores.argmax(axis=1) == labels).sum())
            self.topk += int(topk_hits(scores, labels, TOP_K).sum())
            if t_scores is not None:
                self.t_top1 += int((t_scores.argmax(axis=1) == labels).sum())
                self.t_topk += int(topk_hits(t_scores, labels, TOP_K).sum())
        if t_scores is not None:
            self.agree += int((scores.argmax(axis=1) == t_scores.argmax(axis=1)).sum())
            self.drop += float(expected_drop(scores, t_logp)) * len(scores)
            self.kl += float((np.exp(t_logp) * (t_logp - logp)).sum())
            diff = np.asarray(scores, dtype=np.float64) - np.asarray(t_scores, dtype=np.float64)
            self.diff2 += float((diff * diff).sum())
            self.ref2 += float(np.square(np.asarray(t_scores, dtype=np.float64)).sum())
            counts = np.bincount(t_scores.argmax(axis=1), minlength=t_scores.shape[1])
            if len(self.t_counts) < len(counts):
                self.t_counts = np.pad(self.t_counts, (0, len(counts) - len(self.t_counts)))
            self.t_counts[:len(counts)] += counts

    def result(self, labels: bool, teacher: bool) -> dict:
        """"top5" counts the label among the ``top_k`` = min(5, classes) highest scores."""
        out = {"images": self.n, "top_k": self.k}
        if labels:
            out["top1"] = self.top1 / self.n
            out["top5"] = self.topk / self.n
        if teacher:
            if labels:
                out["teacher_top1"] = self.t_top1 / self.n
                out["teacher_top5"] = self.t_topk / self.n
            out["agreement"] = self.agree / self.n
            out["expected_drop"] = self.drop / self.n
            out["kl"] = self.kl / self.n
            out["rel_error"] = pooled_relative_error(self.diff2, self.ref2)
            out["teacher_classes"] = int(np.count_nonzero(self.t_counts))
            one = one_class_warning(self.t_counts)
            out["warnings"] = [one] if one else []
        return out


def expected_drop(scores: np.ndarray, t_logp: np.ndarray) -> float:
    """The top-1 (a fraction) a model with ``scores`` loses against its teacher if each image's
    label followed the teacher's probabilities (``t_logp``, log-probabilities, N x K): the mean of
    p_t(teacher's class) - p_t(model's class). 0 when every class is kept; at most the share of
    images whose class changes; negative never (the teacher's class is its most probable)."""
    p = np.exp(np.asarray(t_logp, dtype=np.float64))
    rows = np.arange(len(p))
    return float(np.mean(p[rows, p.argmax(axis=1)] - p[rows, np.asarray(scores).argmax(axis=1)])) if len(p) else 0.0


def pooled_relative_error(diff2: float, ref2: float) -> float | None:
    """sqrt(``diff2`` / ``ref2``), the sums of squares of (model - teacher) and of the teacher;
    None when the teacher's outputs are all zero (nothing to be relative to)."""
    if ref2 > 0:
        return float(np.sqrt(diff2 / ref2))
    return 0.0 if diff2 == 0 else None


def relative_error(scores: np.ndarray, t_scores: np.ndarray) -> float | None:
    """The relative output error of a model against its teacher, pooled over the images:
    ||S - T|| / ||T|| with S, T the two nets' output blobs (N x K, one row per image) and ||.||
    the Frobenius norm over all images at once, i.e. sqrt(sum_i ||s_i - t_i||^2 / sum_i ||t_i||^2),
    not a mean of per-image ratios (an image whose teacher output is near zero would dominate
    that). 0 for identical outputs; None when the teacher's outputs are all zero. ``eval
    --teacher`` reports it as ``rel_error``, accumulated batch by batch (Meter)."""
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(t_scores, dtype=np.float64)
    return pooled_relative_error(float(np.square(s - t).sum()), float(np.square(t).sum()))


def one_class_warning(counts: np.ndarray) -> str | None:
    """A warning when the teacher gave every image (two or more) the same top-1 class, from its
    images per class ``counts``: agreement with such a teacher (and KL, top-1 against it) tells
    nothing about the model beyond that one class; None otherwise."""
    counts = np.asarray(counts)
    n = int(counts.sum())
    if n < 2 or np.count_nonzero(counts) != 1:
        return None
    cls = int(np.flatnonzero(counts)[0])
    return (f"the teacher gives class {cls} to every one of the {n:,} images: agreement with it proves nothing "
            "about the model (evaluate on images of more than one class, or check the teacher's weights and "
            "preprocessing)")


def evaluate(net, weights, source: data.Source, pre: preprocess.Preprocess, batch: int = 50, teacher=None,
             teacher_weights=None, limit: int | None = None, progress: Callable[[int], object] | None = None,
             teacher_pre: preprocess.Preprocess | None = None) -> dict:
    """Top-1/top-5 (with labels) and teacher agreement/KL (with a teacher) of ``net`` on ``source``.

    ``net``/``teacher``: a deploy prototxt path, built-in name, model directory or a loaded
    :class:`Model`; ``weights``: a .caffemodel path (or None for a Model or directory). Images are
    preprocessed by ``pre`` (and ``teacher_pre`` for the teacher, default the same)."""
    if not source.has_labels and teacher is None:
        raise RebirthError(f"{source.name}: the images have no labels; give a teacher ({{opt:teacher}}, "
                           "{opt:teacher_weights}) to measure agreement instead")
    student = Runner.build(load(net, weights))
    tutor = (Runner.build(load(teacher, teacher_weights, "{opt:teacher}", "{opt:teacher_weights}"))
             if teacher is not None else None)
    result = run_evaluation(student, source, pre, batch=batch, teacher=tutor, limit=limit, progress=progress,
                            teacher_pre=teacher_pre)
    for message in result.get("warnings", []):
        errors.warn(message)
    return result


def run_evaluation(student: Runner, source: data.Source, pre: preprocess.Preprocess, batch: int = 50,
                   teacher: Runner | None = None, limit: int | None = None,
                   teacher_pre: preprocess.Preprocess | None = None,
                   progress: Callable[[int], object] | None = None) -> dict:
    """:func:`evaluate` on nets already built (finetune validates with this)."""
    check_fits(student, pre)
    if teacher is not None:
        check_fits(teacher, teacher_pre or pre)
    n = len(source) if limit is None else min(limit, len(source))
    meter = Meter()
    started = time.perf_counter()
    for x, labels in source.batches(pre, batch, limit=n):
        scores, logp = student.run(x)
        if labels is not None:
            _check_labels(labels, scores.shape[1], source)
        t_scores = t_logp = None
        if teacher is not None:
            tx = x if teacher_pre is None else teacher_pre.apply(
                [source.image(i) for i in range(meter.n, meter.n + len(x))])
            t_scores, t_logp = teacher.run(tx)
            if t_scores.shape[1] != scores.shape[1]:
                raise RebirthError(f"the teacher has {t_scores.shape[1]} outputs, the model {scores.shape[1]}")
        meter.add(scores, logp, labels, t_scores, t_logp)
        if progress:
            progress(len(x))
    out = {"model": student.model.source, "weights": student.model.weights_source, "data": source.name,
           "output": student.output, "preprocess": pre.describe(), "batch": batch}
    if teacher is not None:
        out["teacher"] = {"model": teacher.model.source, "weights": teacher.model.weights_source}
    out.update(meter.result(source.has_labels, teacher is not None))
    out["seconds"] = round(time.perf_counter() - started, 3)
    return out


def check_fits(runner: Runner, pre: preprocess.Preprocess) -> None:
    _, c, h, w = runner.input_shape
    if (pre.channels, *pre.out_size) != (c, h, w):
        raise RebirthError(f"{runner.model.source}: input '{runner.input}' takes {c}x{h}x{w} images, the "
                           f"preprocessing makes {pre.channels}x{pre.out_size[0]}x{pre.out_size[1]}")


def evaluate_command(model, weights, source_spec: str, teacher=None, teacher_weights=None, train_val=None,
                     mean=None, scale=None, batch: int = 50, limit: int | None = None,
                     progress: Callable[[int], object] | None = None) -> dict:
    """What `rebirth eval` does, as one call that `engine.isolate.call` runs in a child process (so a
    Caffe CHECK failure is a one-line error): ``progress(n)`` after every batch of n images. The
    result's ``warnings`` are not issued here (the child's would not reach the user): the caller
    issues them (errors.warn)."""
    source = data.open_source(source_spec, limit=limit)
    student = Runner.build(load(model, weights))
    train_val = train_val or preprocess.default_train_val(model)
    pre = preprocess.preprocess_for(student.input_shape, train_val, mean=mean, scale=scale)
    tutor = Runner.build(load(teacher, teacher_weights, "{opt:teacher}", "{opt:teacher_weights}")) if teacher else None
    if not source.has_labels and tutor is None:
        data.require_labels(source, "eval without {opt:teacher}")
    result = run_evaluation(student, source, pre, batch=batch, teacher=tutor, progress=progress)
    result["preprocess_from"] = str(train_val) if train_val else "defaults"
    result["preprocess"] = pre.describe()
    return result
