"""A progress bar on stderr (tqdm) that work running in a child process can drive: the context
manager yields a callable ``update(n)``, which is what ``engine.isolate.call(progress=...)`` wants."""
from __future__ import annotations

import sys
from contextlib import contextmanager


@contextmanager
def progress_bar(total: int | None, desc: str, unit: str = "it", enabled: bool = True):
    if not enabled:
        yield None
        return
    from tqdm import tqdm  # noqa: PLC0415

    bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)
    try:
        yield bar.update
    finally:
        bar.close()
