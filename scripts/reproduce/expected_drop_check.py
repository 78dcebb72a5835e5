#!/usr/bin/env python
"""How well `rebirth eval --teacher`'s label-free ``expected_drop`` estimates the top-1 a model
really loses, on labelled images (issue 31: a label-free promise in top-1 points).

    .venv/bin/python scripts/reproduce/expected_drop_check.py RUN_DIR [RUN_DIR ...] [--data fashion-mnist:test]
                                                              [--tag NAME]

Each RUN_DIR is a folder `rebirth accelerate` wrote (accelerate_check.py's WORK/NET-ENGINE-TAG):
its report names the original. Every set of weights the run made is evaluated against the original
on ``--data`` (labelled): relearn's least squares, each distillation snapshot, and the result. Per
row: images changing class, the true top-1 drop (the original's top-1 minus the model's) and the
estimate made without the labels (expected_drop: p_t(teacher's class) - p_t(model's class),
averaged). Writes docs/results/expected-drop[-NAME].{md,json}.

Duration: about 15 s of Caffe per set of weights on the 10,000 Fashion-MNIST test images.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from deeprebirth.errors import RebirthError  # noqa: E402
from deeprebirth.learning import evaluate as ev  # noqa: E402
from deeprebirth.learning import sources  # noqa: E402

RESULTS = ROOT / "docs" / "results"


def checkpoints(run: Path) -> list[tuple[str, Path, Path]]:
    """(label, deploy, weights) of every set of weights the accelerate run in ``run`` made."""
    rec = run / "slim" / "recovered"
    out = []
    if (rec / "relearn" / "weights.caffemodel").is_file():
        out.append(("relearn", rec / "deploy.prototxt", rec / "relearn" / "weights.caffemodel"))
    snaps = sorted(rec.glob("finetune_iter_*.caffemodel"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    out += [(p.stem.replace("finetune_", ""), rec / "deploy.prototxt", p) for p in snaps]
    if (run / "weights.caffemodel").is_file():
        out.append(("result", run / "deploy.prototxt", run / "weights.caffemodel"))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--data", default="fashion-mnist:test")
    ap.add_argument("--tag", default=None)
    args = ap.parse_args(argv)
    try:
        sources.require_labels(sources.open_source(args.data), "the true drop (--data)")
        for run in args.runs:
            if not (run / "report.json").is_file() or not checkpoints(run):
                raise RebirthError(f"{run}: not a folder `rebirth accelerate` wrote (no report.json or no weights)")
    except RebirthError as e:
        print(f"expected_drop_check: error: {e}", file=sys.stderr)
        return 1
    rows = []
    for run in args.runs:
        acc = json.loads((run / "report.json").read_text())["accelerate"]
        teacher, tw = acc["model"], acc["weights"]
        tv = run / "train_val.prototxt"           # the result's: the original's preprocessing
        for label, deploy, weights in checkpoints(run):
            r = ev.evaluate_command(str(deploy), str(weights), args.data, teacher=teacher, teacher_weights=tw,
                                    train_val=str(tv))
            row = {"run": run.name, "weights": label, "images": r["images"],
                   "changed_class_pct": round(100 * (1 - r["agreement"]), 2),
                   "true_drop_pt": round(100 * (r["teacher_top1"] - r["top1"]), 2),
                   "expected_drop_pt": round(100 * r["expected_drop"], 2)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    name = "expected-drop" + (f"-{args.tag}" if args.tag else "")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"argv": sys.argv[1:], "rows": rows}, indent=1) + "\n")
    true = np.array([r["true_drop_pt"] for r in rows])
    est = np.array([r["expected_drop_pt"] for r in rows])
    flips = np.array([r["changed_class_pct"] for r in rows])
    lines = ["# The label-free estimate of top-1 lost (`expected_drop`) against the true drop", "",
             f"Written by `python scripts/reproduce/expected_drop_check.py {' '.join(sys.argv[1:])}`: every set of "
             f"weights of each `rebirth accelerate` run, evaluated against its original on `{args.data}`.", "",
             "| run | weights | changed class | true top-1 drop | expected_drop (no labels) |",
             "|---|---|---:|---:|---:|"]
    lines += [f"| {r['run']} | {r['weights']} | {r['changed_class_pct']:.2f} % | {r['true_drop_pt']:+.2f} pt | "
              f"{r['expected_drop_pt']:+.2f} pt |" for r in rows]
    if len(rows):
        lines += ["", f"{len(rows)} sets of weights: the estimate is at least the true drop in "
                  f"{int(np.sum(est >= true))}; it is below it by {float(np.max(true - est, initial=0)):.2f} pt at "
                  f"most; on average it is {float(np.mean(est / np.maximum(flips, 1e-9))):.2f} of the share of "
                  "images changing class.", ""]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
