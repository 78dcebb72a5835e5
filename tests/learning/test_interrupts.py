"""Ctrl-C (SIGINT) or SIGTERM during a learning command. `finetune` stops after the iteration,
writes its work with the iteration it reached, prints the line that resumes it and exits 130;
`recover` does the same during its distillation, and the same command again goes on from the
snapshot; `relearn`, and `recover` while it re-learns, leave no folder they made (not even its
marker), and `recover`'s marker never lists a recover.json that was not written."""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys

import pytest
from helpers import PROGRESS_LINE, ROOT, make_slimmed, run

from deeprebirth import outputs
from deeprebirth.errors import RebirthError
from deeprebirth.learning import finetune as ft
from deeprebirth.learning import health
from deeprebirth.learning import recover as rc
from deeprebirth.learning import relearn as rl
from deeprebirth.runtime import isolate


@pytest.fixture(scope="module")
def slimmed(tmp_path_factory, caffe):
    return make_slimmed(tmp_path_factory.mktemp("interrupts"))


def lines(text: str) -> list[str]:
    return [x for x in text.strip().splitlines() if x and not PROGRESS_LINE.match(x)]


def sigint_at(monkeypatch, iteration: int) -> None:
    """SIGINT to this process right after training step ``iteration``, as Ctrl-C would send it."""
    check = health.check_divergence

    def check_then_interrupt(losses, it, *floor):
        check(losses, it, *floor)
        if it == iteration:
            os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.setattr(health, "check_divergence", check_then_interrupt)


def test_finetune_stopped_by_sigint_exits_130_with_the_iteration_it_reached(slimmed, tmp_path, monkeypatch):
    d = slimmed
    out = tmp_path / "ft"
    sigint_at(monkeypatch, 3)
    res = run("finetune", d / "slim", "--train", d / "train", "--val", d / "val", "--iters", 200,
              "--test-interval", 100, "-o", out)
    assert res.exit_code == 130, res.output
    err = lines(res.stderr)
    assert len(err) == 1 and err[0].startswith("rebirth: error: interrupted"), res.stderr
    assert "stopped by SIGINT at iteration 3 of 200" in err[0]
    assert "Traceback" not in res.output
    printed = lines(res.stdout)
    assert len(printed) == 1 and printed[0].startswith("resume with: rebirth finetune "), res.stdout
    doc = json.loads((out / "finetune.json").read_text())
    assert doc["iterations"] == 3 and doc["start_iteration"] == 0
    assert doc["interrupted"] == {"signal": "SIGINT", "iteration": 3, "target": 200}
    assert doc["snapshots"][-1] == str(out / "finetune_iter_3.solverstate")
    assert (out / "finetune_iter_3.solverstate").is_file() and (out / "weights.caffemodel").is_file()
    # pasted, the resume line continues the same run to its target (here: two more iterations)
    words = shlex.split(printed[0][len("resume with: "):])
    assert words[words.index("--iters") + 1] == "200" and "--val" in words
    words[words.index("--iters") + 1] = "5"
    monkeypatch.undo()
    again = run(*words[1:], "--json")
    assert again.exit_code == 0, again.output
    resumed = json.loads(again.stdout)
    assert (resumed["start_iteration"], resumed["iterations"]) == (3, 5) and "interrupted" not in resumed


def test_a_resumed_run_with_a_time_budget_fits_the_iterations_after_its_snapshot(slimmed, tmp_path):
    """--resume with --time: the fitted iterations count from the snapshot's (the annealed rate
    ends at the fit's last iteration, not at a number that counts the snapshot's iterations twice),
    and the progress is told only those to come."""
    from deeprebirth.learning import solver as sv
    from deeprebirth.learning import sources as data
    d = slimmed
    out = tmp_path / "ft"
    res = run("finetune", d / "slim", "--train", d / "train", "--val", d / "val", "--iters", 3, "-o", out)
    assert res.exit_code == 0, res.output
    told = []
    doc = ft.finetune(d / "slim", data.open_source(str(d / "train")), data.open_source(str(d / "val")), out,
                      ft.Options(resume=str(out / "finetune_iter_3.solverstate"), base_lr=0.001, time_budget=6.0),
                      progress=lambda n: told.append(n))
    planned = next(p for p in told if isinstance(p, sv.Planned))
    fitted = doc["time_budget"]["fitted_iterations"]
    assert doc["start_iteration"] == 3 and fitted > 3 and planned.remaining == fitted - 3
    assert any(f"iterations from the snapshot's 3 (to {fitted:,})" in n or
               f"iteration from the snapshot's 3 (to {fitted:,})" in n for n in doc["notes"])
    # asked for no more iterations than the snapshot has: none trained (not one more)
    again = ft.finetune(d / "slim", data.open_source(str(d / "train")), data.open_source(str(d / "val")),
                        tmp_path / "ft2", ft.Options(resume=str(out / "finetune_iter_3.solverstate"), base_lr=0.001,
                                                     time_budget=6.0, iters=3))
    assert (again["start_iteration"], again["iterations"]) == (3, 3)


