"""`rebirth relearn`: re-learn a slim net's regenerated layers against the teacher's feature maps."""
from __future__ import annotations

import click

from deeprebirth.caffe import folders
from deeprebirth.cli import DIR, FILE, echo, main, output_json, reports
from deeprebirth.cli.progress import progress_bar
from deeprebirth.errors import RebirthError
from deeprebirth.learning import relearn as rl
from deeprebirth.learning import undo
from deeprebirth.runtime import isolate
from deeprebirth.transforms import relearn_plan


@main.command("relearn")
@click.argument("slim_dir", type=DIR)
@click.option("--images", "source", required=True, metavar="SOURCE",
              help="Images (no labels needed): a folder, a Caffe list file, an LMDB, or fashion-mnist[:train|:test].")
@click.option("--output", "-o", "outdir", type=DIR,
              help="Where weights.caffemodel and relearn.json go (default: SLIM_DIR).")
@click.option("--weights", "-w", type=FILE,
              help="Start from these weights (default: SLIM_DIR/init.caffemodel).")
@click.option("--teacher", type=FILE, help="The original deploy net (default: from report.json).")
@click.option("--teacher-weights", type=FILE,
              help="The original weights (default: from report.json).")
@click.option("--train-val", type=FILE,
              help="Take the preprocessing from this train_val's data layer (default: SLIM_DIR/train_val.prototxt; "
                   "ImageNet defaults when it has none).")
@click.option("--count", type=click.IntRange(min=1), default=rl.Options.train_images, show_default=True,
              help="Training images per unit.")
@click.option("--heldout", type=click.IntRange(min=1), default=rl.Options.heldout_images, show_default=True,
              help="Held-out images on which the reconstruction error is reported.")
@click.option("--iters", type=click.IntRange(min=0), default=rl.Options.iters, show_default=True,
              help="SGD iterations per unit (0: least squares only).")
@click.option("--batch", type=click.IntRange(min=1), default=rl.Options.batch, show_default=True,
              help="Images per SGD step (at most --count).")
@click.option("--lr", "base_lr", type=click.FloatRange(min=0, min_open=True), default=rl.Options.base_lr,
              show_default=True, help="SGD learning rate (the loss is half the relative error).")
@click.option("--input", "input_from", type=click.Choice(["student", "teacher"]), default="student", show_default=True,
              help="Feed each unit the slim net's own blob (re-learned below) or the teacher's.")
@click.option("--no-least-squares", is_flag=True, help="Skip the teacher and least-squares initialisation.")
@click.option("--no-teacher-init", is_flag=True,
              help="Do not start new layers from the teacher's (or its largest) filters; least squares alone.")
@click.option("--max-weight-scale", type=click.FloatRange(min=0), default=rl.Options.max_weight_scale,
              show_default=True, help="Raise the least-squares ridge until no weight exceeds this many times the "
                                      "layer's largest starting weight (0: no limit). Huge weights fit the sampled "
                                      "rows of an ill-conditioned input and make fine-tuning diverge.")
@click.option("--only", metavar="UNITS", help="Re-learn only these units, comma-separated (names from report.json).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the choice of training and held-out images, and of the SGD order.")
@click.option("--force", is_flag=True,
              help="Write into OUTDIR although it holds files rebirth did not write (they are kept; same-named "
                   "files are replaced).")
@click.option("--json", "as_json", is_flag=True, help="Print relearn.json's content instead of a summary.")
def relearn_command(slim_dir, source, outdir, weights, teacher, teacher_weights, train_val, count, heldout, iters,
                    batch, base_lr, input_from, no_least_squares, no_teacher_init, max_weight_scale, only, seed, force,
                    as_json):
    """Re-learn the regenerated layers of SLIM_DIR (a `rebirth slim` output) bottom to top, each unit
    against the teacher's feature map at its output (the paper's Eq. 5): teacher/least-squares
    initialisation, then SGD in Caffe. No labels are used. Writes OUTDIR/weights.caffemodel and
    OUTDIR/relearn.json."""
    if batch > count:
        source_of = click.get_current_context().get_parameter_source("batch")
        if source_of is not None and source_of.name != "DEFAULT":
            raise RebirthError(f"--batch {batch} is more than --count {count} training images: give --batch {count} "
                               "or less")
        batch = count   # the default batch does not fit: one batch of all the images
    opt = rl.Options(train_images=count, heldout_images=heldout, iters=iters, batch=batch, base_lr=base_lr,
                     input=input_from, least_squares=not no_least_squares, seed=seed,
                     teacher_init=not no_teacher_init, max_weight_scale=max_weight_scale or None,
                     only=[n.strip() for n in only.split(",") if n.strip()] if only else None)
    plan = folders.relearn_plan(slim_dir)    # read here too: its errors, and the length of the progress bar
    total = len(relearn_plan.selected_units(plan["units"], opt.only)) * (opt.iters + 1)   # + one per unit's end
    # a child killed by Ctrl-C cannot clean up after itself: what it made goes here
    with undo.removed_if_interrupted(rl.output_dir(slim_dir, outdir), rl.OUTPUT_FILES), \
            progress_bar(total, "relearn", "step") as bar:
        doc = isolate.call(rl.relearn_command, slim_dir, source, outdir, weights, teacher, teacher_weights,
                           train_val, opt, what="relearn", progress=bar, force=force)
    if as_json:
        output_json(doc)
    else:
        echo("\n".join(reports.relearn_summary(doc)))
