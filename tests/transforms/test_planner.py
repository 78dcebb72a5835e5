"""The plan's choice from made-up tables (transforms/planner.py): pure, no timing, no Caffe."""
from __future__ import annotations

import itertools

import pytest

from deeprebirth.transforms import planner
from deeprebirth.transforms.planner import Candidate


def cands():
    return [
        Candidate("conv1", saved_ms=4.0, saved_spread_ms=0.2, flips=3, rel_error=0.10),
        Candidate("inception_3a", saved_ms=2.0, saved_spread_ms=0.1, flips=0, rel_error=0.02),
        Candidate("inception_4a", saved_ms=1.5, saved_spread_ms=0.1, flips=1, rel_error=0.03),
        Candidate("pool2", saved_ms=0.05, saved_spread_ms=0.3, flips=0, rel_error=0.01),   # in the noise
        Candidate("inception_5b", saved_ms=-0.4, saved_spread_ms=0.1, flips=0, rel_error=0.0),  # slower
        Candidate("broken", note="relearn failed: no weights"),
    ]


def brute_force(pool, capacity):
    best = (0.0, ())
    for k in range(len(pool) + 1):
        for combo in itertools.combinations(pool, k):
            if sum(planner._units(c) for c in combo) <= capacity:
                v = sum(c.saved_ms for c in combo)
                if v > best[0] + 1e-12:
                    best = (v, combo)
    return {c.name for c in best[1]}


def test_budget_picks_the_largest_saving_it_can_afford():
    cs = cands()
    # 500 held-out images, 1 %: a budget of 5 images: conv1 (3.1) + 3a (0.02) + 4a (1.03) = 4.15
    choice = planner.choose(cs, original_ms=20.0, exact_ms=18.0, heldout=500, max_drop=1.0)
    assert choice.chosen == ["conv1", "inception_3a", "inception_4a"]
    assert choice.predicted_ms == pytest.approx(18.0 - 7.5)
    assert choice.predicted_speedup == pytest.approx(20.0 / 10.5)
    assert choice.basis == "measured"
    # a tighter budget (0.6 % of 500 = 3 images) cannot afford conv1 (3.1 images) with anything
    choice = planner.choose(cands(), original_ms=20.0, exact_ms=18.0, heldout=500, max_drop=0.6)
    assert choice.chosen == ["inception_3a", "inception_4a"]


def test_noise_and_slower_rewrites_are_never_chosen_and_say_why():
    cs = cands()
    planner.choose(cs, original_ms=20.0, exact_ms=18.0, heldout=500, max_drop=100.0)
    why = {c.name: c.why for c in cs}
    assert not any(c.chosen for c in cs if c.name in ("pool2", "inception_5b", "broken"))
    assert "within the noise" in why["pool2"] and "within the noise" in why["inception_5b"]
    assert why["broken"] == "relearn failed: no weights"


def test_speedup_target_takes_the_least_cost_that_reaches_it():
    # 20 ms original, 18 exact: 2x needs 8 ms saved: everything that saves any time (7.55) does not
    # reach it: out of reach, and all of it is chosen -- pool2's saving within the noise too (for a
    # speed-up small savings count), never inception_5b's (slower)
    choice = planner.choose(cands(), original_ms=20.0, exact_ms=18.0, heldout=500, speedup=2.0)
    assert not choice.reached and choice.notes
    assert set(choice.chosen) == {"conv1", "inception_3a", "inception_4a", "pool2"}
    # 1.3x: 20/1.3 = 15.38 -> needs 2.62 ms: 3a + 4a (3.5 ms, cost 1.05) beats conv1 (4 ms, cost 3.1)
    choice = planner.choose(cands(), original_ms=20.0, exact_ms=18.0, heldout=500, speedup=1.3)
    assert choice.reached and choice.chosen == ["inception_3a", "inception_4a"]
    # the exact net alone is fast enough: nothing lossy
    choice = planner.choose(cands(), original_ms=20.0, exact_ms=18.0, heldout=500, speedup=1.05)
    assert choice.chosen == [] and choice.predicted_ms == 18.0


