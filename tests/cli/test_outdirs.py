"""An output folder is ours only if we made it: the marker (`.rebirth`) lists what rebirth wrote,
and anything else in the folder -- a user's file, one that merely has one of our names, or a
directory where a file would go -- needs --force, for every command that writes."""
from __future__ import annotations

import json

import pytest
from helpers import bn_files as files
from helpers import error_line, make_slimmed, run

from deeprebirth import outputs
from deeprebirth.errors import RebirthError


@pytest.fixture
def small(tmp_path):
    return files(tmp_path)     # the small conv/BatchNorm/Scale/ReLU/pool/fc net of test_trust


def _commands(proto, weights, out):
    return {
        "slim": ("slim", proto, "-w", weights, "-o", out),
        "fold-bn": ("fold-bn", proto, weights, "-o", out),
        "tucker": ("tucker", proto, weights, "-o", out, "--data-layer", "dummy"),
    }


@pytest.mark.parametrize("command", ["slim", "fold-bn", "tucker"])
def test_a_users_file_with_one_of_our_names_needs_force(tmp_path, small, command):
    proto, weights = small
    out = tmp_path / "out"
    out.mkdir()
    name = {"slim": "init.caffemodel", "fold-bn": "weights.caffemodel", "tucker": "report.json"}[command]
    (out / name).write_text("mine")
    line = error_line(run(*_commands(proto, weights, out)[command]))
    assert "rebirth did not write" in line and name in line and "--force" in line
    assert (out / name).read_text() == "mine" and [p.name for p in out.iterdir()] == [name]
    assert run(*_commands(proto, weights, out)[command], "--force").exit_code == 0
    marker = json.loads((out / outputs.MARKER).read_text())
    assert (out / name).read_bytes() != b"mine"
    assert sorted(marker["files"]) == sorted(p.name for p in out.iterdir() if p.name != outputs.MARKER)
    assert marker["commands"][-1].startswith(f"rebirth {command} ")


@pytest.mark.parametrize("command", ["slim", "fold-bn"])
def test_a_directory_where_a_file_goes_is_never_emptied_silently(tmp_path, small, command):
    proto, weights = small
    out = tmp_path / "out"
    assert run(*_commands(proto, weights, out)[command]).exit_code == 0   # ours: marker written
    name = {"slim": "init.caffemodel", "fold-bn": "weights.caffemodel"}[command]
    (out / name).unlink()
    (out / name).mkdir()
    (out / name / "keep.txt").write_text("mine")
    line = error_line(run(*_commands(proto, weights, out)[command]))
    assert f"{name}/" in line and "--force" in line
    assert (out / name / "keep.txt").read_text() == "mine"


def test_our_own_folder_is_replaced_without_force(tmp_path, small):
    proto, weights = small
    out = tmp_path / "out"
    assert run("slim", proto, "-w", weights, "-o", out).exit_code == 0
    (out / "report.json").unlink()                                        # a file of ours gone: still ours
    assert run("slim", proto, "-w", weights, "-o", out).exit_code == 0
    assert json.loads((out / outputs.MARKER).read_text())["files"] == sorted(
        p.name for p in out.iterdir() if p.name != outputs.MARKER)
    (out / "notes.txt").write_text("mine")                                # now it holds a user's file
    assert "notes.txt" in error_line(run("slim", proto, "-w", weights, "-o", out))
    assert (out / "notes.txt").read_text() == "mine"


def test_claim_dir_for_commands_that_add_files(tmp_path):
    """relearn and finetune add their files: into a new folder, or one that is ours (their
    default is SLIM_DIR itself, which slim marked); a user's folder needs force, which keeps
    the user's files; a directory where a file would go is refused even then."""
    fresh = outputs.claim_dir(tmp_path / "new", ["weights.caffemodel"])
    assert json.loads((fresh / outputs.MARKER).read_text())["files"] == []
    outputs.record_files(fresh, ["weights.caffemodel"])
    (fresh / "weights.caffemodel").write_text("ours")
    outputs.claim_dir(fresh, ["weights.caffemodel"])                       # ours: fine
    users = tmp_path / "users"
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    with pytest.raises(RebirthError, match=r"notes\.txt.*add force to"):
        outputs.claim_dir(users, ["weights.caffemodel"])
    assert not (users / outputs.MARKER).exists()
    outputs.claim_dir(users, ["weights.caffemodel"], force=True)
    assert (users / "notes.txt").read_text() == "mine"
    (users / "relearn.json").mkdir()
    with pytest.raises(RebirthError, match="is a directory where a file would be written"):
        outputs.claim_dir(users, ["relearn.json"], force=True)
    with pytest.raises(RebirthError, match="input"):
        outputs.claim_dir(fresh, ["weights.caffemodel"], inputs=[fresh / "weights.caffemodel"])
    # `rebirth finetune SLIM` (default -o SLIM/finetune), then `rebirth relearn SLIM` (default -o SLIM):
    # the folder finetune made inside is ours, and left as it is; a user's folder there is not
    inner = outputs.claim_dir(fresh / "finetune", ["weights.caffemodel"])
    (inner / "weights.caffemodel").write_text("tuned")
    outputs.claim_dir(fresh, ["weights.caffemodel"])
    assert (inner / "weights.caffemodel").read_text() == "tuned"
    (fresh / "photos").mkdir()
    with pytest.raises(RebirthError, match=r"photos.*add force to"):
        outputs.claim_dir(fresh, ["weights.caffemodel"])


