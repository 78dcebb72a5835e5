"""The nets of the README's Table 3 shipped in models/ (scripts/reproduce/table3.py --ship): each
folder is a MODEL for `rebirth eval` and `rebirth bench` (deploy, weights, the train_val whose TEST
layer is the preprocessing), and classifies as its README says (checked on the first 1,000 test
images, within 3 points: the README's number is over all 10,000)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import run

from deeprebirth.learning import sources as data

MODELS = Path(__file__).resolve().parents[2] / "models"
SHIPPED = ["fmnist_googlenet_slim", "fmnist_googlenet_slim_labelfree", "fmnist_googlenet_slim_tucker",
           "fmnist_resnet_slim"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_folder_is_complete(name):
    d = MODELS / name
    assert {"deploy.prototxt", "weights.caffemodel", "train_val.prototxt", "README.md"} <= {p.name for p in d.iterdir()}
    assert "fmnist_" in (d / "train_val.prototxt").read_text() or "lmdb" in (d / "train_val.prototxt").read_text()
    for f in ("train_val.prototxt", "deploy.prototxt"):
        assert "out/table3" not in (d / f).read_text()   # no path of the run that made it


@pytest.mark.caffe
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_net_classifies_as_its_readme_says(name, caffe):
    if not (data.FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (make install)")
    d = MODELS / name
    claimed = float(re.search(r"top-1 ([0-9.]+) %", (d / "README.md").read_text()).group(1)) / 100
    res = run("eval", d, "--data", "fashion-mnist:test[:1000]", "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["preprocess_from"] == str(d / "train_val.prototxt")
    assert abs(doc["top1"] - claimed) < 0.03, (doc["top1"], claimed)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_net_has_its_global_pooling_folded(name):
    """--ship folds pool5 into the classifier (pool_into_fc, exact): no Pooling is left before it."""
    from deeprebirth.caffe import netio
    net = netio.read_net(MODELS / name / "deploy.prototxt")
    assert not [lr.name for lr in net.layer if lr.type == "Pooling" and lr.pooling_param.global_pooling]
    assert "pool_into_fc" in (MODELS / name / "README.md").read_text()


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_net_has_nothing_left_for_the_exact_ship_rules(name):
    """--ship runs the exact rules that only pay on a finished net (pool_into_fc, merge_concat_1x1):
    on a shipped net neither finds anything more to rewrite."""
    from deeprebirth.caffe import netio
    from deeprebirth.graph.model import Model
    from deeprebirth.transforms import runner
    from deeprebirth.transforms.rules import get
    result = runner.run(Model(netio.read_net(MODELS / name / "deploy.prototxt")),
                        get(["pool_into_fc", "merge_concat_1x1"]))
    assert not result.changes, [c.substructure for c in result.changes]
