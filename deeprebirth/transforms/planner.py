"""Which lossy rewrites to make: the choice of `rebirth plan`, a pure function of measured tables.

Every lossless rewrite (BatchNorm folds, exact merges) is always made; the net they give is the
*exact* net, the baseline the plan improves on. Each lossy candidate (a substructure `slim --only`
names) comes with two measurements, made elsewhere (learning/plan.py):

* ``saved_ms``: the time it saves on the target engine and device: the exact net's forward pass
  minus that of the exact net with this one rewrite more, timed side by side (``saved_spread_ms``:
  the noise of that measurement, below which a saving means nothing);
* ``flips``: how many of the held-out images change their top-1 class against the original net
  once the rewritten layers are re-learned by least squares (relearn's first step), and
  ``rel_error``, the output's relative error against the original's there. With labels (`--labels`)
  also ``lost``: how many more held-out images the top-1 gets wrong than the original's does (at
  least 0), and the budget is spent in those instead of flips.

For a fidelity budget a candidate is *eligible* when its saving is measurable (``saved_ms`` above
its noise): the others buy nothing on this target, whatever they cost. For a speed-up every
candidate that saves any time is: savings add up less than they seem (merges make each other
cheaper or dearer), and a target the measurable ones cannot reach may need the small ones too.
Among the eligible ones the plan solves a 0/1 knapsack exactly, by dynamic programming over the
cost in hundredths of an image:

    cost_i = flips_i + rel_error_i        (flips first; the output error breaks ties and keeps a
                                           rewrite that flips nothing from being free; with labels
                                           lost_i instead of flips_i)

* ``max_drop`` P (percent of the held-out images; a top-1 class that changes is the most that
  can be lost, so P bounds the top-1 points lost; with labels P is the top-1 points lost, measured
  on the labelled held-out images): maximise the sum of ``saved_ms`` with the sum of costs within
  ``recovery`` x P % of the held-out images (the costs are measured after least squares alone;
  what recovery leaves is checked on the result by `accelerate`);
* ``speedup`` X (against the original net): the least cost whose saving brings the predicted time,
  ``exact_ms - sum saved_ms``, to ``original_ms / X``; when no set reaches it, the largest saving.

Candidates that share a ``group`` are alternatives (one layer's Tucker decomposition at a few ranks):
at most one of a group is chosen, so the knapsack is the multiple-choice one, solved by the same
dynamic programme over groups instead of items (a candidate without a group is a group of its own,
and the 0/1 knapsack is the case of groups of one).

Costs are assumed to add (a union bound on flipped images, to first order); the caller checks the
assembled net and tightens the budget when it is off (``tightened``). Without weights nothing can
be re-learned: the plan is by time alone (``flips`` None) -- for a speed-up the fewest rewrites
that reach it (largest savings first), otherwise every rewrite with a measurable saving.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from deeprebirth.errors import RebirthError

#: Cost units per held-out image in the knapsack (hundredths).
SCALE = 100
#: The default fidelity budget: at most this percentage of held-out images may change class.
DEFAULT_MAX_DROP = 1.0
#: The default budget with labels (`--labels`): at most this many top-1 points lost on the held-out images.
DEFAULT_MAX_DROP_LABELS = 0.5


@dataclass
class Candidate:
    name: str                             # what `slim --only` takes
    rules: list[str] = field(default_factory=list)
    layers: int = 0                       # layers of the original net it rewrites
    saved_ms: float | None = None
    saved_spread_ms: float | None = None
    saved_first_ms: float | None = None   # saved as the first rewrite made (exact net + this)
    saved_last_ms: float | None = None    # saved as the last (slim everything, less this)
    flips: int | None = None              # held-out images whose top-1 differs from the original's
    rel_error: float | None = None
    lost: int | None = None               # with labels: held-out images newly misclassified (>= 0)
    note: str | None = None               # why it cannot be planned (relearn failed, ...)
    group: str | None = None              # alternatives share a group: at most one of them is chosen
    chosen: bool = False
    why: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Choice:
    chosen: list[str]
    predicted_ms: float
    predicted_speedup: float
    cost: float                           # sum of chosen costs, in images
    budget: float | None                  # in images, for max_drop
    basis: str                            # "measured" or "time alone"
    reached: bool = True                  # the speed-up target is met by the prediction
    notes: list[str] = field(default_factory=list)


def measurable(c: Candidate) -> bool:
    return c.saved_ms is not None and c.saved_ms > 0 and c.saved_ms > (c.saved_spread_ms or 0.0)


def eligible(c: Candidate, for_speedup: bool) -> bool:
    """Whether ``c`` may be chosen: a measurable saving, or for a speed-up any saving at all."""
    return measurable(c) or (for_speedup and c.saved_ms is not None and c.saved_ms > 0)


def cost(c: Candidate) -> float:
    """What ``c`` spends of the budget, in images: its flips (with labels: the images it loses) plus
    its output error."""
    spent = c.lost if c.lost is not None else c.flips
    return float(spent or 0) + float(c.rel_error or 0.0)


def points(p: float) -> str:
    """``p`` top-1 points, as a sentence says it ("1 top-1 point", "0.5 top-1 points")."""
    return f"{p:g} top-1 point" + ("" if p == 1 else "s")


def default_max_drop(labels: bool) -> float:
    return DEFAULT_MAX_DROP_LABELS if labels else DEFAULT_MAX_DROP


def images_lost(top1_drop: float | None, images: int) -> int | None:
    """Held-out images a top-1 drop (a fraction, negative when better) amounts to, at least 0."""
    return None if top1_drop is None else max(0, int(round(top1_drop * images)))


def _units(c: Candidate) -> int:
    return int(math.ceil(cost(c) * SCALE - 1e-9))


def _groups(groups: list | None, n: int) -> list[list[int]]:
    """Item indices by group, groups in the order they first appear (None: each item alone)."""
    if groups is None:
        return [[i] for i in range(n)]
    order: dict = {}
    for i, g in enumerate(groups):
        order.setdefault(("alone", i) if g is None else ("group", g), []).append(i)  # None: a group of one
    return list(order.values())


def _table(values: list[float], weights: list[int], capacity: int, groups: list[list[int]]):
    """The multiple-choice knapsack table: ``best[w]``, the largest value of a choice of at most one
    item per group of weight <= w, and ``take[g, w]``, the item of group g in that choice when
    groups 0..g are offered (-1: none)."""
    best = np.zeros(capacity + 1)
    take = np.full((len(groups), capacity + 1), -1, dtype=int)
    for g, members in enumerate(groups):
        new = best.copy()
        for i in members:
            w = weights[i]
            if w > capacity:
                continue
            with_it = np.full(capacity + 1, -np.inf)
            with_it[w:] = best[:capacity + 1 - w] + values[i]
            better = with_it > new + 1e-12
            new = np.where(better, with_it, new)
            take[g] = np.where(better, i, take[g])
        best = new
    return best, take


def _items(take: np.ndarray, weights: list[int], cap: int) -> list[int]:
    out = []
    for g in range(take.shape[0] - 1, -1, -1):
        i = int(take[g, cap])
        if i >= 0:
            out.append(i)
            cap -= weights[i]
    return sorted(out)


def knapsack(values: list[float], weights: list[int], capacity: int, groups: list | None = None) -> list[int]:
    """Indices of the subset of largest total value with total weight <= ``capacity`` (exact; of the
    subsets of that value, one of least weight). ``groups``: each item's group (None: its own); at
    most one item of a group is taken."""
    capacity = max(0, capacity)
    best, take = _table(values, weights, capacity, _groups(groups, len(values)))
    cap = int(np.argmax(best >= best[capacity] - 1e-12))
    return _items(take, weights, cap)


def least_cost_reaching(values: list[float], weights: list[int], needed: float,
                        groups: list | None = None) -> list[int] | None:
    """Indices of a subset of least total weight whose value reaches ``needed`` (at most one item
    of a group); None when none does."""
    total = int(sum(weights))
    best, take = _table(values, weights, total, _groups(groups, len(values)))
    reach = np.nonzero(best >= needed - 1e-12)[0]
    return None if not len(reach) else _items(take, weights, int(reach[0]))


def one_per_group(pool: list[Candidate]) -> list[Candidate]:
    """Of each group the candidate that saves the most (alternatives: every rewrite that saves time
    means the best of each)."""
    best = [max(members, key=lambda i: pool[i].saved_ms) for members in _groups([c.group for c in pool], len(pool))]
    return [pool[i] for i in sorted(best)]


def choose(candidates: list[Candidate], original_ms: float, exact_ms: float, heldout: int | None,
           speedup: float | None = None, max_drop: float | None = None, recovery: float = 1.0,
           labels: bool = False) -> Choice:
    """The plan's choice (module doc); marks each candidate's ``chosen`` and ``why``. ``recovery``:
    how many times more images may change class after least squares than ``max_drop`` allows for
    the result (recovery by distillation takes most of it back; `accelerate` checks the result).
    ``labels``: the budget is top-1 points (the candidates' ``lost``), its default
    DEFAULT_MAX_DROP_LABELS."""
    if speedup is not None and max_drop is not None:
        raise ValueError("give a speed-up or a fidelity budget, not both")
    by_time = not heldout
    pool = []
    for c in candidates:
        c.chosen, c.why = False, ""
        if c.note:
            c.why = c.note
        elif not eligible(c, speedup is not None):
            c.why = _unmeasurable(c)
        elif (c.lost if labels else c.flips) is None and not by_time:
            c.why = "not re-learned"
        else:
            pool.append(c)
    notes: list[str] = []
    if by_time:
        picked = _by_time(pool, original_ms, exact_ms, speedup)
        budget = None
        notes.append("planned by time alone: without weights nothing is re-learned, so no rewrite's fidelity "
                     "is known")
    elif speedup is not None:
        needed = exact_ms - original_ms / speedup
        values = [c.saved_ms for c in pool]
        idx = [] if needed <= 0 else least_cost_reaching(values, [_units(c) for c in pool], needed,
                                                         [c.group for c in pool])
        if idx is None:
            idx = [pool.index(c) for c in one_per_group(pool)]
            notes.append(f"the savings measured one rewrite at a time add up to less than {speedup:g}x: every "
                         "rewrite that saves time is chosen (the assembled net is timed next)")
        picked = [pool[i] for i in idx]
        budget = None
    else:
        drop = default_max_drop(labels) if max_drop is None else max_drop
        budget = drop / 100.0 * heldout * recovery
        idx = knapsack([c.saved_ms for c in pool], [_units(c) for c in pool], int(math.floor(budget * SCALE)),
                       [c.group for c in pool])
        picked = [pool[i] for i in idx]
    for c in pool:
        c.chosen = c in picked
        c.why = _why(c, by_time, budget)
    for c in pool:
        other = next((o for o in picked if c.group is not None and o.group == c.group and o is not c), None)
        if other is not None:
            c.why = f"{other.name} chosen instead (one of a group at most)"
    predicted = exact_ms - sum(c.saved_ms for c in picked)
    reached = speedup is None or predicted <= original_ms / speedup + 1e-9
    return Choice([c.name for c in candidates if c.chosen], predicted, original_ms / predicted if predicted > 0
                  else math.inf, sum(cost(c) for c in picked), budget, "time alone" if by_time else "measured",
                  reached, notes)


def _by_time(pool: list[Candidate], original_ms: float, exact_ms: float, speedup: float | None) -> list[Candidate]:
    if speedup is None:
        return one_per_group(pool)
    picked, ms, groups = [], exact_ms, set()
    for c in sorted(pool, key=lambda c: -c.saved_ms):
        if ms <= original_ms / speedup:
            break
        if c.group is not None and c.group in groups:
            continue
        picked.append(c)
        groups.add(c.group)
        ms -= c.saved_ms
    return picked


def _unmeasurable(c: Candidate) -> str:
    if c.saved_ms is None:
        return "not timed"
    return f"saves {c.saved_ms:+.3f} ms, within the noise ({c.saved_spread_ms or 0:.3f}): nothing on this target"


def _why(c: Candidate, by_time: bool, budget: float | None) -> str:
    if c.chosen:
        if by_time:
            return "saves time (fidelity unknown)"
        return "within the budget" if budget is not None else "needed for the speed-up"
    if budget is not None and cost(c) > budget:
        return f"costs {cost(c):.2f} images, more than the whole budget ({budget:.2f})"
    return "the budget is better spent elsewhere" if budget is not None else "not needed for the speed-up"


#: A speed-up target counts as reached when the assembled net measures at least this fraction of
#: it. 1: `--speedup 3` means 3x as timed. (At 0.97 a plan of 2.95x for 3x was accepted and measured
#: 2.86x in accelerate's own bench: the slack and the noise add up on the same side.)
REACHED = 1.0


def short_of(target: float, measured: float) -> bool:
    """Whether a measured speed-up misses the ``target`` (REACHED)."""
    return measured < REACHED * target


def everything_instead(target: float | None, planned: float, everything: float | None) -> bool:
    """Whether a speed-up plan should become "slim everything": the chosen set, as assembled and
    timed, falls short of ``target`` (short_of) and every candidate together measured faster."""
    return target is not None and everything is not None and short_of(target, planned) and everything > planned


def tightened(budget_images: float, predicted_cost: float, measured_flips: int) -> float:
    """The next budget when the assembled net flipped ``measured_flips`` images where the chosen
    candidates' costs added to ``predicted_cost``: scaled down by their ratio (at least one image less)."""
    if measured_flips <= budget_images:
        return budget_images
    ratio = max(predicted_cost, 1e-9) / measured_flips
    return max(0.0, min(budget_images * ratio, budget_images - 1.0))


PLAN_KIND = "rebirth-plan"


def read_plan(path) -> dict:
    """A plan file written by `rebirth plan`, checked: its kind, and ``only`` a list of names."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RebirthError(f"{path}: no such plan file") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise RebirthError(f"{path}: not a plan written by `rebirth plan` (not JSON: {e})") from None
    if not isinstance(doc, dict) or doc.get("kind") != PLAN_KIND:
        raise RebirthError(f"{path}: not a plan written by `rebirth plan` (no \"kind\": \"{PLAN_KIND}\")")
    only = doc.get("only")
    if not isinstance(only, list) or not all(isinstance(n, str) for n in only):
        raise RebirthError(f"{path}: its \"only\" must be a list of substructure names")
    tucker = doc.get("tucker")
    if tucker is not None and (not isinstance(tucker, dict) or not isinstance(tucker.get("layers", {}), dict)):
        raise RebirthError(f"{path}: its \"tucker\" must be null or hold \"layers\": {{layer: ranks}}")
    rules = doc.get("rules")
    if rules is not None and (not isinstance(rules, list) or not all(isinstance(n, str) for n in rules)):
        raise RebirthError(f"{path}: its \"rules\" must be a list of rule names (or null: the default rules)")
    return doc


def tucker_layers(plan: dict) -> dict[str, dict]:
    """The Tucker decompositions a plan chose: layer -> ranks (empty: none)."""
    return dict((plan.get("tucker") or {}).get("layers") or {})
