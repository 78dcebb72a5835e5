"""`rebirth eval`: top-1/top-5 of a model on a SOURCE, and its agreement with a teacher."""
from __future__ import annotations

import click

from deeprebirth import errors
from deeprebirth.cli import FILE, echo, main, output_json, reports
from deeprebirth.cli.progress import progress_bar
from deeprebirth.learning import evaluate as ev
from deeprebirth.learning import sources as data
from deeprebirth.runtime import isolate


@main.command("eval")
@click.argument("model")
@click.option("--weights", "-w", type=FILE,
              help="The model's .caffemodel (default for a directory MODEL: its weights.caffemodel, else "
                   "init.caffemodel; for a built-in name: the weights shipped with it, if any).")
@click.option("--data", "source_spec", required=True, metavar="SOURCE",
              help="Images: a folder, a list file ('path [label]'), an LMDB, or fashion-mnist[:train|:test]; "
                   "a [start:stop] suffix takes a subset.")
@click.option("--teacher", metavar="MODEL",
              help="A reference model: report top-1 agreement, mean KL(teacher || model) and the relative output "
                   "error ||model - teacher|| / ||teacher|| (pooled over the images).")
@click.option("--teacher-weights", type=FILE, help="The teacher's .caffemodel.")
@click.option("--train-val", "train_val", type=FILE,
              help="Take preprocessing from this train_val's TEST data layer (transform_param); default for a "
                   "slim/finetune/relearn directory MODEL: its slim net's train_val.prototxt; for a built-in name: "
                   "the train_val shipped with it, if any).")
@click.option("--mean", metavar="VALUES|FILE", help="Mean to subtract: 'b,g,r', one value, a .binaryproto, or 'none'.")
@click.option("--scale", type=float, help="Multiply pixels by this after the mean (Caffe's transform_param.scale).")
@click.option("--batch", "-b", type=click.IntRange(min=1), default=50, show_default=True,
              help="Images per forward pass.")
@click.option("--limit", type=click.IntRange(min=1), help="Evaluate only the first N images.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def eval_command(model, weights, source_spec, teacher, teacher_weights, train_val, mean, scale, batch, limit,
                 as_json):
    """Evaluate MODEL (a deploy prototxt, built-in name, or a slim/finetune output directory) in
    pycaffe on SOURCE: top-1 and top-5 when the images have labels; with --teacher, top-1
    agreement with the teacher, mean KL(teacher || model) and the relative output error (labels
    not needed), and a warning when the teacher gives every image the same class."""
    if teacher_weights and not teacher:
        raise click.UsageError("--teacher-weights needs --teacher")
    source = data.open_source(source_spec, limit=limit)   # read here too: its errors and its size
    with progress_bar(len(source), "eval", "img") as bar:
        result = isolate.call(ev.evaluate_command, model, weights, source_spec, teacher, teacher_weights, train_val,
                              mean, scale, batch, limit, what="the evaluation", progress=bar)
    for message in result.get("warnings", []):   # found in the child, issued here where the user sees them
        errors.warn(message)
    if as_json:
        output_json(result)
    else:
        echo(reports.eval_text(result))
