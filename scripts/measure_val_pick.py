#!/usr/bin/env python3
"""Which weights should a fine-tuning keep when its best on `--val` leads its last by less than
the validation set's noise? For each finished `rebirth finetune` folder given (or found under
--under) whose best validated iteration is neither its start nor its last, and whose lead over the
last is within one standard error (finetune.lead_within_noise), this evaluates the best-on-val
weights and the last iteration's snapshot on a labelled test SOURCE, and prints both and their
difference. The folders must keep their finetune.json as that run wrote it: runs finished before
`kept_iteration` (the last-within-noise rule) hold the best-on-val weights in weights.caffemodel.

    .venv/bin/python scripts/measure_val_pick.py --under out --data out/table3_t40/fmnist_test_lmdb

(the README's figures: the eleven such runs of the Table 3 work folders under out/). A copied run
folder counts once. About 1 min a folder for the Fashion-MNIST GoogLeNet-Slim nets on one core.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deeprebirth.learning.finetune import lead_within_noise  # noqa: E402


def candidate(folder: Path) -> dict | None:
    """The run's best and last validation records when the best leads within the noise."""
    try:
        doc = json.loads((folder / "finetune.json").read_text())
    except (OSError, ValueError):
        return None
    best, hist = doc.get("best"), doc.get("history") or []
    if not best or not hist or "highest" in best:     # "highest": kept by the newer rule already
        return None
    key = "val_top1" if "val_top1" in best else "val_agreement"
    last, start = hist[-1], doc.get("start_iteration", 0)
    if key not in last or best["iteration"] in (start, last["iteration"]):
        return None
    images = _count(doc["val"]) if doc.get("val") else 0
    if lead_within_noise(best[key], last[key], images) is None:
        return None
    snap = folder / f"finetune_iter_{last['iteration']}.caffemodel"
    if not snap.exists() or not (folder / "weights.caffemodel").exists():
        return None
    return {"folder": str(folder), "key": key, "images": images, "best_iteration": best["iteration"],
            "best_val": best[key], "last_iteration": last["iteration"], "last_val": last[key], "snapshot": snap}


def _count(source: str) -> int:
    """The number of images in the run's --val SOURCE."""
    from deeprebirth.learning import sources  # noqa: PLC0415
    return len(sources.open_source(source))


def top1(folder: Path, weights: Path, data: str) -> float:
    proc = subprocess.run([sys.executable, "-m", "deeprebirth.cli", "eval", str(folder), "-w", str(weights),
                           "--data", data, "--json"], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"rebirth eval {folder} failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout)["top1"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="*", type=Path, help="finetune output folders")
    ap.add_argument("--under", type=Path, help="also every finetune folder below this one")
    ap.add_argument("--data", required=True, help="a labelled test SOURCE for `rebirth eval`")
    args = ap.parse_args(argv)
    folders = list(args.folders)
    for folder in folders:
        if not (folder / "finetune.json").is_file():
            raise SystemExit(f"{folder}: no finetune.json (not a `rebirth finetune` output)")
    if args.under:
        folders += sorted(p.parent for p in args.under.rglob("finetune.json"))
    rows, seen = [], set()
    for c in filter(None, map(candidate, folders)):    # a copied run folder counts once
        run = (c["best_iteration"], c["best_val"], c["last_iteration"], c["last_val"])
        if run not in seen:
            seen.add(run)
            rows.append(c)
    print("| run | val | best on val (iteration: val) | last (iteration: val) | test top-1, best | "
          "test top-1, last | last - best |")
    print("|---|---|---|---|---:|---:|---:|")
    diffs = []
    for c in rows:
        folder = Path(c["folder"])
        b, last = top1(folder, folder / "weights.caffemodel", args.data), top1(folder, c["snapshot"], args.data)
        diffs.append(last - b)
        print(f"| {c['folder']} | {c['key'][4:]}, {c['images']:,} images | {c['best_iteration']:,}: "
              f"{100 * c['best_val']:.2f} % | {c['last_iteration']:,}: {100 * c['last_val']:.2f} % | "
              f"{100 * b:.2f} % | {100 * last:.2f} % | {100 * (last - b):+.2f} pt |", flush=True)
    if not diffs:
        print("\nno run whose best on --val led its last within the noise of its validation images")
    else:
        mean = sum(diffs) / len(diffs)
        sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / max(1, len(diffs) - 1))
        print(f"\n{len(diffs)} runs: the last weights read higher in {sum(d > 0 for d in diffs)}, "
              f"by {100 * mean:+.2f} pt on average (sd {100 * sd:.2f} pt)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
