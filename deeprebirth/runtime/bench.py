"""`rebirth bench`: latency, per-layer time and memory of Caffe nets, measured as the paper does.

* Latency: each run is one forward pass on random input; the report gives the best run (the
  paper's figure) and the median. Several models are run interleaved in one process
  (A B C A B C ...), so that the ratios to the first model compare runs made side by side; or
  in turns of several runs each (``block``: each model timed with its own weights in the caches).
* Per-layer time (``layers=True``): in every run each model also makes one pass of per-layer
  forward calls, each timed on its own; a layer's time is its median over the runs. Layers are
  grouped by type and kind, and the non-tensor share of latency is the paper's Eq. 1:
  sum of the non-tensor layers' time / sum of all layers' time. The sum of the layers is checked
  against the whole forward pass (``LAYER_SUM_MARGIN``).
* Memory: blob bytes from shapes and from the net, and the resident memory the net costs
  (measured by the device; see engine/cpu.py for the method).

Measuring (``measure``) is the only part that reads a clock; everything after it (summaries,
grouping, ratios, the JSON document, the text report and the plot) is a pure function of the
recorded timings, so it is tested with made-up numbers.
"""
from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from deeprebirth.caffe import proto as pb
from deeprebirth.errors import RebirthError
from deeprebirth.graph.dag import Graph
from deeprebirth.graph.kinds import kind_of
from deeprebirth.graph.model import Model, load_model
from deeprebirth.runtime.devices.base import Device, Memory, Session
from deeprebirth.runtime.pycaffe import check_runnable

#: The sum of per-layer times may differ from a whole forward pass by this much (percent) before
#: the report flags it: per-layer calls add one Python call and one clock read per layer.
LAYER_SUM_MARGIN = 5.0
TOP_LAYERS = 10
MB = 1024 * 1024
Progress = Callable[[int], None]


# ------------------------------------------------------------------------------------------------
# Preparing the models


def set_batch(net: "pb.NetParameter", batch: int | None) -> "pb.NetParameter":
    """A copy of ``net`` whose inputs (``input_shape``/``input_dim`` and Input layers) have batch
    size ``batch``; the net itself when ``batch`` is None. Done on the prototxt rather than by
    reshaping the built net, because Caffe never shrinks a blob's allocation."""
    if batch is None:
        return net
    out = pb.NetParameter()
    out.CopyFrom(net)
    for shape in out.input_shape:
        if len(shape.dim):
            shape.dim[0] = batch
    for i in range(0, len(out.input_dim), 4):
        out.input_dim[i] = batch
    for layer in out.layer:
        if layer.type == "Input":
            for shape in layer.input_param.shape:
                if len(shape.dim):
                    shape.dim[0] = batch
    return out


def labels(specs: Sequence[str]) -> list[str]:
    """Report names for the MODEL arguments: as given, with ' #2', ' #3' on repeats."""
    out, seen = [], {}
    for spec in specs:
        seen[spec] = seen.get(spec, 0) + 1
        out.append(spec if seen[spec] == 1 else f"{spec} #{seen[spec]}")
    return out


@dataclass
class Prepared:
    label: str
    model: Model
    weights: str  # the caffemodel path, or how the random weights were made
    weights_file: str | None = None  # the --weights file, when one was given


