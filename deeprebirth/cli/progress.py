"""The one progress mechanism: a bar on stderr (tqdm) when stderr is a terminal, otherwise lines
(``rebirth: relearn 35% (700/2000 it, 42 s)``): the first once the work has taken a few seconds,
then one every few percent, and one at least every 30 s, so a log file shows that a long step is
moving without filling up with short ones.
The context manager yields a callable ``update(n)``, which is what ``runtime.isolate.call
(progress=...)`` and the library functions' ``progress`` arguments want. A run fitted to a time
budget passes it a ``learning.solver.Planned`` once it has measured itself: the total becomes the
work done plus the iterations it planned, and its line is printed. With ``eta``, each line ends
with the time left at the pace since then (``about 12 min left``), along the plan's curve when it
has one (time_left). A run bounded by a time budget (``deadline``, seconds from the start) whose
first steps come before the work that fills the budget (recover's re-learning, then a distillation
fitted to what is left) gives, until that work's plan comes (a plan of ``part`` of the run does
not count), the time left of the budget, not of the steps in hand."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager

from deeprebirth.learning.solver import format_duration

LINE_EVERY_PERCENT = 5
"""Without a terminal: a line each time the work passes another multiple of this ..."""
MIN_GAP_SECONDS = 5.0
"""... and at least this long after the previous line (the last, 100 %, always shows)."""
QUIET_SECONDS = 3.0
"""Without a terminal: no line before the work has taken this long (short steps stay silent)."""
UNKNOWN_TOTAL_SECONDS = 30.0
"""Without a terminal: a line at least this often (the only lines when the total is unknown)."""


class LineProgress:
    """``update(n)`` printing ``rebirth: DESC P% (done/total UNIT, S s)`` lines to ``stream``."""

    def __init__(self, total: int | None, desc: str, unit: str, stream=None, clock=time.monotonic,
                 quiet: float = QUIET_SECONDS, eta: bool = False, render=str, deadline: float | None = None):
        self.total, self.desc, self.unit = total, desc, unit
        self.deadline = deadline
        self.part = False                              # the plan is of work that more work follows
        self.quiet, self.eta, self.render = quiet, eta, render
        self.plan: tuple[float, float] | None = None   # (when, seconds) of the last plan
        self.curve = None                              # its seconds for the first k iterations (solver.FitCurve)
        self.plan_done = 0                             # work done when it came
        self.pace: tuple[float, int] | None = None     # (time, done) at the first work after the start or a plan
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.start = clock()
        self.done = 0
        self.last_step = 0          # the last multiple of LINE_EVERY_PERCENT printed
        self.last_time = self.start
        self.printed = False

    def __call__(self, n: int = 1) -> None:
        now = self.clock()
        if is_plan(n):
            self.total, self.plan, self.pace = self.done + int(n.remaining), (now, float(n.seconds)), None
            self.curve, self.plan_done = getattr(n, "curve", None), self.done
            self.part = bool(getattr(n, "part", False))
            self.last_step = int(100 * self.done / max(1, self.total)) // LINE_EVERY_PERCENT
            self.stream.write(f"rebirth: {self.desc}: {self.render(n.text)}\n")
            self.stream.flush()
            return
        self.done += n
        if self.pace is None:
            self.pace = (now, self.done)
        if now - self.start < self.quiet:
            return
        if self.total:
            step = int(100 * min(self.done, self.total) / self.total) // LINE_EVERY_PERCENT
            finished = self.done >= self.total
            first = not self.printed
            heartbeat = now - self.last_time >= UNKNOWN_TOTAL_SECONDS
            if not (first or heartbeat) and (step <= self.last_step or (
                    not finished and now - self.last_time < MIN_GAP_SECONDS)):
                return
            self.last_step = max(step, self.last_step)
            text = f"{100 * min(self.done, self.total) // self.total}% ({self.done}/{self.total} {self.unit}, "
        else:
            if now - self.last_time < UNKNOWN_TOTAL_SECONDS and (self.printed or not self.eta):
                return
            text = f"{self.done} {self.unit} so far ("
        self.last_time = now
        self.printed = True
        self.stream.write(f"rebirth: {self.desc} {text}{now - self.start:.0f} s{self._left(now)})\n")
        self.stream.flush()


    def _left(self, now: float) -> str:
        """With ``eta`` and a known total: ``, about N left``, at the pace of the work since its
        first update after the start or the last plan (the first update's time is set-up: not
        counted), else while there is none yet what the plan expected; before any plan of a run
        with a ``deadline`` but one of ``part`` of it, what is left of the deadline."""
        if self.eta and self.deadline is not None and (self.plan is None or self.part):
            return f", about {format_duration(max(0.0, self.deadline - (now - self.start)))} left of the run"
        if not self.eta or not self.total or self.done >= self.total:
            return ""
        t0, d0 = self.pace or (now, self.done)
        if self.done - d0 >= 1 and now > t0:
            left = time_left(now - t0, d0, self.done, self.total, self.curve, self.plan_done)
        elif self.plan is not None and self.plan[1] > 0:
            left = self.plan[1] - (now - self.plan[0])
        else:
            return ""
        return f", about {format_duration(left)} left"


def time_left(seconds: float, since: int, done: int, total: int, curve=None, origin: int = 0) -> float:
    """Seconds left of ``total`` units when ``done - since`` of them took ``seconds``: at that pace,
    or with a plan's ``curve`` (seconds its first k units should take, counted from ``origin``) the
    curve's time to come scaled by how the units since ``since`` went against it (the first
    iterations of a distillation whose teacher is remembered are its slowest: solver.FitCurve)."""
    if curve is not None:
        planned = curve(done - origin) - curve(since - origin)
        if planned > 0:
            return seconds / planned * (curve(total - origin) - curve(done - origin))
    return seconds / (done - since) * (total - done)


def is_plan(n) -> bool:
    """Whether a progress call carries a plan (learning.solver.Planned) rather than work done."""
    return not isinstance(n, (int, float)) and hasattr(n, "remaining")


@contextmanager
def progress_bar(total: int | None, desc: str, unit: str = "it", enabled: bool = True, quiet: float = QUIET_SECONDS,
                 eta: bool = False, render=None, deadline: float | None = None):
    """Progress of ``total`` units of work (None: unknown): a tqdm bar on a terminal, else lines
    (``LineProgress``: the first after ``quiet`` seconds, with the time left when ``eta``);
    ``enabled=False`` (e.g. under --json on a terminal) yields None. A plan (``is_plan``) sets the
    total; its text, rendered by ``render`` (default: its ``{opt:NAME}`` as the running command's
    flags), is printed. ``deadline``: the run's time budget in seconds (LineProgress; on a
    terminal the bar's postfix says what is left of it until a plan comes)."""
    if not enabled:
        yield None
        return
    if render is None:
        from deeprebirth import errors  # noqa: PLC0415
        from deeprebirth.cli import current_flags  # noqa: PLC0415  (the package imports this module)
        name_of = current_flags()
        render = lambda text: errors.render(text, name_of)  # noqa: E731
    if not sys.stderr.isatty():
        yield LineProgress(total, desc, unit, quiet=quiet, eta=eta, render=render, deadline=deadline)
        return
    from tqdm import tqdm  # noqa: PLC0415

    bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)
    start, planned = time.monotonic(), [deadline is None]

    def update(n=1):
        if not planned[0]:
            left = max(0.0, deadline - (time.monotonic() - start))
            bar.set_postfix_str(f"about {format_duration(left)} left of the run", refresh=False)
        if is_plan(n):
            planned[0] = not getattr(n, "part", False)
            bar.set_postfix_str("", refresh=False)
            bar.total = bar.n + int(n.remaining)
            bar.write(f"rebirth: {desc}: {render(n.text)}", file=sys.stderr)
            bar.refresh()
        else:
            bar.update(n)
    try:
        yield update
    finally:
        bar.close()
