"""An output folder is ours only if we made it: the marker (`.rebirth`) lists what rebirth wrote,
and anything else in the folder -- a user's file, one that merely has one of our names, or a
directory where a file would go -- needs --force, for every command that writes."""
from __future__ import annotations

import json

import pytest

from deeprebirth import outputs
from deeprebirth.errors import RebirthError
from helpers import bn_files as files, error_line, run



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
