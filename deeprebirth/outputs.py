"""Output files and folders, all or nothing, and which folders are ours.

Every file rebirth writes goes through a temporary file (or folder) and a rename, never onto an
input. A folder is ours when its marker (``.rebirth``: JSON listing the commands that wrote into it
and the files they wrote) lists everything in it; anything else in it belongs to the user and is
never replaced or removed. Nothing here knows about Caffe."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from deeprebirth.errors import RebirthError


def same_file(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` name the same file (after resolving links)."""
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _os_problem(path: Path, exc: OSError) -> RebirthError:
    """A one-line error for a failed file operation on ``path``."""
    what = exc.strerror or str(exc)
    if exc.errno == errno.ENAMETOOLONG:
        what = "file name too long"
    return RebirthError(f"{path}: cannot write ({what})")


def _existing_ancestor(path: Path) -> Path:
    """The nearest directory above ``path`` that exists (``.`` for a relative path without one)."""
    for anc in path.parents:
        if anc.is_dir():
            return anc
    return Path(".")


def make_dirs(path: Path, made: list[Path]) -> None:
    """``mkdir -p path``, appending every directory it creates to ``made`` (outermost first) as soon
    as it exists, so that ``remove_made`` can take them away again even after an interruption."""
    for folder in [*reversed(path.parents), path]:
        if not folder.is_dir():
            folder.mkdir()
            made.append(folder)


def remove_made(made: list[Path]) -> None:
    """Remove the directories ``make_dirs`` created, innermost first, as far as they hold nothing
    (but their own marker, written by this command): a refused or interrupted command leaves no
    folder it created. A folder holding anything else stays, and so do those above it."""
    for folder in reversed(made):
        try:
            if [p.name for p in folder.iterdir()] == [MARKER]:
                (folder / MARKER).unlink()
            folder.rmdir()
        except OSError:
            return
    made.clear()


def check_output_path(path: str | os.PathLike, is_dir: bool = False) -> Path:
    """Refuse, with one line, an output path that cannot be written: one of its parents is a file,
    the path itself exists as the wrong kind, or a name is too long. Nothing is created: the
    writers (``atomic_write``, ``write_dir``, ``claim_dir``) create missing parent directories,
    and remove them again when the write fails."""
    path = Path(path)
    try:
        for anc in [*reversed(path.parents)]:
            if anc.exists() and not anc.is_dir():
                raise RebirthError(f"{path}: '{anc}' is a file, not a directory")
        for part in (*path.parts[:-1], path.name):
            if len(os.fsencode(part)) > 255:
                raise RebirthError(f"{path}: cannot write (file name too long: '{part[:20]}...' has "
                                   f"{len(os.fsencode(part))} bytes)")
        where = path.parent if path.parent.is_dir() else _existing_ancestor(path)
        max_name = os.pathconf(where, "PC_NAME_MAX") if hasattr(os, "pathconf") else 255
        if len(os.fsencode(path.name)) > max_name:
            raise RebirthError(f"{path}: cannot write (file name too long: {len(os.fsencode(path.name))} "
                               f"bytes, at most {max_name})")
        if is_dir and path.exists() and not path.is_dir():
            raise RebirthError(f"{path}: exists and is not a directory")
        if not is_dir and path.is_dir():
            raise RebirthError(f"{path}: is a directory, expected a file name")
    except OSError as exc:
        raise _os_problem(path, exc) from None
    return path


def check_writable_dir(path: str | os.PathLike) -> Path:
    """``check_output_path`` for a directory, plus a probe: a temporary directory is made (and
    removed) beside it (or in its nearest existing ancestor, where the first missing parent would
    be made), so that a parent without write permission (or on a read-only or pseudo file system)
    is a one-line error before any work, not after it."""
    out = check_output_path(path, is_dir=True)
    where = out.parent if out.parent.is_dir() else _existing_ancestor(out)
    try:
        os.rmdir(tempfile.mkdtemp(prefix=f".{out.name[:100]}.", suffix=".probe", dir=str(where)))
    except OSError as exc:
        raise _os_problem(out, exc) from None
    return out


