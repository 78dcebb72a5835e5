"""Fold BatchNorm / Scale / Bias layers into the tensor layers before them (`rebirth fold-bn`).

    from deeprebirth.transforms import fold
    original = fold.load("deploy.prototxt", "weights.caffemodel")
    result = fold.fold_bn(original)              # a runner.Result; result.model is the folded net
    check = verify.compare(original, result.model)  # deeprebirth.runtime.verify: both nets in pycaffe
    fold.write(result.model, "out/", inputs=[original.source, original.weights_source])

The rewrite itself is the ``fold_bn`` rule (rules/fold_bn.py); this module loads and checks the
input (a deploy net with weights; a training net is refused), runs the rule and writes the
result; deeprebirth.runtime.verify checks it in Caffe.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np

from deeprebirth import outputs
from deeprebirth.caffe import netio
from deeprebirth.caffe import proto as pb
from deeprebirth.caffe.phase import phases_used
from deeprebirth.errors import RebirthError
from deeprebirth.graph.dag import Graph
from deeprebirth.graph.model import Model, check_weights, load_model
from deeprebirth.transforms import rules, runner
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
    if pb.TRAIN in phases_used(net):
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
    with np.errstate(all="ignore"):  # overflow is reported below, as one error
        result = runner.run(model, rules.get(["fold_bn"]), only=set(only) if only is not None else None)
    for name, arrays in result.model.weights.items():
        if any(not np.isfinite(a).all() for a in arrays):
            raise RebirthError(f"{model.weights_source or model.source}: folding gives non-finite weights in layer "
                               f"'{name}' (the BatchNorm statistics or scales are out of float32 range: a "
                               "variance near zero or huge values); nothing written")
    return result


# ----------------------------------------------------------------------------------------------
# Output


def write(model: Model, outdir: str | os.PathLike, inputs: Iterable = (), force: bool = False) -> tuple[Path, Path]:
    """Write ``outdir/deploy.prototxt`` and ``outdir/weights.caffemodel``, both or neither, never
    mixed with an earlier run's files (``outputs.write_dir``; other files in ``outdir`` need ``force``)."""
    files = {OUTPUT_NET: netio.net_to_text(model.net), OUTPUT_WEIGHTS: model.with_blobs().SerializeToString()}
    net_path, weights_path = outputs.write_dir(outdir, files, inputs, force=force)
    return net_path, weights_path
