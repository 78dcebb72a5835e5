"""`rebirth plan`: which lossy rewrites pay on the target, measured there and on the user's images."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import click

from deeprebirth import errors, outputs
from deeprebirth.cli import FILE, current_flags, echo, main, model_inputs, output_json, plan_reports, show_warnings
from deeprebirth.cli.progress import progress_bar
from deeprebirth.errors import RebirthError
from deeprebirth.graph.model import load_model, resolve
from deeprebirth.learning import plan as plan_api
from deeprebirth.learning import plan_tucker
from deeprebirth.runtime import engines
from deeprebirth.transforms.planner import read_plan


def target_options(f):
    """The target and the plan's goal and measurements: shared by plan and accelerate."""
    for opt in reversed([
        click.option("--engine", "-e", default="caffe", show_default=True,
                     type=click.Choice(sorted(engines.ENGINES), case_sensitive=False),
                     help="The runtime the net will run on: time is measured there."),
        click.option("--device", "-d", default="cpu", show_default=True,
                     help="Where: cpu (this machine), or a device `rebirth bench --device` knows (adb, ssh://host, "
                          "host, qemu-aarch64)."),
        click.option("--threads", type=click.IntRange(min=1), default=None,
                     help="Threads of the engine (default: the engine's own)."),
        click.option("--speedup", type=float, default=None, metavar="X",       # above 1: plan.check_options says
                     help="Aim for X times faster than the original on the target (X above 1, e.g. 3), at the least "
                          "loss of fidelity."),
        click.option("--max-drop", type=click.FloatRange(min=0, max=100), default=None, metavar="P",
                     help="Aim for the fastest net in which at most P % of held-out images change class "
                          f"(an upper bound on top-1 points lost) [default: {plan_api.planner.DEFAULT_MAX_DROP:g}]; "
                          "with --labels, at most P top-1 points lost "
                          f"[default: {plan_api.planner.DEFAULT_MAX_DROP_LABELS:g}]."),
        click.option("--labels", is_flag=True,
                     help="Use the labels of --images: fidelity is top-1 on labelled held-out images (and "
                          "accelerate distils with the labels too and, without --speedup, aims at the speed every "
                          "rewrite together measured when the budget's plan left most of it: the check after "
                          "recovery holds the budget)."),
        click.option("--tucker", is_flag=True,
                     help="Also plan Tucker decompositions of the planned net's convolutions (the "
                          f"{plan_tucker.MOST} that save the most MACs; VBMF ranks kept to at least half the "
                          "weights, a merged layer at half), each timed, and with --weights re-learned, like the "
                          "other candidates; kept only when the net with them beats the slim plan head to head "
                          "on the target."),
        click.option("--count", type=click.IntRange(min=1), default=plan_api.Options.train_images, show_default=True,
                     help="Images each candidate is re-learned on (least squares) while planning."),
        click.option("--heldout", type=click.IntRange(min=10), default=plan_api.Options.heldout_images,
                     show_default=True, help="Other images each candidate is checked on while planning."),
        click.option("--runs", "-n", type=click.IntRange(min=5), default=plan_api.Options.runs, show_default=True,
                     help="Timed rounds (every net once a round, interleaved); the check of the chosen net and "
                          "accelerate's bench time %dx as many." % plan_api.CHECK_RUNS_FACTOR),
    ]):
        f = opt(f)
    return f


def seconds_of(text: str) -> float:
    """A --time DURATION (30m, 1h, 900s) in seconds; a one-line error for anything else."""
    from deeprebirth.learning import solver as sv  # noqa: PLC0415
    return float(sv.parse_duration(text))


def stage(desc, total, unit="it", deadline=None):
    """The progress of a long step of plan or accelerate (the library's ``stage``): a bar or lines,
    with the time left (``deadline``: of a run bounded by it, progress.LineProgress), and a run
    plan's ``{opt:NAME}`` as the command's flags."""
    flags = current_flags()
    return progress_bar(total, desc, unit, eta=True, render=lambda text: errors.render(text, flags),
                        deadline=deadline)


