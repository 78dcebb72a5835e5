"""The paper's Table 3 on Fashion-MNIST: the shipped slim nets' top-1 at their speed, measured.

    .venv/bin/python scripts/reproduce/table3.py --eval-only      # the shipped models/ folders: 1-2 min
    .venv/bin/python scripts/reproduce/table3.py [--work WORK]    # the chains that made them: about 4-5 h

Writes docs/results/table3.md and table3.json: each row's top-1 and top-5 on the 10,000 test
images (`rebirth eval --json`), its speed-up against its teacher (one side-by-side `rebirth bench
--json` per teacher: best, median and paired ratios) and blob memory, the commands that measured
them and the machine they ran on.

``--eval-only`` measures the shipped folders (models/fmnist_googlenet_slim = row 9RL+,
_slim_labelfree = 9R, _slim_tucker = T6, fmnist_resnet_slim = the BatchNorm row) and their
teachers. Without it the script first runs, in WORK (default out/table3, git-ignored; resumable:
one done-record, WORK/table3_steps.json, and each step skipped when its output is there), the
`rebirth` commands that made them from the shipped teachers (scripts/reproduce/teachers.py trains
those), then measures what they made:

* data: Fashion-MNIST's 60,000 training and 10,000 test images resized to 64x64 as two LMDBs
  (WORK/fmnist_train_lmdb: its first 58,000 images train, the last 2,000 pick the weights);
* row 9R (label-free): `rebirth slim` of the teacher at its defaults (all nine substructures at
  once, the global pooling folded into the classifier), then `rebirth recover` (relearn of every
  unit against the teacher, then 20,000 distillation iterations; no label read);
* row 9RL: 9R's relearned weights, 20,000 iterations of `rebirth finetune --distill --with-labels`;
* row 9RL+: 9RL resumed from its last snapshot to 40,000 iterations (models/fmnist_googlenet_slim);
* row T6: scripts/reproduce/slim_tucker.py of that Slim net (its own script: run it with
  ``--slim WORK/slim`` into WORK/slim_tucker, then run this one again to table it);
* the BatchNorm row: `rebirth slim` of models/fmnist_resnet (BatchNorm folded, conv1 + pool1
  merged), `rebirth relearn`, 1,000 iterations of `rebirth finetune` with labels.

``--ship`` then writes models/fmnist_googlenet_slim, _slim_labelfree and fmnist_resnet_slim from
WORK (the sibling module ship.py). The per-layer rows of the README's table (steps 1-9, one
substructure more per step, in two chains) and the experiments that shipped nothing are not
rerun here; git holds the script that made them (scripts/reproduce_table3.py before 2026-12).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import fmnist
import ship as ship_mod
from steps import RESULTS, ROOT, Step, machine, machine_line, md_cell, rebirth, run_chain, shown, write_json

MADE_BY = "scripts/reproduce/table3.py"
MODELS = ROOT / "models"
TEACHER = (MODELS / "fmnist_googlenet.prototxt", MODELS / "fmnist_googlenet.caffemodel",
           MODELS / "fmnist_googlenet_train_val.prototxt")
BN_TEACHER = (MODELS / "fmnist_resnet.prototxt", MODELS / "fmnist_resnet.caffemodel",
              MODELS / "fmnist_resnet_train_val.prototxt")
TEST = "fashion-mnist:test"
PAPER = ("The paper's Table 3 (GoogLeNet on ImageNet, top-1 / top-5): 68.72 / 88.89 % before, 68.03 / 88.43 % "
         "after its step 9 (0.69 pt lost), Slim-Tucker 66.71 %; each step fine-tuned for about 90,000 iterations.")


@dataclass
class Row:
    """One row of the table: a net (``model``: a folder or a deploy prototxt, with ``weights`` and
    ``train_val`` when not a folder) timed against the first row of its ``family``."""
    row: str
    what: str
    model: Path
    weights: Path | None = None
    train_val: Path | None = None
    family: str = "googlenet"
    result: dict = field(default_factory=dict)


def shipped_rows() -> list[Row]:
    """The shipped folders and their teachers (``--eval-only``)."""
    return [
        Row("teacher", "GoogLeNet teacher (`models/fmnist_googlenet.*`, scripts/reproduce/teachers.py)",
            *TEACHER),
        Row("9RL+", "GoogLeNet-Slim, labels: `rebirth slim`, relearn, 20,000 iterations of distillation with labels, "
                    "resumed to 40,000 (`models/fmnist_googlenet_slim`)", MODELS / "fmnist_googlenet_slim"),
        Row("9R", "GoogLeNet-Slim, label-free: `rebirth slim`, `rebirth recover` (relearn, 20,000 distillation "
                  "iterations) (`models/fmnist_googlenet_slim_labelfree`)", MODELS / "fmnist_googlenet_slim_labelfree"),
        Row("T6", "GoogLeNet-Slim-Tucker: 9RL+'s net, `rebirth tucker --time 0.5`, relearn, merge_concat_1x1, "
                  "45,000 iterations of distillation with labels against the teacher "
                  "(`models/fmnist_googlenet_slim_tucker`, scripts/reproduce/slim_tucker.py)",
            MODELS / "fmnist_googlenet_slim_tucker"),
        Row("BN teacher", "BatchNorm ResNet teacher (`models/fmnist_resnet.*`)", *BN_TEACHER, family="resnet"),
        Row("BN", "ResNet-Slim: BatchNorm folded, conv1 + pool1 merged, relearn, 1,000 iterations with labels "
                  "(`models/fmnist_resnet_slim`)", MODELS / "fmnist_resnet_slim", family="resnet"),
    ]


# ----------------------------------------------------------------------------------------------
# the chains (full mode)


def chain(work: Path, args) -> list[Step]:
    """The `rebirth` commands of rows 9R, 9RL, 9RL+ and BN, in order (pure but for reading 9RL's
    finetune.json once it exists: 9RL+ resumes with its batch and rate)."""
    lmdb = str(work / fmnist.TRAIN_LMDB)
    n = args.train_images or 60_000
    held = n - min(2000, n // 10)            # the last 2,000 training images pick the weights
    train, val = f"{lmdb}[:{held}]", f"{lmdb}[{held}:]"
    teacher_w = str(args.teacher_weights)
    slim, rec, ld = work / "slim", work / "recover", work / "labels_distill"
    bn = work / "bn"
    ran_file = ld / "finetune" / "finetune.json"
    ran = json.loads(ran_file.read_text()) if ran_file.exists() else {}
    resume = ["-b", str(ran["batch"]), "--base-lr", f"{ran['base_lr']:.6g}"] if ran else []
    return [
        Step("slim", ["slim", str(TEACHER[0]), "-w", teacher_w, "--train-val", str(TEACHER[2]), "-o", str(slim)],
             slim / "report.json"),
        Step("9R", ["recover", str(slim), "--images", train, "--val", val, "--iters", str(args.recover_iters),
                    "-o", str(rec)], rec / "recover.json"),
        Step("9RL", ["finetune", str(slim), "--weights", str(rec / "relearn" / "weights.caffemodel"), "--distill",
                     "--with-labels", "--iters", str(args.labels_iters), "--train", train, "--val", val,
                     "-o", str(ld / "finetune")], ld / "finetune" / "finetune.json"),
        Step("9RL+", ["finetune", str(slim), "--resume",
                      str(ld / "finetune" / f"finetune_iter_{args.labels_iters}.solverstate"), "--distill",
                      "--with-labels", *resume, "--iters", str(args.labels_total), "--train", train, "--val", val,
                      "-o", str(ld / "finetune_long")], ld / "finetune_long" / "finetune.json"),
        Step("BN slim", ["slim", str(BN_TEACHER[0]), "-w", str(BN_TEACHER[1]), "--train-val", str(BN_TEACHER[2]),
                         "-o", str(bn / "slim")], bn / "slim" / "report.json"),
        Step("BN relearn", ["relearn", str(bn / "slim"), "--images", lmdb, "--count", "1000", "--iters", "200",
                            "--seed", "5", "-o", str(bn / "relearn")], bn / "relearn" / "relearn.json"),
        Step("BN", ["finetune", str(bn / "slim"), "--weights", str(bn / "relearn" / "weights.caffemodel"),
                    "--iters", str(args.bn_iters), "--train", lmdb, "--seed", "5", "-o", str(bn / "finetune")],
             bn / "finetune" / "finetune.json"),
    ]


def work_rows(work: Path, args) -> list[Row]:
    """The nets the chains made in WORK (and slim_tucker.py's, when it has run in WORK/slim_tucker)."""
    slim = work / "slim"
    rows = [
        Row("teacher", "GoogLeNet teacher", TEACHER[0], args.teacher_weights, TEACHER[2]),
        Row("9R", "label-free: `rebirth slim`, `rebirth recover` (relearn, then "
                  f"{args.recover_iters:,} distillation iterations)", slim / "deploy.prototxt",
            work / "recover" / "weights.caffemodel", slim / "train_val.prototxt"),
        Row("9RL", f"9R's relearn, then {args.labels_iters:,} iterations of distillation with labels",
            slim / "deploy.prototxt", work / "labels_distill" / "finetune" / "weights.caffemodel",
            slim / "train_val.prototxt"),
        Row("9RL+", f"9RL resumed from its last snapshot to {args.labels_total:,} iterations",
            slim / "deploy.prototxt", work / "labels_distill" / "finetune_long" / "weights.caffemodel",
            slim / "train_val.prototxt"),
    ]
    st = work / "slim_tucker"
    for weights in (st / "distill_long" / "weights.caffemodel", st / "distill" / "weights.caffemodel"):
        if weights.exists():
            rows.append(Row("T6" if "long" in weights.parent.name else "T5",
                            f"slim_tucker.py of 9RL+'s net ({weights.parent.name}/)", st / "merged" / "deploy.prototxt",
                            weights, st / "merged" / "train_val.prototxt"))
            break
    bn = work / "bn"
    rows += [Row("BN teacher", "BatchNorm ResNet teacher", *BN_TEACHER, family="resnet"),
             Row("BN", f"`rebirth slim`, relearn, {args.bn_iters:,} iterations with labels",
                 bn / "slim" / "deploy.prototxt", bn / "finetune" / "weights.caffemodel",
                 bn / "slim" / "train_val.prototxt", family="resnet")]
    return rows


def slim_folder(work: Path) -> None:
    """WORK/slim: the one-go Slim net (deploy, train_val) with 9RL+'s weights as weights.caffemodel,
    the folder slim_tucker.py's ``--slim`` takes."""
    import shutil  # noqa: PLC0415

    weights = work / "labels_distill" / "finetune_long" / "weights.caffemodel"
    if weights.exists():
        shutil.copyfile(weights, work / "slim" / "weights.caffemodel")


# ----------------------------------------------------------------------------------------------
# measuring


def eval_cmd(r: Row, limit: int | None) -> list[str]:
    cmd = ["eval", str(r.model)]
    cmd += ["-w", str(r.weights)] if r.weights else []
    cmd += ["--train-val", str(r.train_val)] if r.train_val else []
    return cmd + ["--data", TEST] + (["--limit", str(limit)] if limit else [])


def bench_cmd(rows: list[Row], runs: int) -> list[str]:
    """One side-by-side `rebirth bench` of a family: its teacher first."""
    cmd = ["bench", *(str(r.model) for r in rows)]
    if all(r.weights or r.model.is_dir() for r in rows):
        for r in rows:
            cmd += ["-w", str(r.weights or r.model / "weights.caffemodel")]
    return cmd + ["--runs", str(runs)]


def measure(rows: list[Row], args, work: Path | None) -> list[dict]:
    """Evaluate every row, then time each family side by side; fills ``Row.result`` and returns
    the bench commands with their settings."""
    for r in rows:
        cmd = eval_cmd(r, args.limit)
        t0 = time.time()
        got = rebirth(cmd, work=work)
        r.result["eval"] = {"command": shown(cmd + ["--json"], work), "top1": got["top1"], "top5": got["top5"],
                            "images": got["images"], "seconds": round(time.time() - t0, 1)}
    benches = []
    for family in dict.fromkeys(r.family for r in rows):
        members = [r for r in rows if r.family == family]
        cmd = bench_cmd(members, args.bench_runs)
        doc = rebirth(cmd, work=work)
        for r, m in zip(members, doc["models"]):
            ratio = doc["ratios"]["models"][m["model"]]
            r.result["speed"] = {"best_ms": m["best_ms"], "median_ms": m["median_ms"],
                                 "speedup_best": 1 / ratio["best"], "speedup_median": 1 / ratio["median"],
                                 "speedup_paired": 1 / ratio["paired_median"], "memory_bytes": m["memory_bytes"]}
        benches.append({"family": family, "command": shown(cmd + ["--json"], work), "runs": args.bench_runs,
                        "device": doc.get("device_description")})
    return benches


# ----------------------------------------------------------------------------------------------
# the table


def markdown(rows: list[Row], benches: list[dict], mach: dict, mode: str, chain_steps: dict | None,
             script_cmd: str) -> str:
    """docs/results/table3.md."""
    lines = ["# Table 3 on Fashion-MNIST: speed at accuracy (generated)", "",
             f"Written by `{script_cmd}` ({mode}); do not edit: rerun it. Top-1 and top-5 on the Fashion-MNIST "
             "test images by `rebirth eval --json`; speed-ups against the family's teacher at batch 1 from one "
             "side-by-side `rebirth bench --json` per teacher (best run / median run / median of run-by-run "
             "ratios; Caffe on the CPU, random input, the nets' own weights); blob memory as `rebirth inspect` "
             "counts it.", "", machine_line(mach), "",
             "| row | net | top-1 | top-5 | test images | speed-up (best / median / paired) | median ms "
             "| blob memory |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        e, s = r.result["eval"], r.result.get("speed")
        speed = "1.00x (teacher)" if r.row.endswith("teacher") else (
            f"{s['speedup_best']:.2f}x / {s['speedup_median']:.2f}x / {s['speedup_paired']:.2f}x" if s else "-")
        lines.append(f"| {r.row} | {md_cell(r.what)} | {100 * e['top1']:.2f} % | {100 * e['top5']:.2f} % | "
                     f"{e['images']:,} | {speed} | {s['median_ms']:.2f} | {s['memory_bytes'] / 1024:.0f} KB |")
    lines += ["", PAPER, "", "The commands (from the repository's root, in the project's virtualenv (`make install`), "
              "whose `python` and `rebirth` they are):", "", "```sh"]
    lines += [r.result["eval"]["command"] for r in rows]
    lines += [b["command"] for b in benches] + ["```"]
    if chain_steps:
        lines += ["", "The chains that made the nets (`$WORK` is the script's work folder; each step's wall time):",
                  "", "```sh"]
        for name, step in chain_steps.items():
            lines += [f"# {name}: {step['seconds']:.0f} s", step["command"]]
        lines.append("```")
    else:
        lines += ["", "How the shipped nets are made again (`make reproduce`, hours): `scripts/reproduce/table3.py` "
                  "without `--eval-only` runs these commands in its work folder `$WORK` (rows 9R, 9RL, 9RL+ and BN; "
                  "9RL+ resumes 9RL with the batch and base_lr its finetune.json gives, `-b 64 --base-lr 0.01`), "
                  "then `scripts/reproduce/slim_tucker.py` the Slim-Tucker chain of row T6:", "", "```sh"]
        lines += recipe()
        lines.append("```")
    return "\n".join(lines) + "\n"


def recipe() -> list[str]:
    """The commands of the full reproduction, as shown (from the defaults of both scripts)."""
    import argparse  # noqa: PLC0415

    import slim_tucker  # noqa: PLC0415

    work = (ROOT / "out" / "table3").resolve()
    args = argparse.Namespace(train_images=None, teacher_weights=TEACHER[1], recover_iters=20000, labels_iters=20000,
                              labels_total=40000, bn_iters=1000)
    lines = [f"# {s.name}\n" + shown(s.cmd, work) for s in chain(work, args)]
    st = argparse.Namespace(slim=work / "slim", rank_floor=None, time=0.5, iters=30000, longer=45000,
                            teacher=[TEACHER[0], TEACHER[1]], train="fashion-mnist:train[:58000]",
                            val="fashion-mnist:train[58000:]", test=TEST)
    lines.append("# T6: table3.py has copied 9RL+'s weights (labels_distill/finetune_long/weights.caffemodel) to "
                 "$WORK/slim/weights.caffemodel; then\npython scripts/reproduce/slim_tucker.py $WORK/slim_tucker "
                 "--slim $WORK/slim --time 0.5 --iters 30000 --longer 45000 --row T6      # runs:")
    lines += [f"# T6 {s.name}\n" + shown(s.cmd, work) for s in slim_tucker.commands(work / "slim_tucker", st)]
    return lines


def write_results(out: Path, rows: list[Row], benches: list[dict], mach: dict, mode: str,
                  chain_steps: dict | None, script_cmd: str) -> None:
    write_json(out / "table3.json", {
        "made_by": MADE_BY, "command": script_cmd, "mode": mode, "machine": mach,
        "rows": [{"row": r.row, "what": r.what, "family": r.family, **r.result} for r in rows],
        "benches": benches, "chain": chain_steps or {}})
    md = markdown(rows, benches, mach, mode, chain_steps, script_cmd)
    tmp = out / ".table3.md.tmp"
    tmp.write_text(md)
    tmp.replace(out / "table3.md")
    print(md)


# ----------------------------------------------------------------------------------------------
# shipping


def ship(work: Path, rows: list[Row], runs: int, models: Path | None = None) -> list[Path]:
    """models/fmnist_googlenet_slim (9RL+), _slim_labelfree (9R) and fmnist_resnet_slim (BN) from
    WORK's nets, each timed against its teacher."""
    by = {r.row: r for r in rows}
    tv = ship_mod.shipped_train_val
    teacher = (TEACHER[0], by["teacher"].weights)
    made = []
    for name, key, how, data_from, tch, bench_name in (
            ("fmnist_googlenet_slim", "9RL+",
             "GoogLeNet-Slim of the Fashion-MNIST teacher (`models/fmnist_googlenet.*`), recovered with labels: "
             "`rebirth slim` at its defaults, relearn of each unit against the teacher's feature maps (as `rebirth "
             "recover` does), then `rebirth finetune --distill --with-labels`: the teacher's logits and the labels, "
             "the two losses summed. `rebirth slim`'s default rules have already folded its global average pooling "
             "into the classifier (rule `pool_into_fc`, exact).", TEACHER[2], teacher, "fmnist_googlenet"),
            ("fmnist_googlenet_slim_labelfree", "9R",
             "GoogLeNet-Slim recovered without reading a label (`rebirth recover`): relearn of each unit against the "
             "teacher's feature maps, then distillation of the whole net against the teacher's logits. `rebirth "
             "slim`'s default rules have already folded its global average pooling into the classifier (rule "
             "`pool_into_fc`, exact).", TEACHER[2], teacher, "fmnist_googlenet"),
            ("fmnist_resnet_slim", "BN",
             "The BatchNorm ResNet teacher (`models/fmnist_resnet.*`) slimmed: its BatchNorm/Scale folded into the "
             "convolutions, conv1 + pool1 merged and relearned, its global average pooling folded into the "
             "classifier (rule `pool_into_fc`, exact), then fine-tuned with labels at the defaults.", BN_TEACHER[2],
             BN_TEACHER[:2], "models/fmnist_resnet.prototxt")):
        r = by[key]
        made.append(ship_mod.ship_folder(name, r.model, r.weights, tv(r.train_val, data_from, MADE_BY), how, MADE_BY,
                                         f"row {key}: {r.what}", r.result["eval"], tch, bench_name, runs, models))
    return made


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval-only", action="store_true",
                    help="measure the shipped models/ folders and write the table (1-2 min); no training")
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "table3",
                    help="work folder of the chains (default: out/table3, git-ignored)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where table3.md and table3.json go")
    ap.add_argument("--teacher-weights", type=Path, default=TEACHER[1], help="the GoogLeNet teacher's weights")
    ap.add_argument("--recover-iters", type=int, default=20000, help="row 9R's distillation iterations")
    ap.add_argument("--labels-iters", type=int, default=20000, help="row 9RL's iterations")
    ap.add_argument("--labels-total", type=int, default=40000,
                    help="row 9RL+: 9RL resumed to this many iterations")
    ap.add_argument("--bn-iters", type=int, default=1000, help="the BatchNorm row's fine-tuning iterations")
    ap.add_argument("--train-images", type=int, help="put only the first N training images in the LMDB (small runs)")
    ap.add_argument("--limit", type=int, help="evaluate on the first N test images only (default: all 10,000)")
    ap.add_argument("--bench-runs", type=int, default=100, help="interleaved timed runs of each family's bench")
    ap.add_argument("--ship", action="store_true",
                    help="then write models/fmnist_googlenet_slim, _slim_labelfree and fmnist_resnet_slim from WORK")
    args = ap.parse_args(argv)
    args.work, args.teacher_weights = args.work.resolve(), args.teacher_weights.resolve()
    script_cmd = shown([MADE_BY, *(argv if argv is not None else sys.argv[1:])], args.work, "python")
    mach = machine()
    if args.eval_only:
        if args.ship:
            raise SystemExit("--ship writes the nets of a full run (WORK), not the shipped ones: leave out --eval-only")
        rows, work, chain_steps, mode = shipped_rows(), None, None, "the shipped models/ folders"
    else:
        work = args.work
        work.mkdir(parents=True, exist_ok=True)
        fmnist.make_lmdbs(work, {"train": args.train_images})
        doc = run_chain(lambda: chain(work, args), work / "table3_steps.json", MADE_BY, work=work)
        slim_folder(work)
        rows, chain_steps, mode = work_rows(work, args), doc["steps"], "the chains, run in $WORK"
    benches = measure(rows, args, work)
    args.results.mkdir(parents=True, exist_ok=True)
    write_results(args.results, rows, benches, mach, mode, chain_steps, script_cmd)
    if args.ship:
        ship(work, rows, args.bench_runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