def test_finetune_stopped_with_json_prints_the_record_and_exits_130(slimmed, tmp_path, monkeypatch):
    d = slimmed
    sigint_at(monkeypatch, 2)
    res = run("finetune", d / "slim", "--train", d / "train", "--iters", 50, "-o", tmp_path / "ft", "--json")
    assert res.exit_code == 130, res.output
    assert json.loads(res.stdout)["interrupted"]["iteration"] == 2
    assert len(lines(res.stderr)) == 1


def test_recover_stopped_during_its_distillation_keeps_its_work_and_goes_on(slimmed, tmp_path, monkeypatch):
    """Ctrl-C in the distillation of `rebirth recover`: it stops after the iteration, writes a
    snapshot and the weights kept so far, says so in one line naming the command that goes on, and
    exits 130; that command, pasted, resumes from the snapshot without re-learning."""
    d = slimmed
    out = tmp_path / "rec"
    sigint_at(monkeypatch, 3)
    args = ["recover", d / "slim", "--images", d / "plain", "--iters", 6, "--relearn-iters", 2, "--count", 16,
            "-o", out]
    res = run(*args, "--json")
    assert res.exit_code == 130, res.output
    err = lines(res.stderr)
    assert err[-1].startswith("rebirth: error: interrupted: the distillation stopped by SIGINT at iteration 3 of 6"), err
    assert json.loads(res.stdout)["interrupted"] == {"signal": "SIGINT", "iteration": 3, "target": 6}
    assert "Traceback" not in res.output
    doc = json.loads((out / "recover.json").read_text())
    assert doc["interrupted"]["iteration"] == 3
    assert (out / "weights.caffemodel").is_file() and (out / "relearn" / "weights.caffemodel").is_file()
    relearned = (out / "relearn" / "weights.caffemodel").read_bytes()
    monkeypatch.undo()
    wrong = run(*[a if a != d / "plain" else "fashion-mnist:nope" for a in args])     # a bad SOURCE: its error alone
    assert wrong.exit_code == 1 and wrong.stderr.strip().splitlines() == [
        "rebirth: error: fashion-mnist:nope: unknown split (use fashion-mnist:train or fashion-mnist:test)"], wrong.stderr
    again = run(*args, "--json")
    assert again.exit_code == 0, again.output
    assert "going on from its snapshot at iteration 3" in again.stderr, again.stderr
    assert "re-learning" not in again.stderr and "6 distillation iterations" in again.stderr, again.stderr
    resumed = json.loads(again.stdout)
    assert "interrupted" not in resumed and resumed["finetune"]["start_iteration"] == 3
    assert (out / "relearn" / "weights.caffemodel").read_bytes() == relearned     # not re-learned


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_relearn_interrupted_leaves_no_folder(slimmed, tmp_path, monkeypatch):
    """In this process: interrupted while it re-learns, or after weights.caffemodel but before
    relearn.json is written, relearn leaves no folder it made; a folder that was there stays as
    it was."""
    d = slimmed
    opt = rl.Options(iters=1, train_images=8, heldout_images=4)
    monkeypatch.setattr(rl, "relearn", _interrupt)
    with pytest.raises(KeyboardInterrupt):
        rl.relearn_dir(d / "slim", str(d / "plain"), tmp_path / "new", options=opt)
    assert not (tmp_path / "new").exists()
    monkeypatch.undo()
    write = outputs.atomic_write

    def interrupted_write(path, *args, **kwargs):
        if str(path).endswith("relearn.json"):
            raise KeyboardInterrupt
        return write(path, *args, **kwargs)
    monkeypatch.setattr(outputs, "atomic_write", interrupted_write)
    with pytest.raises(KeyboardInterrupt):
        rl.relearn_dir(d / "slim", str(d / "plain"), tmp_path / "late", options=opt)
    assert not (tmp_path / "late").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "mine.txt").write_text("the user's")
    with pytest.raises(KeyboardInterrupt):
        rl.relearn_dir(d / "slim", str(d / "plain"), kept, options=opt, force=True)
    assert sorted(p.name for p in kept.iterdir()) == ["mine.txt"]


