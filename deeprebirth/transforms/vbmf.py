"""Empirical variational Bayesian matrix factorisation (EVBMF): the rank of a noisy matrix.

Nakajima, Sugiyama, Babacan, Tomioka, "Global analytic solution of fully-observed variational
Bayesian matrix factorization", JMLR 14 (2013). Kim et al. (2015) choose the Tucker ranks of a
convolution kernel with it, on the kernel's output- and input-channel unfoldings.

Model: ``Y = B A^T + E``, Y of size L x M (we transpose so that L <= M), E Gaussian with variance
sigma^2, Gaussian priors on the columns of A and B whose variances are also estimated (the
*empirical* part). The global optimum is analytic in the singular values gamma_h of Y:

* with alpha = L / M, the shrinkage threshold constants are tau_bar = 2.5129 sqrt(alpha) and
  x_bar = (1 + tau_bar)(1 + alpha / tau_bar);
* a component survives iff gamma_h^2 > M sigma^2 x_bar, so the rank is the number of singular
  values above sqrt(M sigma^2 x_bar);
* sigma^2 is the minimiser of the free energy (up to constants), with x_h = gamma_h^2 / (M sigma^2)
  and tau(x) = (x - 1 - alpha + sqrt((x - 1 - alpha)^2 - 4 alpha)) / 2:

      F(sigma^2) = sum_h (x_h - log x_h)
                 + sum_{h: x_h > x_bar} [log(tau(x_h) + 1) + alpha log(tau(x_h) / alpha + 1) - tau(x_h)]

  searched (bounded scalar minimisation, scipy) between a lower bound from the singular values that
  can never survive (at most ceil(L / (1 + alpha)) - 1 do) and the mean square of Y's entries.

Degenerate answers (the caller decides what to do with them; deeprebirth.transforms.rules.tucker states it):
rank 0 (nothing stands out from the noise, e.g. untrained or random weights) and matrices too small
to estimate a noise level from (``min(L, M) < MIN_SIZE``: ``rank`` is then None).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MIN_SIZE = 4          # fewer rows/columns than this: no estimate (rank None)
TAU_BAR_FACTOR = 2.5129


@dataclass
class VBMFResult:
    rank: int | None           # components kept; None when the matrix is too small to estimate
    sigma2: float | None       # the estimated noise variance
    threshold: float | None    # singular values above it are kept
    singular_values: np.ndarray


def _tau(x: np.ndarray, alpha: float) -> np.ndarray:
    d = x - (1.0 + alpha)
    return 0.5 * (d + np.sqrt(np.maximum(d * d - 4.0 * alpha, 0.0)))


def free_energy(sigma2: float, s2: np.ndarray, M: int, alpha: float, x_bar: float) -> float:
    """The EVB free energy of noise variance ``sigma2`` for squared singular values ``s2`` (up to
    constants that do not depend on sigma2)."""
    x = s2 / (M * sigma2)
    x = np.maximum(x, 1e-300)
    out = float(np.sum(x - np.log(x)))
    big = x[x > x_bar]
    if big.size:
        t = _tau(big, alpha)
        out += float(np.sum(np.log(t + 1.0) + alpha * np.log(t / alpha + 1.0) - t))
    return out


def evbmf(Y: np.ndarray) -> VBMFResult:
    """EVBMF of a 2-D array: the rank and noise variance it implies (see the module doc)."""
    from scipy.optimize import minimize_scalar  # noqa: PLC0415

    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim != 2:
        raise ValueError(f"evbmf needs a matrix, got shape {Y.shape}")
    if Y.shape[0] > Y.shape[1]:
        Y = Y.T
    L, M = Y.shape
    # Singular values from the eigenvalues of the L x L Gram matrix (cheaper than an SVD of Y).
    s = np.sqrt(np.clip(np.linalg.eigvalsh(Y @ Y.T)[::-1], 0.0, None))
    if L < MIN_SIZE or not np.any(s > 0):
        return VBMFResult(None, None, None, s)
    alpha = L / M
    tau_bar = TAU_BAR_FACTOR * math.sqrt(alpha)
    x_bar = (1.0 + tau_bar) * (1.0 + alpha / tau_bar)
    s2 = s * s
    # At most ceil(L / (1 + alpha)) - 1 components can survive; the rest bound sigma^2 from below.
    max_rank = min(math.ceil(L / (1.0 + alpha)) - 1, L - 1)
    tail = s2[max_rank:]
    lower = max(tail[0] / (M * x_bar), float(np.mean(tail)) / M)
    upper = float(np.sum(s2)) / (L * M)
    if not lower < upper:
        lower = upper * 1e-6
    lower = max(lower, upper * 1e-12)
    res = minimize_scalar(free_energy, args=(s2, M, alpha, x_bar), bounds=(lower, upper), method="bounded")
    sigma2 = float(res.x)
    threshold = math.sqrt(M * sigma2 * x_bar)
    rank = int(np.sum(s > threshold))
    return VBMFResult(rank, sigma2, threshold, s)
