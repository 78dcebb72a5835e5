"""`rebirth accelerate`'s OUT/report.md and OUT/chart.png, pure functions of its summary."""
from __future__ import annotations

import io
import shlex


def _x(v) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _kv(v) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k} {_kv(x)}" for k, x in v.items())
    if isinstance(v, list):
        return ", ".join(map(str, v))
    return str(v)


def _machine(m: dict) -> str:
    """The plan's machine (plan.machine) in words; keys it does not know, as they are."""
    known = ("node", "processor", "logical_cpus", "load_average")
    parts = [str(m[k]) for k in ("node", "processor") if m.get(k)]
    if m.get("logical_cpus"):
        parts.append(f"{m['logical_cpus']} logical CPUs")
    text = ", ".join(parts)
    if m.get("load_average"):
        text += "; load average " + ", ".join(f"{v:.2f}" for v in m["load_average"]) + " (1, 5, 15 min) when planned"
    rest = {k: v for k, v in m.items() if k not in known}
    return text + (f"; {_kv(rest)}" if rest else "")


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f} %"


def _fid_cells(f: dict | None) -> tuple[str, str, str]:
    if not f:
        return "-", "-", "-"
    rel = f.get("rel_error")
    return _pct(f.get("agreement")), "-" if rel is None else f"{rel:.4f}", \
        "-" if f.get("top1") is None else _pct(f["top1"])


def _ranks(r: dict) -> str:
    return f"rank {r['r']}" if "r" in r else f"R3 {r['R3']}, R4 {r['R4']}"