def prepare(specs: Sequence[str], weights: Sequence[str] = (), batch: int | None = 1,
            seed: int = 0) -> list[Prepared]:
    """Load every MODEL (path or built-in name) at ``batch``, with its --weights (one per model, in
    order) or random weights (engine.pycaffe.random_weights)."""
    from deeprebirth.runtime.pycaffe import random_weights  # noqa: PLC0415  (numpy only; pycaffe stays unloaded)

    if not specs:
        raise RebirthError("bench needs at least one MODEL")
    if weights and len(weights) != len(specs):
        raise RebirthError(f"{{opt:weights}} was given {len(weights)} time(s) for {len(specs)} model(s): "
                           "give it once per model, in the order of the models, or not at all")
    if batch is not None and batch < 1:
        raise RebirthError(f"{{opt:batch}} must be at least 1, not {batch}")
    out = []
    for label, spec, w in zip(labels(specs), specs, list(weights) or [None] * len(specs)):
        m = load_model(spec, w, batch=batch)
        check_runnable(m.net, m.source)
        m.net = set_batch(m.net, batch)
        if m.weights is None:
            m.weights = random_weights(Graph(m.net, strict=False), seed=seed)
            how = f"random (seed {seed})"
        else:
            how = str(w)
        out.append(Prepared(label, m, how, str(w) if w else None))
    return out


# ------------------------------------------------------------------------------------------------
# Measuring


@dataclass
class Measurement:
    """Raw timings of one model, in seconds: one entry per run (warm-up runs are not kept)."""

    label: str
    layer_names: list[str]
    layer_types: list[str]
    forward_s: list[float] = field(default_factory=list)
    layers_s: list[list[float]] = field(default_factory=list)  # [run][layer]; empty without layers
    source: str = ""
    weights: str = ""
    memory: Memory | None = None


def measure(sessions: Sequence[tuple[str, Session]], runs: int = 50, warmup: int = 5,
            layers: bool = False, progress: Progress | None = None, cooldown: float = 0.0,
            block: int = 1) -> list[Measurement]:
    """Time ``runs`` forward passes of every session, interleaved (A B C A B C ...), after
    ``warmup`` untimed rounds. With ``layers``, each model's pass is a whole pass followed by a
    pass of per-layer calls. ``block`` > 1: each model's turn is untimed passes for SETTLE_S (one
    at least) then ``block`` timed ones (A A A B B B A A A ...): each model timed as if alone, its
    weights in the caches (``turns``). ``progress(1)`` is called after each timed or warm-up
    pass; ``cooldown`` seconds of sleep come before every turn but the first."""
    if runs < 1:
        raise RebirthError(f"{{opt:runs}} must be at least 1, not {runs}")
    if warmup < 0:
        raise RebirthError(f"{{opt:warmup}} must be at least 0, not {warmup}")
    if block < 1:
        raise RebirthError(f"{{opt:block}} must be at least 1, not {block}")
    out = [Measurement(label, list(s.layer_names), list(s.layer_types)) for label, s in sessions]
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()  # no collector pauses inside a timed pass
    try:
        for turn, (timed, untimed_first) in enumerate(turns(runs, warmup, block)):
            for k, ((_, session), rec) in enumerate(zip(sessions, out)):
                if cooldown > 0 and (turn or k):
                    time.sleep(cooldown)
                if untimed_first:         # the turn settles: untimed runs for SETTLE_S, one at least
                    began = time.perf_counter()
                    session.time_forward()
                    while time.perf_counter() - began < SETTLE_S:
                        session.time_forward()
                for _ in range(max(timed, 1)):
                    t = session.time_forward()
                    per_layer = session.time_layers() if layers else None
                    if timed:
                        rec.forward_s.append(t)
                        if per_layer is not None:
                            rec.layers_s.append(per_layer)
                    if progress is not None:
                        progress(1)
    finally:
        if gc_was_enabled:
            gc.enable()
    return out


#: Seconds of untimed runs that begin each turn of ``block`` > 1 runs (one run at least): what the
#: model before it left behind (ONNX Runtime's spinning threads) slowed a sub-millisecond net's
#: first three runs of a turn, about 2 ms (onnxruntime_engine's module doc). After BVLC GoogLeNet's
#: turn its slim net's first four runs took twice their time (`python scripts/ort_turns.py`); the
#: median of a turn of 10 absorbs them: within 2-4 % of the net alone, with 5 ms or 100 ms here.
SETTLE_S = 0.005


