"""Human and JSON views of a net's structure and costs (used by `inspect`, and by `slim` reports)."""
from __future__ import annotations

from deeprebirth.transforms import runner
from deeprebirth.transforms import rules as rule_registry
from deeprebirth.graph.dag import Graph
from deeprebirth.caffe.model import Model

MB = 1024 * 1024


def candidates(model: Model, rules: list[str] | None = None, keep_pooling: bool = False) -> dict:
    """The slimming candidates: every match the rules `rebirth slim` would run (same ``rules`` and
    ``keep_pooling``) report while slimming everything -- its rule, its name (what ``--only``
    accepts), its layers, and the guard's note when it is left alone -- with notes on rules left out."""
    chosen, notes = rule_registry.select(rules, keep_pooling, model.weights is not None)
    result = runner.run(model, chosen)
    return {"rules": [r.declaration() for r in chosen], "candidates": [c.as_dict() for c in result.candidates],
            "candidate_notes": notes + result.notes}


def inspect(model: Model, batch: int | None = None, rules: list[str] | None = None,
            keep_pooling: bool = False) -> dict:
    g = Graph(model.net, batch=batch)
    layers = []
    for n in g.nodes:
        layers.append({
            "name": n.name, "type": n.type, "kind": n.kind,
            "bottoms": list(n.layer.bottom), "tops": list(n.layer.top),
            "top_shapes": {t[0]: list(s) if s is not None else None for t, s in zip(n.tops, n.top_shapes)},
            "params": n.params, "macs": n.macs, "output_bytes": n.output_bytes,
        })
    totals = g.totals()
    return {
        "model": model.source,
        "name": model.net.name,
        "weights": model.weights_source,
        "batch": batch,
        "inputs": {name: list(g.shapes[name]) if g.shapes[name] else None for name in g.input_blobs},
        "layers": layers,
        "totals": totals,
        "memory_bytes": totals["memory_bytes"],
        **candidates(model, rules, keep_pooling),
    }


def _fmt_shape(shapes: dict) -> str:
    return " ".join("x".join(str(d) for d in s) if s is not None else "?" for s in shapes.values()) or "-"


def human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


def format_inspect(info: dict) -> str:
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
