"""The shape every rewrite rule shares: match, guards, rewrite, report.

Like ONNX Runtime's rewrite rules (op types, SatisfyCondition, Apply) and ncnn's optimizer
passes: a rule names the layer types it looks at, *matches* substructures in a Graph, checks
*guards* (returns a note when the match must be left alone), *rewrites* the Model (net and
weights), and returns a *Change* that reports what happened. A new rule is one new file.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from typing import Callable

from .. import proto as pb
from ..graph import Graph
from ..model import Model


@dataclass
class Match:
    """One substructure a rule could rewrite."""
    rule: str
    name: str                       # substructure name, used by --only and in reports
    layers: list[str]               # every layer involved
    data: dict = field(default_factory=dict)  # rule-specific details


@dataclass
class Change:
    """What a rewrite did."""
    rule: str
    substructure: str
    removed: list[str] = field(default_factory=list)      # layers gone from the net
    regenerated: list[str] = field(default_factory=list)  # layers whose weights must be re-learned
    modified: list[str] = field(default_factory=list)     # layers changed exactly (weights recomputed)
    added: list[str] = field(default_factory=list)
    exact: bool = True
    notes: list[str] = field(default_factory=list)
    before: dict = field(default_factory=dict)            # params/macs/memory of the net before
    after: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Skip:
    """A match left alone, and why."""
    rule: str
    substructure: str
    reason: str


class Rule:
    name: str = ""
    types: frozenset[str] = frozenset()   # layer types the rule inspects
    exact: bool = True                     # output identical (up to float rounding)?

    def match(self, graph: Graph) -> list[Match]:
        raise NotImplementedError

    def guards(self, graph: Graph, match: Match, model: Model) -> str | None:
        """None when the rewrite is safe; otherwise a note saying why the match is left alone."""
        return None

    def rewrite(self, model: Model, graph: Graph, match: Match) -> Change:
        """Rewrite ``model`` in place for ``match`` and report the change."""
        raise NotImplementedError


def unique_name(name: str, taken: set[str]) -> str:
    """``name``, or ``name_2``, ``name_3``, ... if taken; the result is added to ``taken``."""
    out, i = name, 1
    while out in taken:
        i += 1
        out = f"{name}_{i}"
    taken.add(out)
    return out


def memory_growth(graph: Graph, model: Model, edit: Callable[["pb.NetParameter"], None]) -> int:
    """Bytes of blob memory an edit would add (negative: save), tried on a copy of the net."""
    trial = pb.NetParameter()
    trial.CopyFrom(model.net)
    edit(trial)
    return Graph(trial, batch=graph.batch, strict=False).memory_bytes - graph.memory_bytes
