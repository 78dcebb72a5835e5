"""Human and JSON views of a net's structure and costs (used by `inspect`, and by `slim` reports)."""
from __future__ import annotations

from .graph import Graph
from .model import Model

MB = 1024 * 1024


def inspect(model: Model, batch: int | None = None) -> dict:
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
        "candidates": g.candidates(),
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
        lines.append("")
        lines.append(f"slimming candidates ({len(cands)}):")
        for c in cands:
            if c["kind"] == "streamline":
                lines.append(f"  streamline  {c['name']}: " + " -> ".join(c["layers"]))
            else:
                lines.append(f"  branch      {c['name']}: {len(c['branches'])} branches from '{c['source']}' "
                             f"joined by '{c['concat']}'")
    else:
        lines.append("slimming candidates: none")
    return "\n".join(lines)