def test_recover_interrupted_leaves_no_folder_and_its_marker_lists_what_was_written(slimmed, tmp_path, monkeypatch):
    """Interrupted during the distillation, after relearn/ was written: no folder left. Refused
    there (an error): relearn/ stays, and the marker does not list a recover.json."""
    d = slimmed
    kwargs = dict(relearn_options=rl.Options(iters=1, train_images=8, heldout_images=4), options=ft.Options(iters=2))
    monkeypatch.setattr(ft, "finetune", _interrupt)
    with pytest.raises(KeyboardInterrupt):
        rc.recover(d / "slim", str(d / "plain"), outdir=tmp_path / "rec", **kwargs)
    assert not (tmp_path / "rec").exists()

    def refuse(*args, **kwargs):
        raise RebirthError("refused")
    monkeypatch.setattr(ft, "finetune", refuse)
    with pytest.raises(RebirthError):
        rc.recover(d / "slim", str(d / "plain"), outdir=tmp_path / "rec", **kwargs)
    assert (tmp_path / "rec" / "relearn" / "weights.caffemodel").is_file()
    assert not (tmp_path / "rec" / "recover.json").exists()
    assert "recover.json" not in outputs.read_marker(tmp_path / "rec")["files"]
    monkeypatch.undo()
    doc = rc.recover(d / "slim", str(d / "plain"), outdir=tmp_path / "rec", **kwargs)   # over the refused run's folder
    assert doc["finetune"]["iterations"] == 2
    assert {"relearn", "recover.json"} <= set(outputs.read_marker(tmp_path / "rec")["files"])


def test_an_interrupted_child_leaves_nothing_it_made(slimmed, tmp_path, monkeypatch):
    """Ctrl-C kills the child process that runs relearn before it can clean up: the command
    removes what the child made (a new folder; in one that was there, the new files and
    temporary files, and the marker as it was)."""
    d = slimmed

    def killed_child(fn, slim_dir, *args, **kwargs):
        out = rl.output_dir(slim_dir, args[1])
        outputs.claim_dir(out, [])
        outputs.record_files(out, ["weights.caffemodel"])
        (out / "weights.caffemodel").write_text("half")
        (out / ".relearn.json.x1y2.tmp").write_text("half")
        raise KeyboardInterrupt
    monkeypatch.setattr(isolate, "call", killed_child)
    res = run("relearn", d / "slim", "--images", d / "plain", "-o", tmp_path / "rl")
    assert res.exit_code == 130 and len(lines(res.stderr)) == 1 and "interrupted" in res.stderr, res.output
    assert not (tmp_path / "rl").exists()
    slim = tmp_path / "slim"                      # relearn's default output: SLIM_DIR itself
    slim.mkdir()
    for p in (d / "slim").iterdir():
        (slim / p.name).write_bytes(p.read_bytes())
    before = {p.name: p.read_bytes() for p in slim.iterdir()}
    res = run("relearn", slim, "--images", d / "plain")
    assert res.exit_code == 130, res.output
    assert {p.name: p.read_bytes() for p in slim.iterdir()} == before


def _like_a_shell():
    """In the child before its exec: SIGINT as a terminal's shell starts a command, whatever this
    test process inherited or was left with (a SIGINT ignored or blocked here survives the exec,
    and the command would never see the test's Ctrl-C)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@pytest.mark.slow
def test_ctrl_c_during_recover_leaves_no_folder(slimmed, tmp_path):
    """A real Ctrl-C: SIGINT to the process group of `rebirth recover` once it reports progress
    (re-learning, whose work is not kept). It exits 130 with one line and leaves no folder."""
    d = slimmed
    out = tmp_path / "rec"
    env = dict(os.environ, PYTHONPATH=str(ROOT), GLOG_minloglevel="2")
    proc = subprocess.Popen([sys.executable, "-m", "deeprebirth.cli", "recover", str(d / "slim"), "--images",
                             str(d / "plain"), "--relearn-iters", "10000000", "--count", "16", "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True, preexec_fn=_like_a_shell)
    try:
        for line in proc.stderr:       # the first progress line: re-learning is under way
            if line.startswith("rebirth: recover "):
                break
        assert out.is_dir()
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert lines(stderr) == ["rebirth: error: interrupted (outputs are complete or as they were)"], stderr
    assert not out.exists()
