"""The one progress mechanism: a bar on stderr (tqdm) when stderr is a terminal, otherwise lines
(``rebirth: relearn 35% (700/2000 it, 42 s)``): the first once the work has taken a few seconds,
then one every few percent, and one at least every 30 s, so a log file shows that a long step is
moving without filling up with short ones.
The context manager yields a callable ``update(n)``, which is what ``runtime.isolate.call
(progress=...)`` and the library functions' ``progress`` arguments want."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager

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

    def __init__(self, total: int | None, desc: str, unit: str, stream=None, clock=time.monotonic):
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.start = clock()
        self.done = 0
        self.last_step = 0          # the last multiple of LINE_EVERY_PERCENT printed
        self.last_time = self.start
        self.printed = False

    def __call__(self, n: int = 1) -> None:
        self.done += n
        now = self.clock()
        if now - self.start < QUIET_SECONDS:
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
            if now - self.last_time < UNKNOWN_TOTAL_SECONDS:
                return
            text = f"{self.done} {self.unit} so far ("
        self.last_time = now
        self.printed = True
        self.stream.write(f"rebirth: {self.desc} {text}{now - self.start:.0f} s)\n")
        self.stream.flush()


@contextmanager
def progress_bar(total: int | None, desc: str, unit: str = "it", enabled: bool = True):
    """Progress of ``total`` units of work (None: unknown): a tqdm bar on a terminal, else lines
    (``LineProgress``); ``enabled=False`` (e.g. under --json on a terminal) yields None."""
    if not enabled:
        yield None
        return
    if not sys.stderr.isatty():
        yield LineProgress(total, desc, unit)
        return
    from tqdm import tqdm  # noqa: PLC0415

    bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)
    try:
        yield bar.update
    finally:
        bar.close()