def test_knapsack_is_exact_against_brute_force():
    import random
    rng = random.Random(3)
    for _ in range(40):
        pool = [Candidate(f"c{i}", saved_ms=rng.uniform(0.1, 5), saved_spread_ms=0.0, flips=rng.randint(0, 6),
                          rel_error=rng.uniform(0, 0.5)) for i in range(rng.randint(1, 7))]
        budget = rng.uniform(0, 15)
        idx = planner.knapsack([c.saved_ms for c in pool], [planner._units(c) for c in pool],
                               int(budget * planner.SCALE))
        got = sum(pool[i].saved_ms for i in idx)
        want = sum(c.saved_ms for c in pool if c.name in brute_force(pool, int(budget * planner.SCALE)))
        assert got == pytest.approx(want)


def test_without_weights_the_plan_is_by_time_alone():
    cs = [Candidate("a", saved_ms=3.0, saved_spread_ms=0.1), Candidate("b", saved_ms=1.0, saved_spread_ms=0.1),
          Candidate("c", saved_ms=2.0, saved_spread_ms=0.1)]
    choice = planner.choose(cs, original_ms=10.0, exact_ms=10.0, heldout=None)
    assert choice.basis == "time alone" and choice.chosen == ["a", "b", "c"]
    assert "time alone" in choice.notes[0]
    # for 1.5x (6.67 ms, 3.33 saved): the fewest rewrites, largest savings first
    choice = planner.choose(cs, original_ms=10.0, exact_ms=10.0, heldout=None, speedup=1.5)
    assert choice.chosen == ["a", "c"]


def test_both_targets_refused_and_budget_tightens():
    with pytest.raises(ValueError):
        planner.choose(cands(), 20.0, 18.0, 500, speedup=2.0, max_drop=1.0)
    assert planner.tightened(5.0, 4.0, 4) == 5.0            # within: unchanged
    assert planner.tightened(5.0, 4.0, 8) == pytest.approx(2.5)   # twice the flips predicted: half the budget
    assert planner.tightened(5.0, 4.9, 5.5) == pytest.approx(4.0)  # at least one image less


def test_a_speedup_plan_that_falls_short_becomes_slim_everything_only_when_that_is_faster():
    assert planner.everything_instead(3.0, 2.0, 3.39)          # measured: 8 chosen gave 2.00x, all 3.39x
    assert planner.everything_instead(3.0, 2.95, 3.39)         # short by 2 %: 3x means 3x as timed
    assert not planner.everything_instead(3.0, 3.0, 3.39)      # reached
    assert not planner.everything_instead(3.0, 2.0, 1.9)       # everything is no faster
    assert not planner.everything_instead(None, 1.0, 3.0)      # no speed-up asked for
    assert not planner.everything_instead(3.0, 2.0, None)      # nothing to fall back on


def test_with_labels_the_budget_is_spent_on_images_lost_not_changed():
    # conv1 changes 3 images' class but its top-1 loses none of them (they were wrong already);
    # inception_4a changes one and loses it; inception_3a loses 2 of the labelled images
    cs = cands()
    lost = {"conv1": 0, "inception_3a": 2, "inception_4a": 1, "pool2": 0, "inception_5b": 0}
    for c in cs:
        c.lost = lost.get(c.name)
    # 0.3 top-1 points of 500 images, twice over: 3 images: conv1 (0.1) + 3a (2.02) fit, 4a (1.03) no more
    choice = planner.choose(cs, original_ms=20.0, exact_ms=18.0, heldout=500, max_drop=0.3, recovery=2.0,
                            labels=True)
    assert choice.chosen == ["conv1", "inception_3a"]
    # the same table counted in images changing class: conv1's 3 flips no longer fit with 3a
    choice = planner.choose(cands(), original_ms=20.0, exact_ms=18.0, heldout=500, max_drop=0.3, recovery=2.0)
    assert "conv1" not in choice.chosen
    # with labels, a candidate whose top-1 was not measured cannot be planned
    cs = cands()
    choice = planner.choose(cs, original_ms=20.0, exact_ms=18.0, heldout=500, max_drop=1.0, labels=True)
    assert choice.chosen == [] and {c.why for c in cs if c.name == "conv1"} == {"not re-learned"}


