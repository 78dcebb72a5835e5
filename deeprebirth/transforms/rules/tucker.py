"""Tucker-2 decomposition of convolutions and truncated SVD of 1x1 convolutions and InnerProducts
(Kim et al., "Compression of deep convolutional neural networks for fast and low power mobile
applications", ICLR 2016 / arXiv 2015); the paper's "GoogLeNet-(Slim-)Tucker".

Not exact and not one of slim's default rules: it runs through `rebirth tucker` and
`rebirth slim --tucker`, and it needs the trained weights (it decomposes them).

**Tucker-2 of a KhxKw convolution** (K > 1) with kernel W of shape T x S x Kh x Kw (T outputs, S
inputs). Only the two channel modes are decomposed (the spatial modes are small):

    W ~= C x_1 U x_2 V,   i.e.  W[t, s, i, j] ~= sum_{a, b} U[t, a] C[a, b, i, j] V[s, b]

with U (T x R4) and V (S x R3) orthonormal and the core C of shape R4 x R3 x Kh x Kw. Because a
convolution is linear in its kernel, the layer becomes three convolutions:

1. ``<name>_in``: 1x1, S -> R3, weights V^T, no bias (a projection of the input channels; zero
   padding commutes with it, so it runs before the padding of step 2);
2. ``<name>_core``: KhxKw, R3 -> R4, weights C, the original stride, pad and dilation, no bias;
3. ``<name>_out``: 1x1, R4 -> T, weights U, the original bias; it writes the original top blob.

The layers are then balanced (``balance``): U and V are scaled up and C down so that the three
weight tensors have equal Frobenius norms (the product is unchanged).

U and V are found by higher-order orthogonal iteration (HOOI): start from the leading left
singular vectors of the mode-1 unfolding (T x S Kh Kw) and of the mode-2 unfolding (S x T Kh Kw)
(the HOSVD), then alternately recompute each from the unfolding of W projected on the other
factor, a few times; C = W x_1 U^T x_2 V^T. With R3 = S and R4 = T the factors are square
orthogonal matrices and the three layers compute exactly the original layer.

A channel mode whose rank is its full size is not decomposed: its factor is absorbed into the core
(``C x_2 V`` is a kernel over the original S channels) and the 1x1 layer is left out. This is how
Kim et al. treat the first layer (S = 3 colour channels): Tucker-1 on the output mode only.

**Truncated SVD** of a 1x1 convolution or an InnerProduct, W (T x S) = P diag(s) Q^T: keep the
leading r singular triplets and split the singular values evenly, W ~= (P_r diag(sqrt s_r))
(diag(sqrt s_r) Q_r^T): ``<name>_in`` (S -> r, no bias, carrying the 1x1 convolution's stride and
pad, or the InnerProduct's axis) and ``<name>_out`` (r -> T, the original bias).

**Ranks**, per layer:

* ``vbmf`` (default): empirical VBMF (deeprebirth.transforms.vbmf) on the mode-1 unfolding gives R4, on the
  mode-2 unfolding R3; on W itself, r. Degenerate answers: a matrix smaller than
  ``vbmf.MIN_SIZE`` on a side (e.g. the 3 input channels of an RGB layer) is not estimated and the
  mode keeps its full size (for an SVD layer: the layer is left alone); a rank of 0 (no singular
  value stands out from the estimated noise: untrained or random weights) falls back to the rank
  that keeps half the weights (``FALLBACK_RATIO``, the paper's budget), with a note.
* fixed ``(R3, R4)``; an SVD layer takes one rank, given as R3 = R4 (``--ranks 32``). A rank larger
  than the layer allows is an error.
* ``ratio`` F in (0, 1]: the ranks that keep at most a fraction F of the layer's weights, with R3/S =
  R4/T (the largest such scale, found by bisection); r = floor(F S T / (S + T)).

Guards: a grouped (or depthwise) convolution is left alone (its kernel is block-diagonal over
channels; the decomposition would mix the groups); so is a layer whose decomposition would not
reduce its multiply-accumulates, or whose ranks are its full sizes.

The rule keeps no state (``thin_svd`` only remembers the SVDs of large matrices by content, which
gives the same factors faster): the ranks are searched once per layer, by the guard (whose notes are
the refusals above), and the plan travels to the rewrite on the match (``match.data["plan"]``);
the layers of a decomposition are not decomposed again in the same run (``rematches_added =
False``: the runner remembers what each rule added); each change carries the layer it replaced
(``TuckerChange.check``), from which the output error is measured afterwards.
"""
from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import dataclass, field

