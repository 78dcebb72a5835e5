"""Run Caffe work in a child process, so that a Caffe CHECK failure becomes a one-line error.

Caffe reports a violated precondition (``CHECK_GT(num_output_, 0)``, an unknown layer type, a
shape mismatch ...) by logging a FATAL glog line and calling ``abort()``: the whole process dies
with SIGABRT, and the user sees a core dump instead of ``rebirth: error: ...``. Everything that
runs a net in pycaffe (bench, fold-bn --verify, and relearn / eval) therefore goes through
``call``::

    from deeprebirth.runtime import isolate
    result = isolate.call(verify_nets, original, folded, seed=0)          # module-level function
    result = isolate.call(train, solver, progress=bar.update)             # progress(n) is forwarded

``fn`` runs in a process started with multiprocessing's ``spawn`` method (a fresh interpreter: no
state copied from the parent, no fork of a threaded process). Its return value comes back
(pickled); a RebirthError it raises is raised again here with the same message; if the child dies
(a signal, or an exit without a result) a RebirthError carries Caffe's own reason: the last glog
FATAL line ("Check failed: ...") the child wrote to its stderr, which is captured in a file of a
temporary directory the parent makes and removes; the child's own temporary files (pycaffe's
prototxt copies) go there too, so an abort leaves none behind. Arguments and results must be
picklable (``model.Model`` is: its net travels as bytes).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import re
import shutil
import signal
import sys
import tempfile
import traceback
from typing import Any, Callable

from deeprebirth.errors import RebirthError, os_error_line

# glog: "F[yyyy]mmdd hh:mm:ss.uuuuuu tid file.cpp:123] Check failed: ..." (F = FATAL; E = ERROR).
_GLOG = re.compile(r"^([FE])\d{4,8} [\d:.]+\s+\d+ ([^\]]+)\] (.*)$")
_STDERR_TAIL = 64 * 1024
STDERR_NAME = "child.stderr"


def _child(conn, workdir: str, with_progress: bool) -> None:
    """Entry point of the child: stderr to the capture file, temporary files into ``workdir``
    (which the parent removes, also when Caffe aborts the child), read the work (``fn``, its
    arguments) from ``conn``, run it, send back one message. Ctrl-C is the parent's to handle
    (it kills the child): the child ignores SIGINT (``_start_deaf_to_ctrl_c``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tempfile.tempdir = workdir
    os.environ["TMPDIR"] = workdir
    fd = os.open(os.path.join(workdir, STDERR_NAME), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    os.environ.setdefault("GLOG_minloglevel", "2")
    try:
        fn, args, kwargs = conn.recv()
        if with_progress:
            kwargs = dict(kwargs, progress=lambda n=1: conn.send(("progress", n)))
        result = fn(*args, **kwargs)
        conn.send(("ok", result))
    except RebirthError as exc:
        conn.send(("error", exc.template))     # {opt:NAME} left for the parent's caller to render
    except BaseException as exc:  # noqa: BLE001 - reported in the parent as one line
        if isinstance(exc, OSError) and exc.filename is not None:  # a path the system refused
            conn.send(("error", os_error_line(exc)))
            return
        tb = traceback.extract_tb(exc.__traceback__)
        where = f" at {os.path.basename(tb[-1].filename)}:{tb[-1].lineno}" if tb else ""
        conn.send(("crash", f"{type(exc).__name__}: {exc}{where}"))
    finally:
        conn.close()


def caffe_reason(stderr_text: str) -> str | None:
    """The last glog FATAL line's message (``file.cpp:123] Check failed: ...``), else the last
    ERROR line's, else None."""
    fatal = error = parse_error = None
    for line in stderr_text.splitlines():
        if "[libprotobuf ERROR" in line and "]" in line:  # why Caffe could not read the prototxt
            parse_error = line.split("]", 1)[1].strip()
        m = _GLOG.match(line.strip())
        if m:
            message = re.sub(r" \(known types: [^)]*\)", "", m.group(3).strip())  # the registry's long list
            text = f"{message} ({m.group(2).strip()})"
            if m.group(1) == "F":
                fatal = text
            else:
                error = text
    if fatal and parse_error and "Failed to parse" in fatal:
        fatal = f"{fatal}: {parse_error}"
    return fatal or error


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - _STDERR_TAIL))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "did not finish"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code} without a result"


