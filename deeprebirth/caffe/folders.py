"""Our output folders, read back: the one place that knows what `rebirth slim`, `tucker`,
`relearn` and `finetune` leave in a folder and how one folder names another.

* a slim (or tucker) folder: ``report.json``, ``deploy.prototxt``, ``train_val.prototxt``,
  ``solver.prototxt`` and, with weights, ``init.caffemodel`` (:func:`read_slim_dir`,
  :func:`read_report`, :func:`relearn_plan`);
* a relearn or finetune folder: ``weights.caffemodel`` with ``relearn.json`` or ``finetune.json``,
  which name the slim folder they came from (:func:`slim_dir_of`);
* any of them as a MODEL: its deploy net and weights (:func:`model_files`), and its train_val
  too for the commands that rewrite it (:func:`brought_by`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format

from deeprebirth import __version__
from deeprebirth.caffe import builtin, netio
from deeprebirth.caffe import proto as pb
from deeprebirth.errors import RebirthError

SLIM_FILES = ("report.json", "deploy.prototxt", "train_val.prototxt", "solver.prototxt")
RECORDS = ("finetune.json", "relearn.json")
PLAN_VERSION = 2     # the version of report.json's ``relearn`` section (transforms.relearn_plan)


def read_report(path: str | os.PathLike) -> dict:
    """FOLDER/report.json of a `rebirth slim` or `rebirth tucker` run, checked to be one."""
    p = Path(path)
    if not p.is_dir():
        raise RebirthError(f"{p}: {'no such file or directory' if not p.exists() else 'not a directory'} "
                           "(expected a `rebirth slim` output directory)")
    if not (p / "report.json").is_file():
        raise RebirthError(f"{p}: no report.json, so not a `rebirth slim` output directory (run `rebirth slim MODEL "
                           "-o DIR` first)")
    try:
        report = json.loads((p / "report.json").read_text())
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        raise RebirthError(f"{p / 'report.json'}: not JSON ({exc})") from None
    tool = report.get("tool") if isinstance(report, dict) else None
    if not isinstance(tool, str) or not tool.startswith("rebirth ") or "changes" not in report:
        raise RebirthError(f"{p / 'report.json'}: not a report of `rebirth slim` (written by "
                           f"{tool or 'an unknown tool'}); re-run `rebirth slim` with rebirth {__version__}")
    return report


def relearn_plan(path: str | os.PathLike) -> dict:
    """The ``relearn`` section of FOLDER/report.json (the units `rebirth relearn` re-learns), checked."""
    p = Path(path)
    report = read_report(p)
    plan = report.get("relearn")
    if not isinstance(plan, dict) or plan.get("version") != PLAN_VERSION or "units" not in plan:
        raise RebirthError(f"{p / 'report.json'}: written by an older rebirth (no 'relearn' section of version "
                           f"{PLAN_VERSION}); run `rebirth slim` again")
    if not (p / "deploy.prototxt").is_file():
        raise RebirthError(f"{p}: deploy.prototxt is missing")
    return plan


@dataclass
class SlimDir:
    path: Path
    report: dict
    deploy: "pb.NetParameter"
    train_val: "pb.NetParameter"
    solver: "pb.SolverParameter"

    @property
    def init_weights(self) -> Path | None:
        p = self.path / "init.caffemodel"
        return p if p.exists() else None

    def teacher(self) -> tuple[str, str]:
        """(deploy prototxt, weights) of the model this slim net came from."""
        relearn = self.report.get("relearn") or {}
        t = relearn.get("teacher") if isinstance(relearn, dict) else None
        if isinstance(t, dict) and t.get("deploy") and t.get("weights"):
            deploy, weights = t["deploy"], t["weights"]
        else:
            deploy, weights = self.report.get("model"), self.report.get("weights")
        if not deploy or not weights:
            raise RebirthError(f"{self.path / 'report.json'}: names no teacher weights (slim ran without "
                               "{opt:weights}); distillation needs the trained original model")
        return self._locate(deploy), self._locate(weights)

    def _locate(self, p: str) -> str:
        if Path(p).exists() or Path(p).is_absolute():
            return p
        beside = self.path / p
        return str(beside) if beside.exists() else p


def read_slim_dir(path: str | os.PathLike) -> SlimDir:
    """A `rebirth slim` output directory: report.json, deploy, train_val and solver files."""
    p = Path(path)
    report = read_report(p)
    missing = [f for f in SLIM_FILES if not (p / f).exists()]
    if missing:
        raise RebirthError(f"{p}: {', '.join(missing)} missing (re-run `rebirth slim` with rebirth {__version__})")
    solver = pb.SolverParameter()
    try:
        text_format.Parse((p / "solver.prototxt").read_text(), solver)
    except text_format.ParseError as exc:
        raise RebirthError(f"{p / 'solver.prototxt'}: {exc}") from None
    return SlimDir(p, report, netio.read_net(p / "deploy.prototxt"), netio.read_net(p / "train_val.prototxt"), solver)


def slim_dir_of(path: str | os.PathLike) -> Path | None:
    """The slim folder a relearn or finetune folder came from (its record names it), else None."""
    p = Path(path)
    for record in RECORDS:
        try:
            return Path(json.loads((p / record).read_text())["slim_dir"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def model_files(spec: str | os.PathLike, weights: str | os.PathLike | None = None) -> tuple[str, str | None]:
    """MODEL as given on the command line -> (deploy prototxt or built-in name, weights or None).
    A directory (a `rebirth slim`/`tucker`/`finetune`/`relearn` output) stands for its deploy.prototxt
    (a relearn or finetune folder without one: its slim folder's) and, unless ``weights`` is given,
    its weights.caffemodel, else its init.caffemodel. A built-in name comes with the weights shipped
    for it (``builtin.weights``), if any."""
    p = Path(spec)
    if str(spec) in builtin.NAMES and not p.is_file():  # a built-in brings the weights we ship with it
        shipped = builtin.weights(str(spec)) if weights is None else weights
        return str(spec), (str(shipped) if shipped is not None else None)
    if not p.is_dir():
        return str(spec), (str(weights) if weights is not None else None)
    deploy = p / "deploy.prototxt"
    if not deploy.exists():
        origin = slim_dir_of(p)
        if origin is not None:
            deploy = origin / "deploy.prototxt"
    if not deploy.exists():
        raise RebirthError(f"{p}: the directory holds no deploy.prototxt")
    if weights is None:
        weights = next((p / n for n in ("weights.caffemodel", "init.caffemodel") if (p / n).exists()), None)
    return str(deploy), (str(weights) if weights is not None else None)


def brought_by(model: str, weights: str | None = None, train_val: str | None = None) -> dict[str, str]:
    """What MODEL as given on the command line brings for the files not given: a built-in name its
    shipped ``weights`` and ``train_val`` (builtin.shipped_for); a model folder (an output of
    `slim`, `tucker`, `relearn`, `finetune`, `accelerate`) its ``deploy`` prototxt, its ``weights``
    (model_files) and its ``train_val`` (the folder's, else its slim folder's); a prototxt nothing."""
    p = Path(model)
    if str(model) in builtin.NAMES and not p.is_file():     # a folder of that name never hides the built-in
        return {k: str(v) for k, v in builtin.shipped_for(str(model), weights, train_val).items()}
    if not p.is_dir():
        return {}
    deploy, found = model_files(p, weights)
    out = {"deploy": deploy}
    if weights is None and found is not None:
        out["weights"] = found
    if train_val is None:
        origin = slim_dir_of(p)
        tv = next((d / "train_val.prototxt" for d in (p, origin) if d is not None and (d / "train_val.prototxt")
                   .is_file()), None)
        if tv is not None:
            out["train_val"] = str(tv)
    return out


def using_line(model: str, brought: dict[str, str]) -> str | None:
    """The line saying which files MODEL brought (None: none)."""
    files = {k: v for k, v in brought.items() if k != "deploy"}
    if not files:
        return None
    where = "in the folder" if "deploy" in brought else "shipped with it"
    return f"{model}: using the " + " and the ".join(f"{w} {where} ({p})" for w, p in files.items())