import numpy as np

from deeprebirth.caffe import proto as pb
from deeprebirth.errors import RebirthError
from deeprebirth.graph.dag import Graph, Node
from deeprebirth.graph.model import Model
from deeprebirth.transforms import vbmf
from deeprebirth.transforms.rules.base import Change, Match, Rule, unique_name

FALLBACK_RATIO = 0.5
HOOI_ITERATIONS = 10
GEOMETRY_FIELDS = ("kernel_size", "kernel_h", "kernel_w", "stride", "stride_h", "stride_w", "pad", "pad_h",
                   "pad_w", "dilation")


@dataclass
class TuckerChange(Change):
    """A Change with the per-layer numbers: method, ranks, weight error, params and MACs, and
    ``check``: the replaced layer (a copy), its arrays, its input shape and copies of the new
    layers, to measure the output error afterwards (not part of the report)."""
    details: dict = field(default_factory=dict)
    check: tuple | None = field(default=None, repr=False)

    def as_dict(self) -> dict:
        out = {f: getattr(self, f) for f in self.__dataclass_fields__ if f != "check"}
        return copy.deepcopy(out)


@dataclass
class Plan:
    node: Node
    method: str                 # "tucker2" or "svd"
    W: np.ndarray               # T x S x Kh x Kw (tucker2) or T x S (svd), float64
    ranks: dict                 # {"R3": .., "R4": ..} or {"r": ..}
    decomposed: tuple           # tucker2: (input mode?, output mode?)
    params: tuple[int, int]     # weights before, after (biases excluded: they are unchanged)
    macs: tuple[int, int]
    source: str                 # how the ranks were chosen
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# Linear algebra


def unfold(W: np.ndarray, mode: int) -> np.ndarray:
    """Mode-``mode`` unfolding: that axis first, the others flattened (in order) into columns."""
    return np.moveaxis(W, mode, 0).reshape(W.shape[mode], -1)


def leading(A: np.ndarray, r: int) -> np.ndarray:
    """The ``r`` leading left singular vectors of A (as columns): the leading eigenvectors of the
    Gram matrix A A^T (small: channels x channels), which is much cheaper than an SVD of A."""
    _, vectors = np.linalg.eigh(A @ A.T)
    return vectors[:, ::-1][:, :r]


def tucker2(W: np.ndarray, R3: int, R4: int, iterations: int = HOOI_ITERATIONS):
    """Partial Tucker of a T x S x Kh x Kw kernel on its two channel modes by HOOI.
    Returns (core R4 x R3 x Kh x Kw, U: T x R4, V: S x R3).

    The unfoldings below order their columns differently from ``unfold``; a permutation of the
    columns does not change the left singular vectors."""
    T, S = W.shape[:2]
    by_out = W.transpose(0, 2, 3, 1)    # T x Kh x Kw x S
    by_in = W.transpose(1, 2, 3, 0)     # S x Kh x Kw x T
    U = leading(by_out.reshape(T, -1), R4)
    V = leading(by_in.reshape(S, -1), R3)
    for _ in range(iterations):
        U = leading((by_out @ V).reshape(T, -1), R4)
        V = leading((by_in @ U).reshape(S, -1), R3)
    core = (W.transpose(2, 3, 1, 0) @ U).transpose(0, 1, 3, 2) @ V   # Kh x Kw x R4 x R3
    return core.transpose(2, 3, 0, 1), U, V


def reconstruct(core: np.ndarray, U: np.ndarray, V: np.ndarray) -> np.ndarray:
    """core x_1 U x_2 V: back to a T x S x Kh x Kw kernel."""
    k = core.transpose(2, 3, 0, 1)       # Kh x Kw x R4 x R3
    return (U @ k @ V.T).transpose(2, 3, 0, 1)