def _start_deaf_to_ctrl_c(proc) -> None:
    """Start ``proc`` with SIGINT blocked, so that the child never sees Ctrl-C (a terminal sends
    it to the whole process group) and prints no traceback of its own: the signal mask is kept
    across the child's exec. The parent handles Ctrl-C (it kills the child). A Ctrl-C or SIGTERM
    during the start waits until the start is complete (raised inside it, it would leave a child
    running that nothing knows of; before, a Ctrl-C in those milliseconds was lost and the command
    ran on: a recover under test ran past its 120 s), then it is a KeyboardInterrupt."""
    import threading  # noqa: PLC0415
    if threading.current_thread() is not threading.main_thread():
        proc.start()
        return
    deferred: list[int] = []

    def defer(signum, frame):
        deferred.append(signum)

    old_int = signal.signal(signal.SIGINT, defer)   # a signal that came already is handled here
    old_term = signal.signal(signal.SIGTERM, defer)
    # SIGINT blocked, not ignored, while the child starts: the child inherits the blocked mask across
    # its exec (a Ctrl-C stays pending there for ever: it never sees one), and one that reaches the
    # parent meanwhile waits instead of being discarded, as an ignored signal is.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        proc.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)   # a pending Ctrl-C reaches ``defer`` now
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
    if deferred:
        raise KeyboardInterrupt


def _interrupted(outcome: tuple | None, exitcode: int | None) -> bool:
    """The child was stopped from outside (SIGINT or SIGTERM to the process group, which reaches
    the parent too): the command was interrupted, not failed."""
    if outcome is not None and outcome[0] == "crash" and str(outcome[1]).startswith("KeyboardInterrupt"):
        return True
    return exitcode is not None and -exitcode in (signal.SIGINT, signal.SIGTERM)


def call(fn: Callable, *args, what: str = "Caffe", timeout: float | None = None,
         progress: Callable[[int], Any] | None = None, **kwargs) -> Any:
    """``fn(*args, **kwargs)`` in a spawned child process; its result, or a RebirthError.

    ``what`` names the work in messages ("Caffe", "the verification run", ...). ``timeout``
    (seconds) kills the child when it runs longer. With ``progress``, ``fn`` gets a
    ``progress=`` callable whose calls reach ``progress`` here."""
    ctx = mp.get_context("spawn")
    workdir = tempfile.mkdtemp(prefix="deeprebirth-child-")
    parent = proc = None
    try:
        stderr_path = os.path.join(workdir, STDERR_NAME)
        open(stderr_path, "wb").close()
        # The work goes down the pipe after the start, not as the process's arguments: spawn writes
        # those while it still holds the read end itself, so a child that dies early would leave
        # that write (of a model's weights, megabytes) blocked for ever. Through the pipe, whose
        # other end only the child holds, a dead child is a broken pipe.
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_child, args=(child, workdir, progress is not None), daemon=True)
        _start_deaf_to_ctrl_c(proc)
        child.close()
        try:
            parent.send((fn, args, kwargs))
        except OSError:
            pass    # the child died before reading its work: reported below from its exit
        outcome = None
        while outcome is None:
            if not parent.poll(timeout if timeout is not None else None):
                if timeout is not None:
                    proc.kill()
                    proc.join()
                    raise RebirthError(f"{what} did not finish within {timeout:g} s; stopped")
            try:
                kind, value = parent.recv()
            except (EOFError, OSError):
                break  # the child died without a word
            if kind == "progress":
                progress(value)
            else:
                outcome = (kind, value)
        proc.join()
        if outcome is not None and outcome[0] == "ok":
            return outcome[1]
        if outcome is not None and outcome[0] == "error":
            raise RebirthError(outcome[1])
        if _interrupted(outcome, proc.exitcode):
            raise KeyboardInterrupt
        reason = caffe_reason(_tail(stderr_path))
        if outcome is not None:  # a Python exception in the child: a bug, reported in one line
            raise RebirthError(f"{what} failed: {outcome[1]}" + (f" (Caffe: {reason})" if reason else ""))
        if reason:
            raise RebirthError(f"{what} aborted: {reason}")
        raise RebirthError(f"{what} {_describe_exit(proc.exitcode)} (no Caffe message)")
    except KeyboardInterrupt:
        if proc is not None and proc.pid is not None:    # started (an interruption may come before)
            proc.kill()
        raise
    finally:
        if proc is not None and proc.is_alive():
            proc.kill()
            proc.join()
        if parent is not None:
            parent.close()
        shutil.rmtree(workdir, ignore_errors=True)
