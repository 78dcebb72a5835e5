"""Apply rules to a model: match, guard, rewrite, report, until no rule finds anything new.

The run holds all the state of a run (the model being rewritten, its current Graph, what was seen,
rewritten and refused, the layers each rule added); rules hold none, so one rule object can serve
any number of runs, one after the other, with the same results. The Graph is built once at the
start and once after each rewrite: that graph is both the ``after`` costs of the change and what
the next match looks at.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from deeprebirth.graph.dag import Graph
from deeprebirth.graph.model import Model
from deeprebirth.transforms.rules.base import Candidate, Change, Match, Rule, Skip


@dataclass
class Result:
    model: Model
    changes: list[Change] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)   # every match considered, in order
    notes: list[str] = field(default_factory=list)
    graph: Graph | None = None          # the Graph of ``model.net`` as the run left it
    warnings: list[str] = field(default_factory=list)   # the Graphs' warnings (unknown types), each once
    matched: list[str] = field(default_factory=list)    # every match name reported, ``only`` or not

    @property
    def regenerated(self) -> set[str]:
        gone = {n for c in self.changes for n in c.removed}
        return {n for c in self.changes for n in c.regenerated} - gone


def costs(graph: Graph) -> dict:
    t = graph.totals()
    return {"params": t["params"], "macs": t["macs"], "memory_bytes": t["memory_bytes"], "layers": t["layers"]}


@dataclass
class _Run:
    """One run's state: the current graph and its costs, the matches already seen, what each rule added."""
    result: Result
    only: set[str] | None
    progress: Callable[[int], None] | None
    exact_always: bool = False           # ``only`` restricts the rules that are not exact
    graph: Graph = None
    costs: dict = None
    seen: set = field(default_factory=set)
    added: dict = field(default_factory=dict)   # rule name -> layers its rewrites added

    def look(self) -> None:
        """(Re)build the graph of the model as it is now, and its costs; keep its warnings."""
        self.graph = Graph(self.result.model.net, strict=False)
        self.costs = costs(self.graph)
        self.result.graph = self.graph
        for w in self.graph.warnings:
            if w not in self.result.warnings:
                self.result.warnings.append(w)

    def next_match(self, rule: Rule) -> Match | None:
        """The first match of ``rule`` not seen yet that no guard refuses (recording every one seen)."""
        result, graph = self.result, self.graph
        for m in rule.match(graph):
            key = (rule.name, m.name, tuple(m.layers))
            if key in self.seen:
                continue
            if not rule.rematches_added and set(m.layers) & self.added.get(rule.name, set()):
                continue
            self.seen.add(key)
            if m.name not in result.matched:
                result.matched.append(m.name)
            if self.only is not None and m.name not in self.only and not (self.exact_always and rule.exact) \
                    and not rule.own_scope:
                continue
            note = _unknown_shapes(graph, m.layers) or rule.refusal(graph, m, result.model)
            result.candidates.append(Candidate(rule.name, m.name, list(m.layers), note))
            if self.progress is not None:
                self.progress(1)
            if note:
                result.skips.append(Skip(rule.name, m.name, note))
                continue
            return m
        return None


def run(model: Model, rules: list[Rule], only: set[str] | None = None, max_steps: int = 10_000,
        progress: Callable[[int], None] | None = None, exact_always: bool = False) -> Result:
    """Rewrite a copy of ``model`` with ``rules`` in order. ``only`` restricts rewrites to the named
    substructures; with ``exact_always`` it restricts only the rules that are not exact (a plan: every
    lossless rewrite, and the lossy ones it chose). Each rule runs to a fixed point before the next
    one starts; after ``max_steps`` rewrites the run stops, with a note in ``Result.notes``.
    ``progress(1)`` is called after each match is decided (rewritten or refused).

    Every match a rule reports (outside ``only``) becomes a ``Candidate``, rewritten or refused by
    ``Rule.refusal`` (its guards); a refused one is also a ``Skip``. The name of every match,
    inside ``only`` or not, is in ``Result.matched``. A rule that declares ``rematches_added =
    False`` is not shown the layers its own rewrites added in this run."""
    state = _Run(Result(model.copy()), only, progress, exact_always)
    result = state.result
    state.look()
    for rule in rules:
        while rule.looks_at(state.graph):
            todo = state.next_match(rule)
            if todo is None:
                break
            if len(result.changes) >= max_steps:
                result.candidates.pop()
                result.notes.append(f"stopped after {max_steps} rewrites (max_steps) with rule {rule.name} "
                                    f"still matching '{todo.name}'; the rest was not slimmed")
                return result
            before = state.costs
            change = rule.rewrite(result.model, state.graph, todo)
            state.look()
            change.before, change.after = before, state.costs
            state.added.setdefault(rule.name, set()).update(change.added)
            result.changes.append(change)
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
