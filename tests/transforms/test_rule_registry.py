"""The rule layer as an extension point: rules are discovered and declare themselves; a rule of
one's own is one file; `inspect`'s candidates are the rules' matches and what `slim --only` takes."""
from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import error_line, run

from deeprebirth import errors
from deeprebirth.caffe import netio
from deeprebirth.cli import main
from deeprebirth.errors import RebirthError
from deeprebirth.graph.dag import Graph
from deeprebirth.graph.model import load_model, stand_in
from deeprebirth.transforms import candidates, rules, runner, slim
from deeprebirth.transforms.rules.base import Change, Match, Rule

TOY = '''"""A rule of one's own: in-place Dropout layers go (Dropout is the identity at inference)."""
from deeprebirth.transforms.edit import remove_layers
from deeprebirth.transforms.rules.base import Change, Match, Rule


class DropDropout(Rule):
    name = "drop_dropout"
    types = frozenset({"Dropout"})
    exact = True

    def match(self, graph):
        return [Match(self.name, n.name, [n.name]) for n in graph.nodes if n.type == "Dropout"]

    def guards(self, graph, match, model):
        node = graph.node(match.name)
        return None if node.in_place else f"'{node.name}' is not in place"

    def rewrite(self, model, graph, match):
        remove_layers(model, match.layers)
        return Change(self.name, match.name, removed=list(match.layers))


RULE = DropDropout()
'''

NET = """name: "toy"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "fc1" type: "InnerProduct" bottom: "data" top: "fc1" inner_product_param { num_output: 6 } }
layer { name: "drop1" type: "Dropout" bottom: "fc1" top: "fc1" }
layer { name: "fc2" type: "InnerProduct" bottom: "fc1" top: "fc2" inner_product_param { num_output: 5 } }
layer { name: "drop2" type: "Dropout" bottom: "fc2" top: "d2" }
layer { name: "prob" type: "Softmax" bottom: "d2" top: "prob" }
"""


@pytest.fixture
def rule_dir(tmp_path, monkeypatch):
    folder = tmp_path / "my_rules"
    folder.mkdir()
    monkeypatch.setenv(rules.PATH_ENV, str(folder))
    return folder


# ---------------------------------------------------------------------------------------------
# A rule from one file


