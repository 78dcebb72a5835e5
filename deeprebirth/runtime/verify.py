"""Two nets run side by side in Caffe, every blob they share compared: how an exact transform
(fold-bn today; an exported net tomorrow) is shown to be exact.

    check = verify.compare(original, folded, seed=0)   # both in pycaffe, same random inputs
    verify.require(check, tolerance=1e-5)             # a one-line error above the tolerance
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from deeprebirth.errors import RebirthError
from deeprebirth.graph.dag import Graph
from deeprebirth.graph.model import Model
from deeprebirth.runtime.pycaffe import CaffeNet, check_runnable  # imports caffe only when a net is built


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


def compare(original: Model, folded: Model, seed: int = 0, blobs: Iterable[str] = ()) -> Verification:
    """Run both nets in pycaffe on the same random inputs (uniform in [-1, 1), from ``seed``) and
    compare every net output and every other blob both nets have (same name and shape: the folded
    net keeps the names downstream layers read, so pre-softmax scores are compared too, where a
    saturated softmax would hide a difference), plus the named ``blobs``.

    The nets run in a child process (runtime/isolate.py): a Caffe CHECK failure is a RebirthError
    with Caffe's message, not an abort of this process."""
    from deeprebirth.runtime import isolate  # noqa: PLC0415

    _check_runnable(original, "original")
    _check_runnable(folded, "folded")
    return isolate.call(_compare_here, original, folded, seed, tuple(blobs), what="the verification run")


def _compare_here(original: Model, folded: Model, seed: int, blobs: tuple[str, ...]) -> Verification:
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


def output_errors(checks) -> list[float] | None:
    """``checks``: (net, weights) pairs whose net computes blobs ``reference`` and
    ``approximation`` from random input (transforms.tucker.check_nets); the relative error
    ||approximation - reference|| / ||reference|| of each, in pycaffe. None without pycaffe."""
    from deeprebirth.runtime.pycaffe import import_caffe  # noqa: PLC0415
    try:
        import_caffe()
    except RebirthError:
        return None
    out = []
    for net, weights in checks:
        engine = CaffeNet(net, weights)
        engine.fill_inputs(seed=0)
        y = engine.forward()
        a, b = y["reference"], y["approximation"]
        with np.errstate(all="ignore"):     # outputs out of float range: the error is inf or NaN
            norm = float(np.linalg.norm(a))
            out.append(float(np.linalg.norm(b - a)) / norm if norm else 0.0)
    return out


# ------------------------------------------------------------------------------------------------
# An exported net (runtime/export) in its engine against the Caffe net in pycaffe


def compare_export(model: Model, fmt: str, files: dict[str, bytes], seed: int = 0) -> Verification:
    """Run ``files`` (``model`` exported as ``fmt``) in its engine and ``model`` in pycaffe on the
    same random inputs (uniform in [-1, 1), from ``seed``, at the exported batch) and compare every
    net output, and every intermediate blob the engine can show: for ONNX a second export whose
    graph outputs every tensor named after a Caffe blob, for ncnn every blob of the param file;
    MNN shows its outputs only. Both run in one child process (runtime/isolate.py)."""
    from deeprebirth.runtime import isolate  # noqa: PLC0415

    _check_runnable(model, "exported")
    return isolate.call(_compare_export_here, model, fmt, files, seed, what=f"the {fmt} verification run")


def _compare_export_here(model: Model, fmt: str, files: dict[str, bytes], seed: int) -> Verification:
    from deeprebirth.runtime import engines  # noqa: PLC0415
    from deeprebirth.runtime.engines.base import random_feeds  # noqa: PLC0415

    graph = Graph(model.net, batch=1)
    feeds = random_feeds(graph, seed)
    ref = CaffeNet(model.net, model.weights)
    ref.fill_inputs(inputs=feeds)
    outputs = ref.forward()
    if fmt == "onnx":
        from deeprebirth.runtime.export import to_onnx  # noqa: PLC0415
        files = {"model.onnx": to_onnx.to_onnx(model, 1, extra_outputs=True).SerializeToString()}
    inner = [n for n in ref.net.blobs.keys() if n not in feeds and n not in outputs and n not in ref.auto_split_tops]
    runner = engines.load(fmt, files, threads=1, keep=tuple(inner) if fmt == "mnn" else ())
    if fmt == "onnx":
        inner = [n for n in inner if n in set(runner.all_outputs)]
    names = list(outputs) + inner
    missing = [n for n in outputs if fmt != "ncnn" and n not in runner.outputs]
    if missing:
        raise RebirthError(f"the {fmt} model lost the output blob '{missing[0]}'")
    got = runner.run(feeds, names)
    result = Verification(seed)
    for name in names:
        if name not in got:
            continue  # MNN fused it away
        a = ref.net.blobs[name].data
        b = got[name]
        if b.size != a.size:
            raise RebirthError(f"blob '{name}': {b.size} values in the {fmt} model, {a.size} in Caffe")
        result.blobs.append(_diff(name, a, b.reshape(a.shape)))
    runner.close()
    return result
