r"""Slim-Tucker from a finished Slim net, by the `rebirth` commands a user runs: the Table 3 row
Slim-Tucker (docs/tucker.md, "The recipe, as the commands you run").

    OPENBLAS_NUM_THREADS=1 .venv/bin/python scripts/reproduce/slim_tucker.py WORK --time 0.5 \
        --iters 30000 --longer 45000

(row T6 of Table 3, `models/fmnist_googlenet_slim_tucker`: about 70 min on one core, 45 min of it
the first 30,000 iterations)

runs, in OUT (each step skipped when its record is there, so a stopped run goes on where it was):

1. ``rebirth tucker SLIM/deploy.prototxt SLIM/weights.caffemodel --time T [--rank-floor F]``
   (``tucker/``): the Slim net decomposed under a time budget, new layers from the decomposition;
2. ``rebirth relearn tucker --images TRAIN`` (``relearn/``): each decomposed layer re-learned
   against the Slim net's feature map at its output, relearn's defaults, no labels;
3. ``rebirth slim ... --rules merge_concat_1x1`` (``merged/``): each inception's branch-end 1x1
   convolutions merged into one after its Concat (exact, block-diagonal weights; fewer layers);
4. ``rebirth finetune merged --distill --with-labels --teacher TEACHER --iters N --val VAL``
   (``distill/``): the whole net trained against the teacher's logits and the labels, finetune's
   defaults otherwise (it keeps the best weights on VAL within the validation noise);
5. ``rebirth eval`` of those weights on the test images (read once, at the end);
6. with ``--longer N``, step 4 resumed from its last snapshot to N iterations (``distill_long/``),
   and its weights read on the test images.

OUT/slim_tucker.json gets each step's seconds and the top-1 figures. The Slim net (default
``models/fmnist_googlenet_slim``, Table 3's labelled Slim row) and the teacher (default
``models/fmnist_googlenet``) are any pair a user has: a folder with deploy.prototxt,
weights.caffemodel and train_val.prototxt, and a deploy/weights pair.

``--ship`` then writes the result as ``models/fmnist_googlenet_slim_tucker/`` (deploy, weights, the
train_val with the shipped teacher's data layers, README.md with the test top-1 and a speed-up
timed against the teacher by `rebirth bench`), through the sibling module ship.py: into a
temporary folder renamed over the old one, and only over a folder one of our scripts made.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import ship as ship_mod
from steps import ROOT, Step, read_record, run_chain

MADE_BY = "scripts/reproduce/slim_tucker.py"


def commands(out: Path, args) -> list[Step]:
    """The chain's steps (name, rebirth command, the record that marks it done), in order: pure,
    so the chain is tested without running it."""
    slim, tk, rel, mer, dis = args.slim, out / "tucker", out / "relearn", out / "merged", out / "distill"
    floor = [] if args.rank_floor is None else ["--rank-floor", f"{args.rank_floor:g}"]
    teacher = [str(args.teacher[0]), "--teacher-weights", str(args.teacher[1])]
    return [
        Step("tucker", ["tucker", str(slim / "deploy.prototxt"), str(slim / "weights.caffemodel"), "--time",
                        f"{args.time:g}", *floor, "--train-val", str(slim / "train_val.prototxt"), "-o", str(tk)],
             tk / "report.json"),
        Step("relearn", ["relearn", str(tk), "--images", args.train, "-o", str(rel)], rel / "relearn.json"),
        Step("merge", ["slim", str(tk / "deploy.prototxt"), "-w", str(rel / "weights.caffemodel"), "--train-val",
                       str(tk / "train_val.prototxt"), "--rules", "merge_concat_1x1", "-o", str(mer)],
             mer / "report.json"),
        Step("distill", ["finetune", str(mer), "--weights", str(mer / "init.caffemodel"), "--distill",
                         "--with-labels", "--teacher", *teacher, "--iters", str(args.iters), "--train", args.train,
                         "--val", args.val, "-o", str(dis)], dis / "finetune.json"),
        Step("test", ["eval", str(mer / "deploy.prototxt"), "-w", str(dis / "weights.caffemodel"), "--train-val",
                      str(mer / "train_val.prototxt"), "--data", args.test]),
    ] + (longer_commands(out, args) if args.longer else [])


def longer_commands(out: Path, args) -> list[Step]:
    """``--longer N``: the distillation resumed from its last snapshot to N iterations, as the
    run's own `resume with:` line says (its batch and rate; Caffe's schedule is computed from the
    new max_iter, so the rate restarts and is annealed to 0 again), into ``distill_long/``; then
    the test images read again. Batch and rate come from distill/finetune.json once it exists."""
    mer, dis, lng = out / "merged", out / "distill", out / "distill_long"
    ran = json.loads((dis / "finetune.json").read_text()) if (dis / "finetune.json").exists() else {}
    resume = ["-b", str(ran["batch"]), "--base-lr", f"{ran['base_lr']:.6g}"] if ran else []
    return [
        Step("distill_long", ["finetune", str(mer), "--resume", str(dis / f"finetune_iter_{args.iters}.solverstate"),
                              "--distill", "--with-labels", "--teacher", str(args.teacher[0]), "--teacher-weights",
                              str(args.teacher[1]), *resume, "--iters", str(args.longer), "--train", args.train,
                              "--val", args.val, "-o", str(lng)], lng / "finetune.json"),
        Step("test_long", ["eval", str(mer / "deploy.prototxt"), "-w", str(lng / "weights.caffemodel"), "--train-val",
                           str(mer / "train_val.prototxt"), "--data", args.test]),
    ]


def kept(step: str, got: dict) -> dict:
    """What the done-record keeps of a step's JSON."""
    if step == "tucker":
        return {"budget_cost": got["tucker"]["budget_cost"], "rank_floor": got["tucker"]["rank_floor"]}
    if step in ("distill", "distill_long"):
        return {"best": got.get("best")}
    if step in ("test", "test_long"):
        return {"top1": got["top1"], "top5": got["top5"], "images": got["images"]}
    return {}


