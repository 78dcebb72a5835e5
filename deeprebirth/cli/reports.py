"""Every report a person reads: the text each command prints, built from the dicts and results
the library returns (the library itself prints nothing). One section per command."""
from __future__ import annotations

import re
import shlex
import sys
from collections import Counter
from pathlib import Path

from deeprebirth import errors
from deeprebirth.graph.model import Model
from deeprebirth.runtime.bench import top_layers
from deeprebirth.runtime.plot import speed_words
from deeprebirth.runtime.pycaffe import caffe_tool
from deeprebirth.transforms import runner
from deeprebirth.transforms.rank_budget import MIN_RANK
from deeprebirth.transforms.rules.tucker import TuckerChange
from deeprebirth.transforms.slim import SlimOutput, factored_layers, input_batch
from deeprebirth.transforms.tucker import TuckerOutput

MB = 1024 * 1024
TOP_LAYERS = 10


def _fmt_shape(shapes: dict) -> str:
    return " ".join("x".join(str(d) for d in s) if s is not None else "?" for s in shapes.values()) or "-"


def human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


def inspect_text(info: dict) -> str:
    rows = [("layer", "type", "kind", "output", "params", "MACs", "out MB")]
    for layer in info["layers"]:
        rows.append((layer["name"], layer["type"], layer["kind"], _fmt_shape(layer["top_shapes"]),
                     human(layer["params"]), human(layer["macs"]), f"{layer['output_bytes'] / MB:.2f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"{info['name'] or info['model']}  ({info['model']})"]
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if j < 3 else c.rjust(w) if j > 3 else c.ljust(w)
                               for j, (c, w) in enumerate(zip(r, widths))).rstrip())
        if i == 0:
            lines.append("-" * len(lines[-1]))
    t = info["totals"]
    lines += [
        "",
        f"layers: {t['layers']} ({t['tensor_layers']} tensor, {t['non_tensor_layers']} non-tensor)",
        f"params: {human(t['params'])}   MACs: {human(t['macs'])}   "
        f"non-tensor share of MACs: {t['non_tensor_mac_percent']:.2f}%",
        f"runtime blob memory: {info['memory_bytes'] / MB:.2f} MB ({info['memory_bytes']} bytes)",
    ]
    cands = info["candidates"]
    if cands:
        refused = sum(1 for c in cands if c["refused"])
        lines += ["", f"slimming candidates ({len(cands)}, {refused} left alone; slim --only NAME):"]
        width = max(len(c["rule"]) for c in cands)
        for c in cands:
            layers = c["layers"]
            shown = " + ".join(layers) if len(layers) <= 5 else \
                f"{len(layers)} layers, {layers[0]} ... {layers[-1]}"
            lines.append(f"  {c['rule'].ljust(width)}  {c['name']}: {shown}")
            if c["refused"]:
                lines.append(f"  {''.ljust(width)}    left alone: {c['refused']}")
    else:
        lines.append("slimming candidates: none")
    for note in info["candidate_notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def _change(before: float, after: float, less: str) -> str:
    """How ``after`` compares with ``before``, as "1.50x fewer" (``less``), "1.08x more" or "the
    same": never a ratio below 1 with "fewer" (a merge that adds zero blocks adds MACs)."""
    if not after or not before:
        return "-"
    if after > before:
        return f"{after / before:.2f}x more"
    return f"{before / after:.2f}x {less}" if after < before else "the same"


def slim_summary(out: SlimOutput, written: list[Path] | None = None) -> str:
    before, after = out.costs()
    lines = [f"slimmed {out.model.source} (rules: {', '.join(out.rules)}"
             + (f"; only: {', '.join(out.only)}" if out.only else "") + ")"]
    width = max(len(c.substructure) for c in out.result.changes)
    for c in out.result.changes:
        what = []
        if c.removed:
            what.append("removed " + ", ".join(c.removed))
        if c.regenerated:
            what.append("regenerated " + ", ".join(c.regenerated))
        if c.modified:
            what.append("recomputed " + ", ".join(c.modified))
        if c.added:
            what.append("added " + ", ".join(c.added))
        tag = "exact" if c.exact else "re-learn"
        lines.append(f"  {c.substructure.ljust(width)}  {c.rule:<16} {tag:<8} {'; '.join(what)}")
        for note in c.notes:
            lines.append(f"  {''.ljust(width)}  {'':<16} {'':<8}   {note}")
    mb = 1024 * 1024
    batch = input_batch(out.deploy)
    lines += [
        f"layers {before['layers']} -> {after['layers']}; params {human(before['params'])} -> "
        f"{human(after['params'])}; MACs {human(before['macs'])} -> {human(after['macs'])} "
        f"({_change(before['macs'], after['macs'], 'fewer')})",
        f"blob memory{f' at batch {batch}' if batch else ''}: {before['memory_bytes'] / mb:.1f} MB -> "
        f"{after['memory_bytes'] / mb:.1f} MB ({_change(before['memory_bytes'], after['memory_bytes'], 'less')})",
    ]
    factored = factored_layers(out)
    fresh = [n for n in out.new_layers if n not in factored]
    if fresh:
        lines.append(f"new layers (Xavier init, lr_mult 10): {', '.join(fresh)}")
    if factored & set(out.new_layers):
        lines.append("new layers (from the decomposition, lr_mult 10): "
                     + ", ".join(n for n in out.new_layers if n in factored))
    return "\n".join(lines + slim_summary_tail(out, written))


def slim_summary_tail(out: SlimOutput, written: list[Path] | None = None) -> list[str]:
    """The end of a summary: what was left alone, notes, the files written and how to fine-tune."""
    lines = []
    skips = out.skips
    if skips:
        lines.append(f"left alone ({len(skips)}):")
        for s in skips[:8]:
            lines.append(f"  {s.substructure} ({s.rule}): {s.reason}")
        if len(skips) > 8:
            lines.append(f"  ... {len(skips) - 8} more in report.json")
    for note in out.notes:
        lines.append(f"note: {note}")
    if written:
        lines.append("wrote " + ", ".join(str(p) for p in written))
        where = written[0].parent
        if out.new_layers and out.weights is not None:
            lines.append(f"re-learn (no labels): rebirth relearn {where} --images SOURCE")
            lines.append(f"then fine-tune (labels): rebirth finetune {where} --train SOURCE --weights "
                         f"{where / 'weights.caffemodel'}")
        elif out.weights is not None and out.result.changes and all(c.exact for c in out.result.changes):
            lines.append(f"every rewrite was exact: {where / 'init.caffemodel'} gives the input weights' outputs; "
                         f"use it as it is: rebirth eval {where} --data SOURCE")
            lines.append(f"or fine-tune: rebirth finetune {where} --train SOURCE")
        else:
            lines.append(f"fine-tune: rebirth finetune {where} --train SOURCE")
        hint = caffe_train_hint(out.train_val, where, out.weights is not None)
        if hint:
            lines.append(hint)
    return lines


def caffe_train_hint(train_val, where: Path, with_weights: bool) -> str | None:
    """The `caffe train` line for an output folder, only when it can work: every data layer's
    source exists (or the layers are synthetic), or the missing ones are ImageData lists the
    user is told to write; None when a database the train_val names is not there."""
    command = (f"cd {shlex.quote(str(where))} && {caffe_tool()} train -solver solver.prototxt"
               + (" -weights init.caffemodel" if with_weights else ""))
    missing, lists = [], []
    for layer in train_val.layer:
        source = (layer.data_param.source if layer.type == "Data" else
                  layer.image_data_param.source if layer.type == "ImageData" else None)
        if source and not (Path(where) / source).exists() and not Path(source).is_absolute():
            (lists if layer.type == "ImageData" else missing).append(source)
        elif source and Path(source).is_absolute() and not Path(source).exists():
            (lists if layer.type == "ImageData" else missing).append(source)
    if missing:
        return None
    if lists:
        return (f"  or with Caffe itself, after writing {' and '.join(dict.fromkeys(lists))} ('image-path label' "
                f"lines) in {where}: {command}")
    return f"  or with Caffe itself: {command}"


def tucker_summary(out: TuckerOutput, written=None) -> str:
    before, after = out.costs()
    lines = [f"decomposed {out.model.source} (rules: {', '.join(out.rules)})"]
    slimmed = [c for c in out.result.changes if not isinstance(c, TuckerChange)]
    if slimmed:
        units = list(dict.fromkeys(c.substructure for c in slimmed))
        lines.append(f"  slimmed ({len(slimmed)} rewrites): {', '.join(units)}")
    width = max(len(d["layer"]) for d in out.layers)
    lines.append(f"  {'layer'.ljust(width)}  method   {'ranks':<10} {'w.err':>6} {'out.err':>7}  "
                 f"{'params':>17}  {'MACs per image':>17}")
    for d in out.layers:
        ranks = ",".join(str(v) for v in d["ranks"].values())
        oe = "-" if d["output_error"] is None else f"{d['output_error']:.3f}"
        params = f"{human(d['params']['before'])} -> {human(d['params']['after'])}"
        macs = f"{human(d['macs']['before'])} -> {human(d['macs']['after'])}"
        lines.append(f"  {d['layer'].ljust(width)}  {d['method']:<8} {ranks:<10} {d['weight_error']:>6.3f} {oe:>7}  "
                     f"{params:>17}  {macs:>17}")
    lines.append(f"params {human(before['params'])} -> {human(after['params'])}; MACs {human(before['macs'])} -> "
                 f"{human(after['macs'])}; layers {before['layers']} -> {after['layers']}")
    if out.time_fraction is not None and out.budget:
        was, now = out.budget
        lines.append(f"time budget {out.time_fraction:g} (a layer counted as {human(out.layer_cost)} MACs): the "
                     f"decomposable layers' predicted time {human(was)} -> {human(now)} MAC-equivalents "
                     f"({now / was:.2f} of it)")
    asked = out.time_fraction if out.time_fraction is not None else out.macs_fraction
    if out.rank_floor and out.budget and asked is not None and out.budget[1] > asked * out.budget[0] * (1 + 1e-9):
        was, now = out.budget
        lines.append(f"rank floor {out.rank_floor:g}: no rank below max({MIN_RANK}, {out.rank_floor:g} of a mode's "
                     f"channels), so the budget stopped at {now / was:.2f} of the layers' cost, not {asked:g} "
                     "(--rank-floor 0 goes lower, into ranks a net may not relearn from)")
    fell = [d["layer"] for d in out.layers if d["rank_source"].startswith("vbmf 0")]
    if fell:
        lines.append(f"VBMF found rank 0 (no component above the noise: untrained or random weights?) and fell back "
                     f"to the ranks keeping half the weights for {len(fell)} layer(s): {', '.join(fell[:6])}"
                     + (" ..." if len(fell) > 6 else ""))
    lines.append(f"new layers, initialised from the decomposition, lr_mult 10: {', '.join(out.new_layers)}")
    tail = slim_summary_tail(out, written)
    if written and out.after_training:
        where = written[0].parent
        tail.append(f"once fine-tuned, exact and faster ({', '.join(out.after_training)}): rebirth slim "
                    f"{where / 'deploy.prototxt'} -w {where / 'finetune' / 'weights.caffemodel'} --train-val "
                    f"{where / 'train_val.prototxt'} --rules "
                    f"{','.join(out.after_training)} -o {where.parent / (where.name + '_merged')}")
    return "\n".join(lines + tail)


def fold_summary(original: Model, result: runner.Result) -> list[str]:
    """Human lines: one per folded chain and per chain left alone, then the layer count."""
    types = {layer.name: layer.type for layer in original.net.layer}
    removed = Counter(types[n] for c in result.changes for n in c.removed)
    folds = sum(1 for c in result.changes if c.removed and c.substructure in types
                and types[c.substructure] not in ("BatchNorm", "Scale", "Bias"))
    lines = []
    if not result.changes:
        lines.append("nothing to fold: no BatchNorm, Scale or Bias layer follows a tensor layer")
    for c in result.changes:
        lines.append("  " + "; ".join(c.notes))
    for s in result.skips:
        lines.append(f"  left alone ({s.substructure}): {s.reason}")
    n_before, n_after = len(original.net.layer), len(result.model.net.layer)
    gone = ", ".join(f"{k} {t}" for t, k in sorted(removed.items())) or "none"
    head = (f"{folds} chain(s) folded into tensor layers, {len(result.changes) - folds} replaced by one "
            f"Scale, {len(result.skips)} left alone")
    return [head, *lines, f"layers: {n_before} -> {n_after} (removed: {gone})",
            *(f"note: {n}" for n in result.notes)]


def fold_json(original: Model, result: runner.Result, check, tolerance: float, written) -> dict:
    """`fold-bn --json`: what was folded, left alone and removed, the check, the files."""
    doc = {
        "model": str(original.source), "weights": str(original.weights_source),
        "changes": [{"substructure": c.substructure, "removed": list(c.removed), "modified": list(c.modified),
                     "notes": list(c.notes)} for c in result.changes],
        "left_alone": [{"substructure": s.substructure, "reason": s.reason} for s in result.skips],
        "layers": {"before": len(original.net.layer), "after": len(result.model.net.layer)},
        "notes": list(result.notes), "files": [str(p) for p in written],
    }
    if check is not None:
        doc["verify"] = {"seed": check.seed, "max_rel": check.max_rel, "max_abs": check.max_abs,
                         "tolerance": tolerance, "passed": check.passed(tolerance)}
    return doc


def _preprocess_line(pre: dict | None) -> str:
    if not pre:
        return "?"
    mean = pre.get("mean")
    mean = "none" if mean is None else (mean if isinstance(mean, str) else ",".join(f"{v:g}" for v in mean))
    parts = [f"{pre['channels']}x{pre['height']}x{pre['width']}", f"mean {mean}", f"scale {pre['scale']:g}"]
    if pre.get("crop"):
        parts.append(f"crop {pre['crop']}")
    if pre.get("resize"):
        parts.append(f"resize {'x'.join(map(str, pre['resize']))}")
    return ", ".join(parts)


def _defaults_name(pre: dict | None) -> str:
    """Which defaults learning/preprocess.py took for a net without a train_val: ImageNet's for a
    colour input, Caffe's MNIST examples' for a gray one."""
    if pre and pre.get("channels") == 1:
        return "the defaults for a gray input, those of Caffe's MNIST examples"
    return "the ImageNet defaults"


def eval_text(result: dict) -> str:
    lines = [f"{result['model']} ({result['weights']}) on {result['data']}: {result['images']} images"]
    if "preprocess_from" in result:
        lines.append(f"  preprocessing: {_preprocess_line(result.get('preprocess'))}, from "
                     + (_defaults_name(result.get("preprocess")) + " (give --train-val for the net's own)"
                        if result["preprocess_from"] == "defaults" else result["preprocess_from"]))
    for key in ("top1", "top5", "teacher_top1", "teacher_top5", "agreement"):
        if key in result:
            lines.append(f"  {key:<13} {100 * result[key]:.2f} %")
    if result.get("expected_drop") is not None and "top1" not in result:
        lines.append(f"  {'expected_drop':<13} {100 * result['expected_drop']:.2f} top-1 points (an estimate without "
                     "labels: the top-1 lost if the labels followed the teacher's probabilities)")
    if "kl" in result:
        lines.append(f"  {'kl':<13} {result['kl']:.5f} nats (mean KL(teacher || model))")
    if result.get("rel_error") is not None:
        lines.append(f"  {'rel_error':<13} {result['rel_error']:.4f} (||model - teacher|| / ||teacher|| of the "
                     "output, pooled over the images)")
    lines.append(f"  ({result['seconds']:.1f} s)")
    return "\n".join(lines)


def finetune_entry_line(e: dict) -> str:
    parts = [f"iter {e['iteration']}"]
    if e.get("loss") is not None:
        parts.append(f"loss {e['loss']:.4f}")
    for key in ("val_top1", "val_top5", "val_agreement"):
        if key in e:
            parts.append(f"{key} {100 * e[key]:.2f} %")
    if "val_kl" in e:
        parts.append(f"val_kl {e['val_kl']:.4f}")
    return ", ".join(parts)


def finetune_text(result: dict) -> str:
    lines = [f"fine-tuned {result['slim_dir']} on {result['train']} ({result['mode']}): iterations "
             f"{result['start_iteration']} -> {result['iterations']}, batch {result['batch']}, "
             f"{result['seconds']:.0f} s"]
    lines += ["  " + finetune_entry_line(e) for e in result["history"]]
    lines += [f"note: {note}" for note in result.get("notes", [])]
    lines.append(f"weights: {result['weights']}")
    stopped = result.get("interrupted")
    if stopped:
        lines.append(f"stopped by {stopped['signal']} at iteration {stopped['iteration']}: weights, finetune.json "
                     "and a snapshot written")
    if result["snapshots"]:
        lines.append(resume_line(result, stopped["target"] if stopped else "N"))
    return "\n".join(lines)


def resume_line(result: dict, target: int | str = "N") -> str:
    """The command that continues the run of ``result`` (finetune.json) from its last snapshot to
    iteration ``target``, with the settings a snapshot does not hold."""
    return (f"resume with: rebirth finetune {shlex.quote(result['slim_dir'])} --train {shlex.quote(result['train'])}"
            f"{_run_settings(result)} --resume {shlex.quote(result['snapshots'][-1])} "
            f"-o {shlex.quote(result['outdir'])} --iters {target}")


def _run_settings(result: dict) -> str:
    """The options that made a fine-tuning run what it was (a snapshot holds weights and iteration,
    not these), so that the resume line continues the same run: its validation set, mode (and a
    --teacher given), batch, rate and schedule."""
    parts = [f"--val {shlex.quote(result['val'])}"] if result.get("val") else []
    if str(result.get("mode", "")).startswith("distill"):
        parts.append("--distill")
        if "labels" in str(result["mode"]):
            parts.append("--with-labels")
        given = result.get("teacher_option")
        if given:
            parts.append(f"--teacher {shlex.quote(given['model'])}")
            if given.get("weights"):
                parts.append(f"--teacher-weights {shlex.quote(given['weights'])}")
    parts += [f"-b {result['batch']}", f"--base-lr {result['base_lr']:.6g}"]
    if result.get("schedule") == "solver":
        parts += ["--schedule solver", f"--stepsize {result['stepsize']}"]
    return "".join(" " + part for part in parts)


def stderr_line(line: str) -> None:
    from tqdm import tqdm  # noqa: PLC0415

    from deeprebirth.cli import current_flags  # noqa: PLC0415  (the package imports this module)
    tqdm.write(errors.render(line, current_flags()), file=sys.stderr)


def grouped_notes(notes: list[tuple[str, str]], show: int = 4) -> list[str]:
    """Notes (unit, text), the ones that say the same thing (the same words once quoted names and
    numbers are set aside) as one line: the first one, and how many units and which have it."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for unit, text in notes:
        key = re.sub(r"'[^']*'", "'*'", re.sub(r"\d+(\.\d+)?(e-?\d+)?", "#", text))
        groups.setdefault(key, []).append((unit, text))
    lines = []
    for members in groups.values():
        unit, text = members[0]
        if len(members) == 1:
            lines.append(f"  note: {unit}: {text}")
            continue
        names = list(dict.fromkeys(u for u, _ in members))   # a unit with two such notes counts once
        if len(names) == 1:
            lines.append(f"  note ({len(members)}x): {unit}: {text}")
            continue
        more = f" and {len(names) - show} more" if len(names) > show else ""
        lines.append(f"  note ({len(names)} units: {', '.join(names[:show])}{more}; e.g. {unit}): {text}")
    return lines


def relearn_summary(doc: dict) -> list[str]:
    lines = [f"re-learned {len(doc['units'])} unit(s) of {doc['slim_dir']} against {doc['teacher']['deploy']} "
             f"on {doc['train_images']} images of {doc['source']} ({doc['heldout_images']} held out), "
             f"{doc['seconds']} s"]
    rows = [("unit", "initial", "least sq.", "SGD", "kept", "iters", "s")]
    for u in doc["units"]:
        e = u["error"]
        f = lambda k, e=e: f"{e[k]['rel']:.4f}" if k in e else "-"  # noqa: E731
        rows.append((u["name"], f("initial"), f("least_squares"), f("sgd"), u["kept"], str(u["iterations"]),
                     str(u["seconds"].get("total", ""))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines.append("relative error of each unit's output on the held-out images (sum (y-t)^2 / sum t^2):")
    for r in rows:
        lines.append("  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    lines += grouped_notes([(u["name"], note) for u in doc["units"] for note in u["notes"]])
    if doc.get("input_blind"):
        lines.append(f"warning: the re-learned net gives every held-out image the same output: {doc['input_blind']}; "
                     "fine-tuning cannot start from it: relearn the units below that blob again (more --iters or "
                     "--count), or start from a gentler decomposition")
    if doc.get("files"):
        lines.append("wrote " + ", ".join(doc["files"]))
    return lines


def layer_cost_line(result: dict) -> str:
    """The layer-cost fit (runtime/layer_cost.py) as the line `rebirth bench --fit-layer-cost`
    prints, with the `rebirth tucker` option it is the value of."""
    cost = result["layer_cost_macs"]
    worth = (f"one layer costs as much as {cost:,} MACs (`rebirth tucker --layer-cost {cost}`)" if cost is not None
             else "the times do not grow with the MACs here: no layer cost to give")
    return (f"layer cost: {result['us_per_layer']:.2f} µs a layer + {result['ns_per_mac']:.4f} ns a MAC over "
            f"{result['layers']} Convolution/InnerProduct layers (fastest runs; rms {result['rms_us']:.2f} µs): "
            f"{worth}")


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / MB:.1f}"


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _table(rows: list[tuple], right: set[int], indent: str = "") -> list[str]:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, r in enumerate(rows):
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append((indent + "  ".join(cells)).rstrip())
        if k == 0:
            lines.append(indent + "-" * (len(lines[-1]) - len(indent)))
    return lines


def _share(m: dict) -> float | None:
    """The non-tensor share a report prints: the median of the runs' own shares (the number its
    quartiles describe), else Eq. 1 on the per-layer medians."""
    median_run = m.get("non_tensor_percent_median_run")
    return median_run if median_run is not None else m.get("non_tensor_percent")


def _turns(block: int) -> str:
    if block == 1:
        return ", interleaved across models"
    return f", the models taking turns of {block} runs (each after untimed runs)"


def bench_text(doc: dict, top: int = TOP_LAYERS) -> str:
    models = doc["models"]
    lines = []
    if "device" in doc:
        lines.append(f"device: {doc['device']} ({doc.get('device_description', '')})")
        if doc.get("device_warning"):
            lines.append(f"warning: {doc['device_warning']}")
        lines.append(f"batch {doc.get('batch')}, {doc.get('runs')} timed runs after {doc.get('warmup')} "
                     f"warm-up per model" + (_turns(doc.get("block") or 1) if len(models) > 1 else "")
                     + "; best = fastest run (the paper's figure), median of the runs")
        lines.append("")
    ref = doc["ratios"]["reference"]
    head = ("model", "best ms", "median ms", f"vs {ref} (best)", "(median)", "(paired runs)",
            "non-tensor %", "blob MB", "alloc MB", "peak RSS MB")
    rows = [head]
    for m in models:
        r = doc["ratios"]["models"][m["model"]]
        rows.append((m["model"], f"{m['best_ms']:.2f}", f"{m['median_ms']:.2f}", speed_words(r["best"]),
                     speed_words(r["median"]), speed_words(r["paired_median"]),
                     _num(_share(m), ".1f"), _mb(m["memory_bytes"]), _mb(m["allocated_bytes"]),
                     _mb(m["peak_rss_bytes"])))
    lines += _table(rows, right=set(range(1, len(head))))
    if len(models) > 1:
        lines.append("")
        for m in models[1:]:
            r = doc["ratios"]["models"][m["model"]]
            if r["best"]:
                lines.append(f"{m['model']} vs {ref}: {speed_words(r['best'])} (best runs), "
                             f"{speed_words(r['median'])} (medians), {speed_words(r['paired_median'])} "
                             "(median of run-by-run ratios)")
    for m in models:
        if not m["layers"]:
            continue
        lines += ["", f"{m['model']}: per-layer forward time (median of {m['runs']} runs per layer)"]
        rows = [("type", "kind", "layers", "ms", "%")]
        rows += [(g["type"], g["kind"], g["count"], f"{g['ms']:.3f}", f"{g['percent']:.1f}") for g in m["by_type"]]
        lines += _table(rows, right={2, 3, 4}, indent="  ")
        iqr = m.get("non_tensor_percent_iqr")
        spread = f", {iqr[0]:.1f}-{iqr[1]:.1f} % in the middle half of the runs" if iqr else ""
        lines.append(f"  non-tensor share of latency (Eq. 1): {_share(m):.1f} % (median over the runs{spread}; "
                     f"per-layer medians: {m['non_tensor_ms']:.2f} of {m['non_tensor_ms'] + m['tensor_ms']:.2f} ms)")
        a = m["layer_sum"]
        verdict = "within" if a["within_margin"] else "OUTSIDE"
        lines.append(f"  sum of layers {a['layer_sum_ms']:.2f} ms vs whole forward pass {a['forward_ms']:.2f} ms "
                     f"(medians; {a['diff_ms']:+.2f} ms); run by run: {a['diff_percent']:+.1f} % (median), "
                     f"{verdict} the ±{a['margin_percent']:.0f} % margin")
        lines.append(f"  top {min(top, len(m['layers']))} layers:")
        rows = [("layer", "type", "kind", "ms", "%")]
        rows += [(r["name"], r["type"], r["kind"], f"{r['ms']:.3f}", f"{r['percent']:.1f}")
                 for r in top_layers(m["layers"], top)]
        lines += _table(rows, right={3, 4}, indent="    ")
    methods = {m["memory_method"] for m in models if m.get("memory_method")}
    if methods:
        lines += ["", "blob MB: blob memory from shapes (as `inspect`); alloc MB: distinct buffers of the "
                  "built net; peak RSS MB: " + "; ".join(sorted(methods))]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# export


def export_random_weights_note(model: Model) -> str:
    return (f"rebirth: warning: {model.source}: no weights given; exporting random weights (seed "
            f"{model.extras.get('random_weights', 0)}), good for timing and checking, not for predictions")


def export_summary(model: Model, fmt: str, written: list[Path]) -> str:
    layers = len(model.net.layer)
    sizes = ", ".join(f"{p} ({p.stat().st_size / MB:.1f} MB)" for p in written)
    return f"exported {model.source} ({layers} layers) as {fmt}: wrote {sizes}"