def test_a_rule_from_one_file_runs_in_slim_and_inspect(tmp_path, rule_dir):
    (rule_dir / "drop_dropout.py").write_text(TOY)
    net = tmp_path / "toy.prototxt"
    net.write_text(NET)
    assert "drop_dropout" in rules.available()
    assert "drop_dropout" not in [r.name for r in slim.select_rules()]   # declared nothing: opt-in

    info = json.loads(run("inspect", net, "--rules", "drop_dropout", "--json").stdout)
    assert [(c["rule"], c["name"], c["refused"]) for c in info["candidates"]] == [
        ("drop_dropout", "drop1", None), ("drop_dropout", "drop2", "'drop2' is not in place")]
    assert info["rules"][0]["name"] == "drop_dropout" and info["rules"][0]["default"] is False
    table = run("inspect", net, "--rules", "drop_dropout").output
    assert "drop_dropout  drop1: drop1" in table and "left alone: 'drop2' is not in place" in table

    res = run("slim", net, "--rules", "drop_dropout", "-o", tmp_path / "out", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["rules"] == ["drop_dropout"]
    assert [(c["rule"], c["removed"]) for c in doc["changes"]] == [("drop_dropout", ["drop1"])]
    assert [s["substructure"] for s in doc["skips"]] == ["drop2"]
    assert "drop1" not in (tmp_path / "out" / "deploy.prototxt").read_text()
    # its candidate names are what --only takes
    res = run("slim", net, "--rules", "drop_dropout", "--only", "drop1", "-o", tmp_path / "only")
    assert res.exit_code == 0, res.output


def test_a_rule_can_declare_its_place_in_the_default_run(rule_dir):
    declared = "    exact = True\n    default = True\n    order = 1\n"
    (rule_dir / "drop_dropout.py").write_text(TOY.replace("    exact = True\n", declared))
    assert [r.name for r in slim.select_rules()][:2] == ["drop_dropout", "fold_bn"]   # order 1: first
    (rule_dir / "drop_dropout.py").write_text(TOY.replace("    exact = True\n", declared + "    after = ('streamline',)\n"))
    names = [r.name for r in rules.discover(refresh=True).values() if r.default]
    assert names == ["fold_bn", "push_pool_concat", "streamline", "drop_dropout", "branch", "merge_parallel",
                     "pool_into_conv", "pool_into_fc", "merge_concat_1x1"]   # `after` wins over the order number
    assert [r.name for r in slim.select_rules(["drop_dropout", "streamline"])] == ["streamline", "drop_dropout"]


def test_a_rule_module_that_fails_to_import_is_an_error(tmp_path, rule_dir):
    (rule_dir / "broken.py").write_text("import a_module_that_is_not_there_12\n")
    line = error_line(run("slim", "alexnet", "-o", tmp_path / "out"))
    assert "broken.py" in line and "failed to import" in line and "a_module_that_is_not_there_12" in line
    assert "broken.py" in error_line(run("inspect", "alexnet"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text,expect", [
    ("X = 1\n", "defines no RULE"),
    (TOY.replace('name = "drop_dropout"', 'name = "streamline"'), "rule 'streamline' is already defined"),
    (TOY.replace("    exact = True\n", "    exact = True\n    after = ('nonesuch',)\n"), "runs after 'nonesuch'"),
])
def test_bad_rule_modules_are_named(rule_dir, text, expect):
    (rule_dir / "mine.py").write_text(text)
    with pytest.raises(RebirthError, match=expect):
        rules.available()


def test_command_modules_are_all_registered():
    assert set(main.commands) >= {"inspect", "slim", "fold-bn", "bench"}


# ---------------------------------------------------------------------------------------------
# Declarations, order, selection


def test_builtin_rules_declare_the_default_order():
    assert rules.available() == ["fold_bn", "push_pool_concat", "streamline", "branch", "merge_parallel",
                                 "pool_into_conv", "pool_into_fc", "merge_concat_1x1", "tucker"]
    # tucker: opt-in, the default order number
    found = rules.discover()
    assert found["fold_bn"].needs_weights and not found["streamline"].needs_weights
    assert [n for n, r in found.items() if r.absorbs_pooling] == ["streamline", "pool_into_conv"]
    assert all(r.default for n, r in found.items() if n != "tucker") and not found["tucker"].default
    assert found["branch"].options() == {"reduce_ratio": 0.5, "reduce_all": False, "min_branches": 2, "seed": 0}


def test_select_without_weights_and_keep_pooling():
    chosen, notes = rules.select(None, keep_pooling=True, have_weights=False)
    assert [r.name for r in chosen] == ["push_pool_concat", "streamline", "branch", "merge_parallel", "pool_into_fc",
                                        "merge_concat_1x1"]
    assert chosen[1].options() == {"absorb_pooling": False}
    assert [errors.render(n) for n in notes] == ["no weights: rule fold_bn (needs the trained weights) did not run"]
    with pytest.raises(RebirthError, match="keep_pooling contradicts rule_names pool_into_conv"):
        rules.select(["pool_into_conv"], keep_pooling=True)
    assert [r.name for r in rules.select(["pool_into_conv", "fold_bn"])[0]] == ["fold_bn", "pool_into_conv"]
    with pytest.raises(RebirthError, match="no option 'bogus'"):
        rules.get(["branch"])[0].with_options(bogus=1)


class _Named(Rule):
    def __init__(self, name, order=100, after=()):
        self.name, self.order, self.after = name, order, tuple(after)


def test_order_then_dependencies():
    got = rules.ordered([_Named("c", 1, after=["b"]), _Named("b", 5), _Named("a", 3)])
    assert [r.name for r in got] == ["a", "b", "c"]
    with pytest.raises(RebirthError, match="wait for each other"):
        rules.ordered([_Named("x", after=["y"]), _Named("y", after=["x"])])


# ---------------------------------------------------------------------------------------------
# The pipeline: types skip work, one way to refuse, the step limit is reported


class _Never(Rule):
    name = "never"
    types = frozenset({"NoSuchLayerType"})

    def match(self, graph):
        raise AssertionError("match called on a net without the rule's layer types")


class _Rename(Rule):
    """Renames one ReLU per step, forever."""
    name = "rename"
    types = frozenset({"ReLU"})

    def match(self, graph):
        return [Match(self.name, n.name, [n.name]) for n in graph.nodes if n.type == "ReLU"]

    def rewrite(self, model, graph, match):
        layer = next(layer for layer in model.net.layer if layer.name == match.name)
        layer.name += "_"
        return Change(self.name, match.name, modified=[layer.name])


def test_types_skip_and_max_steps_is_reported():
    model = load_model("alexnet")
    result = runner.run(model, [_Never(), _Rename()], max_steps=3)
    assert len(result.changes) == 3
    assert len(result.notes) == 1 and "max_steps" in result.notes[0] and "rename" in result.notes[0]
    assert not runner.run(model, [_Never()]).notes


def test_a_rule_that_needs_weights_refuses_in_the_runner_and_slim_makes_its_structure_from_stand_ins(tmp_path):
    """Run directly on a net without weights, fold_bn refuses every match with a note; `rebirth slim`
    without weights makes the structure the fold gives (stand-in weights, never written), as the
    plan by time alone and `slim --plan` need it, and says so."""
    model = load_model("resnet50")
    result = runner.run(model, rules.get(["fold_bn"]))
    assert not result.changes and any("needs the trained weights" in s.reason for s in result.skips)
    res = run("slim", "resnet50", "--rules", "fold_bn", "-o", tmp_path / "out")
    assert res.exit_code == 0, res.output
    assert "no --weights: the rewrites of fold_bn compute new weights" in res.stderr + res.stdout
    types = {layer.type for layer in netio.read_net(tmp_path / "out" / "deploy.prototxt").layer}
    assert "BatchNorm" not in types and "Scale" not in types
    assert not (tmp_path / "out" / "init.caffemodel").exists()
    notes = candidates.candidates(model)["candidate_notes"]     # inspect says so too
    assert any("fold_bn compute(s) new weights" in errors.render(n) for n in notes)


# ---------------------------------------------------------------------------------------------
# inspect's candidates are what slim --only takes, and each alone slims just itself


def _fake_weights(model):
    rng = np.random.default_rng(0)
    model.weights = {n.name: [np.abs(rng.standard_normal(s)).astype(np.float32) + 0.1 for s in n.param_shapes]
                     for n in Graph(model.net).nodes if n.param_shapes}
    return model


@pytest.mark.parametrize("net,weights", [("googlenet", False), ("alexnet", False), ("resnet50", False),
                                         ("resnet50", True)])
@pytest.mark.slow
def test_every_candidate_is_an_only_name_that_slims_itself(net, weights):
    model = load_model(net)
    if weights:
        model = _fake_weights(model)
    info = candidates.candidates(model)
    chosen = slim.select_rules(None)      # without weights too: the structure, from stand-in weights
    assert [r["name"] for r in info["rules"]] == [r.name for r in chosen]
    cands = info["candidates"]
    assert cands
    model = stand_in(model)
    valid = slim.substructures(model, chosen)
    names = list(dict.fromkeys(c["name"] for c in cands))
    if len(names) > 30:
        names = names[::9] + names[-1:]   # ResNet-50's 54 folds alike: a sample keeps the test fast
    for name in names:
        assert name in valid
        mine = [c for c in cands if c["name"] == name]
        result = runner.run(model, chosen, only={name})
        if all(c["refused"] for c in mine):
            assert not result.changes and {s.reason for s in result.skips} <= {c["refused"] for c in mine}
            continue
        assert result.changes, name
        assert {c.substructure for c in result.changes} == {name}
        touched = {n for c in result.changes for n in c.removed + c.regenerated + c.modified}
        assert touched <= {n for c in mine for n in c["layers"]}, name


@pytest.mark.parametrize("net,name", [("googlenet", "conv1"), ("alexnet", "pool1"), ("resnet50", "conv1")])
@pytest.mark.slow
def test_inspect_names_through_the_cli(tmp_path, net, name):
    info = json.loads(run("inspect", net, "--json").stdout)
    assert name in [c["name"] for c in info["candidates"]]
    res = run("slim", net, "--only", name, "-o", tmp_path / "out", "--json")
    assert res.exit_code == 0, res.output
    assert {c["substructure"] for c in json.loads(res.stdout)["changes"]} == {name}