def ship(out: Path, args, doc: dict, runs: int, models: Path | None = None) -> Path:
    """models/fmnist_googlenet_slim_tucker/ (under ``models``) from OUT's merged net and distilled
    weights."""
    last = "test_long" if args.longer else "test"
    merged, test = out / "merged", doc["steps"][last]
    floor = json.loads((out / "tucker" / "report.json").read_text())["tucker"]["rank_floor"]
    row = (f"row {args.row}: `rebirth tucker --time {args.time:g}` (rank floor {floor:g}) of {args.slim.name}, "
           f"relearned, merged, then {args.iters:,} iterations of distillation with labels against the teacher"
           + (f", resumed to {args.longer:,}" if args.longer else ""))
    how = ("GoogLeNet-Slim-Tucker: the Slim net (its global average pooling already folded into the classifier "
           "by `rebirth slim`'s default rule `pool_into_fc`, exact), decomposed (`rebirth tucker --time`, with "
           "a rank floor), relearned against that Slim net (`rebirth relearn`, no labels), each inception's "
           "branch-end 1x1 convolutions merged into one after its Concat (rule `merge_concat_1x1`, exact), then "
           "distilled with labels against the teacher (`rebirth finetune --distill --with-labels --teacher`).")
    train_val = ship_mod.shipped_train_val(merged / "train_val.prototxt",
                                           ROOT / "models" / "fmnist_googlenet_train_val.prototxt", MADE_BY)
    return ship_mod.ship_folder("fmnist_googlenet_slim_tucker", merged / "deploy.prototxt",
                                out / ("distill_long" if args.longer else "distill") / "weights.caffemodel",
                                train_val, how, MADE_BY, row, test, (args.teacher[0], args.teacher[1]),
                                "fmnist_googlenet", runs, models)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="work folder (made; a stopped run resumes in it)")
    ap.add_argument("--slim", type=Path, default=ROOT / "models" / "fmnist_googlenet_slim",
                    help="the Slim net's folder: deploy.prototxt, weights.caffemodel, train_val.prototxt")
    ap.add_argument("--teacher", nargs=2, type=Path, metavar=("DEPLOY", "WEIGHTS"),
                    default=[ROOT / "models" / "fmnist_googlenet.prototxt",
                             ROOT / "models" / "fmnist_googlenet.caffemodel"])
    ap.add_argument("--time", type=float, default=0.5, help="`rebirth tucker --time` budget")
    ap.add_argument("--rank-floor", type=float, default=None, help="`rebirth tucker --rank-floor` (default: tucker's)")
    ap.add_argument("--iters", type=int, default=24000, help="iterations of the distillation with labels")
    ap.add_argument("--longer", type=int, default=0, metavar="N",
                    help="then resume the distillation from its last snapshot to N iterations (distill_long/)")
    ap.add_argument("--train", default="fashion-mnist:train[:58000]", help="training images (SOURCE)")
    ap.add_argument("--val", default="fashion-mnist:train[58000:]", help="held-out images that pick the weights")
    ap.add_argument("--test", default="fashion-mnist:test", help="the images of the final top-1")
    ap.add_argument("--ship", action="store_true",
                    help="then write the result as models/fmnist_googlenet_slim_tucker/ (README: the test top-1, a "
                         "speed-up timed against the teacher)")
    ap.add_argument("--row", default="T5", help="with --ship: the row's name in Table 3")
    ap.add_argument("--bench-runs", type=int, default=100, help="with --ship: interleaved timed runs")
    args = ap.parse_args(argv)
    args.slim, args.out = args.slim.resolve(), args.out.resolve()
    args.teacher = [p.resolve() for p in args.teacher]
    for need in [args.slim / n for n in ("deploy.prototxt", "weights.caffemodel", "train_val.prototxt")] + args.teacher:
        if not need.is_file():
            raise SystemExit(f"{need}: no such file (--slim: a folder with deploy.prototxt, weights.caffemodel and "
                             "train_val.prototxt; --teacher: DEPLOY WEIGHTS)")
    done = args.out / "slim_tucker.json"
    if done.exists():
        read_record(done, MADE_BY)          # a file of that name we did not write: stop before anything is made
    args.out.mkdir(parents=True, exist_ok=True)
    doc = run_chain(lambda: commands(args.out, args), done, MADE_BY, work=args.out, keep=kept)
    test = doc["steps"]["test_long" if args.longer else "test"]
    print(f"Slim-Tucker (--time {args.time:g}): top-1 {100 * test['top1']:.2f}% on {test['images']} test images; "
          f"{done}")
    if args.ship:
        print(f"shipped {ship(args.out, args, doc, args.bench_runs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