def atomic_write(path: str | os.PathLike, data: bytes | str, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename; never onto an input. Every
    failure (no permission, disk full, a bad path) is a one-line RebirthError and leaves nothing."""
    path = Path(path)
    for src in inputs:
        if src is not None and same_file(path, Path(src)):
            raise RebirthError(f"{path}: refusing to overwrite an input file")
    check_output_path(path)
    tmp, made = None, []
    try:
        make_dirs(path.parent, made)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:100]}.", suffix=".tmp", dir=str(path.parent))
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions of a new file
        os.replace(tmp, path)
        made = []
    except OSError as exc:
        raise _os_problem(path, exc) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        remove_made(made)     # a failed or interrupted write leaves no folder it made
    return path


MARKER = ".rebirth"
"""The file that makes a folder ours: JSON with the commands that wrote into it and the files they wrote.
A folder without it, or holding a name it does not list, belongs to the user."""



def read_marker(folder: Path) -> dict | None:
    """The marker of ``folder`` (``{"commands": [...], "files": [...]}``), or None when it has none
    or it cannot be read as ours."""
    try:
        doc = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), list):
        return None
    return doc


def _marker_text(previous: dict | None, names: Iterable[str]) -> str:
    """The marker: ``previous``'s commands and this one, recorded once (a command that records its
    files more than once, or a child process of it, is already the last entry), and the files."""
    commands = [c for c in (previous or {}).get("commands", []) if isinstance(c, str)][-20:]
    command = os.environ.get("REBIRTH_COMMAND", "rebirth")
    if not commands or commands[-1] != command:
        commands.append(command)
    files = sorted(set((previous or {}).get("files", [])) | set(names))
    return json.dumps({"made_by": "rebirth", "commands": commands, "files": files}, indent=2) + "\n"


def foreign_entries(folder: Path, names: Iterable[str]) -> list[str]:
    """What in the existing ``folder`` is not ours to touch when writing ``names`` into it:
    everything when it has no marker, else every entry the marker does not list, and every one of
    ``names`` that is there as a directory (a file would have to replace it)."""
    try:
        present = sorted(os.listdir(folder))
    except OSError as exc:
        raise _os_problem(folder, exc) from None
    marker = read_marker(folder)
    listed = set(marker["files"]) if marker is not None else set()
    dirs = {n for n in names if (folder / n).is_dir()}
    return [f"{n}/" if n in dirs else n for n in present
            if n != MARKER and (n not in listed or n in dirs)]


def _refuse_foreign(out: Path, foreign: list[str], what: str) -> None:
    more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
    raise RebirthError(f"{out}: holds files rebirth did not write ({', '.join(foreign[:3])}{more}); "
                       f"choose another output directory, or add {{opt:force}} to {what}")


def _check_inputs_outside(out: Path, files: Iterable[str], inputs: list[Path]) -> None:
    for name in files:
        for src in inputs:
            if same_file(out / name, src):
                raise RebirthError(f"{out / name}: refusing to overwrite an input file")
    if not out.exists():
        return
    for src in inputs:
        try:
            inside = src.resolve().is_relative_to(out.resolve())
        except OSError:
            inside = False
        if inside:
            raise RebirthError(f"{out}: holds the input {src}; it would be replaced with the directory: "
                               "choose another output directory")


def check_dir_is_ours(outdir: str | os.PathLike, force: bool = False) -> None:
    """Before any work: refuse an existing ``outdir`` that holds anything rebirth did not write
    (``foreign_entries``) unless ``force``, and a path that cannot be a folder. ``write_dir`` and
    ``claim_dir`` check again when they write."""
    out = Path(outdir)
    try:
        exists = out.is_dir()
    except OSError:
        exists = False
    if not exists:
        check_output_path(out, is_dir=True)   # a file there or above it, a name too long ...
        return
    if not force:
        foreign = foreign_entries(out, [])
        if foreign:
            _refuse_foreign(out, foreign, "replace the whole directory")


def write_dir(outdir: str | os.PathLike, files: dict[str, bytes | str], inputs: Iterable = (),
              force: bool = False) -> list[Path]:
    """Write ``files`` (name -> contents) and the marker as the directory ``outdir``, all or nothing.

    Everything is written into a fresh temporary directory next to ``outdir``, which then takes
    ``outdir``'s place (two renames), so old and new files never mix. An existing ``outdir`` is
    replaced only when it is ours (``foreign_entries``: its marker lists everything in it, and
    none of ``files`` is there as a directory) or ``force`` is given; one holding an input file is
    always refused. Any failure leaves ``outdir`` as it was and no temporary directory behind."""
    out = check_output_path(outdir, is_dir=True)
    inputs = [Path(p) for p in inputs if p is not None]
    if out.is_symlink():
        out = Path(os.path.realpath(out))
    _check_inputs_outside(out, files, inputs)
    if out.exists() and not force:
        foreign = foreign_entries(out, files)
        if foreign:
            _refuse_foreign(out, foreign, "replace the whole directory")
    files = {**files, MARKER: _marker_text(None, files)}
    tmp = old = None
    made: list[Path] = []
    try:
        make_dirs(out.parent, made)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name[:100]}.", suffix=".new", dir=str(out.parent)))
        for name, data in files.items():
            with open(tmp / name, "wb") as fh:
                fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            os.chmod(tmp / name, 0o666 & ~_umask())
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name[:100]}.", suffix=".old", dir=str(out.parent)))
            os.rename(out, old / "replaced")
            try:
                os.rename(tmp, out)
            except OSError as exc:
                try:
                    os.rename(old / "replaced", out)
                except OSError:
                    kept, old = old, None  # never delete the only copy of the earlier output
                    raise RebirthError(f"{out}: cannot write ({exc.strerror or exc}); its earlier contents "
                                       f"are in {kept / 'replaced'}") from None
                raise
        else:
            os.rename(tmp, out)
        tmp, made = None, []
    except OSError as exc:
        raise _os_problem(out, exc) from None
    finally:
        for leftover in (tmp, old):
            if leftover is not None:
                shutil.rmtree(leftover, ignore_errors=True)
        remove_made(made)
    return [out / name for name in files if name != MARKER]


def claim_dir(outdir: str | os.PathLike, names: Iterable[str], inputs: Iterable = (), force: bool = False) -> Path:
    """Make ``outdir`` ready for a command that adds ``names`` to it (relearn, finetune), before any
    work: a missing or empty folder is created and marked; an existing one must be ours
    (``foreign_entries``) unless ``force``, which lets the command write its own names beside the
    user's files (never removing any). A directory where a file would go is refused even then.
    A sub-folder with its own marker is another command's output made inside this one (finetune's
    and recover's default, SLIM_DIR/finetune and SLIM_DIR/recovered): ours, and left as it is.
    When the claim itself fails, the folders it made are gone again (``claimed_dir`` also removes
    them when the command fails)."""
    made: list[Path] = []
    marked: list[Path] = []
    try:
        return _claim(outdir, list(names), inputs, force, made, marked)
    except BaseException:
        _unmark(marked)
        remove_made(made)
        raise


def _unmark(marked: list[Path]) -> None:
    """Remove the markers ``_claim`` put into folders that were there, while they list no file."""
    for folder in marked:
        with contextlib.suppress(OSError):
            if (read_marker(folder) or {}).get("files") == []:
                (folder / MARKER).unlink()


def _claim(outdir, names: list[str], inputs: Iterable, force: bool, made: list[Path], marked: list[Path]) -> Path:
    out = check_output_path(outdir, is_dir=True)
    _check_inputs_outside_files(out, names, [Path(p) for p in inputs if p is not None])
    try:
        make_dirs(out, made)
    except OSError as exc:
        raise _os_problem(out, exc) from None
    foreign = foreign_entries(out, names)
    dirs = [n for n in foreign if n.endswith("/")]
    if dirs:
        raise RebirthError(f"{out / dirs[0].rstrip('/')}: is a directory where a file would be written; "
                           "choose another output directory")
    foreign = [n for n in foreign if read_marker(out / n) is None]
    if foreign and not force:
        _refuse_foreign(out, foreign, "write beside them")
    if read_marker(out) is None:
        record_files(out, [])
        if out not in made:     # a folder that was there, marked now: the marker goes on failure
            marked.append(out)
    return out


@contextlib.contextmanager
def claimed_dir(outdir: str | os.PathLike, names: Iterable[str], inputs: Iterable = (), force: bool = False):
    """``claim_dir`` for the body of a command: when the body fails, the folders the claim made
    (the output folder and any missing parent) are removed again as far as they hold nothing but
    the marker (``remove_made``), so a refused run leaves no trace; one holding anything else
    stays (a run that failed late keeps its finished steps). Ctrl-C (KeyboardInterrupt) takes the
    command back: the outermost folder it made goes with everything in it. A folder that existed
    before stays."""
    made: list[Path] = []
    marked: list[Path] = []
    try:
        yield _claim(outdir, list(names), inputs, force, made, marked)
    except KeyboardInterrupt:
        if made:
            shutil.rmtree(made[0], ignore_errors=True)
        _unmark(marked)
        raise
    except BaseException:
        _unmark(marked)
        remove_made(made)
        raise


def _check_inputs_outside_files(out: Path, names: list[str], inputs: list[Path]) -> None:
    for name in names:
        for src in inputs:
            if same_file(out / name, src):
                raise RebirthError(f"{out / name}: refusing to overwrite an input file (give {{opt:outdir}})")


def record_files(folder: str | os.PathLike, names: Iterable[str]) -> None:
    """Add ``names`` (and this command) to ``folder``'s marker, creating it when missing."""
    folder = Path(folder)
    atomic_write(folder / MARKER, _marker_text(read_marker(folder), names))
