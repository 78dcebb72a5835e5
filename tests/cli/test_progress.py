"""cli/progress.py without a terminal: a line every few percent once a step takes a few seconds;
and summaries that group repeated notes."""
from __future__ import annotations

import io

from deeprebirth.cli import progress as pr
from deeprebirth.cli.reports import grouped_notes


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_lines_every_few_percent_after_a_quiet_start():
    clock, out = Clock(), io.StringIO()
    p = pr.LineProgress(200, "relearn", "step", stream=out, clock=clock)
    p(50)                                  # 25 % within the quiet seconds: nothing
    assert out.getvalue() == ""
    clock.now = pr.QUIET_SECONDS + 1
    p(1)                                   # the first line once the quiet seconds are over
    for _ in range(149):
        clock.now += pr.MIN_GAP_SECONDS
        p(1)
    lines = out.getvalue().splitlines()
    assert lines[0] == "rebirth: relearn 25% (51/200 step, 4 s)"
    assert lines[1] == "rebirth: relearn 28% (57/200 step, 34 s)"   # 30 s on: a line even between steps
    assert lines[2] == "rebirth: relearn 30% (60/200 step, 49 s)"   # the next 5 % step
    assert lines[-1] == "rebirth: relearn 100% (200/200 step, 749 s)"


def test_a_huge_total_still_shows_it_is_moving():
    clock, out = Clock(), io.StringIO()
    p = pr.LineProgress(10_000_000, "finetune", "it", stream=out, clock=clock)
    for t in range(100):
        clock.now = float(t)
        p(1)
    lines = out.getvalue().splitlines()
    assert lines[0] == "rebirth: finetune 0% (4/10000000 it, 3 s)"
    assert len(lines) == 4                 # then every 30 s: at 33, 63 and 93 s


def test_lines_are_spaced_in_time():
    clock, out = Clock(), io.StringIO()
    p = pr.LineProgress(20, "timing", "run", stream=out, clock=clock)
    clock.now = pr.QUIET_SECONDS + 1
    for _ in range(20):        # every run passes a 5 % step, all within one second: first and last only
        clock.now += 0.05
        p(1)
    assert [line.split(" (")[0] for line in out.getvalue().splitlines()] == ["rebirth: timing 5%",
                                                                            "rebirth: timing 100%"]


def test_unknown_total_prints_every_so_often():
    clock, out = Clock(), io.StringIO()
    p = pr.LineProgress(None, "finetune", "it", stream=out, clock=clock)
    for t in range(0, 100):
        clock.now = float(t)
        p(1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and lines[0] == "rebirth: finetune 31 it so far (30 s)"


def test_progress_bar_without_a_terminal_is_lines(capsys):
    with pr.progress_bar(10, "eval", "img") as update:
        assert isinstance(update, pr.LineProgress)


def test_repeated_notes_are_grouped():
    notes = [(f"u{i}", f"'c{i}': least squares with ridge {10.0 ** -i:g} (weights kept)") for i in range(30)]
    notes.append(("u7", "fed the teacher's blob"))
    lines = grouped_notes(notes)
    assert len(lines) == 2
    assert lines[0].startswith("  note (30 units: u0, u1, u2, u3 and 26 more; e.g. u0): ")
    assert lines[1] == "  note: u7: fed the teacher's blob"


def test_grouped_notes_count_units_not_notes():
    notes = [("conv1", "'a': ridge 1e-3"), ("conv1", "'b': ridge 1e-4"), ("conv2", "'c': ridge 1e-5")]
    assert grouped_notes(notes) == ["  note (2 units: conv1, conv2; e.g. conv1): 'a': ridge 1e-3"]
    assert grouped_notes(notes[:2]) == ["  note (2x): conv1: 'a': ridge 1e-3"]


def test_recover_shows_a_percentage_from_its_first_relearn_iteration():
    """recover's relearn ticks carry a plan (units x iterations) at the first, so a log shows a
    percentage and the time left from the first minute; the distillation's plan replaces it."""
    from deeprebirth.learning.recover import _unit_ticks
    from deeprebirth.learning.solver import Planned

    got = []
    tick = _unit_ticks(got.append)
    tick(0, 3, "conv1", 0, 0)                 # a unit without SGD: nothing
    tick(0, 3, "conv1", 1, 50)
    tick(0, 3, "conv1", 2, 50)
    assert isinstance(got[0], Planned) and got[0].remaining == 150 and "3 unit(s)" in got[0].text
    assert got[1:] == [1, 1]
    clock, out = [0.0], io.StringIO()
    p = pr.LineProgress(None, "recover", "step", stream=out, clock=lambda: clock[0], quiet=0.0, eta=True)
    p(got[0])
    for _ in range(20):
        clock[0] += 1.0
        p(1)
    last = out.getvalue().splitlines()[-1]
    assert last == "rebirth: recover 10% (15/150 step, 15 s, about 2 min left)"     # 1 s a step, 135 to come


def test_recover_with_a_time_budget_gives_the_time_left_of_the_run_while_it_re_learns():
    """Re-learning is the first part of a run whose distillation fills what is left of --time: its
    lines say the run's time left, not the re-learning's; the distillation's plan takes over."""
    from deeprebirth.learning.solver import Planned

    clock, out = [0.0], io.StringIO()
    p = pr.LineProgress(None, "recover", "step", stream=out, clock=lambda: clock[0], quiet=0.0, eta=True,
                        deadline=600.0)
    p(Planned(150, 0.0, "re-learning 3 unit(s)", part=True))
    for _ in range(20):
        clock[0] += 1.0
        p(1)
    assert out.getvalue().splitlines()[-1] == "rebirth: recover 10% (15/150 step, 15 s, about 10 min left of the run)"
    p(Planned(100, 500.0, "100 iterations fitted"))
    for _ in range(5):
        clock[0] += 5.0
        p(1)
    assert out.getvalue().splitlines()[-1].endswith("min left)")      # the distillation's own pace
