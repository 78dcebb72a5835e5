"""`rebirth slim` as a library: run the rules, build the slim deploy net, its fine-tuning files and
initial weights, a report; write them (every file checked first, then each written atomically).

    out = slim(load_model("googlenet", "bvlc_googlenet.caffemodel"), only=["conv1"])
    write(out, "slim/")   # deploy.prototxt train_val.prototxt solver.prototxt init.caffemodel report.json

Every rule that declares ``default`` runs, in the order the rules declare (``rules.select``);
``only`` restricts the rewrites to the named substructures (``Match.name``: ``conv1``,
``inception_3a`` ..., the candidates `rebirth inspect` lists), so the paper's bottom-to-top
procedure (Table 3) is one run per step, each fine-tuned before the next.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from deeprebirth import __version__, errors, outputs
from deeprebirth.caffe import netio
from deeprebirth.caffe import proto as pb
from deeprebirth.caffe.phase import filter_phase
from deeprebirth.errors import RebirthError
from deeprebirth.graph.dag import Graph
from deeprebirth.graph.model import Model, stand_in
from deeprebirth.transforms import relearn_plan, runner, trainfiles
from deeprebirth.transforms import rules as rule_registry
from deeprebirth.transforms import transplant as weight_ops
from deeprebirth.transforms.rules.base import Rule

FILES = ("deploy.prototxt", "train_val.prototxt", "solver.prototxt", "init.caffemodel", "report.json")
DATA_LAYERS = {"image": "ImageData", "dummy": "DummyData", "ImageData": "ImageData", "DummyData": "DummyData"}


@dataclass
class SlimOutput:
    model: Model                       # the input
    result: runner.Result            # the slim model, changes and skips
    rules: list[str]
    only: list[str] | None
    new_layers: list[str]              # regenerated or added: Xavier weights, lr_mult 10
    train_val: "pb.NetParameter"
    solver: "pb.SolverParameter"
    weights: dict | None               # init weights of the train net (slim deploy + training-only)
    notes: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    plan: dict | None = None           # the plan applied (``only`` its lossy choice; exact rules everywhere)

    @property
    def deploy(self) -> "pb.NetParameter":
        return self.result.model.net

    @property
    def skips(self) -> list:
        """Matches left alone, without the repeats of what a rewrite of the same substructure
        already notes (AlexNet's conv1: LRN pruned, then its pooling alone is left, for the reason
        the rewrite gave)."""
        noted = {(c.rule, c.substructure, n) for c in self.result.changes for n in c.notes}
        return [s for s in self.result.skips if (s.rule, s.substructure, s.reason) not in noted]

    def costs(self) -> tuple[dict, dict]:
        changes = self.result.changes   # the run measured both ends already
        before = dict(changes[0].before) if changes else runner.costs(Graph(self.model.net, strict=False))
        after = dict(changes[-1].after) if changes else runner.costs(Graph(self.deploy, strict=False))
        return before, after

    def report(self) -> dict:
        before, after = self.costs()
        return {
            "tool": f"rebirth {__version__}",
            "model": self.model.source,
            "weights": self.model.weights_source,
            "rules": self.rules,
            "only": self.only,
            **({"plan": self.plan} if self.plan is not None else {}),
            "batch": input_batch(self.model.net),
            "before": before,
            "after": after,
            "changes": [c.as_dict() for c in self.result.changes],
            "skips": [asdict(s) for s in self.skips],
            "regenerated": self.new_layers,
            "notes": self.notes,
            "relearn": relearn_plan.plan_report(self.model.source, self.model.weights_source, self.model.net,
                                           self.deploy, self.new_layers, self.result.changes),
            "files": [f for f in FILES if f != "init.caffemodel" or self.weights is not None],
        }


def input_batch(net: "pb.NetParameter") -> int | None:
    shapes = [s for _, s in trainfiles.deploy_inputs(net) if s]
    return int(shapes[0][0]) if shapes else None


# ----------------------------------------------------------------------------------------------
# Rules


def select_rules(names: list[str] | None = None, keep_pooling: bool = False,
                 have_weights: bool = True) -> list[Rule]:
    """Rule instances in run order: the default ones, or the ``names`` given (``rules.select``).
    ``keep_pooling``: no pooling is removed (streamline only prunes LRN/Dropout, the rules that only
    remove poolings are left out) -- the paper's AlexNet experiment (Table 7).
    ``have_weights=False`` leaves out, by default, the rules that need trained weights (fold_bn)."""
    return rule_registry.select(names, keep_pooling, have_weights)[0]


def substructures(model: Model, rules: list[Rule]) -> list[str]:
    """Every substructure name the rules find when slimming everything (the valid --only names):
    the names of ``runner.run``'s candidates, which `rebirth inspect` lists."""
    return list(dict.fromkeys(c.name for c in runner.run(model, rules).candidates))


