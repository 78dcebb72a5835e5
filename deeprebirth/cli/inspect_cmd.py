"""`rebirth inspect`: layers, shapes, costs, memory and slimming candidates of a net."""
from __future__ import annotations

import click

from .. import report
from ..model import load_model
from . import main, output_json


@main.command("inspect")
@click.argument("model")
@click.option("--weights", "-w", type=click.Path(dir_okay=False), help="A .caffemodel to check against the net.")
@click.option("--batch", "-b", type=click.IntRange(min=1), default=None, help="Batch size (default: the net's own).")
@click.option("--allow-missing", is_flag=True,
              help="Accept a caffemodel that lacks weights of some layers with parameters (or shares no "
                   "layer with the net); those layers get fresh weights and are listed.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def inspect_command(model, weights, batch, allow_missing, as_json):
    """Show every layer of MODEL with its kind, output shape, parameters, MACs and output size."""
    m = load_model(model, weights, batch=batch, allow_missing=allow_missing)
    info = report.inspect(m, batch=batch)
    if as_json:
        output_json(info)
    else:
        click.echo(report.format_inspect(info))
