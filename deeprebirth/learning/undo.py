"""What an interrupted learning command leaves behind: nothing it made.

``outputs.claimed_dir`` takes back, on Ctrl-C (or SIGTERM, which the cli turns into the same
KeyboardInterrupt), the folders its claim made, in the process that claimed them. Two cases are
left to ``removed_if_interrupted``: a child process that runs the command (``runtime.isolate``)
is killed at once on Ctrl-C, before any cleanup of its own, so the cli wraps the child in it; and
in a folder that was there before (relearn's default, SLIM_DIR itself), the files a run had
already added (weights.caffemodel before relearn.json) go too, and the marker is put back."""
from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
from pathlib import Path
from typing import Iterable

from deeprebirth import outputs
from deeprebirth.errors import RebirthError


@contextlib.contextmanager
def removed_if_interrupted(folder: str | os.PathLike, names: Iterable[str]):
    """Around a command that makes the output folder ``folder`` or adds ``names`` (file names or
    patterns, ``finetune_iter_*``) to it: when a KeyboardInterrupt ends the command, the folder is
    removed when it was not there before (with the parents the command made for it); else every
    entry of it that was not there before and matches ``names`` (or is the temporary file of an
    atomic write) is removed and its marker is put back as it was. What was there before stays (a
    file replaced in the meantime stays replaced)."""
    folder = Path(folder)
    names = list(names)
    existed = folder.is_dir()
    # the outermost folder that is not there yet: `-o new/sub` makes new/ too, and it goes as well
    made = next((p for p in [*reversed(folder.parents), folder] if not p.exists()), None)
    before = set(os.listdir(folder)) if existed else set()
    marker = folder / outputs.MARKER
    marker_text = marker.read_bytes() if marker.is_file() else None
    try:
        yield
    except KeyboardInterrupt:
        if not existed:
            shutil.rmtree(made if made is not None else folder, ignore_errors=True)
        elif folder.is_dir():
            _remove_new(folder, before, names)
            with contextlib.suppress(OSError, RebirthError):
                if marker_text is None:
                    marker.unlink(missing_ok=True)
                elif marker.read_bytes() != marker_text:
                    outputs.atomic_write(marker, marker_text)
        raise


def _remove_new(folder: Path, before: set[str], names: list[str]) -> None:
    temporary = [f".{name[:100]}.*.tmp" for name in (*names, outputs.MARKER)]
    for entry in sorted(set(os.listdir(folder)) - before):
        if any(fnmatch.fnmatchcase(entry, pattern) for pattern in (*names, *temporary)):
            path = folder / entry
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()
