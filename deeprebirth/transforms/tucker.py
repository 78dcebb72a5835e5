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
from dataclasses import dataclass, fields
from typing import Callable

import numpy as np

from deeprebirth.caffe import proto as pb
from deeprebirth.transforms import slim as slim_api
from deeprebirth.errors import RebirthError
from deeprebirth.graph.dag import Graph
from deeprebirth.caffe.model import Model
from deeprebirth.transforms.candidates import human
from deeprebirth.transforms.rules.tucker import TuckerChange, TuckerRule


@dataclass
class TuckerOutput(slim_api.SlimOutput):
    rule: TuckerRule | None = None
    teacher: dict | None = None          # {"deploy": path, "weights": path}

    @property
    def layers(self) -> list[dict]:
        return [c.details for c in self.result.changes if isinstance(c, TuckerChange)]

    def report(self) -> dict:
        out = super().report()
        rule = self.rule
        out["tucker"] = {
            "ranks": "fixed" if rule.ranks else ("ratio" if rule.ratio else "vbmf"),
            "fixed_ranks": list(rule.ranks) if rule.ranks else None,
            "ratio": rule.ratio,
            "initialised_from_decomposition": [n for d in self.layers for n in d["new_layers"]],
            "layers": self.layers,
        }
        return out   # its "relearn" section (slim's) has the teacher and one unit per decomposed layer


def _rule(ranks, ratio, only=None) -> TuckerRule:
    return TuckerRule(ranks=tuple(ranks) if ranks else None, ratio=ratio, only=only)


def tucker(model: Model, ranks: tuple[int, int] | None = None, ratio: float | None = None,
           only: list[str] | None = None, progress: Callable[[int], None] | None = None,
           **slim_kwargs) -> TuckerOutput:
    """Decompose ``model``'s convolutions and InnerProducts (all, or the layers named in ``only``).
    ``progress(1)`` is called after each candidate layer is planned (``len(candidates(...))``
    calls). ``slim_kwargs`` go to slim.slim (train_val, train_val_source, data_layer, inputs)."""
    rule = _rule(ranks, ratio)
    rule.progress = progress
    if model.weights is None:
        raise RebirthError(f"{model.source}: no weights: the decomposition starts from the trained weights")
    names = candidates(model)
    if not names:
        raise RebirthError(f"{model.source}: no decomposable layer (a Convolution or InnerProduct with weights); "
                           "nothing written")
    if only is not None:
        only = list(dict.fromkeys(n.strip() for n in only if n.strip()))
        if not only:
            raise RebirthError("--only: no layer named")
        unknown = [n for n in only if n not in names]
        if unknown:
            listing = ", ".join(names[:12]) + (f" ... ({len(names)} in all)" if len(names) > 12 else "")
            raise RebirthError(f"{model.source}: no decomposable layer named '{unknown[0]}' (layers: {listing})")
        rule.only = set(only)
    return _decompose(model, [rule], rule, only, **slim_kwargs)


def candidates(model: Model, only: list[str] | None = None) -> list[str]:
    """The layers `tucker` would look at: every Convolution and InnerProduct, or those in ``only``."""
    names = [m.name for m in TuckerRule().match(Graph(model.net, strict=False))]
    return [n for n in names if only is None or n in only]


def slim_tucker(model: Model, rule_names: list[str] | None = None, keep_pooling: bool = False,
                ranks: tuple[int, int] | None = None, ratio: float | None = None, **slim_kwargs) -> TuckerOutput:
    """Slim-Tucker in one go: the slim rules, then the decomposition of the slim net's layers."""
    rule = _rule(ranks, ratio)
    if model.weights is None:
        raise RebirthError(f"{model.source}: --tucker needs --weights: the decomposition starts from trained weights")
    rules = slim_api.select_rules(rule_names, keep_pooling, True) + [rule]
    return _decompose(model, rules, rule, None, **slim_kwargs)


def _decompose(model: Model, rules: list, rule: TuckerRule, only, **slim_kwargs) -> TuckerOutput:
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
    _output_errors(rule, changes, new, out.notes)
    result = TuckerOutput(**{f.name: getattr(out, f.name) for f in fields(slim_api.SlimOutput)})
    result.rule, result.only = rule, only
    result.teacher = {"deploy": os.path.abspath(model.source),
                      "weights": os.path.abspath(model.weights_source) if model.weights_source else None}
    return result


def _output_errors(rule: TuckerRule, changes: list[TuckerChange], weights, notes: list[str]) -> None:
    """Relative error ||y' - y|| / ||y|| of each decomposed layer's output against the original
    layer's, on uniform random input in [-1, 1], run in pycaffe (batch 1)."""
    try:
        from deeprebirth.runtime.pycaffe import CaffeNet, import_caffe  # noqa: PLC0415
        import_caffe()
    except RebirthError:
        notes.append("pycaffe is not available: output errors not measured")
        return
    for c in changes:
        d = c.details
        layer, arrays, in_shape, new_layers = rule.originals[d["layer"]]
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
        engine = CaffeNet(net, {layer.name: arrays, **{n: weights[n] for n in d["new_layers"]}})
        engine.fill_inputs(seed=0)
        y = engine.forward()
        a, b = y["reference"], y["approximation"]
        norm = float(np.linalg.norm(a))
        d["output_error"] = float(np.linalg.norm(b - a)) / norm if norm else 0.0


def summary(out: TuckerOutput, written=None) -> str:
    before, after = out.costs()
    lines = [f"decomposed {out.model.source} (rules: {', '.join(out.rules)})"]
    slimmed = [c for c in out.result.changes if not isinstance(c, TuckerChange)]
    if slimmed:
        units = list(dict.fromkeys(c.substructure for c in slimmed))
        lines.append(f"  slimmed ({len(slimmed)} rewrites): {', '.join(units)}")
    width = max(len(d["layer"]) for d in out.layers)
    lines.append(f"  {'layer'.ljust(width)}  method   {'ranks':<10} {'w.err':>6} {'out.err':>7}  "
                 f"{'params':>17}  {'MACs per image':>17}")
    for d in out.layers:
        ranks = ",".join(str(v) for v in d["ranks"].values())
        oe = "-" if d["output_error"] is None else f"{d['output_error']:.3f}"
        params = f"{human(d['params']['before'])} -> {human(d['params']['after'])}"
        macs = f"{human(d['macs']['before'])} -> {human(d['macs']['after'])}"
        lines.append(f"  {d['layer'].ljust(width)}  {d['method']:<8} {ranks:<10} {d['weight_error']:>6.3f} {oe:>7}  "
                     f"{params:>17}  {macs:>17}")
    lines.append(f"params {human(before['params'])} -> {human(after['params'])}; MACs {human(before['macs'])} -> "
                 f"{human(after['macs'])}; layers {before['layers']} -> {after['layers']}")
    fell = [d["layer"] for d in out.layers if d["rank_source"].startswith("vbmf 0")]
    if fell:
        lines.append(f"VBMF found rank 0 (no component above the noise: untrained or random weights?) and fell back "
                     f"to the ranks keeping half the weights for {len(fell)} layer(s): {', '.join(fell[:6])}"
                     + (" ..." if len(fell) > 6 else ""))
    lines.append(f"new layers, initialised from the decomposition, lr_mult 10: {', '.join(out.new_layers)}")
    return "\n".join(lines + slim_api.summary_tail(out, written))
