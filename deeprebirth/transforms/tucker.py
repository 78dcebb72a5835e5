"""`rebirth tucker` and `rebirth slim --tucker` as a library: Tucker-2 / SVD decomposition of the
tensor layers (rules/tucker.py), written like `slim` (deploy, train_val, solver, init, report).

    out = tucker(load_model("slim/deploy.prototxt", "slim/finetuned.caffemodel"), ratio=0.5)
    slim.write(out, "slim-tucker/")

The decomposed layers are new layers for fine-tuning (lr_mult 10 in train_val.prototxt) but start
from the decomposition, not from Xavier: init.caffemodel holds the factors. report.json adds, per
decomposed layer, the ranks, the relative error of the weights and of the layer's output on random
input (measured in pycaffe when it is installed), params and MACs before and after (``tucker``),
and the substructures to re-learn against the teacher (``relearn``): one per original layer,
from its bottom blob to its top blob.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Callable

from deeprebirth.caffe import proto as pb
from deeprebirth.errors import RebirthError
from deeprebirth.graph.dag import Graph
from deeprebirth.graph.model import Model
from deeprebirth.transforms import rank_budget, runner
from deeprebirth.transforms import slim as slim_api
from deeprebirth.transforms.rules import get as get_rules
from deeprebirth.transforms.rules.tucker import TuckerChange, TuckerRule


@dataclass
class TuckerOutput(slim_api.SlimOutput):
    rule: TuckerRule | None = None
    teacher: dict | None = None          # {"deploy": path, "weights": path}
    macs_fraction: float | None = None   # --macs: the budget the ranks were allocated under
    time_fraction: float | None = None   # --time: the same, of predicted time
    layer_cost: int | None = None        # --time: one layer's fixed cost in MACs
    rank_floor: float | None = None      # --macs/--time: no kept rank under this fraction of a mode (0: none)
    after_training: list[str] = field(default_factory=list)   # exact rules to run once it is trained
    budget: tuple[int, int] | None = None   # --macs/--time: the decomposable layers' cost before, after

    @property
    def layers(self) -> list[dict]:
        return [c.details for c in self.result.changes if isinstance(c, TuckerChange)]

    def report(self) -> dict:
        out = super().report()
        rule = self.rule
        out["tucker"] = {
            "ranks": "fixed" if rule.ranks else ("ratio" if rule.ratio else
                                                 ("budget" if rule.layer_ranks is not None else "vbmf")),
            "fixed_ranks": list(rule.ranks) if rule.ranks else None,
            "ratio": rule.ratio,
            "macs_fraction": self.macs_fraction,
            "time_fraction": self.time_fraction,
            "layer_cost_macs": self.layer_cost,
            "rank_floor": self.rank_floor,
            "budget_cost": None if self.budget is None else {"before": self.budget[0], "after": self.budget[1]},
            "initialised_from_decomposition": [n for d in self.layers for n in d["new_layers"]],
            "after_training": self.after_training,
            "layers": self.layers,
        }
        return out   # its "relearn" section (slim's) has the teacher and one unit per decomposed layer


def _rule(ranks, ratio, only=None) -> TuckerRule:
    return TuckerRule(ranks=tuple(ranks) if ranks else None, ratio=ratio, only=only)


def tucker(model: Model, ranks: tuple[int, int] | None = None, ratio: float | None = None,
           only: list[str] | None = None, progress: Callable[[int], None] | None = None,
           measure: Callable | None = None, macs: float | None = None, time: float | None = None,
           layer_cost: int = rank_budget.LAYER_COST, rank_floor: float | None = None,
           **slim_kwargs) -> TuckerOutput:
    """Decompose ``model``'s convolutions and InnerProducts (all, or the layers named in ``only``).
    ``progress(1)`` is called after each candidate layer is decided, planned or refused
    (``len(candidates(...))`` calls, by the runner). ``measure`` runs the check nets (``check_nets``)
    and returns each layer's output error (runtime.verify.output_errors does so in pycaffe).
    ``macs`` F: instead of ranks or a ratio, the layers share one budget of F times their MACs
    (rank_budget.py); ``time`` F: of their predicted time, each layer counted as ``layer_cost`` MACs
    more; with either, no kept rank of a mode of n
    channels under max(4, ``rank_floor`` n) (default ``rank_budget.RANK_FLOOR``; 0: no floor).
    ``slim_kwargs`` go to slim.slim (train_val, train_val_source, data_layer, inputs)."""
    if sum(x is not None for x in (ranks or None, ratio, macs, time)) > 1:
        raise RebirthError("give fixed ranks, a ratio, a MAC budget ({opt:macs}) or a time budget ({opt:time_budget}), "
                           "not two of them")
    if rank_floor is not None and macs is None and time is None:
        raise RebirthError("{opt:rank_floor} counts only with a budget ({opt:macs} F or {opt:time_budget} F); "
                           "give both")
    floor = rank_budget.RANK_FLOOR if rank_floor is None else rank_floor
    rule = _rule(ranks, ratio)
    if model.weights is None:
        raise RebirthError(f"{model.source}: no weights: the decomposition starts from the trained weights")
    names = candidates(model)
    if not names:
        raise RebirthError(f"{model.source}: no decomposable layer (a Convolution or InnerProduct with weights); "
                           "nothing written")
    if only is not None:
        only = list(dict.fromkeys(n.strip() for n in only if n.strip()))
        if not only:
            raise RebirthError("{opt:only}: no layer named")
        unknown = [n for n in only if n not in names]
        if unknown:
            listing = ", ".join(names[:12]) + (f" ... ({len(names)} in all)" if len(names) > 12 else "")
            raise RebirthError(f"{model.source}: no decomposable layer named '{unknown[0]}' (layers: {listing})")
        rule = rule.with_options(only=set(only))
    budget = None
    for fraction, cost, option in ((macs, 0, "macs"), (time, layer_cost, "time_budget")):
        if fraction is not None:     # at most one of them (checked above)
            ranks_of, budget = rank_budget.budget_ranks(model, fraction, only, cost, option, floor)
            rule = rule.with_options(layer_ranks=ranks_of)
    out = _decompose(model, [rule], rule, only, measure, progress=progress, **slim_kwargs)
    out.macs_fraction, out.time_fraction = macs, time
    out.layer_cost = layer_cost if time is not None else None
    out.rank_floor = floor if budget is not None else None
    out.budget = budget
    return out


def candidates(model: Model, only: list[str] | None = None) -> list[str]:
    """The layers `tucker` would look at: every Convolution and InnerProduct, or those in ``only``."""
    names = [m.name for m in TuckerRule().match(Graph(model.net, strict=False))]
    return [n for n in names if only is None or n in only]


def slim_tucker(model: Model, rule_names: list[str] | None = None, keep_pooling: bool = False,
                ranks: tuple[int, int] | None = None, ratio: float | None = None, measure: Callable | None = None,
                **slim_kwargs) -> TuckerOutput:
    """Slim-Tucker in one go: the slim rules, then the decomposition of the slim net's layers."""
    rule = _rule(ranks, ratio)
    if model.weights is None:
        raise RebirthError(f"{model.source}: {{opt:tucker}} needs {{opt:weights}}: the decomposition starts from "
                           "trained weights")
    rules = slim_api.select_rules(rule_names, keep_pooling, True) + [rule]
    return _decompose(model, rules, rule, None, measure, **slim_kwargs)


