"""fold_bn: BatchNorm / Scale / Bias folded into the tensor layer before them (paper Lemma 2, Eq. 6, 9).

A convolution followed by BatchNorm and Scale computes, per output channel j,

    y_j = gamma_j * (W_j * x + B_j - mu_j) / sqrt(var_j + eps) + beta_j

which is one convolution with W~_j = eta_j W_j and B~_j = eta_j B_j + beta_j - eta_j mu_j, where
eta_j = gamma_j / sqrt(var_j + eps). Every BatchNorm, Scale (with or without bias) and Bias layer is a
per-channel affine map ``y = a x + b``; a chain of them composes into one such map, which this rule
pushes into the weights of the Convolution, Deconvolution or InnerProduct that feeds the chain.

Caffe's semantics, not a textbook's:

* BatchNorm keeps three blobs: mean sum, variance sum and a scale factor s; the statistics are
  ``blob / s``, and s == 0 means "use zeros". eps (``batch_norm_param.eps``, default 1e-5) is added
  to the variance before the square root.
* Deconvolution weights are (C_in, C_out / group, kh, kw): output channel ``g * C_out/group + j`` is
  column j of group g. InnerProduct with ``transpose: true`` keeps its outputs on the second axis.

A match is one of three kinds (``Match.data["kind"]``):

* ``fold``: a tensor layer and the normalisation chain reading its output; the tensor layer's weights
  absorb the chain (a bias blob is added when it had none) and it writes the chain's last top, so
  downstream layers read the same blob names as before.
* ``scale``: a chain that follows no foldable tensor layer (pre-activation nets such as DenseNet, or
  a tensor output that other layers also read) becomes ONE Scale layer with bias: exact, and one
  cheap layer instead of two.
* ``skip``: a chain that cannot be folded (the pre-normalisation blob has other readers; a Scale or
  Bias with a second bottom, or with a non-default axis / num_axes); its guard returns the note.

The arithmetic runs in float64 and is cast to float32 once at the end. Layers outside a match keep
their weight arrays untouched.
"""
from __future__ import annotations

import numpy as np

from deeprebirth.caffe import proto as pb
from deeprebirth.errors import RebirthError
from deeprebirth.graph.dag import BlobRef, Graph, Node
from deeprebirth.graph.geometry import canonical_axis
from deeprebirth.graph.model import Model
from deeprebirth.transforms.edit import remove_layers
from deeprebirth.transforms.rules.base import Change, Match, Rule

NORM_TYPES = frozenset({"BatchNorm", "Scale", "Bias"})
TARGET_TYPES = frozenset({"Convolution", "Deconvolution", "InnerProduct"})

FOLD, SCALE, SKIP = "fold", "scale", "skip"


# ----------------------------------------------------------------------------------------------
# Structure: which layers may be chained, and which tensor layers may absorb a chain.


def unfoldable_reason(graph: Graph, node: Node) -> str | None:
    """Why a BatchNorm / Scale / Bias layer is not a learned per-channel affine map (None if it is)."""
    if node.type == "BatchNorm":
        if len(node.bottoms) != 1 or len(node.tops) != 1:
            return f"layer '{node.name}' (BatchNorm) has {len(node.bottoms)} bottoms and {len(node.tops)} tops"
        return None
    p = node.layer.scale_param if node.type == "Scale" else node.layer.bias_param
    if len(node.bottoms) > 1:
        what = "scale" if node.type == "Scale" else "bias"
        return (f"layer '{node.name}' ({node.type}) takes its {what} from a second bottom "
                f"'{node.layer.bottom[1]}', not from learned weights")
    if len(node.bottoms) != 1 or len(node.tops) != 1:
        return f"layer '{node.name}' ({node.type}) has {len(node.bottoms)} bottoms and {len(node.tops)} tops"
    shape = graph.version_shapes.get(node.bottoms[0])
    if canonical_axis(p.axis, len(shape) if shape else None) != 1 or p.num_axes != 1:
        return (f"layer '{node.name}' ({node.type}) has axis {p.axis}, num_axes {p.num_axes}, not the "
                "per-channel default (axis 1, num_axes 1)")
    return None


def is_target(graph: Graph, node: Node) -> bool:
    """A tensor layer whose output channels sit on axis 1 and that has one bottom and one top."""
    if node.type not in TARGET_TYPES or len(node.bottoms) != 1 or len(node.tops) != 1:
        return False
    p = node.layer.inner_product_param if node.type == "InnerProduct" else node.layer.convolution_param
    shape = graph.version_shapes.get(node.bottoms[0])
    return canonical_axis(p.axis, len(shape) if shape else None) == 1


