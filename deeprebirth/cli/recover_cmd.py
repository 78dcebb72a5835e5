"""`rebirth recover`: label-free recovery of a slim net (relearn, then distil against the teacher)."""
from __future__ import annotations

import click

from deeprebirth.caffe import folders
from deeprebirth.cli import DIR, current_flags, echo, main, output_json, reports
from deeprebirth.cli.progress import progress_bar
from deeprebirth.learning import finetune as ft
from deeprebirth.learning import recover as rc
from deeprebirth.learning import relearn as rl
from deeprebirth.learning import undo
from deeprebirth.runtime import isolate
from deeprebirth.transforms import relearn_plan


@main.command("recover")
@click.argument("slim_dir", type=click.Path(file_okay=False))
@click.option("--images", required=True, metavar="SOURCE",
              help="Images, no labels needed (a folder, a list file, an LMDB, fashion-mnist[:train|:test]).")
@click.option("--val", metavar="SOURCE", help="Held-out images: agreement with the teacher and KL; the best "
                                              "weights on them are kept (the last when the lead is within "
                                              "their noise). Default: a tenth of --images (300 to 2,000 "
                                              "images, spread over it) is held out of both steps for it; "
                                              "under 1,200 images, none.")
@click.option("--iters", type=click.IntRange(min=1), default=rc.DISTILL_ITERS, show_default=True,
              help="Distillation iterations after re-learning.")
@click.option("--relearn-iters", type=click.IntRange(min=0), default=rl.Options.iters, show_default=True,
              help="SGD iterations per re-learned unit.")
@click.option("--count", type=click.IntRange(min=1), default=rl.Options.train_images, show_default=True,
              help="Images per re-learned unit.")
@click.option("--batch", "-b", type=click.IntRange(min=1), help="Distillation batch (default: the train_val's).")
@click.option("--base-lr", type=click.FloatRange(min=0, min_open=True),
              help="Distillation base_lr (default: the solver's).")
@click.option("--val-limit", type=click.IntRange(min=1), help="Validate on the first N --val images only.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--output", "-o", "outdir", type=DIR,
              help="Where the recovered weights go (default: SLIM_DIR/recovered).")
@click.option("--json", "as_json", is_flag=True, help="Print recover.json's content instead of a summary.")
def recover_command(slim_dir, images, val, iters, relearn_iters, count, batch, base_lr, val_limit, seed, outdir,
                    as_json):
    """Take SLIM_DIR (a `rebirth slim` output) from its init weights to recovered weights from images
    alone: re-learn every regenerated unit against the teacher, then distil the whole net against
    the teacher's logits. No label is read. Writes OUTDIR/weights.caffemodel, deploy.prototxt,
    finetune.json, recover.json and OUTDIR/relearn/."""
    plan = folders.relearn_plan(slim_dir)
    relearn_opt = rl.Options(train_images=count, iters=relearn_iters, seed=seed)
    distill_opt = ft.Options(iters=iters, batch=batch, base_lr=base_lr, val_limit=val_limit, seed=seed)
    total = len(relearn_plan.selected_units(plan["units"], None)) * relearn_iters + iters
    # a child killed by Ctrl-C cannot clean up after itself: what it made goes here
    with undo.removed_if_interrupted(rc.output_dir(slim_dir, outdir), rc.OUTPUT_NAMES), \
            progress_bar(total, "recover", "it") as bar:
        doc = isolate.call(rc.recover, slim_dir, images, val, outdir, what="recover", progress=bar,
                           relearn_options=relearn_opt, options=distill_opt, flags=_flags())
    if as_json:
        output_json(doc)
    else:
        echo("\n".join(reports.relearn_summary(doc["relearn"])))
        echo(reports.finetune_text(doc["finetune"]))


def _flags() -> dict[str, str]:
    """This command's parameters as it spells them (what recover.json's notes name)."""
    name_of = current_flags()
    return {param.name: name_of(param.name) for param in click.get_current_context().command.params}
