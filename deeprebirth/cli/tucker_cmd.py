"""`rebirth tucker`: Tucker-2 / SVD decomposition of a model's tensor layers, written like `slim`."""
from __future__ import annotations

import click

from deeprebirth import outputs
from deeprebirth.caffe import netio
from deeprebirth.cli import FILE, current_flags, echo, main, model_inputs, output_json, reports, show_warnings
from deeprebirth.cli.progress import progress_bar
from deeprebirth.errors import RebirthError
from deeprebirth.graph.model import load_model, resolve
from deeprebirth.runtime import verify
from deeprebirth.transforms import rank_budget
from deeprebirth.transforms import slim as slim_api
from deeprebirth.transforms import tucker as tucker_api
from deeprebirth.transforms.rules.tucker import parse_ranks


@main.command("tucker")
@click.argument("model")
@click.argument("weights", type=FILE, required=False)
@click.option("--ranks", default="vbmf", show_default=True, metavar="vbmf|R|R3,R4",
              help="Ranks: empirical VBMF per layer, or fixed (R3 input-side, R4 output-side; one value R for "
                   "the SVD of 1x1 convolutions and InnerProducts).")
@click.option("--ratio", type=float, default=None, metavar="F",
              help="Instead of --ranks: keep at most this fraction of each layer's weights (the paper: 0.5).")
@click.option("--macs", type=float, default=None, metavar="F",
              help="Instead of --ranks or --ratio: the layers together keep at most this fraction of their "
                   "multiply-accumulates, each layer's ranks chosen by weight error per MAC saved (narrow layers "
                   "are spared).")
@click.option("--time", "time_budget", type=float, default=None, metavar="F",
              help="Instead of --ranks, --ratio or --macs: the layers together keep at most this fraction of their "
                   "predicted time (MACs plus --layer-cost a layer), ranks chosen by weight error per time saved; "
                   "a layer is decomposed only where that is predicted faster.")
@click.option("--layer-cost", type=click.IntRange(min=0), default=rank_budget.LAYER_COST, show_default=True,
              metavar="MACS", help="With --time: one layer's fixed cost, in MACs (measured in Caffe on a CPU: "
                                   "20,000-50,000; see docs/tucker.md, \"What MACs miss on a small net\").")
@click.option("--rank-floor", type=float, default=None, metavar="F",
              help=f"With --macs or --time: no kept rank below max({rank_budget.MIN_RANK}, F n) of a mode of n "
                   f"channels, so no layer is cut to a rank too small to relearn (0: no floor)  "
                   f"[default: {rank_budget.RANK_FLOOR:g}]")
@click.option("--only", metavar="NAMES", help="Decompose only these layers, comma-separated.")
@click.option("--train-val", "train_val", type=FILE,
              help="The model's train_val.prototxt, to frame the new body (as for `slim`).")
@click.option("--data-layer", type=click.Choice(["image", "dummy"]), default="image", show_default=True,
              help="Data layers of a generated train_val: ImageData list files, or synthetic DummyData.")
@click.option("--output", "-o", "outdir", required=True, type=click.Path(),
              help="Directory for deploy.prototxt, train_val.prototxt, solver.prototxt, init.caffemodel, "
                   "report.json.")
@click.option("--allow-missing", is_flag=True,
              help="Accept a caffemodel that lacks weights of some layers with parameters; those layers get "
                   "fresh weights and are listed.")
@click.option("--force", is_flag=True,
              help="Replace OUTDIR although it holds files rebirth did not write (all of them are removed).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a summary.")
def tucker_command(model, weights, ranks, ratio, macs, time_budget, layer_cost, rank_floor, only, train_val, data_layer,
                   outdir, allow_missing, force, as_json):
    """Decompose MODEL's convolutions (Tucker-2: 1x1, KxK core, 1x1) and 1x1 convolutions /
    InnerProducts (truncated SVD) from WEIGHTS (Kim et al. 2015; the paper's GoogLeNet-Tucker, and
    Slim-Tucker when MODEL is a slim net).

    MODEL is a deploy .prototxt, a built-in name or a model folder (WEIGHTS then defaults to its
    weights). The new layers start from the decomposition (init.caffemodel) and learn at 10x in
    train_val.prototxt; report.json gives ranks, errors, params and MACs per layer.
    """
    outputs.check_dir_is_ours(outdir, force)   # before any work; written at the end
    source_of = click.get_current_context().get_parameter_source("layer_cost")
    if time_budget is None and source_of is not None and source_of.name != "DEFAULT":
        raise RebirthError("--layer-cost counts only with --time F (a budget of predicted time); give both")
    budgets = (ratio, macs, time_budget)
    fixed = parse_ranks(None if any(b is not None for b in budgets) and ranks == "vbmf" else ranks)
    model, weights, train_val, using = model_inputs(model, weights, train_val, need_weights="tucker")
    m = load_model(model, weights, allow_missing=allow_missing)
    if using and not as_json:
        echo(f"rebirth: {using}", err=True)
    show_warnings(m.warnings)
    given = netio.read_net(train_val) if train_val else None
    names = None if only is None else only.split(",")
    kwargs = dict(train_val=given, train_val_source=train_val, data_layer=data_layer,
                  inputs=[str(resolve(model)), weights, train_val])
    with progress_bar(len(tucker_api.candidates(m, names)), "decomposing", "layer") as bar:
        out = tucker_api.tucker(m, fixed, ratio, only=names, progress=bar, measure=verify.output_errors,
                               macs=macs, time=time_budget, layer_cost=layer_cost, rank_floor=rank_floor,
                               **kwargs)
    show_warnings([w for w in out.result.warnings if w not in m.warnings])
    written = slim_api.write(out, outdir, force=force, name_of=current_flags())
    if as_json:
        output_json(out.report())
    else:
        echo(reports.tucker_summary(out, written))