class ChainEnd:
    """Why a chain stops before a normalisation layer: ``readers`` (the blob before it has other
    readers) or ``unfoldable`` (the layer is not a learned per-channel map)."""

    def __init__(self, kind: str, reason: str, node: Node):
        self.kind, self.reason, self.node = kind, reason, node


def _next_link(graph: Graph, ref: BlobRef) -> tuple[Node | None, ChainEnd | None]:
    """The normalisation layer that extends a chain from ``ref`` (as its only reader), or why none can.
    (None, None) when no normalisation layer reads ``ref``."""
    users = graph.consumers_of(ref)
    norms = [u for u in users if u.type in NORM_TYPES and u.bottoms and u.bottoms[0] == ref]
    if not norms:
        return None, None
    if len(norms) == 1:
        reason = unfoldable_reason(graph, norms[0])
        if reason:
            return None, ChainEnd("unfoldable", reason, norms[0])
    if len(users) > 1:
        listed = ", ".join(f"'{u.name}'" for u in users if u is not norms[0])
        return None, ChainEnd("readers", f"blob '{ref[0]}' is also read by {listed}, so '{norms[0].name}' "
                                      f"({norms[0].type}) cannot be folded into the layer before it", norms[0])
    return norms[0], None


def _chain_from(graph: Graph, ref: BlobRef, first: Node | None = None) -> tuple[list[Node], ChainEnd | None]:
    """The longest chain of foldable normalisation layers, each the only reader of the one before."""
    chain: list[Node] = [first] if first is not None else []
    if first is not None:
        ref = first.tops[0]
    while True:
        nxt, end = _next_link(graph, ref)
        if nxt is None:
            return chain, end
        chain.append(nxt)
        ref = nxt.tops[0]


def _describe(nodes: list[Node]) -> str:
    return ", ".join(f"{n.name} ({n.type})" for n in nodes)


# ----------------------------------------------------------------------------------------------
# Arithmetic


def _where(model: Model) -> str:
    return model.weights_source or model.source


def _per_channel(model: Model, node: Node, arr: np.ndarray, what: str, channels: int | None) -> np.ndarray:
    flat = np.asarray(arr, dtype=np.float64).ravel()
    if channels is not None and flat.size != channels:
        raise RebirthError(f"{_where(model)}: layer '{node.name}' ({node.type}): its {what} has {flat.size} "
                           f"values, the chain it belongs to has {channels} channels")
    if not np.all(np.isfinite(flat)):
        bad = int(np.flatnonzero(~np.isfinite(flat))[0])
        raise RebirthError(f"{_where(model)}: layer '{node.name}' ({node.type}): its {what} is not finite "
                           f"in channel {bad} ({flat[bad]})")
    return flat


