"""Fold BatchNorm / Scale / Bias layers into the tensor layers before them (`rebirth fold-bn`).

    from deeprebirth.transforms import fold
    original = fold.load("deploy.prototxt", "weights.caffemodel")
    result = fold.fold_bn(original)              # a runner.Result; result.model is the folded net
    check = fold.verify(original, result.model)  # run both in pycaffe on the same random inputs
    fold.write(result.model, "out/", inputs=[original.source, original.weights_source])

The rewrite itself is the ``fold_bn`` rule (rules/fold_bn.py); this module loads and checks the
input (a deploy net with weights; a training net is refused), runs the rule, verifies the result
in Caffe and writes it.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from deeprebirth.caffe import netio
from deeprebirth.transforms import runner
from deeprebirth.transforms import rules
from deeprebirth.caffe import proto as pb
from deeprebirth.errors import RebirthError
from deeprebirth.graph.dag import Graph
from deeprebirth.runtime.pycaffe import CaffeNet, check_runnable  # imports caffe only when a net is built
from deeprebirth.caffe.model import Model, check_weights, load_model
from deeprebirth.transforms.rules.fold_bn import batch_statistics_reason

OUTPUT_NET = "deploy.prototxt"
OUTPUT_WEIGHTS = "weights.caffemodel"
RELATIVE = "max|a - b| / max|a| per output blob (a: original, b: folded), largest over the outputs"


# ----------------------------------------------------------------------------------------------
# Input


def check_inference_net(net: "pb.NetParameter", source: str) -> None:
    """Refuse a net that is not an inference (deploy) net: TRAIN state, train/test phase rules, or a
    BatchNorm told to use batch statistics. Takes the net as read, before phase filtering."""
    if net.HasField("state") and net.state.phase == pb.TRAIN:
        raise RebirthError(f"{source}: the net is in the TRAIN phase (state {{ phase: TRAIN }}), where "
                           "BatchNorm uses each batch's statistics; fold-bn needs the deploy (TEST) net")
    # A deploy net may keep TEST-only layers (SSD deploy files mark DetectionOutput so); a rule
    # that names the TRAIN phase makes it a train/test net.
    if pb.TRAIN in netio.phases_used(net):
        ruled = next(layer.name for layer in net.layer
                     if any(r.HasField("phase") and r.phase == pb.TRAIN for r in [*layer.include, *layer.exclude]))
        raise RebirthError(f"{source}: is a train/test net (layer '{ruled}' has include/exclude phase "
                           "rules); fold-bn needs the deploy prototxt")
    for layer in net.layer:
        reason = batch_statistics_reason(layer)
        if reason:
            raise RebirthError(f"{source}: {reason}; fold-bn needs the deploy net")


def load(model: str | os.PathLike, weights: str | os.PathLike, allow_missing: bool = False) -> Model:
    """A deploy prototxt (or built-in name) and its caffemodel, refusing training nets (and a
    caffemodel without weights for every layer with parameters, unless ``allow_missing``)."""
    return load_model(model, weights, check=check_inference_net, allow_missing=allow_missing)


# ----------------------------------------------------------------------------------------------
# Folding


def fold_bn(model: Model, only: Iterable[str] | None = None) -> runner.Result:
    """Fold every BatchNorm / Scale / Bias chain of ``model`` (which is left unchanged).

    ``only`` restricts the rewrite to the named substructures (a tensor layer's name, or the first
    layer of a chain with no tensor layer before it)."""
    if model.weights is None:
        raise RebirthError(f"{model.source}: no weights given; folding BatchNorm needs the trained "
                           "weights (a .caffemodel)")
    check_inference_net(model.net, model.source)
    model = model.copy()
    check_weights(Graph(model.net), model.weights, model.weights_source or model.source)
    return runner.run(model, rules.get(["fold_bn"]), only=set(only) if only is not None else None)


def summary(original: Model, result: runner.Result) -> list[str]:
    """Human lines: one per folded chain and per chain left alone, then the layer count."""
    types = {layer.name: layer.type for layer in original.net.layer}
    removed = Counter(types[n] for c in result.changes for n in c.removed)
    folds = sum(1 for c in result.changes if c.removed and c.substructure in types
                and types[c.substructure] not in ("BatchNorm", "Scale", "Bias"))
    lines = []
    if not result.changes:
        lines.append("nothing to fold: no BatchNorm, Scale or Bias layer follows a tensor layer")
    for c in result.changes:
        lines.append("  " + "; ".join(c.notes))
    for s in result.skips:
        lines.append(f"  left alone ({s.substructure}): {s.reason}")
    n_before, n_after = len(original.net.layer), len(result.model.net.layer)
    gone = ", ".join(f"{k} {t}" for t, k in sorted(removed.items())) or "none"
    head = (f"{folds} chain(s) folded into tensor layers, {len(result.changes) - folds} replaced by one "
            f"Scale, {len(result.skips)} left alone")
    return [head, *lines, f"layers: {n_before} -> {n_after} (removed: {gone})",
            *(f"note: {n}" for n in result.notes)]


# ----------------------------------------------------------------------------------------------
# Verification in pycaffe


@dataclass
class BlobDiff:
    name: str
    max_abs: float      # max |a - b|
    max_ref: float      # max |a|
    rel: float          # max_abs / max_ref


@dataclass
class Verification:
    seed: int
    blobs: list[BlobDiff] = field(default_factory=list)

    @property
    def max_abs(self) -> float:
        return max((d.max_abs for d in self.blobs), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((d.rel for d in self.blobs), default=0.0)

    @property
    def worst(self) -> BlobDiff | None:
        return max(self.blobs, key=lambda d: d.rel, default=None)

    def passed(self, tolerance: float) -> bool:
        return self.max_rel <= tolerance

    def format(self, tolerance: float | None = None) -> str:
        worst = self.worst
        parts = [f"verify (seed {self.seed}): {len(self.blobs)} blob(s) compared"
                 + (f"; worst '{worst.name}' max abs diff {worst.max_abs:.3g}, rel {worst.rel:.3g}" if worst else "")]
        if tolerance is not None:
            parts.append(f"largest relative difference {self.max_rel:.3g} "
                         f"{'<=' if self.passed(tolerance) else '>'} tolerance {tolerance:g}: "
                         f"{'ok' if self.passed(tolerance) else 'FAILED'}")
        return "\n".join(parts)


def _check_runnable(model: Model, what: str) -> None:
    check_runnable(model.net, model.source, "verification")
    for node in Graph(model.net).nodes:
        if node.param_shapes and node.name not in (model.weights or {}):
            raise RebirthError(f"{model.weights_source or model.source}: layer '{node.name}' ({node.type}) "
                               f"of the {what} net has no weights; verification needs every layer's weights")


def _diff(name: str, a: np.ndarray, b: np.ndarray) -> BlobDiff:
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a64.shape != b64.shape:
        raise RebirthError(f"blob '{name}': shape {list(a64.shape)} in the original net, "
                           f"{list(b64.shape)} in the folded net")
    max_abs = float(np.max(np.abs(a64 - b64))) if a64.size else 0.0
    max_ref = float(np.max(np.abs(a64))) if a64.size else 0.0
    rel = max_abs / max_ref if max_ref > 0 else (0.0 if max_abs == 0 else float("inf"))
    return BlobDiff(name, max_abs, max_ref, rel)


def verify(original: Model, folded: Model, seed: int = 0, blobs: Iterable[str] = ()) -> Verification:
    """Run both nets in pycaffe on the same random inputs (uniform in [-1, 1), from ``seed``) and
    compare every net output and every other blob both nets have (same name and shape: the folded
    net keeps the names downstream layers read, so pre-softmax scores are compared too, where a
    saturated softmax would hide a difference), plus the named ``blobs``.

    The nets run in a child process (engine/isolate.py): a Caffe CHECK failure is a RebirthError
    with Caffe's message, not an abort of this process."""
    from deeprebirth.runtime import isolate  # noqa: PLC0415

    _check_runnable(original, "original")
    _check_runnable(folded, "folded")
    return isolate.call(_verify_here, original, folded, seed, tuple(blobs), what="the verification run")


