"""`rebirth inspect`: layers, shapes, costs, memory and slimming candidates of a net."""
from __future__ import annotations

import click

from deeprebirth.caffe import folders
from deeprebirth.cli import FILE, echo, main, output_json, reports, show_warnings
from deeprebirth.graph.model import load_model
from deeprebirth.transforms import candidates


@main.command("inspect")
@click.argument("model")
@click.option("--weights", "-w", type=FILE, help="A .caffemodel to check against the net.")
@click.option("--batch", "-b", type=click.IntRange(min=1), default=None, help="Batch size (default: the net's own).")
@click.option("--rules", "rule_names", metavar="LIST",
              help="List the candidates of these rules, comma-separated (default: those `slim` runs).")
@click.option("--keep-pooling", is_flag=True, help="The candidates of `slim --keep-pooling`.")
@click.option("--allow-missing", is_flag=True,
              help="Accept a caffemodel that lacks weights of some layers with parameters (or shares no "
                   "layer with the net); those layers get fresh weights and are listed.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def inspect_command(model, weights, batch, rule_names, keep_pooling, allow_missing, as_json):
    """Show every layer of MODEL (a .prototxt, a built-in name, or a rebirth output folder) with its
    kind, output shape, parameters, MACs and output size, and the slimming candidates: every match
    the rules report while slimming (what `slim --only` accepts), each with its rule and, when a
    guard leaves it alone, why."""
    deploy, _ = folders.model_files(model)   # an output folder stands for its deploy.prototxt
    m = load_model(deploy, weights, batch=batch, allow_missing=allow_missing)
    show_warnings(m.warnings)
    names = None if rule_names is None else rule_names.split(",")
    info = candidates.inspect(m, batch=batch, rules=names, keep_pooling=keep_pooling)
    if as_json:
        output_json(info)
    else:
        echo(reports.inspect_text(info))
