"""Tucker ranks under one MAC budget for the whole net (``rebirth tucker --macs F``).

``--ratio F`` keeps the same fraction of every layer's weights, which is harsh on narrow layers: a
1x1 reducer of 16 filters becomes a rank-7 SVD with most of its weights' energy gone, and saves
almost nothing, while a wide 3x3 convolution could have given up far more at little cost. Here the
decomposable layers share one budget instead: together they keep at most a fraction F of their
multiply-accumulates (MACs), and each layer's ranks are chosen by how much weight error a MAC
saved costs there.

**Error of a rank**, from the spectra alone (no decomposition is run to choose):

* SVD (1x1 convolutions, InnerProducts), W = T x S with singular values s_1 >= s_2 >= ...:
  keeping r gives the relative squared error e(r) = sum_{i>r} s_i^2 / sum_i s_i^2 (exact: Eckart-Young).
* Tucker-2, kernel T x S x Kh x Kw: with sigma (output mode) and tau (input mode) the singular
  values of the mode-1 and mode-2 unfoldings, e(R3, R4) = (sum_{i>R4} sigma_i^2 + sum_{j>R3}
  tau_j^2) / ||W||^2, the truncated-HOSVD bound (HOOI, which the rule runs, does at least as well).
  R3/S = R4/T as for ``--ratio``; a mode under ``vbmf.MIN_SIZE`` channels keeps its size.

The MACs of a rank are ``rules.tucker.tucker_cost`` (or r (S + T) per position for an SVD);
only ranks that cost fewer MACs than the layer are candidates, and a layer starts undecomposed
(error 0, its own MACs).

**Allocation** (greedy on marginal cost): while the candidate layers cost more than F times their
original MACs, take the move, over all layers and all their cheaper candidates, with the least
added error per MAC saved, (e(new) - e(now)) / (MACs(now) - MACs(new)), and make it. A move may
jump several ranks at once (decomposing a layer at all costs its 1x1 layers first, so the first
step is never a single rank). Errors are relative, so every layer counts alike whatever its
scale. Layers the budget never reaches stay whole, and ``TuckerRule`` says so for each.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deeprebirth.caffe.model import Model
from deeprebirth.errors import RebirthError
from deeprebirth.graph.dag import Graph
from deeprebirth.transforms import vbmf
from deeprebirth.transforms.rules.tucker import Geometry, TuckerRule, layer_geometry, tucker_cost


TIE = 1e-15     # added error per MAC below which two moves count as equally cheap


@dataclass
class Options:
    """One layer's candidates: ranks (dicts as TuckerRule takes them), their MACs and errors,
    ordered by rank; ``macs0`` is the layer's own cost."""
    name: str
    macs0: int
    ranks: list[dict]
    macs: np.ndarray
    errors: np.ndarray


def _tails(values_sq: np.ndarray) -> np.ndarray:
    """tails[k] = sum of values_sq[k:] (the energy left out when k are kept), k = 0..n."""
    return np.concatenate([np.cumsum(values_sq[::-1])[::-1], [0.0]])


def _mode_energy(W: np.ndarray, axis: int) -> np.ndarray:
    """Squared singular values (descending) of the unfolding along ``axis``: the eigenvalues of
    its Gram matrix."""
    A = np.moveaxis(W, axis, 0).reshape(W.shape[axis], -1)
    return np.clip(np.linalg.eigvalsh(A @ A.T)[::-1], 0, None)


def svd_options(name: str, geo: Geometry) -> Options:
    T, S = geo.W.shape
    energy = np.linalg.svd(geo.W, compute_uv=False) ** 2
    total = float(energy.sum()) or 1.0
    tails = _tails(energy)
    ranks = list(range(1, min(S, T)))
    macs = np.array([geo.out_hw * r * (S + T) for r in ranks], dtype=np.int64)
    errors = np.array([tails[r] / total for r in ranks])
    return _cheaper(Options(name, geo.out_hw * S * T, [{"r": r} for r in ranks], macs, errors))