# ----------------------------------------------------------------------------------------------


def slim(model: Model, rules: list[Rule | str] | None = None, only: list[str] | None = None,
         train_val: "pb.NetParameter | None" = None, train_val_source: str | None = None,
         data_layer: str = "ImageData",
         inputs: list[str] | None = None, keep_pooling: bool = False,
         progress: Callable[[int], None] | None = None, exact_always: bool = False,
         plan: dict | None = None, tucker: dict[str, dict] | None = None) -> SlimOutput:
    """Slim ``model`` and build everything `rebirth slim` writes.

    ``rules``: Rule instances, or rule names (see ``select_rules``, with ``keep_pooling``); by
    default every rule that declares ``default``. Without weights the rules run on stand-in
    weights (graph.model.stand_in), so that a BatchNorm fold or a decomposition gives the net the
    structure it has with trained weights (the nets `plan` times by time alone and `slim --plan`
    builds); no weights are written, and a note says which rules computed weights.
    Training-only layers of a given train_val (auxiliary classifiers) start from their trained values
    when the weights file has them (``model.spare_weights``).
    ``progress(1)`` is called after each match is decided (``runner.run``).
    ``exact_always``: ``only`` names the lossy rewrites; the exact ones run everywhere (``only`` may
    then be empty: the lossless net). ``plan``: the plan this applies, recorded in the report.
    ``tucker``: layer name -> its ranks (``{"R3": .., "R4": ..}``, or ``{"r": ..}`` for an SVD): once
    the rules are done, those layers of the slim net are decomposed (rules/tucker.py, with these
    ranks; a plan's Tucker candidates); their new layers start from the decomposition.

    The rules run once, also with ``only``: the names in ``only`` are checked against the matches
    of that run (``Result.matched``); only when one is missing there does a second, full run tell
    whether it is a name the rules report at all (``substructures``), for the error's listing.
    """
    notes: list[str] = []
    have_weights = model.weights is not None
    if rules is None or all(isinstance(r, str) for r in rules):
        rules, _ = rule_registry.select(None if rules is None else list(rules), keep_pooling)
    elif keep_pooling:
        raise RebirthError("keep_pooling applies to rule names, not to Rule instances")
    if not rules:
        raise RebirthError("no rules to run")
    if tucker:
        rules = _with_tucker(rules, tucker)
    run_on = stand_in(model)      # without weights: the structure, from stand-in weights never written
    data_layer = DATA_LAYERS.get(data_layer, data_layer)
    only_set = None
    if only is not None:
        only = list(dict.fromkeys(n.strip() for n in only if n.strip()))
        if not only and not exact_always:
            raise RebirthError("{opt:only}: no substructure named")
        only_set = set(only)
    result = runner.run(run_on, rules, only=only_set, progress=progress, exact_always=exact_always)
    if run_on is not model:
        result.model.weights = None
        folded = sorted({c.rule for c in result.changes if c.rule != TUCKER and _needs_weights(rules, c.rule)})
        if folded:
            notes.append(f"no {{opt:weights}}: the rewrites of {', '.join(folded)} compute new weights from the "
                         "trained ones; the net has their structure (made from stand-in weights, which are not "
                         "written): give {opt:weights} to rewrite yours")
    if only is not None and not only_set <= set(result.matched):
        _check_only(run_on, rules, only)
    notes += result.notes
    relearned = _tucker_notes(model, result, tucker, have_weights, notes) if tucker else set()
    if not result.changes:
        raise RebirthError(_nothing_to_slim(model, result, only))
    _check_finite(model, result.model)

    # New layers: regenerated ones, and layers added by a rewrite that is not exact (or that left
    # them without weights); an exact rewrite's added layers carry exact weights and stay at 1x.
    have = result.model.weights
    added = {n for c in result.changes for n in c.added
             if not c.exact or (have is not None and n not in have)}
    graph = result.graph   # the slim net's
    with_params = {n.name for n in graph.nodes if n.param_shapes}
    new_layers = sorted((result.regenerated | added) & with_params)

    tv, tv_notes = trainfiles.build_train_val(
        result.model.net, new_layers, given=train_val, given_source=train_val_source or "<train_val>",
        original_names={layer.name for layer in model.net.layer}, data_layer=data_layer,
        untrained=[] if have_weights else [n.name for n in graph.nodes if n.param_shapes or n.kind == "tensor"])
    notes += tv_notes
    solver = trainfiles.build_solver(test_batch=trainfiles.eval_batch_size(tv))

    init = _init_weights(model, result, new_layers, relearned, tv, notes)
    return SlimOutput(model, result, [r.name for r in rules], only, new_layers, tv, solver, init,
                      notes, [p for p in (inputs or []) if p], plan)