def turns(runs: int, warmup: int, block: int) -> list[tuple[int, bool]]:
    """Each model's turns, in order, as (timed passes, whether an untimed pass comes first): the
    ``warmup`` untimed rounds as (0, False), one pass each, then the timed passes in turns of
    ``block`` (the last one shorter), each after an untimed pass when ``block`` > 1."""
    timed = [min(block, runs - i) for i in range(0, runs, block)]
    return [(0, False)] * warmup + [(n, block > 1) for n in timed]


def run(prepared: Sequence[Prepared], device: Device, runs: int = 50, warmup: int = 5,
        layers: bool = False, memory: bool = True, seed: int = 0,
        progress: Progress | None = None, cooldown: float = 0.0,
        refused: dict[str, str] | None = None, block: int | None = None) -> list[Measurement]:
    """Open every model on ``device``, time them interleaved, then measure their memory (after
    the timing, so that memory probes never run alongside a timed pass). Devices that run the
    timing program (engine/remote.py) measure everything in one go, in the same way.

    ``refused``: a dict to collect the models ``device`` cannot open (an engine's export refusing
    a layer, say) as ``{label: one-line reason}``; those are left out of the result (the others
    are timed as usual) instead of raising. Without it (the default), the first refusal raises.

    A model without weights gets random ones (``seed``) here: in the child process of
    run_isolated, so that a large net's weights are not made and sent over by the caller (the
    plan's timings of AlexNet spent a minute and a half sending them).

    ``block``: the runs of a model in a row (``measure``); None: the device's ``turn``."""
    from deeprebirth.runtime.pycaffe import random_weights  # noqa: PLC0415  (numpy only)
    block = device.turn if block is None else block
    for p in prepared:
        if p.model.weights is None:
            p.model.weights = random_weights(Graph(p.model.net, strict=False), seed=seed)
    if hasattr(device, "measure_models"):
        check_block(device, block)
        runs_ = device.measure_models([p.model for p in prepared], [p.weights_file for p in prepared],
                                      runs, warmup, layers, seed=seed, progress=progress)
        return [Measurement(p.label, r.layer_names, r.layer_types, r.forward_s, r.layers_s, p.model.source,
                            p.weights, r.memory if memory else None) for p, r in zip(prepared, runs_)]
    sessions: list[tuple[str, Session]] = []
    opened: list[Prepared] = []
    try:
        for p in prepared:
            try:
                sessions.append((p.label, device.open(p.model, seed=seed)))
            except Exception as e:
                if refused is None:
                    raise
                refused[p.label] = refusal(e)
                continue
            opened.append(p)
        results = measure(sessions, runs, warmup, layers, progress, cooldown, block) if sessions else []
        for p, (_, session), rec in zip(opened, sessions, results):
            rec.source, rec.weights = p.model.source, p.weights
            if memory:
                rec.memory = session.memory()
    finally:
        for _, session in sessions:
            session.close()
    return results


def check_block(device: Device, block: int) -> None:
    """Turns of more than one run are made in this process only (``measure``)."""
    if block > 1 and hasattr(device, "measure_models"):
        raise RebirthError(f"{{opt:block}} applies to the engines run in this process ({{opt:device}} cpu); "
                           f"{device.name} runs the timing program, which interleaves run by run: leave it out")


def refusal(e: BaseException) -> str:
    """One line saying why a model could not be opened: a RebirthError's message as it is, any
    other error with its type (it is most likely a bug of ours, not the engine's refusal)."""
    text = " ".join(str(e).split()) or "no message"
    return text if isinstance(e, RebirthError) else f"{type(e).__name__}: {text}"


