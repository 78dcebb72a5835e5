"""scripts/reproduce/heldout.py and models/heldout/: the held-aside nets (issue 31) as the script
builds them and as they are shipped, without training: each prototxt parses into our Graph with the
layer kinds that make the net what it is for, the shipped deploy and train_val are what the script
writes, the solvers carry each net's own recipe, and the shipped weights fit the deploy."""
from __future__ import annotations

import heldout
import pytest
from helpers import ROOT

from deeprebirth.caffe import netio
from deeprebirth.caffe import proto as pb
from deeprebirth.graph.dag import Graph
from deeprebirth.graph.model import load_model

SHIPPED = ("alexnet_lrn", "mobilenet_bn", "resnet_bn_b", "googlenet_b", "googlenet_ls")


def body(text: str) -> str:
    """A prototxt without its comment lines."""
    return "\n".join(line for line in text.splitlines() if not line.startswith("#"))


def kinds(net: "pb.NetParameter") -> set[str]:
    return {node.type for node in Graph(net).nodes}


def grouped_convs(net: "pb.NetParameter") -> list[str]:
    return [lr.name for lr in net.layer if lr.type == "Convolution" and lr.convolution_param.group > 1]


@pytest.mark.parametrize("name", list(heldout.NETS))
def test_each_built_net_parses_with_its_layer_kinds(name):
    net = heldout.deploy(name)
    k = kinds(net)
    assert {"Convolution", "InnerProduct", "Softmax"} <= k
    if name == "alexnet_lrn":
        assert "LRN" in k and "Dropout" in k and "BatchNorm" not in k
        assert [lr.name for lr in net.layer if lr.type == "LRN"] == ["norm1", "norm2"]
    else:
        assert {"BatchNorm", "Scale"} <= k
    if name == "mobilenet_bn":
        dw = grouped_convs(net)
        assert len(dw) == 6
        for lr in net.layer:
            if lr.name in dw:        # depthwise: one group per input channel
                assert lr.convolution_param.group == lr.convolution_param.num_output
    else:
        assert not grouped_convs(net)
    if name == "resnet_bn_b":
        assert "Eltwise" in k
        shipped_teacher = netio.read_net(ROOT / "models" / "fmnist_resnet.prototxt")
        assert netio.net_to_text(net) != netio.net_to_text(shipped_teacher)
    tv = heldout.train_val(name, "")
    assert [lr.type for lr in tv.layer[:2]] == ["Data", "Data"]
    assert {"SoftmaxWithLoss", "Accuracy"} <= {lr.type for lr in tv.layer}
    test_layer = tv.layer[1]
    assert test_layer.include[0].phase == pb.TEST and test_layer.transform_param.crop_size == 64
    assert test_layer.transform_param.mean_value[0] == 73 and not test_layer.transform_param.mirror


def test_recipes_differ_from_the_teachers_and_each_other():
    seen = set()
    for name, spec in heldout.NETS.items():
        s = heldout.solver(name, 1000, snapshot=100, test_interval=500)
        # the teachers' recipe: sigmoid warm-up then poly, batch 64, plain cross-entropy; a held-aside
        # net differs in its schedule and batch, or in its loss (label smoothing: a less confident net)
        assert (s.lr_policy not in ("poly", "sigmoid") and spec["batch"] != 64) or spec.get("label_smoothing")
        assert s.max_iter == 1000 and s.snapshot_prefix == f"snap/{name}"
        seen.add((s.type, s.lr_policy, spec["batch"]))
        if s.lr_policy == "step":
            assert s.stepsize == 400
        if s.lr_policy == "multistep":
            assert list(s.stepvalue) == [600, 850]
        if s.lr_policy == "exp":
            assert s.gamma ** 1000 == pytest.approx(0.01, rel=1e-3)
    assert len(seen) == len(heldout.NETS)


def test_label_smoothing_in_stock_caffe_layers():
    """(1 - eps) CE + eps mean_k(-log p_k): SoftmaxWithLoss at 1 - eps; Softmax, Log (finite at
    p = 0), Reduction MEAN over every axis at -eps; TRAIN only, so the TEST net is the plain one."""
    tv = heldout.train_val("googlenet_ls", "")
    by = {lr.type: lr for lr in tv.layer}
    assert list(by["SoftmaxWithLoss"].loss_weight) == [pytest.approx(0.9)]
    assert by["Log"].log_param.shift > 0 and by["Log"].bottom[0] == by["Softmax"].top[0]
    red = by["Reduction"]
    assert red.reduction_param.operation == pb.ReductionParameter.MEAN and red.reduction_param.axis == 0
    assert list(red.loss_weight) == [pytest.approx(-0.1)] and red.bottom[0] == by["Log"].top[0]
    assert all(lr.include[0].phase == pb.TRAIN for lr in (by["Softmax"], by["Log"], red))
    assert not any(lr.type == "Reduction" for lr in heldout.train_val("googlenet_b", "").layer)


@pytest.mark.parametrize("name", SHIPPED)
def test_the_shipped_files_are_what_the_script_writes(name):
    d = ROOT / "models" / "heldout" / name
    assert body((d / "deploy.prototxt").read_text()) == body(netio.net_to_text(heldout.deploy(name)))
    shipped_tv = netio.read_net(d / "train_val.prototxt")
    assert netio.net_to_text(shipped_tv) == netio.net_to_text(heldout.train_val(name, ""))


@pytest.mark.parametrize("name", SHIPPED)
def test_the_shipped_weights_fit_the_deploy(name):
    d = ROOT / "models" / "heldout" / name
    w = d / "weights.caffemodel"
    assert w.stat().st_size < 10_000_000
    model = load_model(d / "deploy.prototxt", w)
    assert model.weights and not model.extras.get("fresh_weights")
    k = kinds(model.net)
    if name == "alexnet_lrn":
        assert "LRN" in k
    else:
        assert "BatchNorm" in k
        assert all(model.weights[lr.name][2].ravel()[0] == 1       # recalibrated: count set to 1
                   for lr in model.net.layer if lr.type == "BatchNorm")