@main.command("plan")
@click.argument("model")
@click.option("--weights", "-w", type=FILE, help="The trained .caffemodel (without: planned by time alone).")
@click.option("--train-val", "train_val", type=FILE,
              help="The model's train_val.prototxt: its TEST data layer gives the preprocessing.")
@click.option("--images", metavar="SOURCE",
              help="Your images (labels needed only with --labels): a folder, a Caffe list file, an LMDB, or "
                   "fashion-mnist[:train|:test].")
@target_options
@click.option("--time", "time_text", default=None, metavar="DURATION",
              help="At most this long on this machine, e.g. 2m, 90s: timings get fewer rounds, candidates not "
                   "re-learned in time are left out, fewer checks are made (default: as long as the "
                   "measurements take, a minute or two on a small net).")
@click.option("--output", "-o", "out", type=click.Path(dir_okay=False), default=None,
              help="Write the plan here (JSON; `rebirth slim MODEL --plan FILE` applies it).")
@click.option("--force", is_flag=True, help="Write -o over a file that is not a plan rebirth wrote.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON instead of a table.")
def plan_command(model, weights, train_val, images, engine, device, threads, speedup, max_drop, labels, tucker,
                 count, heldout, runs, time_text, out, force, as_json):
    """Plan which lossy rewrites of MODEL to make: each candidate `rebirth inspect` lists is timed on the
    target (--engine, --device) beside the exact net (every lossless rewrite made), and re-learned by
    least squares on your images and checked against the original on others. The plan takes the
    fastest set within --max-drop, or the most faithful that reaches --speedup, and checks the
    assembled net on both. Apply it with `rebirth slim MODEL --plan FILE` or `rebirth accelerate`."""
    plan_api.check_options(plan_api.Options(speedup=speedup, max_drop=max_drop, labels=labels))  # before any work
    seconds = None if time_text is None else seconds_of(time_text)
    if out:
        outputs.check_output_path(out)
        _check_ours(out, force)
    apply = apply_line(model, weights, train_val, out)            # MODEL as given: a folder brings its files
    model, weights, train_val, using = model_inputs(model, weights, train_val)  # a built-in's or folder's files
    m = load_model(model, weights)
    if using and not as_json:
        echo(f"rebirth: {using}", err=True)
    show_warnings(m.warnings)
    opt = plan_api.Options(engine=engine.lower(), device=device, threads=threads, speedup=speedup, max_drop=max_drop,
                           labels=labels, train_images=count, heldout_images=heldout, runs=runs, time_budget=seconds,
                           tucker=tucker)

    doc = plan_api.make_plan(m, images, train_val, opt, log=lambda line: echo(f"rebirth: plan: {line}", err=True),
                             stage=stage)
    doc["command"] = f"rebirth plan {model}"
    if out:
        inputs = [str(resolve(model)), weights, train_val]
        outputs.atomic_write(out, errors.render(json.dumps(doc, indent=2), current_flags()) + "\n",
                             [p for p in inputs if p])
    if as_json:
        output_json(doc)
    else:
        applied = (f"apply: {apply}" if plan_api.changes_anything(doc)
                   else "nothing to apply: the plan is the original net")
        echo(plan_reports.plan_text(doc) + (f"\nplan: {out}   ({applied})" if out else ""))


def apply_line(model: str, weights: str | None, train_val: str | None, out: str | None) -> str:
    """The `rebirth slim` command that applies the plan written to ``out``, with MODEL and the
    files as the user gave them (a built-in or a model folder brings its own weights)."""
    files = [x for flag, v in (("-w", weights), ("--train-val", train_val)) if v for x in (flag, v)]
    return shlex.join(["rebirth", "slim", model, *files, "--plan", out or "PLAN.json", "-o", "planned"])


def _check_ours(path: str, force: bool) -> None:
    """-o may replace a plan rebirth wrote, never another file (unless --force)."""
    p = Path(path)
    if force or not p.exists():
        return
    try:
        read_plan(p)
    except RebirthError:
        raise RebirthError(f"{p}: exists and is not a plan rebirth wrote; choose another file, or add --force to "
                           "replace it") from None
