"""Apply rules to a model: match, guard, rewrite, report, until no rule finds anything new."""
from __future__ import annotations

from dataclasses import dataclass, field

from deeprebirth.graph.dag import Graph
from deeprebirth.caffe.model import Model
from deeprebirth.transforms.rules.base import Candidate, Change, Rule, Skip


@dataclass
class Result:
    model: Model
    changes: list[Change] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)   # every match considered, in order
    notes: list[str] = field(default_factory=list)

    @property
    def regenerated(self) -> set[str]:
        gone = {n for c in self.changes for n in c.removed}
        return {n for c in self.changes for n in c.regenerated} - gone


def costs(graph: Graph) -> dict:
    t = graph.totals()
    return {"params": t["params"], "macs": t["macs"], "memory_bytes": t["memory_bytes"], "layers": t["layers"]}


def run(model: Model, rules: list[Rule], only: set[str] | None = None, max_steps: int = 10_000) -> Result:
    """Rewrite a copy of ``model`` with ``rules`` in order. ``only`` restricts rewrites to the named
    substructures. Each rule runs to a fixed point before the next one starts; after ``max_steps``
    rewrites the run stops, with a note in ``Result.notes``.

    Every match a rule reports (outside ``only``) becomes a ``Candidate``, rewritten or refused by
    ``Rule.refusal`` (its guards); a refused one is also a ``Skip``."""
    model = model.copy()
    result = Result(model)
    seen: set[tuple[str, str, tuple[str, ...]]] = set()
    steps = 0
    for rule in rules:
        while True:
            graph = Graph(model.net, strict=False)
            if not rule.looks_at(graph):
                break
            todo = None
            for m in rule.match(graph):
                key = (rule.name, m.name, tuple(m.layers))
                if key in seen or (only is not None and m.name not in only):
                    continue
                seen.add(key)
                note = _unknown_shapes(graph, m.layers) or rule.refusal(graph, m, model)
                result.candidates.append(Candidate(rule.name, m.name, list(m.layers), note))
                if note:
                    result.skips.append(Skip(rule.name, m.name, note))
                    continue
                todo = m
                break
            if todo is None:
                break
            if steps >= max_steps:
                result.candidates.pop()
                result.notes.append(f"stopped after {max_steps} rewrites (max_steps) with rule {rule.name} "
                                    f"still matching '{todo.name}'; the rest was not slimmed")
                return result
            before = costs(graph)
            change = rule.rewrite(model, graph, todo)
            change.before, change.after = before, costs(Graph(model.net, strict=False))
            result.changes.append(change)
            steps += 1
    return result


def _unknown_shapes(graph: Graph, layers) -> str | None:
    """Layers of unknown type are barriers: a match touching a layer whose shapes are unknown is
    left alone, naming the layer of unknown type behind it."""
    for name in layers:
        node = graph.by_name.get(name)
        if node is None or all(s is not None for s in node.top_shapes):
            continue
        cause = graph.unknown_cause(node)
        if cause is None:
            return f"the output shape of layer '{name}' cannot be inferred"
        return f"the output shape of layer '{name}' depends on layer '{cause.name}' of unknown type '{cause.type}'"
    return None