def _init_weights(model: Model, result: runner.Result, new_layers: list[str], relearned: set[str],
                  tv: "pb.NetParameter", notes: list[str]) -> netio.Weights | None:
    """init.caffemodel's arrays (None without weights): the trained ones, fresh ones for the new
    layers, a decomposition's factors for its layers (not for the ``relearned`` ones, regenerated
    by a lossy rewrite), and the training-only layers' trained ones."""
    if result.model.weights is None:
        return None
    graph = result.graph
    missing = [n.name for n in graph.nodes if n.param_shapes and n.name not in result.model.weights
               and n.name not in new_layers]
    if missing:
        notes.append(f"layers without trained weights, initialised like new ones: {', '.join(missing)}")
    init = weight_ops.transplant(result.model.weights, graph, set(new_layers))
    for c in result.changes:
        if c.rule == TUCKER and c.substructure not in relearned:
            init.update({n: result.model.weights[n] for n in c.added})
    init.update(_training_only_weights(tv, result.model.net, model.spare_weights, notes))
    return init


def _tucker_notes(model: Model, result: runner.Result, tucker: dict, have_weights: bool, notes: list[str]) -> set[str]:
    """_check_tucker, and the notes on what the decompositions start from; returns the regenerated ones."""
    relearned = _check_tucker(model, result, tucker)
    own = [n for n in tucker if n not in relearned]
    if not have_weights and own:
        notes.append(f"no weights: the Tucker layers of {', '.join(own)} are the decomposition's structure at the "
                     "ranks given (decomposed from stand-in weights, which are not written); give {opt:weights} to "
                     "decompose yours")
    if relearned:
        notes.append(f"{', '.join(sorted(relearned))}: regenerated by a chosen rewrite, so decomposed as a structure "
                     "only: the Tucker layers are learned from fresh weights like the other regenerated layers")
    return relearned


TUCKER = "tucker"


def factored_layers(out: SlimOutput) -> set[str]:
    """The new layers that start from a decomposition of trained weights (a Tucker layer of a layer
    no lossy rewrite regenerated; a regenerated one's decomposition starts from fresh weights)."""
    regenerated = {n for c in out.result.changes if c.rule != TUCKER and not c.exact for n in c.regenerated}
    return {n for c in out.result.changes if c.rule == TUCKER and c.substructure not in regenerated
            for n in c.added} if out.weights is not None else set()