def balance(core: np.ndarray, U: np.ndarray | None, V: np.ndarray | None):
    """The same product with the norm split evenly between the layers: the factors (orthonormal,
    Frobenius norm sqrt(R)) are scaled by a, the core by 1/a^k (k factors), with a chosen so that
    every layer's Frobenius norm is the k+1-th root of their product. HOOI leaves all the scale in
    the core (weights up to ~100 next to factors of at most 1): gradients then differ by orders of
    magnitude between the layers and one learning rate cannot suit all three."""
    factors = [f for f in (U, V) if f is not None]
    norm = float(np.linalg.norm(core))
    if not factors or norm == 0:
        return core, U, V
    fnorms = [float(np.linalg.norm(f)) for f in factors]          # sqrt(R) each
    target = (norm * float(np.prod(fnorms))) ** (1.0 / (len(factors) + 1))
    a = [target / n for n in fnorms]
    core = core / float(np.prod(a))
    scaled = iter(f * k for f, k in zip(factors, a))
    return core, (next(scaled) if U is not None else None), (next(scaled) if V is not None else None)


def svd_factors(W: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """W (T x S) ~= A @ B with A (T x r), B (r x S), the singular values split evenly."""
    P, s, Qt = thin_svd(W)
    root = np.sqrt(s[:r])
    return P[:, :r] * root, root[:, None] * Qt[:r]


#: The thin SVDs of the large matrices decomposed lately are remembered by content (``thin_svd``),
#: up to this many bytes: `rebirth plan alexnet --tucker` builds many variants of one net, each
#: decomposing the same fc6 (4096 x 9216: 27 s an SVD on 2 cores; 14 SVDs, 386 of its 718 s).
SVD_MEMO_BYTES = 2 * 1024 ** 3
#: Matrices with fewer elements than this are decomposed every time (a few milliseconds).
SVD_MEMO_MIN = 1 << 20
_svd_memo: dict[bytes, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def thin_svd(W: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``np.linalg.svd(W, full_matrices=False)``, remembered for large W (the arrays returned are
    read-only: the same ones are handed out again)."""
    if W.size < SVD_MEMO_MIN:
        return np.linalg.svd(W, full_matrices=False)
    data = np.ascontiguousarray(W)
    h = hashlib.blake2b(f"{data.dtype.str}{data.shape}".encode(), digest_size=20)
    h.update(memoryview(data).cast("B"))
    key = h.digest()
    if key not in _svd_memo:
        got = np.linalg.svd(data, full_matrices=False)
        for a in got:
            a.flags.writeable = False
        size = sum(a.nbytes for a in got)
        while _svd_memo and size + sum(a.nbytes for v in _svd_memo.values() for a in v) > SVD_MEMO_BYTES:
            del _svd_memo[next(iter(_svd_memo))]          # the oldest first
        if size <= SVD_MEMO_BYTES:
            _svd_memo[key] = got
        return got
    return _svd_memo[key]


def relative_error(W: np.ndarray, approx: np.ndarray) -> float:
    norm = float(np.linalg.norm(W))
    return float(np.linalg.norm(W - approx)) / norm if norm else 0.0


# ----------------------------------------------------------------------------------------------
# Costs


def tucker_cost(S: int, T: int, K: int, in_hw: int, out_hw: int, R3: int, R4: int,
                dec_in: bool, dec_out: bool) -> tuple[int, int]:
    """(weights, MACs per image) of the Tucker-2 layers; K = Kh Kw, *_hw = spatial positions."""
    a, b = (R3 if dec_in else S), (R4 if dec_out else T)
    params = a * b * K + (S * R3 if dec_in else 0) + (R4 * T if dec_out else 0)
    macs = out_hw * a * b * K + (in_hw * S * R3 if dec_in else 0) + (out_hw * R4 * T if dec_out else 0)
    return params, macs


def ratio_ranks(S: int, T: int, K: int, ratio: float, dec_in: bool, dec_out: bool) -> tuple[int, int]:
    """The largest (R3, R4) with R3/S = R4/T (rounded down, at least 1) keeping at most
    ``ratio`` of the S T K weights; modes not decomposed keep their size."""
    def ranks(rho: float) -> tuple[int, int]:
        return (max(1, math.floor(rho * S)) if dec_in else S, max(1, math.floor(rho * T)) if dec_out else T)

    budget = ratio * S * T * K
    lo, hi = 0.0, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if tucker_cost(S, T, K, 0, 0, *ranks(mid), dec_in, dec_out)[0] <= budget:
            lo = mid
        else:
            hi = mid
    return ranks(lo)


def svd_ratio_rank(S: int, T: int, ratio: float) -> int:
    return max(1, math.floor(ratio * S * T / (S + T)))


@dataclass
class Geometry:
    """What a decomposition of one layer works on: its kernel as ``method`` sees it (T x S x Kh x
    Kw for tucker2, T x S for svd; float64) and the spatial positions of its input and output."""
    method: str
    W: np.ndarray
    in_hw: int
    out_hw: int


def layer_geometry(graph: Graph, node: Node, model: Model) -> Geometry | str:
    """The layer's kernel and positions, or why it cannot be decomposed (a plain reason)."""
    arrays = (model.weights or {}).get(node.name)
    if arrays is None:
        raise RebirthError(f"{model.weights_source or model.source}: no weights for layer '{node.name}': "
                           "the decomposition starts from the trained weights")
    in_shape = graph.version_shapes.get(node.bottoms[0])
    out_shape = node.top_shapes[0] if node.top_shapes else None
    if in_shape is None or out_shape is None:
        return f"the shapes around '{node.name}' are unknown"
    W = np.asarray(arrays[0], dtype=np.float64)
    if not np.isfinite(W).all():
        bad = W.ravel()[np.flatnonzero(~np.isfinite(W.ravel()))[0]]
        raise RebirthError(f"{model.weights_source or model.source}: layer '{node.name}' ({node.type}): its "
                           f"weights are not finite ({bad}); they cannot be decomposed")
    if node.type == "InnerProduct":
        p = node.layer.inner_product_param
        W = W.T if p.transpose else W
        return Geometry("svd", W.reshape(p.num_output, -1), 1, 1)
    p = node.layer.convolution_param
    if len(in_shape) != 4 or W.ndim != 4 or p.axis not in (1, -3):
        return f"'{node.name}' is not a 2-D convolution over NCHW"
    if p.group > 1:
        kind = "a depthwise" if p.group == in_shape[1] else f"a grouped (group {p.group})"
        return (f"'{node.name}' is {kind} convolution: its kernel is block-diagonal over channels and "
                "the decomposition would mix the groups; left alone")
    out_hw = out_shape[2] * out_shape[3]
    if W.shape[2] * W.shape[3] == 1:
        return Geometry("svd", W.reshape(W.shape[0], W.shape[1]), out_hw, out_hw)
    return Geometry("tucker2", W, in_shape[2] * in_shape[3], out_hw)


# ----------------------------------------------------------------------------------------------


class TuckerRule(Rule):
    """``ranks`` (R3, R4) or ``ratio`` F, else VBMF; ``only``: layer names to decompose.
    ``require_saving=False`` also decomposes layers whose MACs would not drop, and
    ``absorb_full=False`` keeps the 1x1 layer of a full-size mode (both for tests: with full ranks
    the three layers compute the original one)."""
    name = "tucker"
    types = frozenset({"Convolution", "InnerProduct"})
    exact = False
    needs_weights = True
    default = False            # not one of slim's default rules
    rematches_added = False    # a decomposition's layers are not decomposed again

    def __init__(self, ranks: tuple[int, int] | None = None, ratio: float | None = None,
                 only: set[str] | None = None, require_saving: bool = True, absorb_full: bool = True,
                 layer_ranks: dict[str, dict | str] | None = None):
        if sum(x is not None for x in (ranks, ratio, layer_ranks)) > 1:
            raise RebirthError("give fixed ranks or a ratio or a MAC budget, not two of them")
        if ratio is not None and not 0 < ratio <= 1:
            raise RebirthError(f"{{opt:ratio}} must be in (0, 1], not {ratio}")
        if ranks is not None and (len(ranks) != 2 or min(ranks) < 1):
            raise RebirthError(f"ranks must be two positive integers R3,R4, not {ranks}")
        self.ranks, self.ratio = ranks, ratio
        self.layer_ranks = dict(layer_ranks) if layer_ranks is not None else None
        self.only = set(only) if only is not None else None
        # with per-layer ranks and its own list of layers (a plan's), the run's ``only`` is the slim
        # substructures the plan chose: it does not restrict this rule (runner; Rule.own_scope)
        self.own_scope = self.only is not None and self.layer_ranks is not None
        self.require_saving = require_saving
        self.absorb_full = absorb_full

    # -- matching ---------------------------------------------------------------------------
    def match(self, graph: Graph) -> list[Match]:
        out = []
        for node in graph.nodes:
            if node.type not in self.types or not node.param_shapes:
                continue
            if self.only is not None and node.name not in self.only:
                continue
            out.append(Match(self.name, node.name, [node.name]))
        return out

    def guards(self, graph: Graph, match: Match, model: Model) -> str | None:
        """The rank search, once: a note when the layer is left alone, else the plan goes on the
        match for ``rewrite``."""
        plan = self.plan(graph, match, model)
        if isinstance(plan, str):
            return plan
        match.data["plan"] = plan
        return None

    # -- planning ---------------------------------------------------------------------------
    def plan(self, graph: Graph, match: Match, model: Model) -> Plan | str:
        node = graph.node(match.name)
        geo = layer_geometry(graph, node, model)
        if isinstance(geo, str):
            return geo
        if geo.method == "svd":
            return self._plan_svd(node, geo.W, in_hw=geo.in_hw, out_hw=geo.out_hw)
        return self._plan_tucker(node, geo.W, geo.in_hw, geo.out_hw)

    def _budgeted(self, node: Node) -> dict | str | None:
        """The ranks ``layer_ranks`` gives ``node``, a refusal when it leaves the layer out, or
        None when the rule has no per-layer ranks."""
        if self.layer_ranks is None:
            return None
        if node.name not in self.layer_ranks:
            return "spared by the budget (other layers give up more for less weight error); left alone"
        return self.layer_ranks[node.name]     # its ranks, or why the budget leaves it whole

    def _plan_svd(self, node: Node, W: np.ndarray, in_hw: int, out_hw: int) -> Plan | str:
        T, S = W.shape
        notes: list[str] = []
        full = min(S, T)
        budget = self._budgeted(node)
        if isinstance(budget, str):
            return budget
        if budget is not None:
            r, source = int(budget["r"]), "budget"
        elif self.ranks is not None:
            if self.ranks[0] != self.ranks[1]:
                raise RebirthError(f"layer '{node.name}' ({node.type}, {T}x{S}) is decomposed by SVD, into one "
                                   f"rank: give one value ({{opt:ranks}} R), not {self.ranks[0]},{self.ranks[1]}")
            r, source = self.ranks[0], "fixed"
            if r > full:
                raise RebirthError(f"layer '{node.name}': rank {r} is larger than the layer allows "
                                   f"(at most {full} for its {T}x{S} weights)")
        elif self.ratio is not None:
            r, source = min(full, svd_ratio_rank(S, T, self.ratio)), f"ratio {self.ratio:g}"
        else:
            est = vbmf.evbmf(W)
            if est.rank is None:
                return f"'{node.name}' ({T}x{S}) is too small for VBMF to estimate a rank; left alone"
            r, source = est.rank, "vbmf"
            if r == 0:
                r, source = svd_ratio_rank(S, T, FALLBACK_RATIO), f"vbmf 0 -> ratio {FALLBACK_RATIO:g}"
                notes.append(f"VBMF finds no component above the noise in '{node.name}' (rank 0): rank {r}, "
                             f"which keeps {FALLBACK_RATIO:.0%} of the weights")
        params = (S * T, r * (S + T))
        macs = (out_hw * S * T, out_hw * r * (S + T))
        plan = Plan(node, "svd", W, {"r": r}, (True, True), params, macs, source, notes)
        return self._check_saving(plan, f"rank {r}")

    def _plan_tucker(self, node: Node, W: np.ndarray, in_hw: int, out_hw: int) -> Plan | str:
        T, S = W.shape[:2]
        K = W.shape[2] * W.shape[3]
        notes: list[str] = []
        budget = self._budgeted(node)
        if isinstance(budget, str):
            return budget
        if budget is not None:
            R3, R4, source = int(budget["R3"]), int(budget["R4"]), "budget"
        elif self.ranks is not None:
            R3, R4 = self.ranks
            source = "fixed"
            if R3 > S or R4 > T:
                which = f"R3 = {R3} > {S} input channels" if R3 > S else f"R4 = {R4} > {T} output channels"
                raise RebirthError(f"layer '{node.name}': rank larger than the layer allows ({which})")
        elif self.ratio is not None:
            dec = (S >= vbmf.MIN_SIZE, T >= vbmf.MIN_SIZE)
            R3, R4 = ratio_ranks(S, T, K, self.ratio, *dec)
            source = f"ratio {self.ratio:g}"
        else:
            R3, R4, source = self._vbmf_ranks(node, W, notes)
        dec_in = R3 < S or not self.absorb_full
        dec_out = R4 < T or not self.absorb_full
        for size, rank, mode in ((S, R3, "input"), (T, R4, "output")):
            if rank == size and self.absorb_full:
                notes.append(f"'{node.name}': the {mode} channel mode keeps its full size {size}: not decomposed "
                             "(its factor is absorbed into the core)")
        if not dec_in and not dec_out:
            return f"'{node.name}': the ranks are its full sizes ({S}, {T}): nothing to decompose"
        after = tucker_cost(S, T, K, in_hw, out_hw, R3, R4, dec_in, dec_out)
        plan = Plan(node, "tucker2", W, {"R3": R3, "R4": R4}, (dec_in, dec_out), (S * T * K, after[0]),
                    (out_hw * S * T * K, after[1]), source, notes)
        return self._check_saving(plan, f"ranks R3={R3}, R4={R4}")

    def _vbmf_ranks(self, node: Node, W: np.ndarray, notes: list[str]) -> tuple[int, int, str]:
        T, S = W.shape[:2]
        K = W.shape[2] * W.shape[3]
        fallback = ratio_ranks(S, T, K, FALLBACK_RATIO, S >= vbmf.MIN_SIZE, T >= vbmf.MIN_SIZE)
        out, fell = [], []
        for mode, size, fb in ((1, S, fallback[0]), (0, T, fallback[1])):
            est = vbmf.evbmf(unfold(W, mode))
            if est.rank is None or size < vbmf.MIN_SIZE:
                out.append(size)
            elif est.rank == 0:
                out.append(fb)
                fell.append("R3" if mode == 1 else "R4")
            else:
                out.append(est.rank)
        source = "vbmf"
        if fell:
            source = f"vbmf 0 -> ratio {FALLBACK_RATIO:g} for {', '.join(fell)}"
            notes.append(f"VBMF finds no component above the noise in '{node.name}' for {', '.join(fell)} "
                         f"(rank 0): the rank that keeps {FALLBACK_RATIO:.0%} of the weights instead")
        return out[0], out[1], source

    def _check_saving(self, plan: Plan, what: str) -> Plan | str:
        if self.require_saving and plan.macs[1] >= plan.macs[0]:
            return (f"'{plan.node.name}': the decomposition with {what} would cost {plan.macs[1]:,} MACs per image, "
                    f"not fewer than the layer's {plan.macs[0]:,}; left alone")
        return plan

    # -- rewriting --------------------------------------------------------------------------
    def rewrite(self, model: Model, graph: Graph, match: Match) -> Change:
        plan = match.data.get("plan") or self.plan(graph, match, model)   # planned by the guard
        if isinstance(plan, str):
            raise ValueError(plan)
        node = plan.node
        old = model.weights[node.name]
        bias = [np.asarray(old[1], dtype=np.float32)] if len(old) > 1 else []
        if plan.method == "svd":
            A, B = svd_factors(plan.W, plan.ranks["r"])
            approx = A @ B
            blobs = [[B.astype(np.float32)], [A.astype(np.float32)] + bias]
            sizes = [plan.ranks["r"], plan.W.shape[0]]
            roles = ["in", "out"]
        else:
            R3, R4 = plan.ranks["R3"], plan.ranks["R4"]
            dec_in, dec_out = plan.decomposed
            T, S = plan.W.shape[:2]
            core, U, V = tucker2(plan.W, R3 if dec_in else S, R4 if dec_out else T)
            approx = reconstruct(core, U, V)
            if not dec_in:
                core = reconstruct(core, np.eye(core.shape[0]), V)
            if not dec_out:
                core = reconstruct(core, U, np.eye(core.shape[1]))
            core, U, V = balance(core, U if dec_out else None, V if dec_in else None)
            blobs, sizes, roles = [], [], []
            if dec_in:
                blobs.append([V.T.astype(np.float32)])
                sizes.append(R3)
                roles.append("in")
            blobs.append([core.astype(np.float32)] + ([] if dec_out else bias))
            sizes.append(core.shape[0])
            roles.append("core")
            if dec_out:
                blobs.append([U.astype(np.float32)] + bias)
                sizes.append(T)
                roles.append("out")
        layers = self._layers(model, graph, node, plan, roles, sizes, bool(bias))
        index = [layer.name for layer in model.net.layer].index(node.name)
        del model.net.layer[index]
        for i, layer in enumerate(layers):
            model.net.layer.insert(index + i, layer)
        check = (_copy(node.layer), list(old), graph.version_shapes[node.bottoms[0]],
                 [_copy(layer) for layer in layers])
        del model.weights[node.name]
        for layer, arrays in zip(layers, blobs):
            model.weights[layer.name] = [a.reshape(s) for a, s in zip(arrays, _shapes(layer, arrays))]
        new = [layer.name for layer in layers]
        details = {
            "layer": node.name, "type": node.type, "method": plan.method, "ranks": plan.ranks,
            "rank_source": plan.source, "weight_error": relative_error(plan.W, approx),
            "output_error": None,
            "params": {"before": plan.params[0], "after": plan.params[1]},
            "macs": {"before": plan.macs[0], "after": plan.macs[1]},
            "new_layers": new, "input": node.layer.bottom[0], "output": node.layer.top[0],
        }
        notes = list(plan.notes)
        notes.insert(0, f"'{node.name}' -> {' + '.join(new)} ({plan.method}, "
                        + ", ".join(f"{k}={v}" for k, v in plan.ranks.items())
                        + f", weight error {details['weight_error']:.3g})")
        return TuckerChange(self.name, match.name, removed=[node.name], added=new, exact=False,
                            notes=notes, details=details, check=check)

    def _layers(self, model: Model, graph: Graph, node: Node, plan: Plan, roles: list[str],
                sizes: list[int], has_bias: bool) -> list["pb.LayerParameter"]:
        taken = {layer.name for layer in model.net.layer}
        blobs = set(graph.shapes)
        original = node.layer
        bottom, top = original.bottom[0], original.top[0]
        out = []
        for i, (role, size) in enumerate(zip(roles, sizes)):
            layer = pb.LayerParameter()
            layer.CopyFrom(original)
            layer.ClearField("param")
            layer.ClearField("blobs")
            layer.name = unique_name(f"{original.name}_{role}", taken)
            last = i == len(roles) - 1
            del layer.bottom[:]
            del layer.top[:]
            layer.bottom.append(bottom if i == 0 else out[-1].top[0])
            layer.top.append(top if last else unique_name(layer.name, blobs))
            with_bias = last and has_bias
            if original.type == "InnerProduct":
                p = layer.inner_product_param
                p.ClearField("transpose")   # our factors are stored num_output x inputs
            else:
                p = layer.convolution_param
                if role != "core":
                    keep_geometry = plan.method == "svd" and role == "in"   # stride/pad of the 1x1 conv
                    if not keep_geometry:
                        for f in GEOMETRY_FIELDS:
                            p.ClearField(f)
                        p.kernel_size.append(1)
            p.num_output = size
            p.ClearField("bias_term")
            if not with_bias:
                p.bias_term = False
            p.ClearField("weight_filler")
            p.ClearField("bias_filler")
            out.append(layer)
        return out


def _copy(layer: "pb.LayerParameter") -> "pb.LayerParameter":
    out = pb.LayerParameter()
    out.CopyFrom(layer)
    return out


def _shapes(layer: "pb.LayerParameter", arrays: list[np.ndarray]) -> list[tuple[int, ...]]:
    """The Caffe blob shapes of a new layer's arrays (1x1 kernels get their spatial axes)."""
    w = arrays[0]
    if layer.type == "Convolution" and w.ndim == 2:
        return [(*w.shape, 1, 1)] + [a.shape for a in arrays[1:]]
    return [a.shape for a in arrays]


def parse_ranks(text: str | None) -> tuple[int, int] | None:
    """``vbmf`` (or None) -> None; ``R`` -> (R, R); ``R3,R4`` -> (R3, R4)."""
    if text is None or text.strip().lower() == "vbmf":
        return None
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise RebirthError(f"{{opt:ranks}}: expected vbmf, R or R3,R4 (positive integers), not '{text}'") from None
    if len(values) not in (1, 2) or min(values) < 1:
        raise RebirthError(f"{{opt:ranks}}: expected vbmf, R or R3,R4 (positive integers), not '{text}'")
    return (values[0], values[-1])


RULE = TuckerRule()
