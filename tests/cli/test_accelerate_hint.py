"""The hint `rebirth accelerate` prints when its promise left the target's speed on the table (pure)."""
from __future__ import annotations

import shlex

from deeprebirth.cli.accelerate_cmd import speed_hint


def doc(result="exact", speedup=1.02, full=3.24, goal_speedup=None):
    return {"result": result, "speedup": speedup, "goal": {"speedup": goal_speedup, "max_drop": 1.0},
            "plan": {"slim_everything": {"speedup": full}}}


ARGV = ["accelerate", "fmnist_googlenet", "--images", "fashion-mnist:train[:3000]", "--max-drop", "1", "-o", "fast",
        "--json"]


def test_an_exact_result_beside_a_much_faster_everything_gets_the_command_that_asks_for_speed(tmp_path):
    out = str(tmp_path / "fast")
    hint = speed_hint(doc(), ARGV[:-2] + [out, "--json"], out)
    assert hint is not None and "3.24x" in hint
    command = shlex.split(hint.split(": ", 2)[-1])
    assert command[:5] == ["rebirth", "accelerate", "fmnist_googlenet", "--images", "fashion-mnist:train[:3000]"]
    assert "--max-drop" not in command and "--json" not in command      # a speed-up, not both
    assert command[command.index("--speedup") + 1] == "2.9"              # 90 % of what was measured
    assert command[-2:] == ["-o", out + "-speedup2.9"]                     # a new folder: never over the first


def test_the_new_folder_never_names_one_that_exists(tmp_path):
    out = str(tmp_path / "fast")
    (tmp_path / "fast-speedup2.9").mkdir()
    hint = speed_hint(doc(), ["accelerate", "m", "--images", "d", "--output=" + out], out)
    assert shlex.split(hint)[-1] == out + "-speedup2.9-2" and "--output=" not in hint


def test_no_hint_when_speed_was_asked_for_or_nothing_much_was_left():
    assert speed_hint(doc(goal_speedup=3.0), ARGV, "fast") is None
    assert speed_hint(doc(result="recovered", speedup=2.9), ARGV, "fast") is None      # it got most of it
    assert speed_hint(doc(full=1.1), ARGV, "fast") is None                              # nothing to gain
    assert speed_hint({"result": "exact", "speedup": 1.0, "plan": {"slim_everything": None}}, ARGV, "fast") is None


def recovered_doc(result: str, its: int | None = 2265, options=("recovered", "re-learned", "exact")) -> dict:
    return {"result": result, "steps": {"recover": {"distill_iterations": its, "distill_s": 1318.0},
                                        "check": {"options": [{"name": n} for n in options]}}}


def test_a_recovered_net_that_missed_gets_the_same_command_with_more():
    from deeprebirth.cli.accelerate_cmd import more_hint
    argv = ["accelerate", "m", "--images", "fashion-mnist:train[:50000]", "--labels", "-o", "fast dir"]
    hint = more_hint(recovered_doc("exact"), argv)
    assert "after 2,265 distillation iterations (22 min)" in hint
    assert shlex.split(hint.split(": ", 2)[-1]) == ["rebirth", *argv, "--more"]     # pastes as it is
    assert shlex.split(more_hint(recovered_doc("re-learned"), [*argv, "--more"]).split(": ", 2)[-1])[-1] == "--more"
    assert more_hint(recovered_doc("recovered"), argv) is None                  # it kept its promise
    assert more_hint(recovered_doc("exact", its=None), argv) is None            # nothing was distilled
    assert more_hint(recovered_doc("exact", options=("planned", "exact")), argv) is None


def test_the_speed_hint_into_a_new_folder_leaves_more_out_and_a_resumed_run_gives_no_minutes():
    """--more needs the folder's earlier run: a new folder has none (the pasted command would fail)."""
    from deeprebirth.cli.accelerate_cmd import more_hint
    argv = ["accelerate", "m", "--images", "d", "--time", "4m", "-o", "fast", "--more"]
    assert "--more" not in shlex.split(speed_hint(doc(), argv, "fast"))
    resumed = recovered_doc("exact")
    resumed["steps"]["recover"]["resumed_at"] = 500
    assert "after 2,265 distillation iterations; to train" in more_hint(resumed, argv)
