"""Fine-tuning files (deeprebirth/trainfiles.py, slim.write): train_val.prototxt, solver.prototxt and
init.caffemodel, checked in real Caffe: the solver loads, the initial weights load, two SGD steps run."""
from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import text_model

from deeprebirth.caffe import netio
from deeprebirth.caffe import proto as pb
from deeprebirth.caffe.phase import filter_phase
from deeprebirth.errors import RebirthError
from deeprebirth.graph.dag import Graph
from deeprebirth.graph.model import Model
from deeprebirth.runtime import pycaffe
from deeprebirth.transforms import slim, trainfiles
from deeprebirth.transforms.rules import get
from deeprebirth.transforms.rules.base import Rule

DEPLOY = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 32 dim: 32 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1" lrn_param { local_size: 5 } }
layer { name: "conv2" type: "Convolution" bottom: "norm1" top: "conv2"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "fc" type: "InnerProduct" bottom: "conv2" top: "fc" inner_product_param { num_output: 10 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""

DATA = """
layer { name: "data" type: "DummyData" top: "data" top: "label" include { phase: TRAIN }
        dummy_data_param { shape { dim: 4 dim: 3 dim: 32 dim: 32 } shape { dim: 4 }
                           data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 } } }
layer { name: "data" type: "DummyData" top: "data" top: "label" include { phase: TEST }
        dummy_data_param { shape { dim: 3 dim: 3 dim: 32 dim: 32 } shape { dim: 3 }
                           data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 2 } } }
"""
BODY = "\n".join(line for line in DEPLOY.splitlines()[1:] if '"Input"' not in line and '"Softmax"' not in line)
BODY = BODY.replace('top: "conv2"\n', 'top: "conv2" param { lr_mult: 3 decay_mult: 1 } param { lr_mult: 3 decay_mult: 0 }\n')
TRAIN_ONLY = """
layer { name: "aux/fc" type: "InnerProduct" bottom: "pool1" top: "aux/fc" inner_product_param { num_output: 10 } }
layer { name: "aux/loss" type: "SoftmaxWithLoss" bottom: "aux/fc" bottom: "label" top: "aux/loss" loss_weight: 0.3 }
layer { name: "aux2/fc" type: "InnerProduct" bottom: "conv2" top: "aux2/fc" inner_product_param { num_output: 10 } }
layer { name: "aux2/loss" type: "SoftmaxWithLoss" bottom: "aux2/fc" bottom: "label" top: "aux2/loss" loss_weight: 0.3 }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "fc" bottom: "label" top: "accuracy" include { phase: TEST } }
"""
TRAIN_VAL = 'name: "tiny"\n' + DATA + BODY + TRAIN_ONLY


def model(weights: bool = True) -> Model:
    return text_model(DEPLOY, "deploy.prototxt", seed=7 if weights else None)


def slimmed(m: Model, **kw) -> slim.SlimOutput:
    return slim.slim(m, get(["streamline"]), **kw)


def by_name(net) -> dict:
    return {layer.name: layer for layer in net.layer}


# ----------------------------------------------------------------------------------------------
# train_val without a given one


def test_generated_train_val_reads_list_files_and_adds_the_loss():
    out = slimmed(model())
    net = out.train_val
    data = [layer for layer in net.layer if layer.type == "ImageData"]
    assert [(d.include[0].phase, d.image_data_param.source) for d in data] == [(pb.TRAIN, "train.txt"),
                                                                              (pb.TEST, "val.txt")]
    for d in data:
        assert list(d.top) == ["data", "label"] and d.image_data_param.batch_size == 32
        # A small input is a plain resize (no 256-pixel ImageNet crop of a 32x32 net's images).
        assert d.transform_param.crop_size == 0 and d.image_data_param.new_height == 32
        assert d.image_data_param.new_width == 32
        assert list(d.transform_param.mean_value) == [104, 117, 123]
    assert data[0].transform_param.mirror and data[0].image_data_param.shuffle
    layers = by_name(net)
    assert "prob" not in layers and "Input" not in [x.type for x in net.layer]
    assert layers["loss"].type == "SoftmaxWithLoss" and list(layers["loss"].bottom) == ["fc", "label"]
    assert layers["accuracy"].type == "Accuracy" and layers["accuracy"].include[0].phase == pb.TEST
    assert layers["accuracy_top5"].accuracy_param.top_k == 5
    # Shapes are consistent (Graph reads ImageData's resize).
    g = Graph(filter_phase(net, pb.TRAIN))
    assert g.shapes["fc"] == (32, 10)


def test_generated_imagedata_keeps_the_imagenet_recipe_for_large_colour_inputs():
    layers = trainfiles.generated_data_layers([("data", (1, 3, 224, 224))])
    assert all(d.transform_param.crop_size == 224 and d.image_data_param.new_height == 256 for d in layers)
    gray = trainfiles.generated_data_layers([("data", (1, 1, 64, 64))])
    assert all(d.transform_param.crop_size == 0 and d.image_data_param.new_height == 64 and
               not d.image_data_param.is_color for d in gray)


def test_lr_mults_new_layers_ten_times_faster():
    out = slimmed(model())
    assert out.new_layers == ["conv1"]
    layers = by_name(out.train_val)
    assert [(p.lr_mult, p.decay_mult) for p in layers["conv1"].param] == [(10, 1), (20, 0)]
    assert layers["conv1"].convolution_param.weight_filler.type == "xavier"
    assert layers["conv1"].convolution_param.bias_filler.type == "constant"
    for name in ("conv2", "fc"):
        assert [p.lr_mult for p in layers[name].param] == [1, 2]
    assert not layers["relu1"].param
    # The deploy keeps its own specs.
    assert [p.lr_mult for p in by_name(out.deploy)["conv1"].param] == [1, 2]


def test_set_lr_mults_leaves_batchnorm_and_frozen_layers():
    net = netio.parse_net_text("""
layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x" }
layer { name: "frozen" type: "Convolution" bottom: "x" top: "f" param { lr_mult: 0 } param { lr_mult: 0 } }
layer { name: "sc" type: "Scale" bottom: "x" top: "x" param { lr_mult: 1 } param { lr_mult: 1 } param { lr_mult: 1 } }
layer { name: "nobias" type: "Convolution" bottom: "x" top: "n" }
""")
    trainfiles.set_lr_mults(net, {"bn": 3, "frozen": 2, "sc": 2, "nobias": 1}, new_layers={"nobias"})
    layers = by_name(net)
    assert not layers["bn"].param
    assert [p.lr_mult for p in layers["frozen"].param] == [0, 0]
    assert [p.lr_mult for p in layers["sc"].param] == [1, 2]
    assert [p.lr_mult for p in layers["nobias"].param] == [10]


def test_solver_follows_the_paper():
    s = trainfiles.build_solver(test_batch=50)
    assert s.net == "train_val.prototxt"
    assert (s.base_lr, s.lr_policy, s.stepsize, s.gamma, s.momentum, s.max_iter, s.type) == (
        pytest.approx(0.001), "step", 40000, pytest.approx(0.1), pytest.approx(0.9), 90000, "SGD")
    assert s.weight_decay == pytest.approx(0.0002)
    assert s.solver_mode == pb.SolverParameter.CPU and s.snapshot and s.snapshot_prefix
    assert list(s.test_iter) == [1000] and s.test_interval and not s.test_initialization
    text = trainfiles.render_solver(s, ["hello"])
    assert text.startswith("# hello\n")


def test_generated_train_val_errors():
    two = netio.parse_net_text('input: "a" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 } '
                            'input: "b" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 } '
                            'layer { name: "s" type: "Eltwise" bottom: "a" bottom: "b" top: "s" } '
                            'layer { name: "fc" type: "InnerProduct" bottom: "s" top: "fc" '
                            'inner_product_param { num_output: 2 } }')
    with pytest.raises(RebirthError, match="2 inputs"):
        trainfiles.build_train_val(two)
    no_ip = netio.parse_net_text('input: "a" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 } '
                              'layer { name: "c" type: "Convolution" bottom: "a" top: "c" '
                              'convolution_param { num_output: 2 kernel_size: 1 } }')
    with pytest.raises(RebirthError, match="InnerProduct"):
        trainfiles.build_train_val(no_ip)
    with pytest.raises(RebirthError, match="has no data layers"):
        trainfiles.build_train_val(model().net, given=netio.parse_net_text(BODY), given_source="tv.prototxt")
    other = netio.parse_net_text(DATA.replace('top: "data"', 'top: "image"'))
    with pytest.raises(RebirthError, match="reads input 'data'"):
        trainfiles.build_train_val(model().net, given=other, given_source="tv.prototxt")


# ----------------------------------------------------------------------------------------------
# In Caffe


def _solve(caffe, outdir, monkeypatch, steps=2):
    monkeypatch.chdir(outdir)
    solver = caffe.get_solver("solver.prototxt")
    solver.net.copy_from("init.caffemodel")
    return solver


def test_generated_dummy_train_val_trains_and_init_weights_load(caffe, tmp_path, monkeypatch):
    m = model()
    out = slimmed(m, data_layer="DummyData")
    slim.write(out, tmp_path)
    solver = _solve(caffe, tmp_path, monkeypatch)
    params = solver.net.params
    for name in ("conv2", "fc"):   # unchanged: bit for bit
        for got, want in zip(params[name], m.weights[name]):
            assert got.data.tobytes() == want.astype(np.float32).tobytes()
    w, b = params["conv1"][0].data, params["conv1"][1].data   # regenerated: Xavier, zero bias
    assert not np.array_equal(w, m.weights["conv1"][0]) and np.all(b == 0)
    assert np.abs(w).max() <= math.sqrt(3.0 / (3 * 3 * 3)) + 1e-6
    before = params["conv1"][0].data.copy()
    solver.step(2)
    assert solver.iter == 2 and np.isfinite(float(solver.net.blobs["loss"].data))
    assert not np.array_equal(params["conv1"][0].data, before)
    assert solver.test_nets[0].blobs["data"].data.shape[0] == 32
    # The slim deploy net loads with the same weights and keeps the output shape.
    net = caffe.Net(str(tmp_path / "deploy.prototxt"), caffe.TEST, weights=str(tmp_path / "init.caffemodel"))
    assert net.blobs["prob"].data.shape == (2, 10)


def test_given_train_val_frames_the_slim_body(caffe, tmp_path, monkeypatch):
    m = model()
    given = netio.parse_net_text(TRAIN_VAL, "train_val.prototxt")
    train_only = pycaffe.random_weights(Graph(filter_phase(given, pb.TRAIN)), seed=9)
    extra = {k: v for k, v in train_only.items() if k.startswith("aux")}
    m.spare_weights = extra  # what load_model keeps of a caffemodel's layers the deploy net lacks
    out = slimmed(m, train_val=given, train_val_source="train_val.prototxt")
    names = [layer.name for layer in out.train_val.layer]
    assert names[:2] == ["data", "data"] and "pool1" not in names and "norm1" not in names
    assert {"aux2/fc", "aux2/loss", "loss", "accuracy"} <= set(names)
    # The auxiliary head that read the vanished 'pool1' blob is left out, with a note.
    assert "aux/fc" not in names and "aux/loss" not in names
    assert any("'aux/fc'" in n and "pool1" in n for n in out.notes)
    assert set(out.weights) == {"conv1", "conv2", "fc", "aux2/fc"}
    # Body layers without specs in the deploy take the train_val's (decay_mult), lr_mult set anew.
    layers = by_name(out.train_val)
    assert [(p.lr_mult, p.decay_mult) for p in layers["conv2"].param] == [(1, 1), (2, 0)]
    slim.write(out, tmp_path)
    solver = _solve(caffe, tmp_path, monkeypatch)
    got = solver.net.params["aux2/fc"][0].data
    assert got.tobytes() == extra["aux2/fc"][0].tobytes()
    assert list(out.solver.test_iter) == [math.ceil(50000 / 3)]
    solver.step(2)
    assert np.isfinite(float(solver.net.blobs["loss"].data))
    # init.caffemodel also loads when the train net is built directly.
    net = caffe.Net(str(tmp_path / "train_val.prototxt"), caffe.TRAIN, weights=str(tmp_path / "init.caffemodel"))
    assert net.params["fc"][0].data.tobytes() == m.weights["fc"][0].tobytes()


def test_train_only_weights_that_no_longer_fit_are_left_to_fillers():
    m = model()
    given = netio.parse_net_text(TRAIN_VAL, "train_val.prototxt")
    extra = {"aux2/fc": [np.zeros((10, 7), np.float32), np.zeros(10, np.float32)]}
    m.spare_weights = extra
    out = slimmed(m, train_val=given)
    assert "aux2/fc" not in out.weights
    assert any("'aux2/fc'" in n and "fillers" in n for n in out.notes)


class _AddExactScale(Rule):
    """A stand-in exact rule: adds an identity Scale (with exact weights) after conv2."""
    name = "add_scale"

    def match(self, graph):
        from deeprebirth.transforms.rules.base import Match
        return [] if "extra_scale" in graph.by_name else [Match(self.name, "conv2", ["conv2"])]

    def guards(self, graph, match, model):
        return None

    def rewrite(self, model, graph, match):
        from deeprebirth.transforms.rules.base import Change
        index = [layer.name for layer in model.net.layer].index("conv2")
        layer = pb.LayerParameter(name="extra_scale", type="Scale", bottom=["conv2"], top=["conv2"])
        layer.scale_param.bias_term = True
        model.net.layer.insert(index + 1, layer)
        model.weights["extra_scale"] = [np.full(8, 2, np.float32), np.full(8, 0.5, np.float32)]
        return Change(self.name, match.name, added=["extra_scale"], exact=True)


def test_layers_added_by_an_exact_rewrite_keep_their_weights_and_rate():
    from deeprebirth.transforms.rules.streamline import RULE
    out = slim.slim(model(), [_AddExactScale(), RULE])
    assert out.new_layers == ["conv1"]
    assert out.weights["extra_scale"][0].tolist() == [2] * 8
    assert [p.lr_mult for p in by_name(out.train_val)["extra_scale"].param] == [1, 2]


def test_scratch_body_sets_fillers_and_multipliers():
    """trainfiles.scratch_body: what scripts/reproduce/teachers.py trains from scratch."""
    from deeprebirth.caffe import netio as _netio
    from deeprebirth.transforms import trainfiles as _tf
    deploy = _netio.parse_net_text("""name: "s"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 8 dim: 8 } } }
layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 4 kernel_size: 3 bias_term: false } }
layer { name: "bn" type: "BatchNorm" bottom: "c" top: "c" batch_norm_param { use_global_stats: true } }
layer { name: "sc" type: "Scale" bottom: "c" top: "c" scale_param { bias_term: true } }
layer { name: "fc" type: "InnerProduct" bottom: "c" top: "fc" inner_product_param { num_output: 3 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
""")
    layers = {layer.name: layer for layer in _tf.scratch_body(deploy)}
    assert list(layers) == ["c", "bn", "sc", "fc"]
    c, bn, sc, fc = layers["c"], layers["bn"], layers["sc"], layers["fc"]
    assert c.convolution_param.weight_filler.type == "msra" and [(p.lr_mult, p.decay_mult) for p in c.param] == [(1, 1)]
    assert not bn.batch_norm_param.HasField("use_global_stats") and [p.lr_mult for p in bn.param] == [0, 0, 0]
    assert [(p.lr_mult, p.decay_mult) for p in sc.param] == [(1, 0), (1, 0)]
    assert fc.inner_product_param.weight_filler.type == "xavier" and fc.inner_product_param.bias_filler.type == "constant"
    assert [(p.lr_mult, p.decay_mult) for p in fc.param] == [(1, 1), (2, 0)]
    assert not deploy.layer[2].param   # the deploy is not changed
