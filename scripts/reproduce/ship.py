"""A finished net of the reproduction written as a models/ folder (``--ship`` of table3.py and
slim_tucker.py): deploy.prototxt, weights.caffemodel, train_val.prototxt and README.md (its test
top-1 and its speed-up timed by `rebirth bench` against its teacher), into a temporary folder
renamed over the old one, and only over a folder one of the reproduction's scripts made."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from steps import ROOT, rebirth

from deeprebirth.caffe import netio
from deeprebirth.caffe import proto as pb
from deeprebirth.transforms import trainfiles

MODELS = ROOT / "models"
# The README line of a folder our scripts wrote (today's and those before scripts/reproduce/).
OURS = ("scripts/reproduce/table3.py", "scripts/reproduce/slim_tucker.py", "scripts/reproduce_table3.py",
        "scripts/slim_tucker.py")


def shipped_train_val(slim_train_val: Path, data_from: Path, made_by: str) -> str:
    """The slim net's train_val with the data layers of the shipped teacher's train_val (sources
    relative; its TEST layer is the preprocessing `rebirth eval` reads) in place of the run's."""
    net_in = netio.read_net(slim_train_val)
    body = [layer for layer in net_in.layer if layer.type != "Data"]
    data = [layer for layer in netio.read_net(data_from).layer if layer.type == "Data"]
    net = pb.NetParameter(name=net_in.name)
    net.layer.extend(data + body)
    return trainfiles.render_net(net, [f"{slim_train_val.parent.name}: the slim body, data layers of {data_from.name} "
                                        f"({made_by} --ship)"])


def speed(teacher: tuple[Path, Path], deploy: Path, weights: Path, runs: int) -> dict:
    """`rebirth bench TEACHER NET -w ... --runs N`: best, median and paired speed-ups against the
    teacher."""
    doc = rebirth(["bench", str(teacher[0]), str(deploy), "-w", str(teacher[1]), "-w", str(weights),
                   "--runs", str(runs)])
    t, m = doc["models"]
    r = doc["ratios"]["models"][m["model"]]
    return {"best_ratio": t["best_ms"] / m["best_ms"], "median_ratio": t["median_ms"] / m["median_ms"],
            "paired_ratio": 1.0 / r["paired_median"] if r.get("paired_median") else None}


def ship_folder(name: str, deploy: Path, weights: Path, train_val_text: str, how: str, made_by: str, row: str,
                test: dict, teacher: tuple[Path, Path], bench_name: str, runs: int = 100,
                models: Path | None = None) -> Path:
    """models/NAME/ (under ``models``) from ``deploy`` and ``weights``; README.md: ``how``, the row
    (``row``), the test top-1/top-5 of ``test`` (a `rebirth eval --json`), a speed-up timed against
    ``teacher`` (``runs`` interleaved runs) and the commands that check it (``bench_name``: how the
    teacher is named in the bench line)."""
    models = models or MODELS
    dest = models / name
    readme = dest / "README.md"
    if dest.exists() and not (readme.exists() and any(f"Made by `{m}`" in readme.read_text(errors="replace")
                                                      for m in OURS)):
        raise SystemExit(f"{dest} exists and was not written by the reproduction's scripts: left alone")
    tmp = models / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    header = re.compile(r"^(# Slimmed by .*? from ).*$", re.M)          # no path of the run in a shipped file
    (tmp / "deploy.prototxt").write_text(header.sub(rf"\1the reproduction's net ({made_by})", deploy.read_text()))
    shutil.copyfile(weights, tmp / "weights.caffemodel")
    (tmp / "train_val.prototxt").write_text(train_val_text)
    s = speed(teacher, tmp / "deploy.prototxt", tmp / "weights.caffemodel", runs)
    paired = f", {s['paired_ratio']:.2f}x the median of run-by-run ratios" if s["paired_ratio"] else ""
    teacher_w = [] if bench_name.startswith("fmnist_googlenet") else [
        f"-w {teacher[1].relative_to(ROOT)}", f"-w models/{name}/weights.caffemodel"]
    (tmp / "README.md").write_text(
        f"# {name}\n\n{how}\n\nMade by `{made_by}` ({row}).\n\n"
        f"* top-1 {100 * test['top1']:.2f} %, top-5 {100 * test['top5']:.2f} % on the {test['images']:,} "
        "Fashion-MNIST test images\n"
        f"* {s['best_ratio']:.2f}x faster than its teacher at batch 1 (best runs; {s['median_ratio']:.2f}x medians"
        f"{paired}), {runs} interleaved runs of `rebirth bench` when it was shipped; the best-run ratio varies by "
        "several tenths from one measurement to the next on a shared machine\n"
        f"\nCheck it:\n\n```sh\n.venv/bin/rebirth eval models/{name} --data fashion-mnist:test --json\n"
        f".venv/bin/rebirth bench {bench_name} models/{name}{''.join(' ' + w for w in teacher_w)}\n```\n")
    old = models / f".{name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)
    print(f"shipped {dest}", flush=True)
    return dest
