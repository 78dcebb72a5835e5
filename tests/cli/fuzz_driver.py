"""Runs `rebirth` fuzz cases, each in its own process; used by tests/cli/test_fuzz.py.

    python tests/cli/fuzz_driver.py CASES.json RESULTS.json [PARALLEL]

CASES.json is a list of {"id", "args", "timeout"} (and optionally "interrupt": send SIGINT, or
the signal named by "interrupt_signal", this many seconds after the start; to the case's whole
process group, as a terminal's Ctrl-C does, with "interrupt_group"). Each case is a process group of
its own (its Caffe children with it). This driver imports the package once and then
forks one child per case (a fresh process with the package already loaded: ~10 ms instead of a
~0.7 s interpreter start), whose stdout and stderr go to files. The child runs the CLI exactly as
the `rebirth` script does: click's standalone mode, and an exception that escapes prints Python's
traceback and exits 1. The driver records each child's exit code or signal, whether it was killed
for running past its timeout, and its output.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
import traceback


def _run_child(args: list[str], out_path: str, err_path: str) -> None:
    os.setpgid(0, 0)     # a group of its own: a signal to the group reaches it and its children only
    out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(out, 1)
    os.dup2(err, 2)
    code = 1
    try:
        from deeprebirth.cli import main
        main(args=args, prog_name="rebirth", standalone_mode=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - what an uncaught exception does to the real script
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _signal(pid: int, sig: int, group: bool = False) -> None:
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def main() -> None:
    cases = json.load(open(sys.argv[1]))
    parallel = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    import deeprebirth.cli  # noqa: F401  (loaded once, shared by every forked case)
    work = tempfile.mkdtemp(prefix="rebirth-fuzz-")
    results, queue, running = [], list(cases), {}
    while queue or running:
        while queue and len(running) < parallel:
            case = queue.pop(0)
            out, err = os.path.join(work, f"{case['id']}.out"), os.path.join(work, f"{case['id']}.err")
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _run_child(case["args"], out, err)
            try:
                os.setpgid(pid, pid)    # also here, so that no signal can come before the child's own call
            except OSError:
                pass
            running[pid] = (case, time.monotonic(), out, err)
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            now = time.monotonic()
            for p, (case, start, _, _) in list(running.items()):
                if case.get("interrupt") is not None and now - start > case["interrupt"] and not case.get("sent"):
                    case["sent"] = True
                    _signal(p, getattr(signal, case.get("interrupt_signal", "SIGINT")), case.get("interrupt_group"))
                if now - start > case["timeout"] and not case.get("killed"):
                    case["killed"] = True
                    _signal(p, signal.SIGKILL, group=True)
            time.sleep(0.005)
            continue
        case, start, out, err = running.pop(pid)
        with open(out, "rb") as fh:
            stdout = fh.read().decode("utf-8", "replace")
        with open(err, "rb") as fh:
            stderr = fh.read().decode("utf-8", "replace")
        os.unlink(out)
        os.unlink(err)
        results.append({
            "id": case["id"],
            "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "timed_out": bool(case.get("killed")),
            "interrupted": bool(case.get("sent")),
            "seconds": time.monotonic() - start,
            "stdout": stdout[-4000:],
            "stderr": stderr[-4000:],
        })
    os.rmdir(work)
    with open(sys.argv[2], "w") as fh:
        json.dump(results, fh)


if __name__ == "__main__":
    main()