def tucker_options(name: str, geo: Geometry) -> Options:
    W = geo.W
    T, S = W.shape[:2]
    K = W.shape[2] * W.shape[3]
    dec_in, dec_out = S >= vbmf.MIN_SIZE, T >= vbmf.MIN_SIZE
    total = float((W ** 2).sum()) or 1.0
    tail_out, tail_in = _tails(_mode_energy(W, 0)), _tails(_mode_energy(W, 1))
    steps = T if dec_out else S
    pairs = []
    for k in range(1, steps + 1):
        R4 = k if dec_out else T
        R3 = (max(1, round(k * S / T)) if dec_out else k) if dec_in else S
        if (R3, R4) != (S, T) and (R3, R4) not in pairs:
            pairs.append((R3, R4))
    macs = np.array([tucker_cost(S, T, K, geo.in_hw, geo.out_hw, R3, R4, R3 < S, R4 < T)[1] for R3, R4 in pairs],
                    dtype=np.int64)
    errors = np.array([(tail_out[R4] + tail_in[R3]) / total for R3, R4 in pairs])
    return _cheaper(Options(name, geo.out_hw * S * T * K, [{"R3": a, "R4": b} for a, b in pairs], macs, errors))


def _cheaper(opt: Options) -> Options:
    keep = opt.macs < opt.macs0
    return Options(opt.name, opt.macs0, [r for r, k in zip(opt.ranks, keep) if k], opt.macs[keep], opt.errors[keep])


def _best_move(opt: Options, now_macs: int, now_error: float) -> tuple[float, int] | None:
    """(added error per MAC saved, candidate index) of the best cheaper candidate, or None."""
    cheaper = np.nonzero(opt.macs < now_macs)[0]
    if cheaper.size == 0:
        return None
    rate = (opt.errors[cheaper] - now_error) / (now_macs - opt.macs[cheaper])
    best = float(rate.min())
    ties = np.nonzero(rate <= best + TIE)[0]             # equally cheap: the move that saves most
    i = int(ties[np.argmin(opt.macs[cheaper][ties])])
    return float(rate[i]), int(cheaper[i])


def allocate(options: list[Options], fraction: float) -> dict[str, dict]:
    """The ranks of the layers that the budget decomposes (the greedy of the module docstring);
    pure: no weights are touched."""
    if not 0 < fraction <= 1:
        raise RebirthError(f"--macs must be in (0, 1], not {fraction}")
    state = {o.name: (o.macs0, 0.0, None) for o in options}          # macs, error, candidate
    budget = fraction * sum(o.macs0 for o in options)
    total = float(sum(o.macs0 for o in options))
    by_name = {o.name: o for o in options}
    moves = {o.name: _best_move(o, o.macs0, 0.0) for o in options}
    while total > budget:
        live = [(m[0], name) for name, m in moves.items() if m is not None]
        if not live:
            break
        _, name = min(live)
        opt, (_, index) = by_name[name], moves[name]
        macs, _, _ = state[name]
        total -= macs - int(opt.macs[index])
        state[name] = (int(opt.macs[index]), float(opt.errors[index]), index)
        moves[name] = _best_move(opt, int(opt.macs[index]), float(opt.errors[index]))
    return {name: dict(by_name[name].ranks[idx], predicted_error=round(float(np.sqrt(err)), 4))
            for name, (_, err, idx) in state.items() if idx is not None}


def layer_options(model: Model, only: list[str] | None = None) -> list[Options]:
    """The candidates of every layer `tucker` may decompose (or of ``only``)."""
    graph = Graph(model.net, strict=False)
    out = []
    for match in TuckerRule().match(graph):
        if only is not None and match.name not in only:
            continue
        geo = layer_geometry(graph, graph.node(match.name), model)
        if isinstance(geo, str):
            continue
        opt = svd_options(match.name, geo) if geo.method == "svd" else tucker_options(match.name, geo)
        if opt.ranks:
            out.append(opt)
    return out


def budget_ranks(model: Model, fraction: float, only: list[str] | None = None) -> dict[str, dict]:
    """``allocate`` over ``model``'s decomposable layers: {layer: ranks} for TuckerRule(layer_ranks=...)."""
    return allocate(layer_options(model, only), fraction)