def render(doc: dict) -> str:
    t = doc.get("target") or {}
    plan = doc.get("plan") or {}
    tucker = (doc.get("tucker") or {}).get("layers") or {}
    check = (doc.get("steps") or {}).get("check") or {}
    models = {m["model"]: m for m in (doc.get("bench") or {}).get("models", [])}
    lines = [f"# {doc['model']}, accelerated", "",
             f"Made by {doc['tool']} in {doc['seconds'] / 60:.1f} min (budget {doc['time_budget_s'] / 60:.0f} min) "
             f"for {t.get('engine')} on {t.get('device')}, from the images {doc['images']}"
             + (f", checked on {check.get('heldout')}" if check.get("heldout") else "") + ".", ""]
    speed = doc.get("speedup")
    lines += [f"**Result: {doc['result']}** -- "
              + (f"{speed:.2f}x faster than the original" if speed else "speed not measured")
              + f" on {t.get('engine')} ({t.get('device')}); {check.get('why', '')}.", ""]
    lines += ["## Latency and memory (side by side, one process)", "",
              "| net | median ms | best ms | blob memory MB |", "|---|---:|---:|---:|"]
    for name in ("original", "accelerated"):
        m = models.get(name)
        if m:
            mem = m.get("memory_bytes")
            lines.append(f"| {name} | {m['median_ms']:.2f} | {m['best_ms']:.2f} | "
                         f"{'-' if mem is None else f'{mem / 2**20:.1f}'} |")
    lines += ["", "## Fidelity against the original (held-out images)", "",
              "| net | images changing class | agreement | output error | top-1 | top-1 lost, estimated without "
              "labels |", "|---|---:|---:|---:|---:|---:|"]
    for o in check.get("options", []):
        if o.get("exact"):
            lines.append("| exact (lossless rewrites only) | 0 | 100.00 % | 0 (up to rounding) | as the original | 0 |")
            continue
        agree, rel, top1 = _fid_cells(o)
        est = "-" if o.get("expected_drop") is None else f"{100 * o['expected_drop']:.2f} pt"
        lines.append(f"| {o['name']} | {o['flips']} of {o['images']} ({o['flips_percent']:.2f} %) | {agree} | {rel} | "
                     f"{top1}" + (f" (original {_pct(o['top1_original'])})" if o.get("top1_original") else "")
                     + f" | {est} |")
    allowed = check.get("allowed", check.get("allowed_flips_percent", "-"))
    unit = "top-1 points lost on the labelled held-out images" if check.get("labels") else \
        "% of images changing class"
    lines += ["", f"Allowed: {allowed} {unit} (the plan's promise); the result is the fastest net within it, "
              "else the exact net.", ""]
    lines += ["## The plan", "", f"Chosen lossy rewrites ({plan.get('basis')}): "
              + (", ".join(plan.get("only") or []) or "none") + "."
              + (" Tucker decompositions: " + ", ".join(f"{k} ({_ranks(r)})" for k, r in tucker.items()) + "."
                 if tucker else ""), "",
              "| candidate | saves ms | flips | top-1 lost | output error | chosen | why |",
              "|---|---:|---:|---:|---:|---|---|"]
    for c in (doc.get("candidates") or []) + ((doc.get("tucker") or {}).get("candidates") or []):
        saved = "-" if c["saved_ms"] is None else f"{c['saved_ms']:.3f}"
        rel = "-" if c["rel_error"] is None else f"{c['rel_error']:.4f}"
        lost = "-" if c.get("lost") is None else c["lost"]
        lines.append(f"| {c['name']} | {saved} | {'-' if c['flips'] is None else c['flips']} | {lost} | {rel} | "
                     f"{'yes' if c['chosen'] else 'no'} | {c['why']} |")
    ex, full = plan.get("exact") or {}, plan.get("slim_everything")
    lines += ["", f"Planned: {_x(plan.get('predicted_speedup'))} predicted; exact net {_x(ex.get('speedup'))}"
              + (f"; slim everything {_x(full.get('speedup'))}" if full else "") + " (timed while planning).", ""]
    lines += [f"- {note}" for note in plan.get("notes") or []] + ([""] if plan.get("notes") else [])
    lines += ["## Steps", ""] + [f"- {k}: {_kv(v)}" for k, v in (doc.get("steps") or {}).items() if k != "check"]
    q = shlex.quote
    held = check.get("heldout") if check.get("heldout") and " " not in check["heldout"] else doc["images"]
    lines += ["", "## Reproduce", "", "```sh", doc.get("command") or "rebirth accelerate ...",
              f"rebirth bench {q(doc['model'])} {q(doc['out'])} --engine {t.get('engine')} --device {t.get('device')}",
              f"rebirth eval {q(doc['out'])} --data {q(held)} --teacher {q(doc['model'])}"
              + (f" --teacher-weights {q(doc['weights'])}" if doc.get("weights") else ""),
              "```", "", f"Machine: {_machine(doc.get('machine') or {})}.", ""]
    return "\n".join(lines)


def chart_png(doc: dict) -> bytes | None:
    """Per block before/after (the paper's Table-4 view) when the timing has per-layer times (Caffe
    on this machine); otherwise the whole pass of each net. None without timings."""
    models = (doc.get("bench") or {}).get("models") or []
    if not models:
        return None
    if all(m.get("layers") for m in models):
        from deeprebirth.runtime import plot  # noqa: PLC0415
        return plot.plot_png(models)
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415
    fig = Figure(figsize=(6.5, 3.6), layout="constrained")
    ax = fig.subplots()
    names = [m["model"] for m in models]
    ax.barh(names, [m["median_ms"] for m in models], color=["#888888", "#1f77b4"][:len(models)])
    for i, m in enumerate(models):
        ax.text(m["median_ms"], i, f" {m['median_ms']:.2f} ms", va="center", fontsize=10)
    t = doc.get("target") or {}
    ax.set_xlabel("median forward pass (ms, batch 1)")
    ax.set_title(f"{t.get('engine')} on {t.get('device')}: "
                 + (f"{doc['speedup']:.2f}x faster" if doc.get("speedup") else ""), loc="left", fontsize=11)
    ax.invert_yaxis()
    ax.margins(x=0.25)
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()
