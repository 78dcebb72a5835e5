"""Tucker ranks under one budget for the whole net: of MACs (``rebirth tucker --macs F``) or of
predicted time (``--time F``).

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

**Time instead of MACs** (``--time F``). On a small net a layer's fixed cost is not small next to its
arithmetic: in Caffe on this machine (one BLAS thread, `rebirth bench --layers`), a line fitted to
the convolutions' times gives 1.7-3.2 µs a layer plus 0.05-0.09 ns a MAC, so one layer costs as
much as 20,000-50,000 MACs (``graph.dag.LAYER_COST_MACS``). Decomposing adds layers (Tucker-2: up
to two, SVD: one), and the MAC budget happily splits a 1x1 reducer into a pair that runs slower.
``--time`` counts each layer as ``layer_cost`` MACs on top of its own, in the layer's cost and in
every candidate's, and runs the
same greedy on that predicted time: a candidate that is not predicted faster than its layer is no
candidate at all (narrow layers are spared this way, not by a rule), and the budget F is a fraction
of the decomposable layers' predicted time. ``LAYER_COST`` is the middle of the measured range;
``--layer-cost`` sets another (a phone's or a faster engine's fit). The ranks themselves still come
from the spectra, as above.

**Rank floor** (``--rank-floor F``, default ``RANK_FLOOR`` = 1/8 with a budget). The error of a
rank counts only what the weights lose, not what the net can relearn, and the greedy, pressed for
time, takes a mode of n channels down to rank 1 where its tail energy is small: on the Fashion-MNIST
Slim net ``--time 0.5`` cut 10 of 19 Tucker-2 convolutions and both SVDs to rank 1 (weight errors
0.75-0.97), and the relearned net gave the same output for every image (dead ReLUs above those
layers; rows T4/T4R of the README before 2026-12, in git). With the floor, a candidate is kept
only when every rank it keeps of a mode of n channels is at least max(``MIN_RANK``, floor(F n))
(at most n): for Tucker-2 R3 >= floor(S) and R4 >= floor(T), for an SVD r >= floor(min(S, T)).
The greedy then stops where the floor binds, which may be above the budget asked for (the report
gives the predicted cost reached). ``F`` 0 turns the floor off.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deeprebirth.errors import RebirthError
from deeprebirth.graph.costs import LAYER_COST_MACS
from deeprebirth.graph.dag import Graph
from deeprebirth.graph.model import Model
from deeprebirth.transforms import vbmf
from deeprebirth.transforms.rules.tucker import Geometry, TuckerRule, layer_geometry, tucker_cost

TIE = 1e-15     # added error per MAC below which two moves count as equally cheap
LAYER_COST = LAYER_COST_MACS   # MACs that one layer's fixed cost is worth, in Caffe here (module docstring)
RANK_FLOOR = 1 / 8     # --rank-floor's default: no kept rank below n/8 of a mode of n channels ...
MIN_RANK = 4           # ... nor below 4 (module docstring, "Rank floor")


def rank_floor(n: int, fraction: float) -> int:
    """The least rank a mode of ``n`` channels may keep under the floor ``fraction``:
    max(MIN_RANK, floor(fraction n)), at most n; 0 (no floor) when ``fraction`` is 0."""
    if fraction <= 0:
        return 0
    return min(n, max(MIN_RANK, int(n * fraction)))


@dataclass
class Options:
    """One layer's candidates: ranks (dicts as TuckerRule takes them), their MACs, errors and
    number of layers (the two-sided pairs by rank, then any one-sided ones); ``macs0`` is the
    layer's own cost (one layer)."""
    name: str
    macs0: int
    ranks: list[dict]
    macs: np.ndarray
    errors: np.ndarray
    layers: np.ndarray

    def costs(self, layer_cost: int) -> tuple[int, np.ndarray]:
        """(the layer's own cost, each candidate's): MACs plus ``layer_cost`` a layer."""
        return self.macs0 + layer_cost, self.macs + layer_cost * self.layers


