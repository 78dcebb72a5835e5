"""Least squares for re-learning (pure numpy on blobs that Caffe computed): im2col patches as
Caffe orders them, a ridge-regularised solver that also fits through a ReLU, error measures, and
the pruning start for a shrunk layer. deeprebirth.learning.relearn's module doc has the method."""
from __future__ import annotations

import time

import numpy as np


def patches(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], pad: tuple[int, int],
            dilation: tuple[int, int] = (1, 1)) -> np.ndarray:
    """im2col as Caffe orders it: ``x`` N x C x H x W -> N x Ho x Wo x (C*kh*kw), channel-major
    then kernel row then column, matching a Convolution weight reshaped to O x (C*kh*kw)."""
    n, c, h, w = x.shape
    kh, kw = kernel
    sh, sw = stride
    ph, pw = pad
    dh, dw = dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    wo = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    cols = np.empty((n, ho, wo, c, kh, kw), dtype=np.float64)
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dh, j * dw
            cols[:, :, :, :, i, j] = xp[:, :, r0:r0 + sh * (ho - 1) + 1:sh, c0:c0 + sw * (wo - 1) + 1:sw] \
                .transpose(0, 2, 3, 1)
    return cols.reshape(n, ho, wo, c * kh * kw)


def solve_linear(a: np.ndarray, y: np.ndarray, relu: bool = False, ridge: float = 1e-9,
                 iterations: int = 100, tol: float = 1e-10,
                 active_set_budget: float = 2e10, deadline: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Weights W (d x o) and bias b (o) minimising ||a W + b - y||^2 + ridge' ||W||^2 with
    ridge' = ridge * mean(diag(a^T a)); with ``relu`` the model is relu(a W + b) ~ y (y >= 0),
    solved by alternating projections (see the module doc), then refined on the active set. At
    ``deadline`` (a time.perf_counter time) the projections stop at the fit they have and the
    refinement is skipped: the plain fit is always made."""

    def late() -> bool:
        return deadline is not None and time.perf_counter() >= deadline

    a1 = np.concatenate([a, np.ones((a.shape[0], 1))], axis=1)
    gram = a1.T @ a1
    lam = ridge * max(float(np.mean(np.diag(gram))), 1e-12)
    reg = np.eye(gram.shape[0]) * lam
    reg[-1, -1] = 0.0  # the bias is not shrunk
    chol = np.linalg.cholesky(gram + reg + np.eye(gram.shape[0]) * 1e-12 * lam)

    def fit(target: np.ndarray) -> np.ndarray:
        z = np.linalg.solve(chol, a1.T @ target)
        return np.linalg.solve(chol.T, z)

    w = fit(y)
    if relu:
        off = y <= 0
        prev = None
        for _ in range(iterations):
            if late():
                break
            pred = a1 @ w
            target = np.where(off, np.minimum(pred, 0.0), y)
            w = fit(target)
            if prev is not None and np.max(np.abs(w - prev)) <= tol * max(1.0, float(np.max(np.abs(w)))):
                break
            prev = w
        # Active-set refinement, one output at a time: fit exactly on the rows where the target is
        # positive or the prediction still is (the others only need a non-positive pre-activation).
        # It costs a Gram matrix per output, so only where that is affordable.
        if a1.shape[0] * a1.shape[1] ** 2 * y.shape[1] <= active_set_budget and not late():
            for _ in range(3):
                pred = a1 @ w
                changed = False
                for j in range(y.shape[1]):
                    rows = (y[:, j] > 0) | (pred[:, j] > 0)
                    if rows.sum() < a1.shape[1]:
                        continue
                    aj = a1[rows]
                    g = aj.T @ aj + reg
                    new = np.linalg.solve(g + np.eye(g.shape[0]) * 1e-12 * lam, aj.T @ y[rows, j])
                    changed |= not np.allclose(new, w[:, j], rtol=0, atol=1e-12)
                    w[:, j] = new
                if not changed:
                    break
    return w[:-1], w[-1]


def relative_error(pred: np.ndarray, target: np.ndarray) -> float:
    denom = float(np.sum(np.square(target, dtype=np.float64)))
    return float(np.sum(np.square(pred - target, dtype=np.float64)) / denom) if denom else float("nan")


def r_squared(pred: np.ndarray, target: np.ndarray) -> float:
    """1 - SSE/SST with the total around each channel's mean (axis 1)."""
    axes = tuple(i for i in range(target.ndim) if i != 1) if target.ndim > 1 else (0,)
    mean = target.mean(axis=axes, keepdims=True)
    sst = float(np.sum(np.square(target - mean, dtype=np.float64)))
    sse = float(np.sum(np.square(pred - target, dtype=np.float64)))
    return 1.0 - sse / sst if sst else float("nan")


def prune_filters(teacher: list[np.ndarray], shapes: list[tuple[int, ...]]) -> list[np.ndarray] | None:
    """The teacher's filters of largest L1 norm, when the new layer has fewer outputs and otherwise the
    same weight shape; None when that does not apply."""
    if not teacher or len(teacher) != len(shapes) or teacher[0].ndim != len(shapes[0]):
        return None
    w = teacher[0]
    if tuple(w.shape[1:]) != tuple(shapes[0][1:]) or w.shape[0] < shapes[0][0]:
        return None
    keep = np.sort(np.argsort(-np.abs(w).reshape(w.shape[0], -1).sum(axis=1), kind="stable")[:shapes[0][0]])
    out = [w[keep].copy()]
    for arr, shape in zip(teacher[1:], shapes[1:]):
        if arr.ndim != 1 or arr.shape[0] != w.shape[0] or tuple(shape) != (shapes[0][0],):
            return None
        out.append(arr[keep].copy())
    return out
