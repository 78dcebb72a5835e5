"""`rebirth recover`: label-free recovery of a slim net (relearn, then distil against the teacher)."""
from __future__ import annotations

import os

import click

from deeprebirth import errors
from deeprebirth.caffe import folders
from deeprebirth.cli import DIR, current_flags, echo, main, output_json, reports
from deeprebirth.cli.progress import progress_bar
from deeprebirth.learning import finetune as ft
from deeprebirth.learning import recover as rc
from deeprebirth.learning import relearn as rl
from deeprebirth.learning import solver as sv
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
@click.option("--time", "time_budget", metavar="DURATION",
              help=f"How long the whole run may take (30m, 90s, 1h30m), re-learning included: the distillation "
                   f"measures its first steps and fits its iterations and annealed schedule to the time left (again on "
                   f"the way, at the pace kept). "
                   f"Default: {rc.DEFAULT_TIME_BUDGET / 60:.0f}m when --iters is not given either.")
@click.option("--iters", type=click.IntRange(min=1),
              help="Distillation iterations after re-learning (with --time: at most this many). Default: as many "
                   "as --time allows.")
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
def recover_command(slim_dir, images, val, time_budget, iters, relearn_iters, count, batch, base_lr, val_limit, seed,
                    outdir, as_json):
    """Take SLIM_DIR (a `rebirth slim` output) from its init weights to recovered weights from images
    alone: re-learn every regenerated unit against the teacher, then distil the whole net against
    the teacher's logits. No label is read. Writes OUTDIR/weights.caffemodel, deploy.prototxt,
    finetune.json, recover.json and OUTDIR/relearn/.

    Ctrl-C (or SIGTERM) during the distillation ends it after the current iteration with its work
    written (a snapshot, the best weights so far, recover.json); the same command again goes on
    from the snapshot. During re-learning it leaves nothing."""
    seconds = sv.parse_duration(time_budget) if time_budget is not None else None
    plan = folders.relearn_plan(slim_dir)
    relearn_opt = rl.Options(train_images=count, iters=relearn_iters, seed=seed)
    distill_opt = ft.Options(iters=iters, batch=batch, base_lr=base_lr, val_limit=val_limit, seed=seed)
    units = len(relearn_plan.selected_units(plan["units"], None))
    budget = rc.budget_of(iters, seconds)
    # with a budget the distillation's iterations are known once it has measured itself (a Planned)
    name_of = current_flags()
    out = rc.output_dir(slim_dir, outdir)
    stopped_before = rc.interrupted_run(out)
    if stopped_before is not None:       # relearn is done: only the distillation runs
        units = 0
    total = units * relearn_iters + (iters if budget is None else 0) or None

    def say_plan():                      # once the inputs are checked: after an error about them, nothing
        if stopped_before is not None:
            reports.stderr_line(go_on_line(stopped_before, out))
        reports.stderr_line(plan_line(units, relearn_iters, iters, budget, time_budget is None))
    with progress_bar(total, "recover", "it", quiet=0.0, eta=True, deadline=budget,
                      render=lambda text: errors.render(text, name_of)) as bar:
        doc = rc.recover(slim_dir, images, val, outdir, progress=bar, relearn_options=relearn_opt,
                         options=distill_opt, flags=_flags(), time_budget=budget, stop=ft.StopOnSignals(),
                         go_on=stopped_before is not None, started_hook=say_plan)
    stopped = doc.get("interrupted")
    if stopped:    # the distillation's work is written: the same command goes on from its snapshot
        if as_json:
            output_json(doc)
        raise errors.Interrupted(f"the distillation stopped by {stopped['signal']} at iteration "
                                 f"{stopped['iteration']:,} of {stopped['target']:,}; relearn's weights, a snapshot "
                                 f"and the best weights so far kept in {out}; go on with "
                                 f"the same command: {os.environ.get('REBIRTH_COMMAND', 'rebirth recover ...')}")
    if as_json:
        output_json(doc)
    else:
        echo("\n".join(reports.relearn_summary(doc["relearn"])))
        echo(reports.finetune_text(doc["finetune"]))


def go_on_line(previous: dict, out) -> str:
    """What recover says when OUTDIR holds a run a signal stopped: where this one goes on from."""
    its = int((previous.get("finetune") or {}).get("iterations") or 0)
    where = f"its snapshot at iteration {its:,}" if its else "relearn's weights (it stopped before its first step)"
    return (f"rebirth: recover: {out} holds a run stopped during its distillation: going on from {where}, "
            "relearn's weights kept")


def plan_line(units: int, relearn_iters: int, iters: int | None, budget: float | None, default: bool) -> str:
    """What recover says before it starts: what it runs, and for how long (``{opt:NAME}`` placeholders);
    ``units`` 0: the distillation alone (going on from a stopped run)."""
    first = f"re-learning {units} unit(s) ({relearn_iters:,} SGD steps each), then " if units else ""
    if budget is None:
        return (f"rebirth: recover: {first}{iters:,} distillation iterations ({{opt:iters}}); their time per "
                "iteration is measured when they start, and the progress lines give the time left")
    cap = f", at most {iters:,} ({{opt:iters}})" if iters is not None else ""
    why = "the default; {opt:time} sets it" if default else "{opt:time}"
    span = f"what that leaves of {sv.format_duration(budget)}" if units else sv.format_duration(budget)
    return (f"rebirth: recover: {first}distillation for {span} ({why}): "
            f"its iterations{cap} are fitted to the time left once its first steps are measured; expect it to "
            f"end within {sv.format_duration(budget)}")


def _flags() -> dict[str, str]:
    """This command's parameters as it spells them (what recover.json's notes name)."""
    name_of = current_flags()
    return {param.name: name_of(param.name) for param in click.get_current_context().command.params}