def run_isolated(prepared: Sequence[Prepared], device: Device, runs: int = 50, warmup: int = 5,
                 layers: bool = False, memory: bool = True, seed: int = 0,
                 progress: Progress | None = None, cooldown: float = 0.0,
                 block: int | None = None) -> list[Measurement]:
    """``run`` in a child process (engine/isolate.py), so that a net Caffe refuses (a CHECK
    failure) ends in a one-line RebirthError with Caffe's message instead of an abort. A device
    that runs the rebirth-time program is a process of its own already: it runs here (and keeps
    what it learns of the device for the report)."""
    if hasattr(device, "measure_models"):
        return run(prepared, device, runs, warmup, layers, memory, seed, progress, cooldown=cooldown, block=block)
    from deeprebirth.runtime import isolate  # noqa: PLC0415
    return isolate.call(run, prepared, device, runs, warmup, layers, memory, seed, what="Caffe (bench)",
                        progress=progress, cooldown=cooldown, block=block)


# ------------------------------------------------------------------------------------------------
# Summaries (pure)


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def layer_table(names: Sequence[str], types: Sequence[str], layers_s: Sequence[Sequence[float]]) -> list[dict]:
    """One row per layer: median (``ms``) and minimum (``min_ms``) over the runs, and its share of
    the sum of the medians (``percent``)."""
    if not layers_s:
        return []
    for run_times in layers_s:
        if len(run_times) != len(names):
            raise ValueError(f"a run has {len(run_times)} layer times for {len(names)} layers")
    columns = list(zip(*layers_s))
    rows = [{"name": n, "type": t, "kind": kind_of(t), "ms": _ms(statistics.median(c)), "min_ms": _ms(min(c))}
            for n, t, c in zip(names, types, columns)]
    total = sum(r["ms"] for r in rows)
    for r in rows:
        r["percent"] = 100.0 * r["ms"] / total if total > 0 else 0.0
    return rows


def group_by_type(layers: Sequence[dict]) -> list[dict]:
    """Layer time summed per type, largest first: ``{type, kind, count, ms, percent}``."""
    groups: dict[str, dict] = {}
    for r in layers:
        g = groups.setdefault(r["type"], {"type": r["type"], "kind": r["kind"], "count": 0, "ms": 0.0})
        g["count"] += 1
        g["ms"] += r["ms"]
    total = sum(r["ms"] for r in layers)
    out = sorted(groups.values(), key=lambda g: (-g["ms"], g["type"]))
    for g in out:
        g["percent"] = 100.0 * g["ms"] / total if total > 0 else 0.0
    return out


def group_by_kind(layers: Sequence[dict]) -> dict[str, float]:
    """``{"tensor": ms, "non-tensor": ms}``."""
    out = {"tensor": 0.0, "non-tensor": 0.0}
    for r in layers:
        out[r["kind"]] = out.get(r["kind"], 0.0) + r["ms"]
    return out


def non_tensor_percent(layers: Sequence[dict]) -> float | None:
    """The paper's Eq. 1: time in non-tensor layers / time over the entire network (the sum of
    all layers), in percent; None without layer times."""
    kinds = group_by_kind(layers)
    total = sum(kinds.values())
    if not layers or total <= 0:
        return None
    return 100.0 * kinds["non-tensor"] / total


def non_tensor_percent_runs(types: Sequence[str], layers_s: Sequence[Sequence[float]]) -> list[float]:
    """Eq. 1 within each run (one value per run): how much the share varies from run to run."""
    nt = [kind_of(t) == "non-tensor" for t in types]
    out = []
    for run_times in layers_s:
        total = sum(run_times)
        if total > 0:
            out.append(100.0 * sum(t for t, n in zip(run_times, nt) if n) / total)
    return out


def quartiles(values: Sequence[float]) -> list[float] | None:
    """[first quartile, third quartile] (None without values)."""
    if not values:
        return None
    if len(values) == 1:
        return [values[0], values[0]]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return [q[0], q[2]]


def top_layers(layers: Sequence[dict], n: int = TOP_LAYERS) -> list[dict]:
    return sorted(layers, key=lambda r: -r["ms"])[:n]