def test_images_lost_is_a_whole_count_never_negative():
    assert planner.images_lost(0.004, 500) == 2
    assert planner.images_lost(-0.01, 500) == 0
    assert planner.images_lost(None, 500) is None
    assert planner.default_max_drop(True) == planner.DEFAULT_MAX_DROP_LABELS
    assert planner.default_max_drop(False) == planner.DEFAULT_MAX_DROP


def test_the_plans_check_times_each_net_in_a_pair_with_the_original(monkeypatch):
    """plan.time_pairs: two nets a session (as bench and accelerate's bench), a net given twice
    timed once; the speed-up of each from its own pair."""
    from deeprebirth.caffe import netio
    from deeprebirth.learning import plan as plan_api
    sessions = []

    def fake(nets, opt, progress=None):
        sessions.append(list(nets))
        return {label: [10.0] if label == "original" else [{"a": 2.0, "b": 5.0}[label]] for label in nets}

    monkeypatch.setattr(plan_api, "time_nets", fake)
    net_a, net_b = object(), object()
    med, orig = plan_api.time_pairs("original net", {"a": net_a, "b": net_b, "a again": net_a},
                                    plan_api.Options())
    assert sessions == [["original", "a"], ["original", "b"]]
    assert med == {"a": 2.0, "b": 5.0, "a again": 2.0} and orig["b"] / med["b"] == 2.0
    text = 'name: "n" layer { name: "data" type: "Input" top: "data" }'
    sessions.clear()                                   # the same definition built twice: timed once
    med, _ = plan_api.time_pairs("original net", {"a": netio.parse_net_text(text), "b": netio.parse_net_text(text)},
                                 plan_api.Options())
    assert sessions == [["original", "a"]] and med["b"] == med["a"] == 2.0


def test_a_pair_whose_original_ran_slow_is_timed_again(monkeypatch):
    """plan.time_pairs: load only slows runs down; a pair whose original ran over PAIR_AGREEMENT
    times slower than in the quickest pair is timed once more, and the quicker session kept."""
    from deeprebirth.learning import plan as plan_api
    assert plan_api.odd_pairs({"a": 1.7, "b": 11.3, "c": 1.8}) == ["b"]
    assert plan_api.odd_pairs({"a": 1.7, "b": 1.8}) == [] and plan_api.odd_pairs({}) == []
    assert plan_api.odd_pairs({"exact": 109.7, "planned": 80.7, "slim everything": 80.4}) == ["exact"]
    assert plan_api.odd_pairs({"planned": 67.16, "exact": 58.86, "slim everything": 58.30}) == ["planned"]
    sessions = []
    loaded = {"b": 1}                      # the first session of b meets a burst of load

    def fake(nets, opt, progress=None):
        label = [k for k in nets if k != "original"][0]
        sessions.append(label)
        slow = loaded.pop(label, 0)
        return {"original": [10.0 * (6 if slow else 1)], label: [{"a": 2.0, "b": 5.0}[label] * (2 if slow else 1)]}

    monkeypatch.setattr(plan_api, "time_nets", fake)
    net_a, net_b = object(), object()
    retimed = []
    med, orig = plan_api.time_pairs("original net", {"a": net_a, "b": net_b, "b again": net_b}, plan_api.Options(),
                                    retimed=retimed)
    assert sessions == ["a", "b", "b"] and retimed == ["b"]
    assert orig["b"] / med["b"] == 2.0 and med["b again"] == med["b"] == 5.0


