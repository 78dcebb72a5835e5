#!/usr/bin/env python
"""Check `rebirth accelerate` at its defaults on nets trained differently (issue 31's "Done when").

    .venv/bin/python scripts/reproduce/accelerate_check.py [--work WORK] [--nets a,b] [--engine onnxruntime]
                                                           [--time 30m] [--images SOURCE]
                                                           [--args "--speedup 3 --labels"] [--tag NAME]

For each net (default: every one found of NETS) and the engine: `rebirth accelerate NET --images
IMAGES --engine E --time T -o WORK/NET-E` from unlabelled Fashion-MNIST training images (no label
is read), then `rebirth eval` of the original and of the result on the 10,000 test images (with
labels: top-1) and of the result against the original (agreement, relative output error). Each
net's chain is resumable (steps.py: a rerun skips the steps done). Writes docs/results/
accelerate.{md,json}: per net the result accelerate kept, its speed-up on the engine (accelerate's
own side-by-side bench), the exact net's and "slim everything"'s speed-up from the plan, top-1
before and after, and the minutes it took. ``--args`` adds accelerate options (a goal, ``--labels``);
``--tag NAME`` keeps such a run apart: WORK/NET-ENGINE-NAME and docs/results/accelerate-NAME.{md,json}.
After each accelerate run the recovered weights (OUT/slim/recovered, what the check judged; kept
or not) are evaluated on the test images too. ``--more``: then the same accelerate command with
``--more`` (the recovery trained longer from its last snapshot for another ``--time``), and the
result and the recovered weights evaluated again.

Duration: about ``--time`` per net and engine (30 minutes each by default; twice that with
``--more``), plus a minute or two of evaluation.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import steps
from steps import RESULTS, ROOT, Step

MODELS = ROOT / "models"
IMAGES = "fashion-mnist:train[:3000]"
TEST = "fashion-mnist:test"
# name -> (MODEL as accelerate takes it, weights, train_val); None: a built-in with its shipped files
NETS = {
    "fmnist_googlenet": ("fmnist_googlenet", None, None),
    "fmnist_resnet": (MODELS / "fmnist_resnet.prototxt", MODELS / "fmnist_resnet.caffemodel",
                      MODELS / "fmnist_resnet_train_val.prototxt"),
    **{d.name: (d / "deploy.prototxt", d / "weights.caffemodel", d / "train_val.prototxt")
       for d in sorted((MODELS / "heldout").glob("*")) if (d / "weights.caffemodel").is_file()},
}


def chain(name: str, engine: str, time_text: str, work: Path, images: str = IMAGES, extra: list[str] | None = None,
          tag: str = "", more: bool = False) -> list[Step]:
    model, weights, tv = NETS[name]
    out = work / f"{name}-{engine}{'-' + tag if tag else ''}"
    files = [] if weights is None else ["-w", weights, "--train-val", tv]
    ev_files = [] if weights is None else ["--weights", weights, "--train-val", tv]
    teacher = [] if weights is None else ["--teacher-weights", weights]
    accelerate = ["accelerate", model, *files, "--images", images, "--engine", engine, "--time", time_text,
                  *(extra or []), "-o", out]
    slim = out / "slim"
    recovered = ["eval", slim / "deploy.prototxt", "--weights", slim / "recovered" / "weights.caffemodel",
                 "--train-val", slim / "train_val.prototxt", "--data", TEST, "--teacher", model, *teacher]
    has_recovered = (slim / "recovered" / "weights.caffemodel").is_file()   # run_chain asks again after each step
    chain = [
        Step("accelerate", accelerate, out / "report.md"),
        Step("eval_original", ["eval", model, *ev_files, "--data", TEST]),
        Step("eval_result", ["eval", out, "--data", TEST, "--teacher", model, *teacher]),
    ]
    if has_recovered:
        chain.append(Step("eval_recovered", recovered))
    if more and has_recovered:
        chain += [Step("accelerate_more", [*accelerate, "--more"]),
                  Step("eval_result_more", ["eval", out, "--data", TEST, "--teacher", model, *teacher]),
                  Step("eval_recovered_more", recovered)]
    return chain


def keep(step: str, doc: dict) -> dict:
    if step in ("accelerate", "accelerate_more"):
        plan = doc.get("plan") or {}
        full = plan.get("slim_everything") or {}
        return {"result": doc.get("result"), "speedup": doc.get("speedup"), "only": plan.get("only"),
                "predicted_speedup": plan.get("predicted_speedup"), "exact_speedup": (plan.get("exact") or {}).get(
                    "speedup"), "slim_everything_speedup": full.get("speedup"),
                "slim_everything_agreement_ls": (full.get("fidelity") or {}).get("agreement"),
                "minutes": round(doc.get("seconds", 0) / 60, 1), "fidelity": doc.get("fidelity"),
                "recover": (doc.get("steps") or {}).get("recover"),
                "check": {k: v for k, v in ((doc.get("steps") or {}).get("check") or {}).items()
                          if k in ("chosen", "why", "allowed")}}
    return {k: doc.get(k) for k in ("top1", "agreement", "rel_error", "kl", "expected_drop")}


def table(rows: list[dict], machine: dict, images: str = IMAGES, extra: list[str] | None = None,
          argv: str = "") -> str:
    labels = "--labels" in (extra or [])
    lines = [f"# `rebirth accelerate` {'with ' + ' '.join(extra) if extra else 'at its defaults'}"
             + ("" if labels else " (label-free)"), "",
             f"Written by `python scripts/reproduce/accelerate_check.py{argv}` (issue 31): each net accelerated from "
             f"`{images}` " + ("with its labels" if labels else "without labels")
             + ", then evaluated on the 10,000 test images. " + steps.machine_line(machine),
             "", "| net | engine | result | speed-up (median) | exact net | slim everything | top-1 before -> after "
             "| agreement | minutes |", "|---|---|---|---:|---:|---:|---|---:|---:|"]
    def x(v):
        return "-" if v is None else f"{v:.2f}x"

    def p(v):
        return "-" if v is None else f"{100 * v:.2f} %"
    for r in rows:
        s = r["steps"]
        a, eo, er = s.get("accelerate", {}), s.get("eval_original", {}), s.get("eval_result", {})
        chosen = ", ".join(a.get("only") or []) or "no lossy"
        lines.append(f"| {r['net']} | {r['engine']} | {a.get('result')} ({chosen}) "
                     f"| {x(a.get('speedup'))} | {x(a.get('exact_speedup'))} | {x(a.get('slim_everything_speedup'))} "
                     f"| {p(eo.get('top1'))} -> {p(er.get('top1'))} | {p(er.get('agreement'))} | {a.get('minutes')} |")
    more = [r for r in rows if "accelerate_more" in r["steps"]]
    if more:
        lines += ["", "The recovery trained longer (`--more`, another `--time`); top-1 on the test images of the "
                  "recovered weights (what the check judged on the held-out images) and of the result:", "",
                  "| net | distillation iterations | check | speed-up (median) | recovered weights' top-1 "
                  "| result's top-1 | minutes |",
                  "|---|---|---|---|---|---|---:|"]
        for r in more:
            s = r["steps"]
            a, m = s.get("accelerate", {}), s.get("accelerate_more", {})

            def its(step):
                n = (step.get("recover") or {}).get("distill_iterations")
                return "-" if n is None else f"{n:,}"

            def top(name, s=s):
                v = s.get(name, {}).get("top1")
                return "-" if v is None else f"{100 * v:.2f} %"
            lines.append(f"| {r['net']} | {its(a)} -> {its(m)} | {(a.get('check') or {}).get('chosen')} -> "
                         f"{(m.get('check') or {}).get('chosen')} ({(m.get('check') or {}).get('why')}) "
                         f"| {x(a.get('speedup'))} -> {x(m.get('speedup'))} "
                         f"| {top('eval_recovered')} -> {top('eval_recovered_more')} "
                         f"| {top('eval_result')} -> {top('eval_result_more')} | {m.get('minutes')} |")
    lines += ["", "Commands (per net; `$WORK` is the work folder):", ""]
    return "\n".join(lines + steps.commands_md(rows)) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    steps.net_arguments(ap, ROOT / "out" / "accelerate_check", ",".join(NETS), IMAGES)
    ap.add_argument("--args", dest="extra", default="", help="more accelerate options, e.g. \"--speedup 3\"")
    ap.add_argument("--tag", default="", help="keep this run apart (work folders and result files)")
    ap.add_argument("--more", action="store_true", help="then train each recovery longer (accelerate --more)")
    a = ap.parse_args(argv)
    extra = shlex.split(a.extra)
    shown = "".join(f" {shlex.quote(x)}" for x in (argv if argv is not None else sys.argv[1:]))
    name_of = f"accelerate-{a.tag}" if a.tag else "accelerate"
    names = steps.net_names(a.nets, NETS)
    machine = steps.machine()
    rows = []
    for name in names:
        done = a.work / f"{name}-{a.engine}{'-' + a.tag if a.tag else ''}.json"
        doc = steps.run_chain(lambda n=name: chain(n, a.engine, a.time_text, a.work, a.images, extra, a.tag, a.more),
                              done,
                              "scripts/reproduce/accelerate_check.py", a.work, keep)
        rows.append({"net": name, "engine": a.engine, "steps": doc["steps"]})
        doc = {"machine": machine, "argv": shown.strip(), "rows": rows}       # no path of this machine's run:
        doc = json.loads(json.dumps(doc).replace(str(a.work.resolve()), "$WORK"))   # the work folder as $WORK
        steps.write_json(RESULTS / f"{name_of}.json", doc)
        (RESULTS / f"{name_of}.md").write_text(table(rows, machine, a.images, extra, shown))
    print(f"wrote {RESULTS / (name_of + '.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