def agreement(forward_s: Sequence[float], layers_s: Sequence[Sequence[float]],
              margin_percent: float = LAYER_SUM_MARGIN) -> dict | None:
    """How well the per-layer calls add up to a whole forward pass. Both are measured in every
    run, one right after the other; ``diff_percent`` is the median over runs of
    (layer sum - whole pass) / whole pass, a side-by-side comparison that load changes between
    runs do not disturb. ``layer_sum_ms`` and ``forward_ms`` are the medians of each."""
    if not layers_s or not forward_s:
        return None
    sums = [sum(run_times) for run_times in layers_s]
    paired = [100.0 * (s - f) / f for s, f in zip(sums, forward_s) if f > 0]
    layer_sum, forward = _ms(statistics.median(sums)), _ms(statistics.median(forward_s))
    pct = statistics.median(paired) if paired else 0.0
    return {"layer_sum_ms": layer_sum, "forward_ms": forward, "diff_ms": layer_sum - forward,
            "diff_percent": pct, "margin_percent": margin_percent, "within_margin": abs(pct) <= margin_percent}


def summarize(m: Measurement) -> dict:
    """The JSON entry of one model."""
    if not m.forward_s:
        raise ValueError(f"{m.label}: no timed runs")
    rows = layer_table(m.layer_names, m.layer_types, m.layers_s)
    kinds = group_by_kind(rows) if rows else None
    shares = non_tensor_percent_runs(m.layer_types, m.layers_s)
    mem = m.memory
    return {
        "model": m.label,
        "source": m.source,
        "weights": m.weights,
        "runs": len(m.forward_s),
        "best_ms": _ms(min(m.forward_s)),
        "median_ms": _ms(statistics.median(m.forward_s)),
        "runs_ms": [_ms(t) for t in m.forward_s],
        "non_tensor_percent": non_tensor_percent(rows),
        "non_tensor_percent_iqr": quartiles(shares),
        "non_tensor_percent_median_run": statistics.median(shares) if shares else None,
        "tensor_ms": kinds["tensor"] if kinds else None,
        "non_tensor_ms": kinds["non-tensor"] if kinds else None,
        "layer_sum": agreement(m.forward_s, m.layers_s),
        "memory_bytes": mem.blob_bytes if mem else None,
        "allocated_bytes": mem.allocated_bytes if mem else None,
        "peak_rss_bytes": mem.peak_rss_bytes if mem else None,
        "process_peak_rss_bytes": mem.process_peak_rss_bytes if mem else None,
        "memory_method": mem.method if mem else None,
        "by_type": group_by_type(rows),
        "layers": rows,
    }


def ratios(models: Sequence[dict]) -> dict:
    """Times relative to the first model: ``best`` (best/best), ``median`` (median/median) and
    ``paired_median`` (median over runs of run_i / run_i of the first model: the side-by-side
    ratio of interleaved runs, the least sensitive to a machine whose load changes).
    Below 1 means faster than the first model; ``speedup`` is 1 / ``best``."""
    if not models:
        return {"reference": None, "models": {}}
    ref = models[0]
    out = {}
    for m in models:
        paired = [a / b for a, b in zip(m["runs_ms"], ref["runs_ms"]) if b > 0]
        best = m["best_ms"] / ref["best_ms"] if ref["best_ms"] > 0 else None
        out[m["model"]] = {
            "best": best,
            "median": m["median_ms"] / ref["median_ms"] if ref["median_ms"] > 0 else None,
            "paired_median": statistics.median(paired) if paired else None,
            "speedup": (1.0 / best) if best else None,
        }
    return {"reference": ref["model"], "models": out}


def build_json(measurements: Sequence[Measurement], settings: dict | None = None) -> dict:
    """The whole `bench --json` document: ``settings`` (device, batch, runs, ...), ``models`` and
    ``ratios``."""
    models = [summarize(m) for m in measurements]
    return {**(settings or {}), "models": models, "ratios": ratios(models)}


# The plot is in runtime/plot.py.
