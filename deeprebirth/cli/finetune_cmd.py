"""`rebirth finetune`: train a `rebirth slim` output in Caffe on a SOURCE (labels, or --distill)."""
from __future__ import annotations

import sys

import click

from deeprebirth import errors
from deeprebirth.caffe import folders
from deeprebirth.cli import DIR, FILE, INTERRUPTED, current_flags, echo, main, output_json, reports
from deeprebirth.cli.progress import progress_bar
from deeprebirth.learning import finetune as ft
from deeprebirth.learning import solver as sv
from deeprebirth.learning import sources as data


@main.command("finetune")
@click.argument("slim_dir", type=DIR)
@click.option("--train", "train", required=True, metavar="SOURCE",
              help="Training images: a folder, a list file, an LMDB, or fashion-mnist[:train|:test] (subset: [a:b]).")
@click.option("--val", "val", metavar="SOURCE", help="Validation images: top-1/top-5 (or teacher agreement "
                                                            "without labels) every --test-interval iterations; the "
                                                            "best weights on them are kept (the last when the lead "
                                                            "is within their noise). Default: a tenth of --train "
                                                            "(300 to 2,000 images, spread over it) is held out for "
                                                            "it; under 1,200 images, none.")
@click.option("--iters", type=click.IntRange(min=1), help="Train to this iteration (default: the solver's max_iter; "
                                                          "with --time: as many as it allows, at most this many).")
@click.option("--time", "time_budget", metavar="DURATION",
              help="How long the run may take (30m, 90s, 1h30m): it measures its first steps, fits its iterations "
                   "and annealed schedule to the time (again at a fifth and at half of them, at the pace kept) "
                   "and stops within it.")
@click.option("--batch", "-b", type=click.IntRange(min=1), help="Batch size (default: the train_val data layer's).")
@click.option("--base-lr", type=click.FloatRange(min=0, min_open=True), help="Override the solver's base_lr.")
@click.option("--stepsize", type=click.IntRange(min=1), help="Override the solver's stepsize (with --schedule solver).")
@click.option("--schedule", type=click.Choice(sv.SCHEDULES), default="anneal", show_default=True,
              help="anneal: the rate falls linearly to 0 at the last iteration, and from learned weights every "
                   "layer starts at the regenerated layers' rate (0.01 for the paper's solver); solver: "
                   "solver.prototxt's lr_policy and base_lr as written.")
@click.option("--test-interval", type=click.IntRange(min=0),
              help="Validate every N iterations (default: the solver's).")
@click.option("--val-limit", type=click.IntRange(min=1), help="Validate on the first N --val images only.")
@click.option("--snapshot", type=click.IntRange(min=0),
              help="Snapshot every N iterations into OUTDIR (default: the solver's; one is always taken at the end).")
@click.option("--resume", type=FILE, metavar="SNAPSHOT.solverstate",
              help="Continue from a snapshot (its iteration count and momentum).")
@click.option("--weights", "-w", type=FILE,
              help="Start from these weights (default: SLIM_DIR/init.caffemodel), e.g. a relearn output.")
@click.option("--distill", is_flag=True,
              help="Train against the teacher's logits (EuclideanLoss) instead of labels; the teacher is the "
                   "original model named in SLIM_DIR/report.json.")
@click.option("--teacher", metavar="MODEL",
              help="With --distill: learn from this model instead (a deploy prototxt, a built-in name, or a folder "
                   "holding deploy.prototxt and weights.caffemodel), e.g. the original model for a `tucker` output, "
                   "whose report names the Slim net it came from.")
@click.option("--teacher-weights", type=FILE, help="The --teacher's .caffemodel.")
@click.option("--with-labels", is_flag=True,
              help="With --distill: keep the train_val's label loss too (the two losses are summed).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the image order and augmentation.")
@click.option("--output", "-o", "outdir", type=DIR,
              help="Where weights.caffemodel, deploy.prototxt, finetune.json and snapshots go "
                   "(default: SLIM_DIR/finetune).")
@click.option("--force", is_flag=True,
              help="Write into OUTDIR although it holds files rebirth did not write (they are kept; same-named "
                   "files are replaced).")
@click.option("--json", "as_json", is_flag=True, help="Print finetune.json's content instead of a summary.")
def finetune_command(slim_dir, train, val, iters, time_budget, batch, base_lr, stepsize, test_interval, val_limit,
                     snapshot, resume, weights, distill, seed, outdir, force, as_json, schedule, with_labels,
                     teacher, teacher_weights):
    """Fine-tune SLIM_DIR (a `rebirth slim` output) in Caffe with its solver.prototxt and
    train_val.prototxt, feeding the train_val's data layer from SOURCE with its transform_param.
    Writes OUTDIR/weights.caffemodel, OUTDIR/deploy.prototxt and OUTDIR/finetune.json. Ctrl-C (SIGINT)
    or SIGTERM stops after the current iteration and writes them, with a snapshot to resume from
    (exit code 130)."""
    if resume and weights:
        raise click.UsageError("--resume and --weights exclude each other (a snapshot holds its own weights)")
    if teacher_weights and not teacher:
        raise click.UsageError("--teacher-weights needs --teacher")
    sd = folders.read_slim_dir(slim_dir)
    train_source = data.open_source(train)
    val_source = data.open_source(val) if val else None
    opt = ft.Options(iters=iters, batch=batch, base_lr=base_lr, stepsize=stepsize, schedule=schedule,
                     test_interval=test_interval, val_limit=val_limit, snapshot=snapshot, resume=resume,
                     weights=weights, distill=distill, with_labels=with_labels, teacher=teacher,
                     teacher_weights=teacher_weights, seed=seed, force=force,
                     time_budget=sv.parse_duration(time_budget) if time_budget is not None else None)
    total = None if time_budget is not None else (iters or int(sd.solver.max_iter) or None)
    if total and resume:   # the bar counts the iterations this run trains
        total = max(1, total - sv.snapshot_iteration(resume))
    log = _log if sys.stderr.isatty() and not as_json else None
    name_of = current_flags()
    if time_budget is not None:
        reports.stderr_line(f"rebirth: finetune: at most {sv.format_duration(opt.time_budget)} ({{opt:time}}): the "
                            "iterations are fitted to it once the first steps are measured")
    with progress_bar(total, "finetune", "it", quiet=0.0, eta=True,
                      render=lambda text: errors.render(text, name_of)) as bar:
        result = ft.finetune(sd, train_source, val_source, outdir, opt, progress=bar, log=log,
                             stop=ft.StopOnSignals(), name_of=current_flags())
    stopped = result.get("interrupted")
    if as_json:
        output_json(result)
    elif stopped:
        echo(reports.resume_line(result, stopped["target"]))
    else:
        echo(reports.finetune_text(result))
    if stopped:
        click.echo(f"rebirth: error: interrupted: stopped by {stopped['signal']} at iteration {stopped['iteration']} "
                   f"of {stopped['target']}; weights.caffemodel, finetune.json and a snapshot written", err=True)
        sys.exit(INTERRUPTED)


def _log(item) -> None:
    """A line above the progress bar: a note (text) or a validation record (a history entry)."""
    line = errors.render(item, current_flags()) if isinstance(item, str) else reports.finetune_entry_line(item)
    reports.stderr_line(line)
