"""undo.removed_if_interrupted: what an interrupted learning command leaves (nothing it made)."""
import pytest

from deeprebirth import outputs
from deeprebirth.learning import undo


def test_interrupted_run_removes_the_folder_and_the_parents_it_made(tmp_path):
    out = tmp_path / "new" / "sub"
    with pytest.raises(KeyboardInterrupt):
        with undo.removed_if_interrupted(out, ["weights.caffemodel"]):
            out.mkdir(parents=True)          # as a child process would, before it is killed
            (out / "weights.caffemodel").write_bytes(b"x")
            raise KeyboardInterrupt
    assert not (tmp_path / "new").exists()
    assert tmp_path.is_dir()


def test_interrupted_run_in_an_existing_folder_takes_back_only_its_own_files(tmp_path):
    out = tmp_path / "slim"
    out.mkdir()
    (out / "mine.txt").write_text("the user's")
    outputs.record_files(out, ["deploy.prototxt"])
    marker = (out / outputs.MARKER).read_bytes()
    with pytest.raises(KeyboardInterrupt):
        with undo.removed_if_interrupted(out, ["weights.caffemodel", "relearn.json"]):
            (out / "weights.caffemodel").write_bytes(b"x")
            outputs.record_files(out, ["weights.caffemodel"])
            raise KeyboardInterrupt
    assert sorted(p.name for p in out.iterdir()) == sorted(["mine.txt", outputs.MARKER])
    assert (out / outputs.MARKER).read_bytes() == marker


def test_a_finished_run_keeps_everything(tmp_path):
    out = tmp_path / "a" / "b"
    with undo.removed_if_interrupted(out, ["w"]):
        out.mkdir(parents=True)
        (out / "w").write_bytes(b"x")
    assert (out / "w").exists()