def _tails(values_sq: np.ndarray) -> np.ndarray:
    """tails[k] = sum of values_sq[k:] (the energy left out when k are kept), k = 0..n."""
    return np.concatenate([np.cumsum(values_sq[::-1])[::-1], [0.0]])


def _mode_energy(W: np.ndarray, axis: int) -> np.ndarray:
    """Squared singular values (descending) of the unfolding along ``axis``: the eigenvalues of
    its Gram matrix."""
    A = np.moveaxis(W, axis, 0).reshape(W.shape[axis], -1)
    return np.clip(np.linalg.eigvalsh(A @ A.T)[::-1], 0, None)


def svd_options(name: str, geo: Geometry, floor: float = 0.0) -> Options:
    """Ranks 1 .. min(S, T) - 1 (from ``rank_floor(min(S, T), floor)`` with a floor)."""
    T, S = geo.W.shape
    energy = np.linalg.svd(geo.W, compute_uv=False) ** 2
    total = float(energy.sum()) or 1.0
    tails = _tails(energy)
    ranks = list(range(max(1, rank_floor(min(S, T), floor)), min(S, T)))
    macs = np.array([geo.out_hw * r * (S + T) for r in ranks], dtype=np.int64)
    errors = np.array([tails[r] / total for r in ranks])
    return _cheaper(Options(name, geo.out_hw * S * T, [{"r": r} for r in ranks], macs, errors, np.full(len(ranks), 2)))


def tucker_options(name: str, geo: Geometry, one_sided: bool = False, floor: float = 0.0) -> Options:
    """Pairs with R3/S = R4/T; with ``one_sided`` also those that decompose one mode only (R3 = S:
    no input 1x1, or R4 = T: no output 1x1), which add one layer instead of two (``--time``); with
    a ``floor``, only pairs with R3 >= rank_floor(S, floor) and R4 >= rank_floor(T, floor)."""
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
    if one_sided:
        pairs += [(S, r) for r in range(1, T) if dec_out and (S, r) not in pairs]
        pairs += [(r, T) for r in range(1, S) if dec_in and (r, T) not in pairs]
    low_in, low_out = rank_floor(S, floor), rank_floor(T, floor)
    pairs = [(R3, R4) for R3, R4 in pairs if R3 >= low_in and R4 >= low_out]
    macs = np.array([tucker_cost(S, T, K, geo.in_hw, geo.out_hw, R3, R4, R3 < S, R4 < T)[1] for R3, R4 in pairs],
                    dtype=np.int64)
    errors = np.array([(tail_out[R4] + tail_in[R3]) / total for R3, R4 in pairs])
    layers = np.array([1 + (R3 < S) + (R4 < T) for R3, R4 in pairs])
    return _cheaper(Options(name, geo.out_hw * S * T * K, [{"R3": a, "R4": b} for a, b in pairs], macs, errors,
                            layers))


def _cheaper(opt: Options) -> Options:
    """Only candidates with fewer MACs than the layer (they have more layers, so no other is faster)."""
    keep = opt.macs < opt.macs0
    return Options(opt.name, opt.macs0, [r for r, k in zip(opt.ranks, keep) if k], opt.macs[keep], opt.errors[keep],
                   opt.layers[keep])


def _best_move(costs: np.ndarray, errors: np.ndarray, now_cost: int, now_error: float) -> tuple[float, int] | None:
    """(added error per cost saved, candidate index) of the best cheaper candidate, or None."""
    cheaper = np.nonzero(costs < now_cost)[0]
    if cheaper.size == 0:
        return None
    rate = (errors[cheaper] - now_error) / (now_cost - costs[cheaper])
    best = float(rate.min())
    ties = np.nonzero(rate <= best + TIE)[0]             # equally cheap: the move that saves most
    i = int(ties[np.argmin(costs[cheaper][ties])])
    return float(rate[i]), int(cheaper[i])


def allocate(options: list[Options], fraction: float, layer_cost: int = 0, option: str = "macs") -> dict[str, dict]:
    """The ranks of the layers that the budget decomposes (the greedy of the module docstring):
    a budget of MACs with ``layer_cost`` 0, of predicted time with a layer's cost in MACs;
    pure: no weights are touched. ``option``: the caller's parameter that gave ``fraction`` (errors
    name it)."""
    return _greedy(options, fraction, layer_cost, option)[0]


