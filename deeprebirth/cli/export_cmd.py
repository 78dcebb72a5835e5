"""`rebirth export`: a Caffe net as ONNX, ncnn or MNN files, optionally verified against Caffe."""
from __future__ import annotations

import click

from deeprebirth import outputs
from deeprebirth.cli import echo, main, reports
from deeprebirth.runtime import export, verify


@main.command("export")
@click.argument("model")
@click.option("--weights", "-w", type=str, default=None,
              help="The model's .caffemodel (default for a folder MODEL: its weights.caffemodel, else "
                   "init.caffemodel; otherwise random weights, for timing only).")
@click.option("--to", "fmt", required=True, type=click.Choice(sorted(export.FORMATS), case_sensitive=False),
              help="onnx: OUTDIR/model.onnx; ncnn: OUTDIR/model.param + model.bin; mnn: OUTDIR/model.mnn.")
@click.option("--output", "-o", "outdir", required=True, type=str, help="Directory for the exported files.")
@click.option("--verify", "do_verify", is_flag=True,
              help="Run the exported model in its engine (ONNX Runtime, ncnn, MNN) and the Caffe net in pycaffe "
                   "on the same random inputs; fail (writing nothing) above --tolerance on any output or "
                   "intermediate blob the engine shows.")
@click.option("--tolerance", type=click.FloatRange(min=0), default=1e-4, show_default=True,
              help="Largest relative difference (max |a-b| / max |a| per blob) --verify accepts.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the --verify inputs (and random weights).")
@click.option("--force", is_flag=True, help="Replace OUTDIR when it holds other files.")
def export_command(model, weights, fmt, outdir, do_verify, tolerance, seed, force):
    """Export MODEL (a deploy .prototxt, a built-in name, or a slim/tucker/relearn/finetune output
    folder) for another engine, at batch 1, all files or none."""
    fmt = fmt.lower()
    outputs.check_writable_dir(outdir)   # a bad OUTDIR fails before any work
    outputs.check_dir_is_ours(outdir, force)   # and so does one holding the user's files
    m = export.load(model, weights, seed=seed)
    files = export.export_isolated(m, fmt, batch=1)
    if "random_weights" in m.extras:
        reports.stderr_line(reports.export_random_weights_note(m))
    check = None
    if do_verify:
        check = verify.compare_export(m, fmt, files, seed=seed)
        echo(check.format(tolerance))
        verify.require(check, tolerance)
    written = outputs.write_dir(outdir, files, inputs=[m.source, m.weights_source], force=force)
    echo(reports.export_summary(m, fmt, written))
