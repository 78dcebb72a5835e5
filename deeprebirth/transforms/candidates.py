"""Human and JSON views of a net's structure and costs (used by `inspect`, and by `slim` reports)."""
from __future__ import annotations

from deeprebirth.graph.dag import Graph
from deeprebirth.graph.model import Model, stand_in
from deeprebirth.transforms import rules as rule_registry
from deeprebirth.transforms import runner

MB = 1024 * 1024


def candidates(model: Model, rules: list[str] | None = None, keep_pooling: bool = False) -> dict:
    """The slimming candidates: every match the rules `rebirth slim` would run (same ``rules`` and
    ``keep_pooling``) report while slimming everything -- its rule, its name (what ``--only``
    accepts), its layers, and the guard's note when it is left alone -- with notes on rules left out."""
    chosen, notes = rule_registry.select(rules, keep_pooling)
    result = runner.run(stand_in(model), chosen)      # without weights: the structure slim makes (slim.slim)
    computed = sorted({c.rule for c in result.candidates} & {r.name for r in chosen if r.needs_weights})
    if model.weights is None and computed:
        notes.append(f"no {{opt:weights}}: {', '.join(computed)} compute(s) new weights from the trained ones; "
                     "without them `slim` makes the structure only (from stand-in weights, not written)")
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