def _decompose(model: Model, rules: list, rule: TuckerRule, only, measure=None, **slim_kwargs) -> TuckerOutput:
    """Run ``rules`` through slim.slim (``slim_kwargs`` include ``progress``), then measure the
    output errors of the decomposed layers."""
    try:
        out = slim_api.slim(model, rules, **slim_kwargs)
    except RebirthError as exc:
        raise RebirthError(str(exc).replace(": nothing to slim", ": nothing to decompose", 1)) from None
    changes = [c for c in out.result.changes if isinstance(c, TuckerChange)]
    if not changes:
        raise RebirthError(f"{model.source}: no layer was decomposed; nothing written")
    new = out.result.model.weights
    for c in changes:
        for name in c.added:
            out.weights[name] = new[name]
    _output_errors(changes, new, out.notes, measure)
    result = TuckerOutput(**{f.name: getattr(out, f.name) for f in fields(slim_api.SlimOutput)})
    result.rule, result.only = rule, only
    result.teacher = {"deploy": os.path.abspath(model.source),
                      "weights": os.path.abspath(model.weights_source) if model.weights_source else None}
    result.after_training = finishing_rules(out.result.model.net)
    return result


# Exact rules that pay only on a trained decomposed net: they merge layers that relearn's units
# name one by one (a Tucker net's branch-end 1x1 convolutions), so they run after fine-tuning.
FINISHING = ("merge_concat_1x1",)


def finishing_rules(net: "pb.NetParameter") -> list[str]:
    """The rules of ``FINISHING`` that would rewrite ``net`` (`rebirth slim DEPLOY -w WEIGHTS
    --rules ...` once the net is trained)."""
    result = runner.run(Model(net), get_rules(list(FINISHING)))
    return list(dict.fromkeys(c.rule for c in result.changes))


def check_nets(changes: list[TuckerChange], weights) -> list[tuple[dict, "pb.NetParameter", dict]]:
    """Per decomposed layer, a small net that computes the original layer (top ``reference``) and
    its decomposition (top ``approximation``) from one input ``x``, with the weights of both:
    what an engine runs to measure the decomposition's output error (runtime.verify.output_errors)."""
    out = []
    for c in changes:
        d = c.details
        layer, arrays, in_shape, new_layers = c.check
        net = pb.NetParameter(name="tucker-check")
        data = net.layer.add(name="tucker_check_input", type="Input", top=["x"])
        data.input_param.shape.add().dim.extend([1, *in_shape[1:]])
        ref = net.layer.add()
        ref.CopyFrom(layer)
        ref.ClearField("bottom")
        ref.ClearField("top")
        ref.bottom.append("x")
        ref.top.append("reference")
        chain = {d["input"]: "x", d["output"]: "approximation"}
        for new_layer in new_layers:
            lp = net.layer.add()
            lp.CopyFrom(new_layer)
            lp.bottom[0] = chain.get(lp.bottom[0], lp.bottom[0])
            lp.top[0] = chain.get(lp.top[0], lp.top[0])
        out.append((d, net, {layer.name: arrays, **{n: weights[n] for n in d["new_layers"]}}))
    return out


def _output_errors(changes: list[TuckerChange], weights, notes: list[str], measure) -> None:
    """Relative error ||y' - y|| / ||y|| of each decomposed layer's output against the original
    layer's, measured by ``measure`` (an engine; None: not measured)."""
    if measure is None:
        notes.append("output errors not measured (no engine given)")
        return
    checks = check_nets(changes, weights)
    errors = measure([(net, w) for _, net, w in checks])
    if errors is None:
        notes.append("pycaffe is not available: output errors not measured")
        return
    for (d, _, _), err in zip(checks, errors):
        d["output_error"] = err


