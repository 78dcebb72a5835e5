"""Run `rebirth` commands as the steps of a reproduction: each step leaves a record, a rerun skips
the steps already done, every command is printed as a user would paste it.

The scripts beside this one (teachers.py, table3.py, slim_tucker.py, speed.py) import it as a
sibling module: Python puts a script's own folder first on sys.path.

A chain's done-record (WORK/NAME.json) holds ``made_by`` and, per step, the command as shown, its
seconds and what the script keeps of its JSON; a step is skipped when its name is in the record,
or when the file its command writes last (``Step.record``) is there already (its JSON is read back
from it). A record of that name that the script did not write stops the run, untouched.
"""
from __future__ import annotations

import datetime
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from deeprebirth.runtime import host

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "results"


@dataclass
class Step:
    """One `rebirth` command of a chain: ``cmd`` without the program name; ``record``: the file the
    command writes when it has finished (None: only the done-record marks it done); ``always``: run
    it on every run of the script (a measurement), never skipped."""
    name: str
    cmd: list[str]
    record: Path | None = None
    always: bool = False


def shown(cmd: Iterable[str], work: Path | None = None, program: str = "rebirth") -> str:
    """``cmd`` as a user pastes it from the repository's root: paths in it relative to the root,
    the work folder as ``$WORK`` (no path of this machine's run in a table)."""
    root = str(ROOT) + os.sep
    out = []
    for arg in cmd:
        text = str(arg)
        if work is not None:
            w = str(Path(work).resolve())
            text = text.replace(w, "$WORK") if w in text else text.replace(str(work), "$WORK")
        text = text.replace(root, "")
        if "$WORK" in text:        # double quotes: the shell still expands $WORK
            text = text if re.fullmatch(r"[\w$/.,:=+-]+", text) else '"' + re.sub(r'(["\\`])', r"\\\1", text) + '"'
        else:
            text = shlex.quote(text)
        out.append(text)
    return " ".join([program, *out])


def rebirth(cmd: list[str], record: Path | None = None, work: Path | None = None) -> dict:
    """`rebirth CMD --json` (this interpreter's deeprebirth) -> its JSON. Skipped, the JSON read back
    from ``record``, when that file exists. The command goes to stderr first, then its progress."""
    if record is not None and record.exists():
        return json.loads(record.read_text())
    print("+ " + shown(cmd, work), file=sys.stderr, flush=True)
    proc = subprocess.run([sys.executable, "-m", "deeprebirth.cli", *map(str, cmd), "--json"],
                          stdout=subprocess.PIPE, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"rebirth {cmd[0]} failed (exit {proc.returncode}); its message is above")
    return json.loads(proc.stdout)


def read_record(path: Path, made_by: str) -> dict:
    """The done-record at ``path`` as ``made_by`` left it, or a new one; a file of that name that
    ``made_by`` did not write stops the run (SystemExit), untouched."""
    if not path.exists():
        return {"made_by": made_by, "steps": {}}
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        doc = None
    if not isinstance(doc, dict) or doc.get("made_by") != made_by or not isinstance(doc.get("steps"), dict):
        raise SystemExit(f"{path}: not written by {made_by}; left alone (choose another work folder)")
    return doc


def write_json(path: Path, doc) -> None:
    """``doc`` as indented JSON, written to a temporary file and renamed over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)


def run_chain(make_steps: Callable[[], list[Step]], done: Path, made_by: str, work: Path | None = None,
              keep: Callable[[str, dict], dict] | None = None) -> dict:
    """Run the steps in order, skipping those done; ``make_steps`` is called again before each step,
    as a later step may read what an earlier one wrote. After each step the done-record gets the
    command as shown, its seconds and ``keep(step name, its JSON)``, and is written (atomically).
    Returns the done-record."""
    doc = read_record(done, made_by)
    k = 0
    while k < len(make_steps()):
        step = make_steps()[k]
        k += 1
        if step.name in doc["steps"] and not step.always:
            continue
        t0 = time.time()
        got = rebirth(step.cmd, None if step.always else step.record, work)
        entry = {"command": shown(step.cmd + ["--json"], work), "seconds": round(time.time() - t0, 1)}
        entry.update((keep or (lambda name, js: {}))(step.name, got))
        doc["steps"][step.name] = entry
        write_json(done, doc)
    return doc


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (else the platform's processor string): runtime.host."""
    return host.cpu_model()


def machine() -> dict:
    """What the measurements ran on: CPU model, logical cores, load average (1, 5, 15 min), BLAS
    threads asked for, and the date (UTC)."""
    return {"cpu": host.cpu_model(), "cores": os.cpu_count(), "load_average": host.load_average(),
            "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def machine_line(m: dict) -> str:
    """``machine()`` as one Markdown line."""
    load = " / ".join(f"{x:.2f}" for x in m["load_average"]) if m.get("load_average") else "unknown"
    return (f"Machine: {m['cpu']}, {m['cores']} logical cores, load average {load} (1 / 5 / 15 min) when it "
            f"started, OPENBLAS_NUM_THREADS={m['openblas_threads']}; {m['date']}.")


def md_cell(text: str) -> str:
    """One line of text fit for a Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def commands_md(rows: list[dict]) -> list[str]:
    """A Markdown list item per step of each row (``{"net", "steps": {name: {"command"}}}``): the
    net, the step and its command as shown."""
    return [f"- {r['net']} {name}: `{st['command']}`" for r in rows for name, st in r["steps"].items()]


def net_arguments(ap, work: Path, nets: str, images: str) -> None:
    """The options the per-net reproduce scripts share: --work, --nets, --engine, --time, --images."""
    ap.add_argument("--work", type=Path, default=work)
    ap.add_argument("--nets", default=nets)
    ap.add_argument("--engine", default="onnxruntime")
    ap.add_argument("--time", dest="time_text", default="30m")
    ap.add_argument("--images", default=images)


def net_names(text: str, known) -> list[str]:
    """The comma-separated names of ``text``; SystemExit naming the first not in ``known``."""
    names = [n for n in text.split(",") if n]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown net {unknown[0]} (known: {', '.join(known)})")
    return names
