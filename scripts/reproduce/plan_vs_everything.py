#!/usr/bin/env python
"""The plan against "slim everything", side by side (issue 31: "the plan beats slim everything on at
least one engine/net pair: faster at equal fidelity, or more faithful at equal speed").

    .venv/bin/python scripts/reproduce/plan_vs_everything.py [--work WORK] [--nets a,b] [--engine onnxruntime]
                                                             [--time 30m] [--images SOURCE]

For each net (default: the BatchNorm ResNets, where `slim` merges the stem's pooling, a lossy merge
the issue found to buy little on the runtimes users ship):

1. `rebirth accelerate NET --images IMAGES --engine E --time T -o WORK/NET/plan` (the defaults);
2. `rebirth slim NET -o WORK/NET/everything` then `rebirth recover WORK/NET/everything --images
   IMAGES --time T`: every merge, recovered from the same unlabelled images for the whole of the
   time accelerate had (more than it gave its own recovery);
3. `rebirth bench PLAN EVERYTHING --engine E --runs 200`: the two results timed side by side (and
   each beside the original);
4. `rebirth eval` of both on the 10,000 Fashion-MNIST test images against the original (top-1,
   agreement, relative output error).

Writes docs/results/plan-vs-everything.{md,json}. Resumable (steps.py). Duration: about twice
``--time`` per net (an hour at the defaults), plus a few minutes of timing and evaluation.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
import steps
from accelerate_check import NETS
from steps import RESULTS, ROOT, Step

IMAGES = "fashion-mnist:train[:3000]"
TEST = "fashion-mnist:test"
DEFAULT_NETS = ("fmnist_resnet", "resnet_bn_b")
RUNS = 200
#: Each pair is timed in this many sessions (sub-millisecond nets move by a tenth from one to the next).
REPEATS = 3


def chain(name: str, engine: str, time_text: str, work: Path, images: str) -> list[Step]:
    model, weights, tv = NETS[name]
    out = work / name
    plan, everything = out / "plan", out / "everything"
    recovered = everything / "recovered"
    files = [] if weights is None else ["-w", weights, "--train-val", tv]
    teacher = [model, *([] if weights is None else ["--teacher-weights", weights])]
    return [
        Step("accelerate", ["accelerate", model, *files, "--images", images, "--engine", engine, "--time", time_text,
                            "-o", plan], plan / "report.md"),
        Step("slim", ["slim", model, *files, "-o", everything]),
        Step("recover", ["recover", everything, "--images", images, "--time", time_text, "-o", recovered],
             recovered / "recover.json"),
        *[Step(f"{what}_{k}", cmd, always=True) for k in range(1, REPEATS + 1) for what, cmd in (
            ("bench_pair", _bench(engine, (plan / "deploy.prototxt", plan / "weights.caffemodel"),
                                  (recovered / "deploy.prototxt", recovered / "weights.caffemodel"))),
            ("bench_plan", _bench(engine, (model, weights), (plan / "deploy.prototxt", plan / "weights.caffemodel"))),
            ("bench_everything", _bench(engine, (model, weights), (recovered / "deploy.prototxt",
                                                                  recovered / "weights.caffemodel"))))],
        Step("eval_plan", ["eval", plan, "--data", TEST, "--teacher", *teacher]),
        Step("eval_everything", ["eval", everything / "deploy.prototxt", "--weights", recovered / "weights.caffemodel",
                                 "--train-val", everything / "train_val.prototxt", "--data", TEST,
                                 "--teacher", *teacher]),
    ]


def _bench(engine: str, first: tuple, second: tuple) -> list:
    """`rebirth bench` of two (net, weights) side by side; a built-in net (weights None) with its own."""
    weights = [] if first[1] is None else ["--weights", first[1], "--weights", second[1]]
    return ["bench", first[0], second[0], *weights, "--engine", engine, "--runs", RUNS]


def keep(step: str, doc: dict) -> dict:
    if step == "accelerate":
        plan = doc.get("plan") or {}
        return {"result": doc.get("result"), "only": plan.get("only"), "speedup": doc.get("speedup"),
                "slim_everything_speedup": (plan.get("slim_everything") or {}).get("speedup"),
                "minutes": round(doc.get("seconds", 0) / 60, 1)}
    if step == "recover":
        best = (doc.get("finetune") or {}).get("best") or {}
        return {"iterations": (doc.get("finetune") or {}).get("iterations"), "kept_iteration": best.get("iteration"),
                "val_rel_error": {"relearned": (best.get("start") or {}).get("val_rel_error"),
                                  "kept": best.get("val_rel_error")}}
    if step.startswith("bench"):     # the second net against the first: the ratio of the medians
        models = doc.get("models") or []
        ratios = list(((doc.get("ratios") or {}).get("models") or {}).values())
        return {"median_ms": [m.get("median_ms") for m in models],
                "speedup": 1.0 / ratios[-1]["median"] if len(ratios) == 2 and ratios[-1].get("median") else None}
    if step.startswith("eval"):
        return {k: doc.get(k) for k in ("top1", "agreement", "rel_error", "kl")}
    return {}


def ratio_text(steps_done: dict, what: str) -> str:
    """The speed-ups of ``what``'s sessions (steps ``what_1`` ...): their median, and their range."""
    got = sorted(st["speedup"] for k, st in steps_done.items() if k.startswith(what + "_") and st.get("speedup"))
    if not got:
        return "-"
    if len(got) == 1:
        return f"{got[0]:.2f}x"
    return f"{float(np.median(got)):.2f}x ({got[0]:.2f}-{got[-1]:.2f})"