def _with_tucker(rules: list[Rule], ranks: dict[str, dict]) -> list[Rule]:
    """The rules with the decomposition of the layers ``ranks`` names last (a rule of its own scope:
    ``only`` names slim substructures, and does not restrict it)."""
    from deeprebirth.transforms.rules.tucker import TuckerRule  # noqa: PLC0415 (rules.tucker is not a default rule)
    for name, r in ranks.items():
        if not isinstance(r, dict) or not (set(r) == {"r"} or set(r) == {"R3", "R4"}) or \
                not all(isinstance(v, int) and v >= 1 for v in r.values()):
            raise RebirthError(f"the Tucker ranks of layer '{name}' must be {{\"R3\": n, \"R4\": n}} or {{\"r\": n}} "
                               f"with positive integers, not {r!r}")
    return list(rules) + [TuckerRule(layer_ranks=dict(ranks), only=set(ranks))]


def _needs_weights(rules: list[Rule], name: str) -> bool:
    return any(r.name == name and r.needs_weights for r in rules)


def _check_tucker(model: Model, result: runner.Result, ranks: dict[str, dict]) -> set[str]:
    """An error for a layer ``ranks`` names that the slim net does not have, or that was not
    decomposed; else the layers of ``ranks`` a lossy rewrite regenerated: their decomposition is a
    structure only, learned from fresh weights like every regenerated layer (the decomposition of
    the others starts from their trained weights)."""
    done = {c.substructure for c in result.changes if c.rule == TUCKER}
    refused = {s.substructure: s.reason for s in result.skips if s.rule == TUCKER}
    regenerated = {n for c in result.changes if c.rule != TUCKER and not c.exact for n in c.regenerated}
    for name in ranks:
        if name in done:
            continue
        if name in refused:
            raise RebirthError(f"{model.source}: layer '{name}' cannot be decomposed at the ranks given: "
                               f"{refused[name]}")
        raise RebirthError(f"{model.source}: the slim net has no Convolution or InnerProduct named '{name}' to "
                           "decompose")
    return regenerated & set(ranks)


def _check_finite(model: Model, slimmed: Model) -> None:
    """Refuse weights a rewrite made non-finite (a BatchNorm folded with a variance near zero or
    statistics out of float32 range); weights that were so in the caffemodel stay the user's."""
    before = model.weights or {}
    for name, arrays in (slimmed.weights or {}).items():
        if any(not np.isfinite(a).all() for a in arrays) and \
                all(np.isfinite(a).all() for a in before.get(name, [])):
            raise RebirthError(f"{model.weights_source or model.source}: slimming gives non-finite weights in "
                               f"layer '{name}' (the BatchNorm statistics or scales are out of float32 range: a "
                               "variance near zero or huge values); nothing written")


def _check_only(model: Model, rules: list[Rule], only: list[str]) -> None:
    """An error naming the first of ``only`` that no rule reports when slimming everything."""
    valid = substructures(model, rules)
    unknown = [n for n in only if n not in valid]
    if unknown:
        listing = ", ".join(valid) if valid else "none: nothing to slim"
        raise RebirthError(f"{model.source}: no substructure named '{unknown[0]}' "
                           f"(substructures: {listing})")


def _nothing_to_slim(model: Model, result: runner.Result, only) -> str:
    scope = f" among {', '.join(only)}" if only else ""
    msg = f"{model.source}: nothing to slim{scope}"
    if result.skips:
        s = result.skips[0]
        more = f" (and {len(result.skips) - 1} more)" if len(result.skips) > 1 else ""
        msg += f"; left alone: {s.substructure}: {s.reason}{more}"
    return msg + "; nothing written"