def test_a_check_short_of_its_target_is_timed_again_and_the_quicker_sessions_kept():
    """plan.time_check: a session the machine slowed as a whole reads every pair slow alike; when
    the planned net reads short of the target the pairs are timed once more, each keeping the
    session whose original ran quicker; a check that reached it, or has no target, is timed once."""
    import contextlib

    from deeprebirth.learning import plan as plan_api
    sessions = [({"planned": 0.36, "exact": 1.38}, {"planned": 1.49, "exact": 1.42}),     # slowed: 4.1x
                ({"planned": 0.19, "exact": 1.31}, {"planned": 1.14, "exact": 1.47})]     # 6.0x
    calls, said = [], []

    def timer(original, pairs, opt, tick, retimed):
        calls.append(opt.runs)
        m, o = sessions[len(calls) - 1]
        return dict(m), dict(o)

    def stage(*args):
        return contextlib.nullcontext(None)
    clock = plan_api.Clock(None, 0.0)
    opt = plan_api.Options(runs=30)
    m, o = plan_api.time_check("orig", {"planned": 1, "exact": 2}, opt, stage, said.append, clock, 5.0, timer)
    assert calls == [90, 90] and "read 4.14x, short of 5x: the check is timed again" in said[0]
    assert (m["planned"], o["planned"]) == (0.19, 1.14)          # the second session's original was quicker
    assert (m["exact"], o["exact"]) == (1.38, 1.42)              # the first's, for this pair
    assert plan_api.quicker_sessions(({"a": 1.0, "b": 2.0}, {"a": 5.0, "b": 6.0}),
                                     ({"a": 0.9, "b": 2.5}, {"a": 4.0, "b": 7.0})) == ({"a": 0.9, "b": 2.0},
                                                                                       {"a": 4.0, "b": 6.0})
    for target in (4.0, None):                                   # reached, or no target: one session
        calls.clear()
        plan_api.time_check("orig", {"planned": 1, "exact": 2}, opt, stage, said.append, clock, target, timer)
        assert calls == [90]


def test_points_as_a_sentence_says_them():
    assert planner.points(1.0) == "1 top-1 point" and planner.points(0.5) == "0.5 top-1 points"


def brute_force_groups(pool, capacity):
    best = -1.0
    for r in range(len(pool) + 1):
        for subset in itertools.combinations(pool, r):
            groups = [c.group for c in subset if c.group is not None]
            if len(groups) != len(set(groups)):
                continue
            if sum(planner._units(c) for c in subset) <= capacity:
                v = sum(c.saved_ms for c in subset)
                best = max(best, v)
    return best


def test_alternatives_of_a_group_are_chosen_one_at_most_and_the_knapsack_stays_exact():
    import random
    rng = random.Random(5)
    for _ in range(40):
        pool = [Candidate(f"c{i}", saved_ms=rng.uniform(0.1, 5), saved_spread_ms=0.0, flips=rng.randint(0, 6),
                          rel_error=rng.uniform(0, 0.5), group=rng.choice([None, "g1", "g2"]))
                for i in range(rng.randint(1, 7))]
        cap = int(rng.uniform(0, 15) * planner.SCALE)
        idx = planner.knapsack([c.saved_ms for c in pool], [planner._units(c) for c in pool], cap,
                               [c.group for c in pool])
        groups = [pool[i].group for i in idx if pool[i].group is not None]
        assert len(groups) == len(set(groups))
        assert sum(planner._units(pool[i]) for i in idx) <= cap
        assert sum(pool[i].saved_ms for i in idx) == pytest.approx(brute_force_groups(pool, cap))
    # one layer at two ranks: the deeper saves more but costs more; the budget decides, never both
    def ranks():
        return [Candidate("tucker:conv2", saved_ms=1.0, saved_spread_ms=0.1, flips=1, rel_error=0.0, group="conv2"),
                Candidate("tucker:conv2@0.25", saved_ms=1.6, saved_spread_ms=0.1, flips=4, rel_error=0.0,
                          group="conv2")]
    rich = planner.choose(ranks(), original_ms=10.0, exact_ms=10.0, heldout=500, max_drop=2.0)
    assert rich.chosen == ["tucker:conv2@0.25"]
    cs = ranks()
    poor = planner.choose(cs, original_ms=10.0, exact_ms=10.0, heldout=500, max_drop=0.4)
    assert poor.chosen == ["tucker:conv2"] and "tucker:conv2 chosen instead" in cs[1].why
    # a speed-up no choice reaches, and by time alone: the best of each group, not both
    assert planner.choose(ranks(), 10.0, 10.0, 500, speedup=5.0).chosen == ["tucker:conv2@0.25"]
    assert planner.choose(ranks(), 10.0, 10.0, None).chosen == ["tucker:conv2@0.25"]
    assert planner.choose(ranks(), 10.0, 10.0, None, speedup=5.0).chosen == ["tucker:conv2@0.25"]