def _verify_here(original: Model, folded: Model, seed: int, blobs: tuple[str, ...]) -> Verification:
    net_a = CaffeNet(original.net, original.weights)
    net_b = CaffeNet(folded.net, folded.weights)
    inputs = net_a.fill_inputs(seed)
    net_b.fill_inputs(inputs=inputs)
    out_a, out_b = net_a.forward(), net_b.forward()
    missing = [n for n in out_a if n not in out_b]
    if missing:
        raise RebirthError(f"the folded net lost the output blob '{missing[0]}' of the original net")
    result = Verification(seed, [_diff(n, out_a[n], out_b[n]) for n in out_a])
    inputs_ = set(inputs)
    for name, blob in net_a.net.blobs.items():
        other = net_b.net.blobs[name] if name in net_b.net.blobs else None
        if name in out_a or name in inputs_ or other is None or other.data.shape != blob.data.shape:
            continue
        result.blobs.append(_diff(name, blob.data, other.data))
    for name in blobs:
        for net, label in ((net_a, "original"), (net_b, "folded")):
            if name not in net.net.blobs:
                raise RebirthError(f"blob '{name}' is not in the {label} net")
        if name not in out_a:
            result.blobs.append(_diff(name, net_a.net.blobs[name].data, net_b.net.blobs[name].data))
    return result


def require(check: Verification, tolerance: float) -> None:
    """Raise when the largest relative output difference exceeds ``tolerance``."""
    if not check.passed(tolerance):
        worst = check.worst
        raise RebirthError(f"verification failed: blob '{worst.name}' differs by {worst.rel:.3g} relative "
                           f"(max abs {worst.max_abs:.3g}), above the tolerance {tolerance:g}; nothing written")


# ----------------------------------------------------------------------------------------------
# Output


def write(model: Model, outdir: str | os.PathLike, inputs: Iterable = (), force: bool = False) -> tuple[Path, Path]:
    """Write ``outdir/deploy.prototxt`` and ``outdir/weights.caffemodel``, both or neither, never
    mixed with an earlier run's files (``netio.write_dir``; other files in ``outdir`` need ``force``)."""
    files = {OUTPUT_NET: netio.net_to_text(model.net), OUTPUT_WEIGHTS: model.with_blobs().SerializeToString()}
    net_path, weights_path = netio.write_dir(outdir, files, inputs, force=force, owned=files)
    return net_path, weights_path
