"""`rebirth fold-bn`: fold BatchNorm / Scale / Bias into the tensor layers before them (exact)."""
from __future__ import annotations

import click

from deeprebirth import outputs
from deeprebirth.cli import FILE, echo, main, model_inputs, output_json, reports, show_warnings
from deeprebirth.runtime import verify
from deeprebirth.transforms import fold


@main.command("fold-bn")
@click.argument("model")
@click.argument("weights", type=FILE, required=False)
@click.option("--output", "-o", "outdir", required=True, type=str,
              help=f"Directory for {fold.OUTPUT_NET} and {fold.OUTPUT_WEIGHTS} (created if needed).")
@click.option("--verify", "do_verify", is_flag=True,
              help="Run the original and folded nets in pycaffe on the same random inputs and fail "
                   "(writing nothing) when an output differs by more than --tolerance.")
@click.option("--tolerance", type=click.FloatRange(min=0), default=1e-5, show_default=True,
              help=f"Largest relative output difference --verify accepts: {fold.RELATIVE}.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the --verify inputs.")
@click.option("--allow-missing", is_flag=True,
              help="Accept a caffemodel that lacks weights of some layers with parameters (or shares no "
                   "layer with the net); those layers get fresh weights and are listed.")
@click.option("--force", is_flag=True,
              help="Replace OUTDIR although it holds files rebirth did not write (all of them are removed).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a summary.")
def fold_bn_command(model, weights, outdir, do_verify, tolerance, seed, allow_missing, force, as_json):
    """Fold BatchNorm, Scale and Bias layers of MODEL into the Convolution, Deconvolution or
    InnerProduct before them (paper Lemma 2); a chain with no such layer before it becomes one Scale.
    The result computes the same function with fewer layers.

    MODEL is a deploy .prototxt, a built-in name or a model folder; WEIGHTS its .caffemodel (a
    built-in's shipped weights or the folder's when left out). Writes
    OUTDIR/deploy.prototxt and OUTDIR/weights.caffemodel.
    """
    outputs.check_dir_is_ours(outdir, force)   # before any work; written at the end
    model, weights, _, using = model_inputs(model, weights, need_weights="fold-bn")
    original = fold.load(model, weights, allow_missing=allow_missing)
    if using and not as_json:
        echo(f"rebirth: {using}", err=True)
    show_warnings(original.warnings)
    result = fold.fold_bn(original)
    show_warnings([w for w in result.warnings if w not in original.warnings])
    check = verify.compare(original, result.model, seed=seed) if do_verify else None
    if check is not None:
        if not as_json and not check.passed(tolerance):
            echo(check.format(tolerance))   # what failed, before the error line
        verify.require(check, tolerance)
    written = fold.write(result.model, outdir, inputs=[original.source, original.weights_source], force=force)
    if as_json:
        output_json(reports.fold_json(original, result, check, tolerance, written))
        return
    for line in reports.fold_summary(original, result):
        echo(line)
    if check is not None:
        echo(check.format(tolerance))
    echo(f"wrote {written[0]} and {written[1]}")