def compose(model: Model, chain: list[Node], channels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The per-channel map ``y = a * x + b`` (float64) equal to applying ``chain`` in order."""
    weights = model.weights or {}
    a = b = None
    for node in chain:
        arrays = weights.get(node.name)
        if arrays is None:
            raise RebirthError(f"{_where(model)}: layer '{node.name}' ({node.type}) has no weights; "
                               "cannot fold it")
        if node.type == "BatchNorm":
            if len(arrays) != 3:
                raise RebirthError(f"{_where(model)}: layer '{node.name}' (BatchNorm) has {len(arrays)} "
                                   "weight blobs, expected 3 (mean sum, variance sum, scale factor)")
            mean_sum = _per_channel(model, node, arrays[0], "mean", channels)
            channels = mean_sum.size
            var_sum = _per_channel(model, node, arrays[1], "variance", channels)
            s = np.asarray(arrays[2], dtype=np.float64).ravel()
            if s.size != 1 or not np.isfinite(s[0]):
                raise RebirthError(f"{_where(model)}: layer '{node.name}' (BatchNorm): its scale factor blob "
                                   f"must hold one finite value, got {s.tolist()[:4]}")
            factor = 0.0 if s[0] == 0 else 1.0 / s[0]   # Caffe: s == 0 means "use zeros"
            mean, var = mean_sum * factor, var_sum * factor
            eps = float(node.layer.batch_norm_param.eps)
            if np.any(var < 0):
                c = int(np.flatnonzero(var < 0)[0])
                raise RebirthError(f"{_where(model)}: layer '{node.name}' (BatchNorm): channel {c} has a "
                                   f"negative variance ({var[c]:.6g}); the statistics are corrupt")
            if np.any(var + eps <= 0):
                c = int(np.flatnonzero(var + eps <= 0)[0])
                raise RebirthError(f"{_where(model)}: layer '{node.name}' (BatchNorm): channel {c} has "
                                   f"variance {var[c]:.6g} and eps {eps:g}, so it divides by zero")
            eta = 1.0 / np.sqrt(var + eps)
            a = eta if a is None else eta * a
            b = -eta * mean if b is None else eta * (b - mean)
        elif node.type == "Scale":
            want = 2 if node.layer.scale_param.bias_term else 1
            if len(arrays) != want:
                raise RebirthError(f"{_where(model)}: layer '{node.name}' (Scale) has {len(arrays)} weight "
                                   f"blobs, expected {want}")
            gamma = _per_channel(model, node, arrays[0], "scale", channels)
            channels = gamma.size
            beta = _per_channel(model, node, arrays[1], "bias", channels) if want == 2 else 0.0
            a = gamma if a is None else gamma * a
            b = (np.zeros(channels) if b is None else gamma * b) + beta
        else:  # Bias
            if len(arrays) != 1:
                raise RebirthError(f"{_where(model)}: layer '{node.name}' (Bias) has {len(arrays)} weight "
                                   "blobs, expected 1")
            beta = _per_channel(model, node, arrays[0], "bias", channels)
            channels = beta.size
            a = np.ones(channels) if a is None else a
            b = beta if b is None else b + beta
    assert a is not None and b is not None
    return a, b


def fold_into(model: Model, target: Node, a: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
    """The target's new [weights, bias] (float32) for ``a * target(x) + b``."""
    arrays = (model.weights or {}).get(target.name)
    if arrays is None:
        raise RebirthError(f"{_where(model)}: layer '{target.name}' ({target.type}) has no weights; "
                           "cannot fold into it")
    w = np.asarray(arrays[0], dtype=np.float64)
    layer = target.layer
    if target.type == "Convolution":
        cout = w.shape[0]
    elif target.type == "Deconvolution":
        group = layer.convolution_param.group
        cout = w.shape[1] * group if w.ndim > 1 else -1
    elif layer.inner_product_param.transpose:
        cout = w.shape[1] if w.ndim == 2 else -1
    else:
        cout = w.shape[0]
    if cout != a.size:
        raise RebirthError(f"{_where(model)}: layer '{target.name}' ({target.type}) has {cout} output "
                           f"channels, the normalisation after it has {a.size}")
    bias = np.asarray(arrays[1], dtype=np.float64).ravel() if len(arrays) > 1 else np.zeros(cout)
    if bias.size != cout:
        raise RebirthError(f"{_where(model)}: layer '{target.name}' ({target.type}): its bias has "
                           f"{bias.size} values for {cout} outputs")
    if target.type == "Convolution":
        w = w * a.reshape((-1,) + (1,) * (w.ndim - 1))
    elif target.type == "Deconvolution":
        group = layer.convolution_param.group
        grouped = w.reshape((group, w.shape[0] // group) + w.shape[1:])
        grouped = grouped * a.reshape((group, 1, w.shape[1]) + (1,) * (w.ndim - 2))
        w = grouped.reshape(w.shape)
    elif layer.inner_product_param.transpose:
        w = w * a[None, :]
    else:
        w = w * a[:, None]
    with np.errstate(over="ignore", invalid="ignore"):   # out of float32 range: inf, refused by the callers
        return [w.astype(np.float32), (a * bias + b).astype(np.float32)]


# ----------------------------------------------------------------------------------------------
# Net editing


def _index(net: "pb.NetParameter") -> dict[str, int]:
    return {layer.name: i for i, layer in enumerate(net.layer)}


def batch_statistics_reason(layer: "pb.LayerParameter") -> str | None:
    """Why a BatchNorm layer is a training one (it normalises with each batch's own statistics), or
    None. The one test of a training net's BatchNorm, used by the rule's guard and by fold.py."""
    p = layer.batch_norm_param
    if layer.type == "BatchNorm" and p.HasField("use_global_stats") and not p.use_global_stats:
        return (f"layer '{layer.name}' (BatchNorm) has use_global_stats: false, so it normalises with "
                "each batch's own statistics (a training net)")
    return None


# ----------------------------------------------------------------------------------------------


class FoldBN(Rule):
    name = "fold_bn"
    types = NORM_TYPES
    exact = True
    default = True
    order = 10
    needs_weights = True

    def match(self, graph: Graph) -> list[Match]:
        out: list[Match] = []
        claimed: set[str] = set()
        for node in graph.nodes:
            if node.name in claimed:
                continue
            if node.type in TARGET_TYPES:
                if not is_target(graph, node):
                    continue
                chain, end = _chain_from(graph, node.tops[0])
                if chain:
                    claimed.update(n.name for n in chain)
                    out.append(Match(self.name, node.name, [node.name] + [n.name for n in chain],
                                     {"kind": FOLD, "target": node.name, "chain": [n.name for n in chain]}))
                if end and end.kind == "readers" and not chain:
                    # Named after the tensor layer alone: the note is reported once, even after
                    # the chain behind it has become a single Scale.
                    out.append(Match(self.name, node.name, [node.name], {"kind": SKIP, "note": end.reason}))
                # A reader further down the chain is reported once the prefix is folded (as above).
            elif node.type in NORM_TYPES:
                if unfoldable_reason(graph, node):
                    continue
                chain, end = _chain_from(graph, node.bottoms[0], first=node)
                claimed.update(n.name for n in chain)
                if any(n.type == "BatchNorm" for n in chain) or len(chain) > 1:
                    out.append(Match(self.name, node.name, [n.name for n in chain],
                                     {"kind": SCALE, "chain": [n.name for n in chain]}))
            else:
                continue
            if end and end.kind == "unfoldable":
                out.append(Match(self.name, end.node.name, [end.node.name],
                                 {"kind": SKIP, "note": end.reason}))
        return out

    def guards(self, graph: Graph, match: Match, model: Model) -> str | None:
        if match.data["kind"] == SKIP:
            return match.data["note"]
        for name in match.data["chain"]:
            note = batch_statistics_reason(graph.node(name).layer)
            if note:
                return f"{note}; it is not folded (give the deploy net)"
        return None

    def rewrite(self, model: Model, graph: Graph, match: Match) -> Change:
        chain = [graph.node(n) for n in match.data["chain"]]
        last_top = chain[-1].layer.top[0]
        if match.data["kind"] == FOLD:
            return self._fold(model, graph.node(match.data["target"]), chain, last_top)
        return self._to_scale(model, match, chain, last_top)

    def _fold(self, model: Model, target: Node, chain: list[Node], last_top: str) -> Change:
        a, b = compose(model, chain)
        new = fold_into(model, target, a, b)
        # Names first: the graph's nodes share their LayerParameter messages with model.net.
        names = [n.name for n in chain]
        layer = model.net.layer[_index(model.net)[target.name]]
        notes = [f"{_describe(chain)} folded into {target.name} ({target.type})"]
        params = layer.inner_product_param if target.type == "InnerProduct" else layer.convolution_param
        if not params.bias_term:
            params.bias_term = True
            notes.append(f"'{target.name}' gained a bias (bias_term: true)")
        if layer.top[0] != last_top:
            notes.append(f"'{target.name}' now writes '{last_top}' instead of '{layer.top[0]}'")
            layer.top[0] = last_top
        remove_layers(model, names)
        model.weights[target.name] = new
        return Change(self.name, target.name, removed=names, modified=[target.name], exact=True, notes=notes)

    def _to_scale(self, model: Model, match: Match, chain: list[Node], last_top: str) -> Change:
        a, b = compose(model, chain)
        scales = [n for n in chain if n.type == "Scale"]
        name = scales[-1].name if scales else chain[0].name
        new = pb.LayerParameter(name=name, type="Scale")
        new.bottom.append(chain[0].layer.bottom[0])
        new.top.append(last_top)
        new.scale_param.bias_term = True
        # Names first: the graph's nodes share their LayerParameter messages with model.net.
        names = [n.name for n in chain]
        removed = [n for n in names if n != name]
        note = (f"{_describe(chain)} replaced by one Scale layer '{name}' with bias "
                "(not after a foldable tensor layer)")
        idx = _index(model.net)
        slots = [idx[n] for n in names]
        model.net.layer[slots[0]].CopyFrom(new)     # the Scale takes the first layer's place
        for i in sorted(slots[1:], reverse=True):
            del model.net.layer[i]
        for n in removed:
            model.weights.pop(n, None)
        model.weights[name] = [a.astype(np.float32), b.astype(np.float32)]
        return Change(self.name, match.name, removed=removed, modified=[name], exact=True, notes=[note])


RULE = FoldBN()