def table(rows: list[dict], machine: dict, argv: str) -> str:
    def p(v):
        return "-" if v is None else f"{100 * v:.2f} %"

    def err(e):
        v = e.get("rel_error")
        return "-" if v is None else f"{v:.3f}"
    lines = ["# The plan against slim everything", "",
             f"Written by `python scripts/reproduce/plan_vs_everything.py{argv}` (issue 31). "
             + steps.machine_line(machine), "",
             "| net | plan (accelerate's result) | vs original | slim everything, recovered | vs original "
             "| slim everything vs the plan (side by side) | top-1: plan / everything | agreement: plan / everything "
             "| output error: plan / everything |",
             "|---|---|---:|---|---:|---:|---|---|---|"]
    for r in rows:
        s = r["steps"]
        a, rec, ep, ee = (s.get(k, {}) for k in ("accelerate", "recover", "eval_plan", "eval_everything"))
        chosen = ", ".join(a.get("only") or []) or "no lossy merge"
        iters = "-" if rec.get("iterations") is None else f"{rec['iterations']:,}"
        lines.append(f"| {r['net']} | {a.get('result')} ({chosen}) | {ratio_text(s, 'bench_plan')} | every merge, "
                     f"{iters} distillation iterations | {ratio_text(s, 'bench_everything')} "
                     f"| {ratio_text(s, 'bench_pair')} | {p(ep.get('top1'))} / {p(ee.get('top1'))} "
                     f"| {p(ep.get('agreement'))} / {p(ee.get('agreement'))} | {err(ep)} / {err(ee)} |")
    lines += ["", f"Speed-ups are ratios of medians of {RUNS} rounds timed side by side (`rebirth bench`), the median "
              f"of {REPEATS} sessions (their range in brackets); \"slim everything vs the plan\" above 1.00x means "
              "slim everything is faster. Commands (`$WORK` is the work folder):", ""]
    return "\n".join(lines + steps.commands_md(rows)) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    steps.net_arguments(ap, ROOT / "out" / "plan_vs_everything", ",".join(DEFAULT_NETS), IMAGES)
    a = ap.parse_args(argv)
    shown = "".join(f" {shlex.quote(x)}" for x in (argv if argv is not None else sys.argv[1:]))
    names = steps.net_names(a.nets, NETS)
    machine = steps.machine()
    rows = []
    for name in names:
        doc = steps.run_chain(lambda n=name: chain(n, a.engine, a.time_text, a.work, a.images),
                              a.work / f"{name}.json", "scripts/reproduce/plan_vs_everything.py", a.work, keep)
        rows.append({"net": name, "engine": a.engine, "steps": doc["steps"]})
        steps.write_json(RESULTS / "plan-vs-everything.json", {"machine": machine, "argv": shown.strip(), "rows": rows})
        (RESULTS / "plan-vs-everything.md").write_text(table(rows, machine, shown))
    print(f"wrote {RESULTS / 'plan-vs-everything.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