# ---------------------------------------------------------------------------------------------
# A refused or interrupted command leaves no folder it made


BROKEN = ('layer { name: "d" type: "Input" top: "d" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n'
          'layer { name: "c" type: "Convolution" bottom: "nope" top: "c" convolution_param { num_output: 2 '
          'kernel_size: 1 } }\n')


@pytest.mark.parametrize("command", ["slim", "fold-bn", "tucker", "export"])
def test_a_refused_command_leaves_no_folder_it_made(tmp_path, small, command):
    proto, weights = small
    broken = tmp_path / "broken.prototxt"
    broken.write_text(BROKEN)
    out = tmp_path / "new" / "deeper" / "out"
    args = {**_commands(broken, weights, out), "export": ("export", broken, "--to", "onnx", "-o", out)}[command]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert "produced by no layer" in error_line(run(*args))
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_claimed_dir_takes_back_what_it_made(tmp_path, monkeypatch):
    monkeypatch.setenv("REBIRTH_COMMAND", "rebirth relearn x")
    out = tmp_path / "a" / "b" / "out"
    with pytest.raises(RebirthError, match="refused"):
        with outputs.claimed_dir(out, ["weights.caffemodel"]):
            assert json.loads((out / outputs.MARKER).read_text())["files"] == []
            raise RebirthError("refused")
    assert not (tmp_path / "a").exists()          # the folder and the parents it made
    with pytest.raises(KeyboardInterrupt):         # Ctrl-C: all it made goes, files too
        with outputs.claimed_dir(out, ["weights.caffemodel"]):
            (out / "weights.caffemodel").write_text("half")
            raise KeyboardInterrupt
    assert not (tmp_path / "a").exists()
    with pytest.raises(RebirthError):              # an error late in the run keeps finished work
        with outputs.claimed_dir(out, ["weights.caffemodel"]):
            (out / "weights.caffemodel").write_text("done")
            outputs.record_files(out, ["weights.caffemodel"])
            raise RebirthError("later step failed")
    assert (out / "weights.caffemodel").read_text() == "done"
    mine = tmp_path / "mine"                        # a folder that was there gets no marker left in it
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    for body in (RebirthError("refused"), KeyboardInterrupt()):
        with pytest.raises(type(body)):
            with outputs.claimed_dir(mine, ["weights.caffemodel"], force=True):
                raise body
        assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_a_failed_write_leaves_no_parent_it_made(tmp_path, monkeypatch):
    def refuse(*args):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(outputs.os, "replace", refuse)
    with pytest.raises(RebirthError, match="No space left"):
        outputs.atomic_write(tmp_path / "p" / "q" / "file.txt", "data")
    monkeypatch.setattr(outputs.os, "rename", refuse)
    with pytest.raises(RebirthError, match="No space left"):
        outputs.write_dir(tmp_path / "p" / "q" / "out", {"a.txt": "a"})
    assert list(tmp_path.iterdir()) == []


def test_checks_create_nothing(tmp_path):
    outputs.check_output_path(tmp_path / "x" / "y" / "plot.png")
    outputs.check_writable_dir(tmp_path / "x" / "y" / "out")
    outputs.check_dir_is_ours(tmp_path / "x" / "y" / "out")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "afile").write_text("a file")
    with pytest.raises(RebirthError, match="is a file"):
        outputs.check_dir_is_ours(tmp_path / "afile" / "sub" / "out")


def test_the_marker_records_each_command_once(tmp_path, monkeypatch):
    monkeypatch.setenv("REBIRTH_COMMAND", "rebirth finetune slim")
    out = outputs.claim_dir(tmp_path / "out", ["weights.caffemodel"])
    outputs.record_files(out, ["weights.caffemodel"])
    outputs.record_files(out, ["finetune.json"])
    marker = json.loads((out / outputs.MARKER).read_text())
    assert marker["commands"] == ["rebirth finetune slim"]
    assert marker["files"] == ["finetune.json", "weights.caffemodel"]
    monkeypatch.setenv("REBIRTH_COMMAND", "rebirth relearn slim")
    outputs.claim_dir(out, ["weights.caffemodel"])
    outputs.record_files(out, ["relearn.json"])
    assert json.loads((out / outputs.MARKER).read_text())["commands"] == ["rebirth finetune slim",
                                                                           "rebirth relearn slim"]


def test_finetune_s_marker_names_it_once(tmp_path, caffe):
    """`rebirth finetune` marks its folder when it claims it and again when it has written: one entry."""
    d = make_slimmed(tmp_path)
    out = tmp_path / "ft"
    res = run("finetune", d / "slim", "--train", d / "train", "--iters", "2", "-o", out)
    assert res.exit_code == 0, res.output
    commands = json.loads((out / outputs.MARKER).read_text())["commands"]
    assert len(commands) == 1 and commands[0].startswith("rebirth finetune ")