def _greedy(options: list[Options], fraction: float, layer_cost: int, option: str) \
        -> tuple[dict[str, dict], tuple[int, int]]:
    """``allocate``'s ranks, and the layers' cost (MACs plus ``layer_cost`` a layer) before and after."""
    if not 0 < fraction <= 1:
        raise RebirthError(f"{{opt:{option}}} must be in (0, 1], not {fraction}")
    costs = {o.name: o.costs(layer_cost) for o in options}
    state = {name: (own, 0.0, None) for name, (own, _) in costs.items()}     # cost, error, candidate
    before = total = sum(own for own, _ in costs.values())
    budget = fraction * total
    by_name = {o.name: o for o in options}
    moves = {o.name: _best_move(costs[o.name][1], o.errors, costs[o.name][0], 0.0) for o in options}
    while total > budget:
        live = [(m[0], name) for name, m in moves.items() if m is not None]
        if not live:
            break
        _, name = min(live)
        opt, (_, index), cand = by_name[name], moves[name], costs[name][1]
        total -= state[name][0] - int(cand[index])
        state[name] = (int(cand[index]), float(opt.errors[index]), index)
        moves[name] = _best_move(cand, opt.errors, int(cand[index]), float(opt.errors[index]))
    ranks = {name: dict(by_name[name].ranks[idx], predicted_error=round(float(np.sqrt(err)), 4))
             for name, (_, err, idx) in state.items() if idx is not None}
    return ranks, (int(before), int(total))


def layer_options(model: Model, only: list[str] | None = None, one_sided: bool = False,
                  floor: float = 0.0) -> list[Options]:
    """The candidates of every layer `tucker` may decompose (or of ``only``), none below the rank
    ``floor``; a layer with no cheaper candidate is left out, or kept with none under a floor."""
    graph = Graph(model.net, strict=False)
    out = []
    for match in TuckerRule().match(graph):
        if only is not None and match.name not in only:
            continue
        geo = layer_geometry(graph, graph.node(match.name), model)
        if isinstance(geo, str):
            continue
        opt = (svd_options(match.name, geo, floor) if geo.method == "svd"
               else tucker_options(match.name, geo, one_sided, floor))
        if opt.ranks or floor:      # with a floor, kept to say why it stays whole
            out.append(opt)
    return out


def budget_ranks(model: Model, fraction: float, only: list[str] | None = None, layer_cost: int = 0,
                 option: str = "macs", floor: float = 0.0) -> tuple[dict[str, dict | str], tuple[int, int]]:
    """``allocate`` over ``model``'s decomposable layers: {layer: ranks, or why it is left whole} for
    TuckerRule(layer_ranks=...), and the layers' cost before and after (MACs plus ``layer_cost`` a
    layer); no kept rank under the rank ``floor``."""
    if not 0 <= floor < 1:
        raise RebirthError(f"{{opt:rank_floor}} must be in [0, 1), not {floor}")
    options = layer_options(model, only, one_sided=layer_cost > 0, floor=floor)
    chosen, cost = _greedy(options, fraction, layer_cost, option)
    ranks: dict[str, dict | str] = dict(chosen)
    what = "time" if layer_cost else "MAC"
    for opt in options:
        own, cand = opt.costs(layer_cost)
        if opt.name in ranks:
            continue
        if not opt.ranks:
            ranks[opt.name] = (f"no rank at or above the rank floor ({{opt:rank_floor}} {floor:g}: at least "
                               f"{MIN_RANK} and {floor:g} of a mode's channels) is cheaper than the layer; left alone")
        elif not (cand < own).any():
            ranks[opt.name] = (f"no rank of it is predicted faster than the layer (a layer counted as {layer_cost:,} "
                               "MACs); left alone")
        else:
            ranks[opt.name] = (f"spared by the {what} budget (other layers give up {what.replace('MAC', 'MACs')} "
                               "for less weight error); left alone")
    return ranks, cost
