"""`rebirth slim`: slim a model and write the slim deploy net, its fine-tuning files and a report."""
from __future__ import annotations

import click

from deeprebirth import outputs
from deeprebirth.caffe import netio
from deeprebirth.cli import FILE, current_flags, echo, main, model_inputs, output_json, reports, show_warnings
from deeprebirth.errors import RebirthError
from deeprebirth.graph.model import load_model, resolve
from deeprebirth.runtime import verify
from deeprebirth.transforms import slim as slim_api
from deeprebirth.transforms import tucker as tucker_api
from deeprebirth.transforms.planner import read_plan, tucker_layers
from deeprebirth.transforms.rules.tucker import parse_ranks


def _names(value: str | None) -> list[str] | None:
    return None if value is None else [v for v in value.split(",")]


@main.command("slim")
@click.argument("model")
@click.option("--weights", "-w", type=FILE,
              help="Trained .caffemodel: OUTDIR/init.caffemodel gets its weights for every unchanged layer.")
@click.option("--train-val", "train_val", type=FILE,
              help="The model's train_val.prototxt: its data and loss layers frame the slim body "
                   "(default: ImageData layers reading train.txt/val.txt, and a softmax loss).")
@click.option("--only", metavar="NAMES",
              help="Slim only these substructures, comma-separated (e.g. conv1,conv2,inception_3a).")
@click.option("--plan", "plan_file", type=FILE,
              help="Apply a plan written by `rebirth plan -o`: every lossless rewrite, and the lossy ones it chose.")
@click.option("--rules", "rule_names", metavar="LIST",
              help="Run only these rules, comma-separated (default: the rules that declare default; "
                   "`inspect --json` lists them).")
@click.option("--keep-pooling", is_flag=True,
              help="Absorb no pooling into a convolution's stride: streamline slimming only prunes LRN/Dropout "
                   "and pool_into_conv does not run (the paper's AlexNet experiment, Table 7).")
@click.option("--data-layer", type=click.Choice(["image", "dummy"]), default="image", show_default=True,
              help="Data layers of a generated train_val: ImageData list files, or synthetic DummyData.")
@click.option("--tucker", is_flag=True,
              help="Then decompose the slim net's tensor layers (Slim-Tucker; needs --weights); see `rebirth tucker`.")
@click.option("--ranks", default="vbmf", show_default=True, metavar="vbmf|R|R3,R4", help="With --tucker: the ranks.")
@click.option("--ratio", type=float, default=None, metavar="F",
              help="With --tucker: keep this fraction of each layer's weights instead of VBMF ranks.")
@click.option("--output", "-o", "outdir", required=True, type=click.Path(),
              help="Directory for deploy.prototxt, train_val.prototxt, solver.prototxt, init.caffemodel, "
                   "report.json.")
@click.option("--allow-missing", is_flag=True,
              help="Accept a caffemodel that lacks weights of some layers with parameters (or shares no "
                   "layer with the net); those layers get fresh weights and are listed.")
@click.option("--force", is_flag=True,
              help="Replace OUTDIR although it holds files rebirth did not write (all of them are removed).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a summary.")
def slim_command(model, weights, train_val, only, plan_file, rule_names, keep_pooling, data_layer, tucker, ranks, ratio,
                 outdir, allow_missing, force, as_json):
    """Slim MODEL: merge non-tensor layers into tensor layers (DeepRebirth streamline and branch
    slimming, and the exact folds), bottom to top. A built-in MODEL with weights shipped in models/
    (fmnist_googlenet) uses them and its shipped train_val unless -w / --train-val are given.

    Rewritten layers that change the output are regenerated: Xavier-initialised in init.caffemodel
    and given a 10x learning rate in train_val.prototxt, to be fine-tuned with solver.prototxt.
    """
    outputs.check_dir_is_ours(outdir, force)   # before any work; written at the end
    model, weights, train_val, using = model_inputs(model, weights, train_val)  # a built-in's or folder's files
    m = load_model(model, weights, allow_missing=allow_missing)
    if using and not as_json:
        echo(f"rebirth: {using}", err=True)
    show_warnings(m.warnings)
    given = netio.read_net(train_val) if train_val else None
    if tucker:
        if plan_file is not None:
            raise RebirthError("--plan and --tucker: slim with the plan first, then run `rebirth tucker` on its output")
        if only is not None:
            raise RebirthError("--tucker decomposes the whole slim net: slim with --only first, then run "
                               "`rebirth tucker` on its output")
        fixed = parse_ranks(None if ratio is not None and ranks == "vbmf" else ranks)
        out = tucker_api.slim_tucker(m, _names(rule_names), keep_pooling, fixed, ratio, measure=verify.output_errors,
                                     train_val=given,
                                     train_val_source=train_val, data_layer=data_layer,
                                     inputs=[str(resolve(model)), weights, train_val])
        summarize = reports.tucker_summary
    else:
        if ranks != "vbmf" or ratio is not None:
            raise RebirthError("--ranks and --ratio apply with --tucker")
        plan = _plan(plan_file, m, only, rule_names, keep_pooling)
        out = slim_api.slim(m, plan.get("rules") if plan else _names(rule_names),
                            only=plan["only"] if plan else _names(only),
                            keep_pooling=keep_pooling, train_val=given, train_val_source=train_val,
                            data_layer=data_layer, exact_always=plan is not None,
                            plan=None if plan is None else {"file": plan_file, "only": plan["only"],
                                                            "tucker": tucker_layers(plan),
                                                            "predicted_speedup": plan.get("predicted_speedup"),
                                                            "target": plan.get("target")},
                            tucker=tucker_layers(plan) if plan else None,
                            inputs=[str(resolve(model)), weights, train_val, plan_file])
        summarize = reports.slim_summary
    show_warnings([w for w in out.result.warnings if w not in m.warnings])
    written = slim_api.write(out, outdir, force=force, name_of=current_flags())
    if as_json:
        output_json(out.report())
    else:
        echo(summarize(out, written))


def _plan(plan_file, m, only, rule_names, keep_pooling) -> dict | None:
    """The plan file's content, checked against the other options and the model (None without one)."""
    if plan_file is None:
        return None
    if only is not None or rule_names is not None or keep_pooling:
        raise RebirthError("--plan chooses the rewrites itself: leave out --only, --rules and --keep-pooling")
    plan = read_plan(plan_file)
    if plan.get("weights") and m.weights is None:
        raise RebirthError(f"{plan_file}: was planned with weights ({plan['weights']}): give them with --weights")
    return plan
