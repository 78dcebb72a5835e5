"""`rebirth accelerate` as a library: plan, slim as planned, recover, check, export, bench; OUT is a
model folder like the shipped ones.

    doc = accelerate("fmnist_googlenet", None, None, "fashion-mnist:train[:3000]", None, "fast/", Options())

Steps, each leaving its record in OUT so that a second run with the same arguments goes on from
the first step not done (``plan.json``; ``slim/report.json``; ``slim/recovered/recover.json``);
Ctrl-C or SIGTERM keeps them, and an interrupted distillation resumes from its snapshot
(``kept_when_interrupted``):

1. **plan** (learning/plan.py) on the target, from the images (``--images``). With labels and no
   speed-up asked for, when every rewrite together measured at least SPEED_WORTH times the
   budget's plan, the plan is made again aiming at that speed (``aimed_speedup``), and the promise
   stays the budget in top-1 points: least squares alone loses tens of points that recovery with
   labels takes back (the GoogLeNet-style nets here: 20-26 points after least squares, 0.7 lost and
   1.9 gained on the held-out images after 25 minutes), so the budget's plan judged by least
   squares chose almost nothing, and only the check after recovery can say what it keeps;
2. **slim** as planned into OUT/slim (every lossless rewrite, the lossy ones the plan chose);
3. **recover** the regenerated layers (relearn, then distillation against the original, label-free;
   with ``labels`` the distillation keeps the label loss too), in the time the budget leaves
   (``time_budget`` bounds the whole run, planning included; the checks, export and timing after
   it are reserved the time ``reserve_seconds`` estimates from the plan's own measurements);
4. **check**, never worse than exact: the recovered weights, the re-learned ones and the exact net
   (every lossless rewrite, no lossy one) are compared with the original on held-out images
   (``--val``, else the images recover held out): the result is the fastest of them within the
   fidelity the plan promised (its budget, or for a speed-up target its predicted agreement; with
   ``labels`` top-1 points lost on the labelled held-out images); the exact net when neither
   recovered net is. The report says which and why. No smaller set is assembled from the
   recovered weights: after a distillation of the whole net every layer has moved to fit the set
   it was trained as (such sets changed the class of 18-91 % of held-out images, docs/accelerate.md);
5. **export** to the target engine, verified against Caffe (``verify.compare_export``);
6. **bench**: the original and the result timed side by side on the target.

OUT gets the result as a model folder (``deploy.prototxt``, ``weights.caffemodel``,
``train_val.prototxt``, ``solver.prototxt``, ``init.caffemodel``, ``report.json``: slim's report with
an ``accelerate`` section, so OUT works as MODEL and as SLIM_DIR), the engine's files, ``plan.json``,
``report.md`` and ``chart.png``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from deeprebirth import __version__, errors, outputs
from deeprebirth.caffe import netio
from deeprebirth.errors import RebirthError
from deeprebirth.graph.model import Model, load_model
from deeprebirth.learning import plan as plan_api
from deeprebirth.transforms import planner
from deeprebirth.transforms import slim as slim_api

#: Seconds kept back from the budget for the checks, the export and the timing after recovery
#: when the plan measured nothing to estimate them from (a plan file without its fidelity timings).
RESERVE_S = 180.0
#: The share of the time budget planning may take (plan.Options.time_budget; the plan's steps cut
#: their rounds and candidates to it). Idle, the plans of these Fashion-MNIST nets took 45-80 s of
#: 30 minutes; under load a 3-minute run's plan took 4 minutes before this bound.
PLAN_SHARE = 1 / 3
#: The least time kept back, whatever the estimate (reserve_seconds).
RESERVE_MIN_S = 45.0
#: What the steps after recovery take besides the nets' passes: Caffe and the engine starting in
#: their child processes, the export and its verification, writing the files.
RESERVE_FIXED_S = 20.0
#: The estimate times this: a shared machine slows down.
RESERVE_MARGIN = 2.0
DEFAULT_TIME_S = 30 * 60.0
MODEL_FILES = ("deploy.prototxt", "weights.caffemodel", "train_val.prototxt", "solver.prototxt",
               "init.caffemodel", "report.json")
REPORT_FILES = ("plan.json", "report.md", "chart.png")
ENGINE_FORMAT = {"onnxruntime": "onnx", "ncnn": "ncnn", "mnn": "mnn"}
#: "Slim everything" measured at least this many times the result (or a budget's plan) is speed
#: worth going for: accelerate aims at it with labels (aimed_speedup), and says so without.
SPEED_WORTH = 1.3
Log = Callable[[str], None]


@dataclass
class Options:
    plan: plan_api.Options = field(default_factory=plan_api.Options)
    time_budget: float = DEFAULT_TIME_S
    plan_file: str | None = None          # a plan made already (`rebirth plan -o`)
    iters: int | None = None              # at most this many distillation iterations (else the time decides)
    more: bool = False                    # OUT's finished recovery trained longer, from its last snapshot
    force: bool = False
    seed: int = 0


@dataclass
class _Ctx:
    model: Model
    spec: str
    weights: str | None
    train_val: str | None
    images: str
    val: str | None
    out: Path
    opt: Options
    say: Log
    stage: Callable
    started: float
    steps: dict = field(default_factory=dict)

    def left(self) -> float:
        return self.opt.time_budget - (time.perf_counter() - self.started)


def accelerate(spec: str, weights: str | None, train_val: str | None, images: str, val: str | None,
               outdir: str | os.PathLike, opt: Options | None = None, log: Log | None = None,
               stage=plan_api.no_stage, inputs: list[str] | None = None) -> dict:
    opt = opt or Options()
    out = Path(outdir)
    say = log or (lambda line: None)
    model = load_model(spec, weights)
    if model.weights is None:
        raise RebirthError(f"{spec}: accelerate re-learns what it changes and needs the trained weights: give "
                           "{opt:weights}")
    if opt.time_budget < RESERVE_MIN_S + 60:
        raise RebirthError(f"{{opt:time}} {opt.time_budget:.0f} s is too short: planning takes a minute and the "
                           f"checks, export and timing after recovery at least {RESERVE_MIN_S:.0f} s")
    from deeprebirth.learning import sources as data  # noqa: PLC0415
    plan_api.require_images(data.open_source(images))   # too few fails now, not after the plan's timing
    if opt.plan.labels:          # the distillation and the check read them: an unlabelled source fails now
        for source in (images, val):
            if source:
                data.require_labels(data.open_source(source), "{opt:labels}")
    if opt.more:
        from deeprebirth.learning import recover as rc  # noqa: PLC0415
        if rc.previous_run(out / "slim" / "recovered") is None:
            raise RebirthError(f"{out}: holds no recovery to train longer ({{opt:more}} goes on from a finished "
                               "run's distillation): run the command without it first")
    ctx = _Ctx(model, spec, weights, train_val, images, val, out, opt, say, stage, time.perf_counter())
    names = [*MODEL_FILES, *REPORT_FILES, *ENGINE_FILES]   # OUT/slim is a folder of its own, with its marker
    with outputs.claimed_dir(out, names, [p for p in (inputs or []) if p], opt.force):
        with kept_when_interrupted(ctx):
            plan = _plan_step(ctx)
            sd = _slim_step(ctx, plan)
            recovered = _recover_step(ctx, sd, plan)
            result = _check_step(ctx, plan, sd, recovered)
            engine_files = _export_step(ctx, result)
            bench_doc = _bench_step(ctx, result, plan)
            return _write_result(ctx, plan, sd, result, engine_files, bench_doc)


class StoppedBySignal(Exception):
    """A step stopped by a signal with its work written (the distillation's snapshot)."""


@contextlib.contextmanager
def kept_when_interrupted(ctx: _Ctx):
    """Ctrl-C or SIGTERM once a step is done: errors.Interrupted, which keeps OUT (the claim removes
    a new OUT only on a KeyboardInterrupt) and says where a second run goes on from: the finished
    steps are reused, an interrupted distillation resumes from its snapshot (recover's ``go_on``).
    Before the plan is written there is nothing to keep: the KeyboardInterrupt goes on."""
    try:
        yield
    except (KeyboardInterrupt, StoppedBySignal) as exc:
        if not (ctx.out / "plan.json").is_file():
            raise
        kept = ["plan.json"] + (["slim/"] if (ctx.out / "slim" / "report.json").is_file() else [])
        rec = ctx.out / "slim" / "recovered"
        from deeprebirth.learning import recover as rc  # noqa: PLC0415
        stopped = rc.interrupted_run(rec)
        if stopped is not None:
            its = int((stopped.get("finetune") or {}).get("iterations") or 0)
            kept.append(f"the distillation's snapshot at iteration {its:,}" if its else
                        "relearn's weights (the distillation starts again from them)")
        elif (rec / "recover.json").is_file():
            kept.append("the recovered weights")
        what = f"{exc}; " if isinstance(exc, StoppedBySignal) else ""
        raise errors.Interrupted(f"{what}kept in {ctx.out}: {', '.join(kept)}; the same command again goes on "
                                 "from there") from None


ENGINE_FILES = ("model.onnx", "model.param", "model.bin", "model.mnn")


# ----------------------------------------------------------------------------------------------
# 1. plan


def _plan_step(ctx: _Ctx) -> dict:
    path = ctx.out / "plan.json"
    if ctx.opt.plan_file:
        plan = planner.read_plan(ctx.opt.plan_file)
        ctx.steps["plan"] = {"from": ctx.opt.plan_file}
        ctx.say(f"plan: {ctx.opt.plan_file} ({len(plan['only'])} lossy rewrite(s))")
        if not outputs.same_file(path, Path(ctx.opt.plan_file)):
            outputs.atomic_write(path, json.dumps(plan, indent=2) + "\n")
            outputs.record_files(ctx.out, ["plan.json"])
        return plan
    if path.is_file():
        plan = planner.read_plan(path)
        if _same_request(plan, ctx):
            ctx.steps["plan"] = {"reused": str(path)}
            ctx.say(f"plan: {path} from an earlier run ({len(plan['only'])} lossy rewrite(s)); delete it to plan "
                    "again")
            return plan
    popt = ctx.opt.plan
    if popt.time_budget is None:
        popt = dataclasses.replace(popt, time_budget=PLAN_SHARE * max(0.0, ctx.left()))
    ctx.say(f"plan: measuring every candidate on the target and on your images (at most {popt.time_budget / 60:.1f} "
            "min)")
    plan = plan_api.make_plan(ctx.model, ctx.images, ctx.train_val, popt,
                              log=lambda s: ctx.say("plan:   " + s), stage=ctx.stage, aim=lambda doc: _aim(ctx, doc))
    if "first" in plan:
        _aimed(plan)
    plan["request"] = _request(ctx)
    outputs.atomic_write(path, json.dumps(plan, indent=2) + "\n")
    outputs.record_files(ctx.out, ["plan.json"])
    ctx.steps["plan"] = {"seconds": plan["seconds"]}
    return plan


def speed_target(everything: float) -> float:
    """The speed-up to ask for when going for what "slim everything" measured: 90 % of it, to a tenth."""
    return math.floor(9 * everything) / 10


def aimed_speedup(plan: dict, opt: plan_api.Options) -> float | None:
    """The speed-up accelerate aims at instead of the plan's fidelity budget (step 1 of the module
    doc), or None: only with labels (the check then measures top-1, what the budget is in), no
    speed-up asked for, and "slim everything" measured at least SPEED_WORTH times the plan."""
    if not opt.labels or opt.speedup is not None or not labelled(plan):
        return None
    full = (plan.get("slim_everything") or {}).get("speedup")
    got = plan.get("predicted_speedup") or 1.0
    if not full or full < SPEED_WORTH * got:
        return None
    target = speed_target(full)
    return target if target > got else None


def _aim(ctx: _Ctx, plan: dict) -> float | None:
    """aimed_speedup, said: make_plan chooses again for it from the same measurements."""
    aim = aimed_speedup(plan, ctx.opt.plan)
    if aim is not None:
        full = (plan.get("slim_everything") or {}).get("speedup") or 0.0
        ctx.say(f"plan: the budget's plan measured {plan['predicted_speedup']:.2f}x and every rewrite together "
                f"{full:.2f}x; with labels the check after recovery measures top-1, "
                f"so the plan aims at {aim:g}x and the result must still lose at most "
                f"{planner.points(plan['goal']['max_drop'])} (else the exact net)")
    return aim


def _aimed(plan: dict) -> None:
    """A plan made again for a speed-up (make_plan's ``first`` the budget's plan): its promise the
    first one's budget, and a note saying so."""
    first = plan.pop("first")
    budget = first["goal"]["max_drop"]
    aim = plan["goal"]["speedup"]
    plan["goal"] = dict(plan["goal"], max_drop=budget, aimed=True)
    plan["budget_plan"] = {k: first.get(k) for k in ("only", "predicted_speedup", "predicted_fidelity")}
    full = (first.get("slim_everything") or {}).get("speedup") or 0.0
    plan["notes"].append(f"aimed at {aim:g}x (90 % of slim everything's {full:.2f}x) "
                         f"instead of the budget's plan ({first['predicted_speedup']:.2f}x, {len(first['only'])} "
                         f"lossy rewrite(s)): with labels the check after recovery holds the result to "
                         f"{planner.points(budget)}")


def _request(ctx: _Ctx) -> dict:
    p = ctx.opt.plan
    return {"model": ctx.model.source, "weights": ctx.model.weights_source, "images": ctx.images,
            "engine": p.engine, "device": p.device, "speedup": p.speedup, "max_drop": p.max_drop,
            **({"tucker": True} if p.tucker else {})}


def _same_request(plan: dict, ctx: _Ctx) -> bool:
    return plan.get("request") == _request(ctx)


# ----------------------------------------------------------------------------------------------
# 2. slim


def _slim_step(ctx: _Ctx, plan: dict) -> Path | None:
    """OUT/slim, the net as planned; None when no rewrite at all applies (the result is the original)."""
    sd = ctx.out / "slim"
    if (sd / "report.json").is_file():
        try:
            done = json.loads((sd / "report.json").read_text()).get("plan", {})
        except (OSError, ValueError):
            done = {}
        if done.get("only") == plan["only"] and (done.get("tucker") or {}) == planner.tucker_layers(plan):
            ctx.steps["slim"] = {"reused": str(sd)}
            return sd
    tv = netio.read_net(ctx.train_val) if ctx.train_val else None
    tucker = planner.tucker_layers(plan)
    slimmed = plan_api.slimmed(ctx.model, plan["only"], tv, ctx.train_val,
                               plan={"file": str(ctx.out / "plan.json"), "only": plan["only"], "tucker": tucker},
                               rules=plan.get("rules"), tucker=tucker)
    if slimmed is None:
        ctx.steps["slim"] = {"skipped": "no rewrite applies to this net"}
        ctx.say("slim: no rewrite applies to this net: the result is the original")
        return None
    slim_api.write(slimmed, sd, force=False)
    outputs.record_files(ctx.out, ["slim"])      # ours: a second run after a failure or Ctrl-C reuses it
    ctx.say(f"slim: {len(slimmed.result.changes)} rewrite(s), {len(slimmed.new_layers)} layer(s) to re-learn -> {sd}")
    ctx.steps["slim"] = {"rewrites": len(slimmed.result.changes), "regenerated": len(slimmed.new_layers)}
    return sd


# ----------------------------------------------------------------------------------------------
# 3. recover


def _recover_step(ctx: _Ctx, sd: Path | None, plan: dict) -> dict | None:
    """recover's record (None when nothing was regenerated: the slim net is exact)."""
    if sd is None:
        return None
    report = json.loads((sd / "report.json").read_text())
    if not report.get("regenerated"):
        ctx.steps["recover"] = {"skipped": "nothing regenerated: the planned net is exact"}
        return None
    from deeprebirth.learning import finetune as ft  # noqa: PLC0415
    from deeprebirth.learning import recover as rc  # noqa: PLC0415
    rec_dir = sd / "recovered"
    previous = rc.interrupted_run(rec_dir) or (rc.previous_run(rec_dir) if ctx.opt.more else None)
    if previous is None and (rec_dir / "recover.json").is_file():
        ctx.steps["recover"] = {"reused": str(rec_dir)}
        return json.loads((rec_dir / "recover.json").read_text())
    reserve = reserved(ctx, plan)
    budget = max(0.0, ctx.left() - reserve)
    if previous is not None:
        how = "interrupted" if previous.get("interrupted") else "ended"
        its = int(previous["finetune"].get("iterations") or 0)
        ctx.say((f"recover: going on from the distillation {how} at iteration {its:,}" if its else
                 "recover: the distillation again from relearn's weights (interrupted before its first step)")
                + f", relearn's weights kept, for about {budget / 60:.0f} min (what the time budget leaves)")
    else:
        ctx.say("recover: re-learn, then distil against the original" + (" and the labels" if ctx.opt.plan.labels
                else "") + f" for about {budget / 60:.0f} min (what the time budget leaves)")
    options = ft.Options(seed=ctx.opt.seed, iters=ctx.opt.iters, with_labels=ctx.opt.plan.labels)
    with ctx.stage("recover", None, "step", deadline=ctx.left()) as tick:    # re-learning: the run's time left
        doc = rc.recover(sd, ctx.images, ctx.val, rec_dir, options=options, progress=tick, time_budget=budget,
                         stop=ft.StopOnSignals(), go_on=previous is not None)
    ctx.steps["recover"] = {"dir": str(rec_dir), "reserved_s": round(reserve, 1), **recovery_summary(doc)}
    stopped = doc.get("interrupted")
    if stopped:
        raise StoppedBySignal(f"the distillation stopped by {stopped['signal']} at iteration "
                                 f"{stopped['iteration']:,} of {stopped['target']:,}")
    return doc


def recovery_summary(doc: dict) -> dict:
    """What recover.json says of the time it took: re-learning's seconds, the distillation's
    iterations and seconds, and at which iterations it fitted itself again to the time left."""
    tuned = doc.get("finetune") or {}
    out = {"relearn_s": doc.get("relearn_seconds"), "distill_iterations": tuned.get("iterations"),
           "distill_s": tuned.get("seconds")}
    resumed = doc.get("resumed") or {}
    if resumed.get("iteration") is not None:       # the distillation went on from an earlier run's snapshot
        out["resumed_at"] = resumed["iteration"]
        out["earlier_s"] = resumed.get("earlier_seconds")
    refits = ((tuned.get("time_budget") or {}).get("refits") or [])
    changed = [f"at {r['iteration']:,} to {r['iterations']:,} iterations" for r in refits if not r.get("kept")]
    if changed:
        out["refitted"] = ", ".join(changed)
    return {k: v for k, v in out.items() if v is not None}


def reserved(ctx: _Ctx, plan: dict) -> float:
    """Seconds kept back from recovery for everything after it: reserve_seconds on the plan's
    measurements and the number of images the check reads (``--val``, else those recover holds
    out); RESERVE_S when the plan has no timings."""
    from deeprebirth.learning import sources as data  # noqa: PLC0415
    fid = (plan.get("exact") or {}).get("fidelity") or {}
    if not fid.get("seconds") or not plan.get("heldout_images") or not plan.get("original_ms"):
        return RESERVE_S
    n = len(data.open_source(ctx.val)) if ctx.val else data.holdout_size(len(data.open_source(ctx.images)))
    per_image = float(fid["seconds"]) / int(plan["heldout_images"])
    p = ctx.opt.plan
    runs = plan_api.CHECK_RUNS_FACTOR * p.runs
    return reserve_seconds(per_image, n, float(plan["original_ms"]), runs, p.warmup)


def reserve_seconds(seconds_per_image: float, check_images: int, original_ms: float, runs: int,
                    warmup: int) -> float:
    """The time the steps after recovery should take, from the plan's measurements: the check's
    passes (the original and the two recovered nets) over ``check_images`` at
    ``seconds_per_image`` (the plan's pass of the exact net), the bench's rounds of the original
    and the result (``runs`` + ``warmup`` each at ``original_ms``, the slower), and
    RESERVE_FIXED_S; times RESERVE_MARGIN, RESERVE_MIN_S at least. (The fixed 180 s it replaced
    was 20 times what these steps took on the Fashion-MNIST GoogLeNets: 8 s.)"""
    passes = 3 * check_images * seconds_per_image
    bench = 2 * (runs + warmup) * original_ms / 1000.0
    return max(RESERVE_MIN_S, RESERVE_MARGIN * (RESERVE_FIXED_S + passes + bench))


# ----------------------------------------------------------------------------------------------
# 4. check: never worse than exact


def labelled(plan: dict) -> bool:
    """Whether the plan's promise is top-1 points on labelled images (`--labels`), not images changing class."""
    return bool((plan.get("goal") or {}).get("labels"))


def allowed_drop(plan: dict, labels: bool | None = None) -> float:
    """The fidelity the plan promised: the percentage of images that may change class, or with
    ``labels`` (default: the plan's) the top-1 points that may be lost: its budget (``max_drop``,
    when the plan measured the same way), or for a speed-up target what its planned net measured
    (least squares only), else the default budget."""
    goal = plan.get("goal") or {}
    labels = labelled(plan) if labels is None else labels
    if goal.get("max_drop") is not None and labelled(plan) == labels:
        return float(goal["max_drop"])
    fid = plan.get("predicted_fidelity") or {}
    if labels and fid.get("top1_drop") is not None:
        return max(0.0, 100.0 * float(fid["top1_drop"]))
    if not labels and fid.get("agreement") is not None:
        return 100.0 * (1.0 - float(fid["agreement"]))
    return planner.default_max_drop(labels)


def drop_of(option: dict, labels: bool) -> float:
    """What a checked option spent, in the promise's measure: top-1 points lost (labels), else the
    percentage of images changing class."""
    if labels:
        return 100.0 * (option["top1_original"] - option["top1"])
    return option["flips_percent"]


def pick(options: list[dict], allowed: float, labels: bool = False) -> tuple[dict, str]:
    """The result among ``options`` (dicts with ``name``, ``flips_percent`` (with labels ``top1`` and
    ``top1_original``) and an ``exact`` flag, in order of preference), and why: the first within
    ``allowed`` (allowed_drop); else the exact one (always kept: its output is the original's)."""
    unit = "top-1 points lost" if labels else "% of images changing class"
    for o in options:
        if o.get("exact"):
            return o, (f"the exact net: no recovered net stayed within {allowed:.2f} {unit}" if len(options) > 1
                       else "the exact net")
        got = drop_of(o, labels)
        if got <= allowed + 1e-9:
            what = (f"top-1 {100 * o['top1']:.2f} % on the held-out images against the original's "
                    f"{100 * o['top1_original']:.2f} % ({-got:+.2f} points)" if labels else
                    f"{got:.2f} % of held-out images change class")
            return o, f"{o['name']}: {what}, within {allowed:.2f} {unit}"
    raise ValueError("no option and no exact net")


def _check_step(ctx: _Ctx, plan: dict, sd: Path | None, recovered: dict | None) -> dict:
    from deeprebirth.runtime import isolate  # noqa: PLC0415
    if sd is None:
        ctx.steps["check"] = {"chosen": "exact", "why": "the original: no rewrite applies", "options": []}
        return {"name": "exact", "slim": None, "weights": None, "deploy": ctx.model.net, "fidelity": None}
    labels = ctx.opt.plan.labels or labelled(plan)
    allowed = allowed_drop(plan, labels)
    held = _held_source(ctx, recovered)
    nets = {}
    deploy = netio.read_net(sd / "deploy.prototxt")
    if recovered is not None:
        nets["recovered"] = (deploy, str(Path(recovered["weights"])))
        nets["re-learned"] = (deploy, str(sd / "recovered" / "relearn" / "weights.caffemodel"))
    else:
        nets["planned"] = (deploy, str(sd / "init.caffemodel"))
    tv = netio.read_net(ctx.train_val) if ctx.train_val else None
    exact_out = plan_api.slimmed(ctx.model, [], tv, ctx.train_val, rules=plan.get("rules"))
    ctx.say(f"check: each candidate result against the original on {held['name']}")
    scores = isolate.call(_fidelity_of_files, ctx.model, ctx.train_val, nets, held, what="Caffe (check)")
    options = [_option(name, s) for name, s in scores.items()]
    exact = {"name": "exact", "flips_percent": 0.0, "exact": True}
    chosen, why = pick([*options, exact], allowed, labels)
    ctx.say(f"check: {why}")
    ctx.steps["check"] = {"allowed": round(allowed, 3), "measure": (plan.get("goal") or {}).get("measure"),
                          "labels": labels, "options": [*options, exact], "chosen": chosen["name"], "why": why,
                          "heldout": held["name"], "rel_error_of": REL_ERROR_OF}
    fidelity = {k: chosen[k] for k in ("flips", "images", "agreement", "rel_error", "expected_drop", "top1",
                                       "top1_original") if k in chosen}
    if chosen["exact"]:
        return {"name": "exact", "slim": exact_out, "weights": None, "deploy": exact_out.deploy if exact_out
                else ctx.model.net, "fidelity": None}
    return {"name": chosen["name"], "slim": None, "weights": nets[chosen["name"]][1], "deploy": deploy,
            "fidelity": fidelity}


#: What the check's (and the plan's) ``rel_error`` is taken of: as `rebirth eval --teacher`.
REL_ERROR_OF = "the output blob"


def _option(name: str, score: dict) -> dict:
    return {"name": name, **score, "flips_percent": 100.0 * score["flips"] / score["images"], "exact": False}


def _held_source(ctx: _Ctx, recovered: dict | None) -> dict:
    """The images the result is checked on: ``--val``, else those recover held out of ``--images``
    (sources.hold_out: the same split), opened again in the child that checks."""
    if ctx.val:
        return {"spec": ctx.val, "name": ctx.val, "held_out": False}
    held = (recovered or {}).get("finetune", {}).get("heldout") or (recovered or {}).get("heldout") or {}
    name = held.get("source") if isinstance(held, dict) else None
    return {"spec": ctx.images, "name": name or f"the images held out of {ctx.images}", "held_out": True}


def _open_held(held: dict):
    from deeprebirth.learning import sources as data  # noqa: PLC0415
    source = data.open_source(held["spec"])
    if held["held_out"]:
        _, part = data.hold_out(source)
        source = part if part is not None else source
    return source


def _fidelity_of_files(teacher: Model, train_val: str | None, nets: dict, held: dict) -> dict:
    """Each net (name -> (deploy, weights: a file or a dict)) against ``teacher`` on the images of
    ``held``: flips, agreement, output error, KL, the top-1 lost estimated without labels
    (evaluate.expected_drop), top-1 (when labelled) beside the teacher's. Runs Caffe."""
    from deeprebirth.learning import evaluate as ev  # noqa: PLC0415
    from deeprebirth.learning import preprocess  # noqa: PLC0415
    source = _open_held(held)
    t_runner = ev.Runner.build(teacher)
    pre = preprocess.preprocess_for(t_runner.input_shape, train_val or preprocess.default_train_val(teacher.source))
    students = {}
    for name, (deploy, w) in nets.items():
        weights = w if isinstance(w, dict) else netio.weights_of(netio.read_weights(w))
        students[name] = ev.Runner.build(Model(deploy, weights, source=name))
    s_all: dict[str, list] = {name: [] for name in students}
    t_all, labels = [], []
    for x, y in source.batches(pre, 50):
        t_all.append(plan_api.outputs_of(t_runner, x))
        for name, runner in students.items():
            s_all[name].append(plan_api.outputs_of(runner, x))
        if y is not None:
            labels.append(y)
    t = tuple(np.concatenate(part) for part in zip(*t_all))       # (logits, output blob)
    y = np.concatenate(labels) if labels else None
    lt = ev.log_softmax(t[0])
    out = {}
    for name in students:
        student = tuple(np.concatenate(part) for part in zip(*s_all[name]))     # (logits, output blob)
        s = student[0]
        doc = plan_api.scores(student, t, y)
        doc["images"] = len(s)
        if y is not None:
            doc["top1_original"] = round(float(np.mean(t[0].argmax(1) == y)), 4)
        ls = ev.log_softmax(s)
        doc["kl"] = round(float(np.mean(np.sum(np.exp(lt) * (lt - ls), axis=1))), 6)
        doc["expected_drop"] = round(ev.expected_drop(s, lt), 4)
        out[name] = doc
    return out


# ----------------------------------------------------------------------------------------------
# 5. export, 6. bench


def _result_model(ctx: _Ctx, result: dict) -> Model:
    if result["weights"] is not None:
        return Model(result["deploy"], netio.weights_of(netio.read_weights(result["weights"])), source="result")
    s = result["slim"]
    return Model(result["deploy"], plan_api.deploy_weights(s) if s else ctx.model.weights, source="result")


def _export_step(ctx: _Ctx, result: dict) -> dict[str, bytes]:
    engine = ctx.opt.plan.engine
    fmt = ENGINE_FORMAT.get(engine)
    if fmt is None:
        ctx.steps["export"] = {"skipped": "the target engine is Caffe: the model folder is what it runs"}
        return {}
    from deeprebirth.runtime import export, verify  # noqa: PLC0415
    m = _result_model(ctx, result)
    files = export.export_isolated(m, fmt, batch=1)
    check = verify.compare_export(m, fmt, files, seed=ctx.opt.seed)
    verify.require(check, 1e-4)
    ctx.steps["export"] = {"format": fmt, "files": sorted(files), "verified": "against Caffe, tolerance 1e-4"}
    ctx.say(f"export: {', '.join(sorted(files))} for {engine}, verified against Caffe")
    return files


def _bench_step(ctx: _Ctx, result: dict, plan: dict) -> dict:
    """The original and the result timed side by side on the target. When the original ran slower
    than in the plan's check by more than plan.PAIR_AGREEMENT (the machine slowed: load only slows
    runs down), the two are timed again once, if the run's time holds as long again, and the
    session whose original ran quicker is kept (as the plan's check does)."""
    from deeprebirth.runtime import bench, target  # noqa: PLC0415
    p = ctx.opt.plan
    prepared = [bench.Prepared("original", _batch1(ctx.model), "trained"),
                bench.Prepared("accelerated", _batch1(_result_model(ctx, result)), "result")]
    dev = target.device_for(p.engine, p.device, p.threads)
    runs = plan_api.CHECK_RUNS_FACTOR * p.runs       # as many rounds as the plan's check of the same nets
    ctx.say(f"bench: the original and the result side by side on {target.describe(p.engine, p.device)}, "
            f"{runs} rounds")

    def session(desc):
        with ctx.stage(desc, 2 * (runs + p.warmup), "run") as tick:
            return bench.run_isolated(prepared, dev, runs, p.warmup, layers=p.engine == "caffe" and p.device == "cpu",
                                      memory=True, seed=ctx.opt.seed, progress=tick)
    began = time.perf_counter()
    ms = session("bench")
    step = {"runs": runs, "sessions": 1}
    now, then = _original_ms(ms), plan.get("original_ms")
    if slowed(now, then) and ctx.left() > time.perf_counter() - began:
        ctx.say(f"bench: the original ran {now:.3f} ms, {now / then:.2f}x its {then:.3f} ms in the plan's check: "
                "timed again, the session whose original ran quicker kept")
        again = session("bench again")
        step["sessions"], step["original_ms"] = 2, [round(now, 4), round(_original_ms(again), 4)]
        if _original_ms(again) < now:
            ms = again
    doc = bench.build_json(ms, {"engine": p.engine, "device": p.device, "runs": runs, "batch": 1, "block": dev.turn})
    ctx.steps["bench"] = step
    return doc


def _original_ms(measurements: list) -> float:
    """The original's time in a session, by the statistic the plan's check compares (plan.QUANTILE)."""
    return 1000.0 * float(np.quantile(measurements[0].forward_s, plan_api.QUANTILE))


def slowed(original_ms: float, planned_original_ms: float | None) -> bool:
    """Whether the original ran slower than in the plan's check by more than plan.PAIR_AGREEMENT."""
    return bool(planned_original_ms) and original_ms > plan_api.PAIR_AGREEMENT * float(planned_original_ms)


def _batch1(m: Model) -> Model:
    from deeprebirth.runtime import bench  # noqa: PLC0415
    return Model(bench.set_batch(m.net, 1), m.weights, source=m.source)


# ----------------------------------------------------------------------------------------------
# The result


def _write_result(ctx: _Ctx, plan: dict, sd: Path, result: dict, engine_files: dict, bench_doc: dict) -> dict:
    from deeprebirth.learning import report_md  # noqa: PLC0415
    files: dict[str, bytes | str] = {}
    if sd is None or (result["name"] == "exact" and result["slim"] is None):
        # nothing applied, or the exact net is the original (no lossless rewrite): the original, as a model folder
        files["deploy.prototxt"] = netio.net_to_text(ctx.model.net)
        files["weights.caffemodel"] = netio.with_weights(ctx.model.net, ctx.model.weights).SerializeToString()
        if ctx.train_val:     # its data layers give the preprocessing to every command that reads OUT
            files["train_val.prototxt"] = Path(ctx.train_val).read_bytes()
        report = {}
    elif result["slim"] is not None:
        rendered = slim_api.render(result["slim"])
        for name in ("deploy.prototxt", "train_val.prototxt", "solver.prototxt", "init.caffemodel"):
            if name in rendered:
                files[name] = rendered[name]
        if "init.caffemodel" in rendered:
            files["weights.caffemodel"] = rendered["init.caffemodel"]
        report = json.loads(rendered["report.json"])
    else:
        for name in ("deploy.prototxt", "train_val.prototxt", "solver.prototxt", "init.caffemodel"):
            files[name] = (sd / name).read_bytes()
        files["weights.caffemodel"] = Path(result["weights"]).read_bytes()
        report = json.loads((sd / "report.json").read_text())
    files.update(engine_files)
    doc = _summary(ctx, plan, result, bench_doc)
    report["accelerate"] = doc
    files["report.json"] = json.dumps(report, indent=2) + "\n"
    files["report.md"] = report_md.render(doc)
    chart = report_md.chart_png(doc)
    if chart is not None:
        files["chart.png"] = chart
    for name, data in files.items():
        outputs.atomic_write(ctx.out / name, data)
    outputs.record_files(ctx.out, list(files))
    doc["files"] = sorted(str(ctx.out / n) for n in files)
    return doc


def _summary(ctx: _Ctx, plan: dict, result: dict, bench_doc: dict) -> dict:
    ms = {m["model"]: m for m in bench_doc.get("models", [])}
    orig, acc = ms.get("original", {}), ms.get("accelerated", {})
    speedup = None
    if orig.get("median_ms") and acc.get("median_ms"):     # medians, as the plan times them
        speedup = round(orig["median_ms"] / acc["median_ms"], 3)
    return {
        "tool": f"rebirth {__version__}", "model": ctx.spec, "model_file": ctx.model.source,
        "weights": ctx.model.weights_source, "command": os.environ.get("REBIRTH_COMMAND"),
        "images": ctx.images, "val": ctx.val, "out": str(ctx.out),
        "target": plan.get("target"), "goal": plan.get("goal"),
        "result": result["name"], "fidelity": result["fidelity"],
        "speedup": speedup, "bench": bench_doc, "plan": {k: plan.get(k) for k in (
            "only", "predicted_speedup", "predicted_fidelity", "basis", "exact", "slim_everything", "notes",
            "budget_plan")},
        "candidates": plan.get("candidates"),
        **({"tucker": {k: plan["tucker"].get(k) for k in ("layers", "candidates", "check")}}
           if (plan.get("tucker") or {}).get("candidates") else {}),
        "steps": ctx.steps, "seconds": round(time.perf_counter() - ctx.started, 1),
        "time_budget_s": ctx.opt.time_budget,
        "machine": plan.get("machine"),
    }

