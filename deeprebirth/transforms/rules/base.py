"""The shape every rewrite rule shares: declarations, match, guards, rewrite, report.

Like ONNX Runtime's rewrite rules (op types, SatisfyCondition, Apply) and ncnn's optimizer
passes: a rule names the layer types it looks at, *matches* substructures in a Graph, checks
*guards* (returns a note when the match must be left alone), *rewrites* the Model (net and
weights), and returns a *Change* that reports what happened.

A rule is one file in ``deeprebirth/rules/`` (or in a directory named by ``REBIRTH_RULES_PATH``)
that defines ``RULE``, an instance of a Rule subclass; the registry (``rules/__init__.py``) finds
it. Everything else about the rule is declared on its class:

=====================  ==========================================================================
``name``               what ``--rules`` and reports call it
``types``              the layer types it looks at: on a net with none of them, ``match`` is not
                       called (empty: always called)
``exact``              the output is unchanged (up to float rounding), or layers must re-learn
``default``            runs when no ``--rules`` is given; otherwise it is opt-in
``order``, ``after``   its place in the run order: lower ``order`` first, and after every rule
                       named in ``after`` that runs too
``needs_weights``      every match is refused (with a note) when the model has no weights
``absorbs_pooling``    it removes poolings by folding them into a convolution; ``--keep-pooling``
                       runs it with ``keep_pooling_options`` or, when that is None, leaves it out
``rematches_added``    False: the layers its own rewrites added are not matched again in the
                       same run (a decomposition is not decomposed again)
``own_scope``          True: the rule was given the layers it may rewrite itself, and a run's
                       ``only`` (the slim substructures a plan chose) does not restrict it (a
                       plan's Tucker layers, whose names may be those of slim substructures)
options                the keyword arguments of its ``__init__`` (``Rule.options()``)
=====================  ==========================================================================

A rule object holds its declarations and options, never the state of a run: the runner
(``transforms/runner.py``) keeps that, the registry hands out a fresh object per call
(``Rule.fresh``), and one object run twice gives the same results twice. What a guard works out
for its rewrite travels on the ``Match`` (``match.data``); what a rewrite wants to hand on after
the run travels on its ``Change``.

A match is refused in one way only: ``guards`` returns a note (``Rule.refusal`` adds the
``needs_weights`` check). ``rewrite`` is called only for matches no guard refused. Errors in the
input (weights that do not fit, a statistic that is not finite) are still RebirthErrors.
"""
from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field

from deeprebirth.errors import RebirthError
from deeprebirth.graph.dag import Graph
from deeprebirth.graph.model import Model
from deeprebirth.transforms.edit import memory_growth, unique_name  # noqa: F401  (rules written before edit.py import them here)


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


@dataclass
class Candidate:
    """A match a rule reported while slimming: rewritten (``refused`` None) or left alone."""
    rule: str
    name: str                       # what --only accepts
    layers: list[str]
    refused: str | None = None      # the guard's note

    def as_dict(self) -> dict:
        return asdict(self)


class Rule:
    name: str = ""
    types: frozenset[str] = frozenset()   # layer types the rule inspects (empty: any net)
    exact: bool = True                     # output identical (up to float rounding)?
    default: bool = False                  # in the default run (no --rules)? otherwise opt-in
    order: float = 100                     # run order: lower first (the built-in rules use 10..60)
    after: tuple[str, ...] = ()            # rules that must run before this one when both run
    needs_weights: bool = False            # computes new weights from the trained ones
    absorbs_pooling: bool = False          # removes poolings into a convolution's stride
    keep_pooling_options: dict | None = None   # options that make it keep every pooling
    rematches_added: bool = True           # may match layers its own rewrites added in the same run
    own_scope: bool = False                # restricted by its own options, not by the run's ``only``

    # -- what a rule implements ------------------------------------------------------------
    def match(self, graph: Graph) -> list[Match]:
        raise NotImplementedError

    def guards(self, graph: Graph, match: Match, model: Model) -> str | None:
        """None when the rewrite is safe; otherwise a note saying why the match is left alone."""
        return None

    def rewrite(self, model: Model, graph: Graph, match: Match) -> Change:
        """Rewrite ``model`` in place for ``match`` (one that no guard refused) and report the change."""
        raise NotImplementedError

    # -- what the pipeline and the registry use ----------------------------------------------
    def looks_at(self, graph: Graph) -> bool:
        """False when the net has none of the layer types the rule inspects: nothing to match."""
        return not self.types or any(n.type in self.types for n in graph.nodes)

    def refusal(self, graph: Graph, match: Match, model: Model) -> str | None:
        """The note that leaves ``match`` alone, or None: the declared needs, then the guards."""
        if self.needs_weights and model.weights is None:
            return f"rule {self.name} needs the trained weights (give {{opt:weights}})"
        return self.guards(graph, match, model)

    def options(self) -> dict:
        """The rule's options (its ``__init__`` keyword arguments) and their current values."""
        params = list(inspect.signature(type(self).__init__).parameters.values())[1:]
        return {p.name: getattr(self, p.name, p.default) for p in params
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

    def __eq__(self, other) -> bool:
        """Rules hold no run state: two are equal when they are of one class with the same options."""
        return type(self) is type(other) and self.options() == other.options()

    def __hash__(self) -> int:
        return hash((type(self), self.name))

    def fresh(self) -> "Rule":
        """A new instance with the same options (what the registry hands out for each run)."""
        return type(self)(**self.options())

    def with_options(self, **changes) -> "Rule":
        """A new instance of the rule with some options changed."""
        have = self.options()
        unknown = [k for k in changes if k not in have]
        if unknown:
            listing = ", ".join(have) or "none"
            raise RebirthError(f"rule {self.name}: no option '{unknown[0]}' (options: {listing})")
        return type(self)(**{**have, **changes})

    def declaration(self) -> dict:
        """Everything the rule declares about itself (for reports and `inspect --json`)."""
        return {"name": self.name, "exact": self.exact, "default": self.default, "order": self.order,
                "after": list(self.after), "needs_weights": self.needs_weights,
                "absorbs_pooling": self.absorbs_pooling, "rematches_added": self.rematches_added,
                "types": sorted(self.types),
                "options": {k: _plain(v) for k, v in self.options().items()}}


def _plain(value):
    """An option value as JSON can hold it (sets sorted into lists; other objects by repr)."""
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if value is None or isinstance(value, (str, int, float, bool, list, tuple, dict)):
        return value
    return repr(value)
