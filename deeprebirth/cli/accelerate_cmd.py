"""`rebirth accelerate`: from a trained model to a checked, faster model folder for the target, in one command."""
from __future__ import annotations

import shlex
from pathlib import Path

import click

from deeprebirth import outputs
from deeprebirth.cli import FILE, echo, main, model_inputs, output_json
from deeprebirth.cli.plan_cmd import seconds_of, stage, target_options
from deeprebirth.graph.model import resolve
from deeprebirth.learning import accelerate as acc
from deeprebirth.learning import plan as plan_api


@main.command("accelerate")
@click.argument("model")
@click.option("--weights", "-w", type=FILE, help="The trained .caffemodel (a built-in model brings its own).")
@click.option("--train-val", "train_val", type=FILE,
              help="The model's train_val.prototxt: its TEST data layer gives the preprocessing.")
@click.option("--images", required=True, metavar="SOURCE",
              help="Your images (labels needed only with --labels): a folder, a Caffe list file, an LMDB, or "
                   "fashion-mnist[:train|:test].")
@click.option("--val", metavar="SOURCE",
              help="Images to check the result on (default: a tenth of --images, held out of all training).")
@target_options
@click.option("--time", "time_text", default="30m", show_default=True, metavar="DURATION",
              help="The whole run's time on this machine (planning included), e.g. 30m, 1h, 900s.")
@click.option("--iters", type=click.IntRange(min=1), default=None,
              help="At most this many distillation iterations (default: as many as --time leaves).")
@click.option("--plan", "plan_file", type=FILE, help="Carry out this plan (`rebirth plan -o`) instead of planning.")
@click.option("--more", is_flag=True,
              help="OUTDIR holds a finished run: train its recovery longer, from the distillation's last snapshot, "
                   "for what --time leaves; the result is checked, exported and timed again.")
@click.option("--output", "-o", "outdir", required=True, type=click.Path(file_okay=False),
              help="The result's folder: deploy.prototxt, weights.caffemodel, the engine's files, plan.json, "
                   "report.md, chart.png.")
@click.option("--force", is_flag=True, help="Write into OUTDIR although it holds files rebirth did not write.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def accelerate_command(model, weights, train_val, images, val, engine, device, threads, speedup, max_drop, labels,
                       tucker, count, heldout, runs, time_text, iters, plan_file, more, outdir, force, as_json):
    """Make MODEL faster on the target (--engine, --device) and check it: plan which rewrites pay
    there (`rebirth plan`), slim as planned, re-learn and distil the changed layers from your images
    in the time given, keep the fastest result that stays as faithful as the plan promised (else the
    exact net: every lossless rewrite, the original's output), export it for the engine verified
    against Caffe, and time it beside the original. A second run with the same arguments goes on
    from the first step not done."""
    outputs.check_dir_is_ours(outdir, force)
    seconds = seconds_of(time_text)
    plan_api.check_options(plan_api.Options(speedup=speedup, max_drop=max_drop, labels=labels))  # before any work
    model, weights, train_val, _ = model_inputs(model, weights, train_val)   # a built-in's or folder's files
    popt = plan_api.Options(engine=engine.lower(), device=device, threads=threads, speedup=speedup, max_drop=max_drop,
                            labels=labels, train_images=count, heldout_images=heldout, runs=runs, tucker=tucker)
    opt = acc.Options(plan=popt, time_budget=seconds, plan_file=plan_file, force=force, iters=iters, more=more)

    doc = acc.accelerate(model, weights, train_val, images, val, outdir, opt,
                         log=lambda line: echo(f"rebirth: {line}", err=True), stage=stage,
                         inputs=[str(resolve(model)), weights, train_val, plan_file])
    argv = click.get_current_context().find_root().meta.get("rebirth_argv", [])
    hint, more = speed_hint(doc, argv, outdir), more_hint(doc, argv)
    if as_json:
        output_json(dict(doc, **({"hint": hint} if hint else {}), **({"hint_more": more} if more else {})))
        return
    fid = doc.get("fidelity") or {}
    echo(f"{outdir}: {doc['result']}, "
         + (f"{doc['speedup']:.2f}x faster than the original" if doc.get("speedup") else "not timed")
         + f" on {doc['target']['engine']} ({doc['target']['device']})"
         + (f"; top-1 {100 * fid['top1']:.2f} % on held-out images (original {100 * fid['top1_original']:.2f} %)"
            if labels and fid.get("top1") is not None else
            f"; {100 * fid['agreement']:.2f} % of held-out images keep their class" if fid.get("agreement") else
            "; the exact net (the original's output)" if doc["result"] == "exact" else ""))
    echo(f"report: {outdir}/report.md   chart: {outdir}/chart.png   in {doc['seconds'] / 60:.1f} min")
    for line in (more, hint):
        if line:
            echo(line)


def more_hint(doc: dict, argv: list[str]) -> str | None:
    """When the recovered net missed the promise (the result is the re-learned or the exact net):
    the same command with ``--more``, which trains the recovery longer from where it stopped."""
    steps = doc.get("steps") or {}
    names = {o.get("name") for o in (steps.get("check") or {}).get("options") or []}
    its = (steps.get("recover") or {}).get("distill_iterations")
    if doc.get("result") == "recovered" or "recovered" not in names or not its:
        return None
    rec = steps.get("recover") or {}
    took = "" if rec.get("resumed_at") is not None else f" ({(rec.get('distill_s') or 0.0) / 60:.0f} min)"
    command = shlex.join(["rebirth", *argv] + ([] if "--more" in argv else ["--more"]))
    return (f"hint: the recovered net missed the promise after {its:,} distillation iterations{took}; "
            f"to train it longer from where it stopped, for another --time: {command}")


def speed_hint(doc: dict, argv: list[str], outdir: str) -> str | None:
    """When a fidelity promise left speed the target has on the table ("slim everything" measured
    while planning at least acc.SPEED_WORTH times the result): the command that asks for that
    speed instead (``--speedup``, acc.speed_target of it, into a new folder), to paste."""
    if (doc.get("goal") or {}).get("speedup") is not None:
        return None
    full = ((doc.get("plan") or {}).get("slim_everything") or {}).get("speedup")
    got = doc.get("speedup") or 1.0
    if not full or full < acc.SPEED_WORTH * got:
        return None
    target = acc.speed_target(full)
    new_out = Path(f"{outdir.rstrip('/')}-speedup{target:g}")
    k = 2
    while new_out.exists():
        new_out, k = Path(f"{outdir.rstrip('/')}-speedup{target:g}-{k}"), k + 1
    args, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--max-drop", "-o", "--output", "--plan"):
            skip = True
        elif a in ("--json", "--more") or a.startswith(("--max-drop=", "--output=", "--plan=")) or \
                (a.startswith("-o") and len(a) > 2):
            continue
        else:
            args.append(a)
    command = shlex.join(["rebirth", *args, "--speedup", f"{target:g}", "-o", str(new_out)])
    return (f"hint: within the promise little paid here; every rewrite together measured {full:.2f}x on this target "
            f"while planning. For speed at a fidelity the report states: {command}")