def _training_only_weights(train_val: "pb.NetParameter", deploy: "pb.NetParameter",
                           arrays: netio.Weights, notes: list[str]) -> netio.Weights:
    """Trained weights for the train net's layers that the deploy net lacks, where shapes agree."""
    deploy_names = {layer.name for layer in deploy.layer}
    extra = [layer.name for layer in train_val.layer if layer.name not in deploy_names and layer.name in arrays]
    if not extra:
        return {}
    shapes = dict(trainfiles.deploy_inputs(deploy))
    graph = Graph(filter_phase(train_val, pb.TRAIN), input_shapes={k: v for k, v in shapes.items() if v},
                  strict=False)
    out = {}
    for name in extra:
        node = graph.by_name.get(name)
        if node is None or not node.param_shapes:
            continue
        got = arrays[name]
        if [tuple(a.shape) for a in got] == [tuple(s) for s in node.param_shapes]:
            out[name] = got
        else:
            notes.append(f"'{name}': its trained weights do not fit the slim net's shapes; Caffe initialises "
                         "it from its fillers")
    return out


# ----------------------------------------------------------------------------------------------
# Writing


def render(out: SlimOutput, name_of: Callable[[str], str] = str) -> dict[str, bytes | str]:
    """File name -> contents, everything `write` puts in OUTDIR. The caller's parameters that
    report.json's notes name (``{opt:NAME}``) are spelled by ``name_of`` (the cli: its flags)."""
    src = out.model.source
    head = [f"Slimmed by rebirth {__version__} (DeepRebirth) from {src}", f"rules: {', '.join(out.rules)}"]
    if out.only:
        head.append(f"only: {', '.join(out.only)}")
    files: dict[str, bytes | str] = {
        "deploy.prototxt": trainfiles.render_net(out.deploy, head),
        "train_val.prototxt": trainfiles.render_net(out.train_val, head + [
            "Fine-tuning net: new (regenerated) layers learn at 10x (lr_mult 10/20), the others at 1/2.",
            *(["Fill train.txt and val.txt with 'image-path label' lines (paths relative to the directory",
               "Caffe runs in), or replace the data layers with your own."]
              if any(layer.type == "ImageData" for layer in out.train_val.layer) else []),
        ]),
        "solver.prototxt": trainfiles.render_solver(out.solver, [
            "DeepRebirth fine-tuning schedule (AAAI-18): SGD, batch 32, base_lr 0.001 (x10 on new layers),",
            "step 40000 x 0.1, momentum 0.9, ~90000 iterations. Paths are relative: run Caffe here, e.g.",
            "  caffe train -solver solver.prototxt" + (" -weights init.caffemodel" if out.weights else ""),
            "test_iter covers the 50000 ILSVRC-2012 validation images; adjust it to your val.txt.",
        ]),
    }
    if out.weights is not None:
        files["init.caffemodel"] = _weights_net(out).SerializeToString()
    files["report.json"] = errors.render(json.dumps(out.report(), indent=2), name_of) + "\n"
    return files


def _weights_net(out: SlimOutput) -> "pb.NetParameter":
    """What init.caffemodel holds: the slim deploy's layers, then the training-only layers that
    have weights, each with its blobs (Caffe copies them into a net by layer name)."""
    net = pb.NetParameter()
    net.CopyFrom(out.deploy)
    names = {layer.name for layer in net.layer}
    for layer in out.train_val.layer:
        if layer.name in out.weights and layer.name not in names:
            names.add(layer.name)
            net.layer.add().CopyFrom(layer)
    return netio.with_weights(net, out.weights)


def write(out: SlimOutput, outdir: str | os.PathLike, force: bool = False,
          name_of: Callable[[str], str] = str) -> list[Path]:
    """Write every file into ``outdir``, all or nothing (``outputs.write_dir``: never onto an input,
    never mixed with an earlier run's files; a directory rebirth did not make needs ``force``).
    ``name_of``: see ``render``."""
    return outputs.write_dir(outdir, render(out, name_of), out.inputs, force=force)


# ----------------------------------------------------------------------------------------------
# Summary
