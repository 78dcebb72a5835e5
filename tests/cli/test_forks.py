"""Nets from Caffe forks: fork layers and fields parse and get shapes, unknown layer types are
barriers with a warning, legacy V0 nets are upgraded, and fold-bn / slim / inspect / bench work
on a DenseNet-style net (pooling ceil_mode) and a MobileNet-SSD-style net (Permute, Flatten,
PriorBox, Normalize, DetectionOutput, ReLU6, depthwise convolutions); with pycaffe, shapes and
memory equal the engine's and fold-bn --verify passes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import DATA, input_layer, run, write_random_weights

from deeprebirth.caffe import netio
from deeprebirth.caffe import proto as pb
from deeprebirth.caffe.phase import filter_phase
from deeprebirth.errors import RebirthError, RebirthWarning
from deeprebirth.graph.dag import Graph
from deeprebirth.graph.model import load_model
from deeprebirth.transforms import fold

DENSENET = DATA / "fork_densenet.prototxt"
SSD = DATA / "fork_mobilenet_ssd.prototxt"

HEAD = input_layer((1, 8, 6, 6))


def graph_of(text: str, **kw) -> Graph:
    return Graph(netio.parse_net_text(HEAD + text), **kw)


def deploy(path: Path) -> "pb.NetParameter":
    return filter_phase(netio.read_net(path), pb.TEST)


def weights_file(path: Path, tmp_path: Path, seed: int = 1) -> Path:
    out = tmp_path / f"{path.stem}.caffemodel"
    write_random_weights(deploy(path), out, seed=seed)
    return out


# ---------------------------------------------------------------------------------------------
# Schema and shapes


def test_fork_nets_parse_and_get_shapes():
    g = Graph(deploy(SSD))
    assert not g.barriers
    assert g.shapes["conv2_norm_mbox_loc_perm"] == (1, 16, 16, 16)
    assert g.shapes["conv2_norm_mbox_priorbox"] == (1, 2, 16 * 16 * 4 * 4)  # ratios 1, 2, 1/2 + max_size
    assert g.shapes["conv3_mbox_priorbox"] == (1, 2, 8 * 8 * 6 * 4)        # ratios 1, 2, 1/2, 3, 1/3 + max
    assert g.shapes["mbox_conf_softmax"] == (1, 16 * 16 * 4 + 8 * 8 * 6, 3)
    assert g.shapes["detection_out"] == (1, 1, 1, 7)
    assert g.node("conv2_norm").param_shapes == [(32,)]
    d = Graph(deploy(DENSENET))
    assert d.shapes["pool1"] == (1, 16, 9, 9)   # 17 -> floor((17 + 2 - 3) / 2) + 1 (ceil_mode: false)
    assert d.shapes["pool2"] == (1, 16, 5, 5)   # 9 -> ceil((9 - 2) / 2) + 1 (ceil_mode: true)


@pytest.mark.parametrize("spelling", ["ceil_mode: false", "round_mode: FLOOR"])
def test_both_pooling_spellings(spelling):
    g = graph_of(f'layer {{ name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param {{ pool: MAX '
                 f'kernel_size: 3 stride: 2 {spelling} }} }}')
    assert g.shapes["p"] == (1, 8, 2, 2)
    assert graph_of('layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: MAX '
                    'kernel_size: 3 stride: 2 ceil_mode: true } }').shapes["p"] == (1, 8, 3, 3)


@pytest.mark.parametrize("layer,shape", [
    ('type: "ReLU6" bottom: "data" top: "x"', (1, 8, 6, 6)),
    ('type: "DepthwiseConvolution" bottom: "data" top: "x" convolution_param { num_output: 8 group: 8 '
     'kernel_size: 3 pad: 1 }', (1, 8, 6, 6)),
    ('type: "ConvolutionDepthwise" bottom: "data" top: "x" convolution_param { num_output: 8 group: 8 '
     'kernel_size: 3 stride: 2 }', (1, 8, 2, 2)),
    ('type: "Upsample" bottom: "data" top: "x" upsample_param { scale: 2 }', (1, 8, 12, 12)),
    ('type: "Interp" bottom: "data" top: "x" interp_param { zoom_factor: 2 }', (1, 8, 11, 11)),
    ('type: "Interp" bottom: "data" top: "x" interp_param { height: 3 width: 4 }', (1, 8, 3, 4)),
    ('type: "ShuffleChannel" bottom: "data" top: "x" shuffle_channel_param { group: 2 }', (1, 8, 6, 6)),
    ('type: "PixelShuffle" bottom: "data" top: "x" pixelshuffle_param { upscale_factor: 2 }', (1, 2, 12, 12)),
    ('type: "Permute" bottom: "data" top: "x" permute_param { order: 0 order: 3 order: 1 }', (1, 6, 8, 6)),
    ('type: "Normalize" bottom: "data" top: "x"', (1, 8, 6, 6)),
    ('type: "BN" bottom: "data" top: "x"', (1, 8, 6, 6)),
])
def test_fork_layer_shapes(layer, shape):
    assert graph_of(f'layer {{ name: "x" {layer} }}').shapes["x"] == shape


@pytest.mark.parametrize("layer,expect", [
    ('type: "Permute" bottom: "data" top: "x" permute_param { order: 0 order: 4 }', "beyond"),
    ('type: "Permute" bottom: "data" top: "x" permute_param { order: 1 order: 1 }', "repeats"),
    ('type: "PriorBox" bottom: "data" bottom: "data" top: "x" prior_box_param { max_size: 4 }', "min_size"),
    ('type: "PriorBox" bottom: "data" bottom: "data" top: "x" prior_box_param { min_size: 4 max_size: 2 }',
     "greater"),
    ('type: "ShuffleChannel" bottom: "data" top: "x" shuffle_channel_param { group: 3 }', "divide"),
    ('type: "Upsample" bottom: "data" top: "x" upsample_param { scale: 0 }', "scale must be positive"),
])
def test_fork_layer_checks(layer, expect):
    with pytest.raises(RebirthError, match=expect):
        graph_of(f'layer {{ name: "x" {layer} }}')


def test_unknown_field_names_field_line_and_column(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(HEAD + 'layer {\n  name: "r" type: "ReLU" bottom: "data" top: "r"\n  relu_param { slope: 1 }\n}\n')
    with pytest.raises(RebirthError, match=r"net.prototxt:4:16: .*no field named \"slope\""):
        netio.read_net(path)


# ---------------------------------------------------------------------------------------------
# Unknown layer types: barriers


UNKNOWN = (HEAD + 'layer { name: "c1" type: "Convolution" bottom: "data" top: "c1" '
           'convolution_param { num_output: 8 kernel_size: 1 } }\n'
           'layer { name: "p1" type: "Pooling" bottom: "c1" top: "p1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
           'layer { name: "odd" type: "MyFancyLayer" bottom: "p1" top: "odd" }\n'
           'layer { name: "c2" type: "Convolution" bottom: "odd" top: "c2" '
           'convolution_param { num_output: 4 kernel_size: 1 } }\n'
           'layer { name: "p2" type: "Pooling" bottom: "c2" top: "p2" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
           'layer { name: "fc" type: "InnerProduct" bottom: "p2" top: "fc" inner_product_param { num_output: 5 } }\n')


def test_unknown_type_inspect_warns_and_succeeds(tmp_path):
    path = tmp_path / "u.prototxt"
    path.write_text(UNKNOWN)
    result = run("inspect", path)
    assert result.exit_code == 0, result.output
    assert "rebirth: warning: layer 'odd': unknown layer type 'MyFancyLayer'" in result.output
    assert "Traceback" not in result.output
    slimmed = run("slim", path, "--data-layer", "dummy", "-o", tmp_path / "out")  # builds many graphs
    assert slimmed.exit_code == 0, slimmed.output
    assert slimmed.output.count("rebirth: warning: layer 'odd'") == 1


def test_unknown_type_is_never_rewritten_across(tmp_path):
    from deeprebirth.transforms import slim
    model = load_model(_write(tmp_path, UNKNOWN))
    out = slim.slim(model, ["streamline"], data_layer="dummy")
    assert any("unknown layer type 'MyFancyLayer'" in w for w in model.warnings)     # carried, not issued
    assert out.result.warnings == model.warnings
    # c2 -> p2 lies below the barrier: left alone, with the reason naming the unknown layer
    names = [layer.name for layer in out.deploy.layer]
    assert "p1" not in names and names.count("odd") == 1 and "p2" in names  # above it: slimmed
    reasons = [s.reason for s in out.result.skips if s.substructure == "c2"]
    assert reasons and "layer 'odd' of unknown type 'MyFancyLayer'" in reasons[0]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------
# Legacy V0


V0 = '''name: "v0net"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 16 input_dim: 16
layers { layer { name: "pad1" type: "padding" pad: 2 } bottom: "data" top: "pad1" }
layers { layer { name: "conv1" type: "conv" num_output: 8 kernelsize: 5 stride: 1 biasterm: false
  weight_filler { type: "gaussian" std: 0.01 } blobs_lr: 1 } bottom: "pad1" top: "conv1" }
layers { layer { name: "relu1" type: "relu" } bottom: "conv1" top: "conv1" }
layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 3 stride: 2 } bottom: "conv1" top: "pool1" }
layers { layer { name: "norm1" type: "lrn" local_size: 3 alpha: 0.001 beta: 0.5 num_output: 3 } bottom: "pool1" top: "norm1" }
layers { layer { name: "fc" type: "innerproduct" num_output: 10 } bottom: "norm1" top: "fc" }
layers { layer { name: "prob" type: "softmax" } bottom: "fc" top: "prob" }
'''


def test_v0_net_is_upgraded_like_caffe():
    with pytest.warns(RebirthWarning, match="'norm1' \\(lrn\\): field 'num_output' does not apply"):
        net = netio.parse_net_text(V0, "v0.prototxt")
    layers = {layer.name: layer for layer in net.layer}
    assert list(layers) == ["conv1", "relu1", "pool1", "norm1", "fc", "prob"]  # padding folded away
    conv = layers["conv1"]
    assert conv.type == "Convolution" and list(conv.bottom) == ["data"]
    p = conv.convolution_param
    assert (p.num_output, list(p.kernel_size), list(p.pad), list(p.stride), p.bias_term) == (8, [5], [2], [1], False)
    assert p.weight_filler.type == "gaussian" and conv.param[0].lr_mult == 1
    assert layers["pool1"].pooling_param.pool == pb.PoolingParameter.AVE
    assert layers["norm1"].lrn_param.local_size == 3 and layers["norm1"].lrn_param.beta == pytest.approx(0.5)
    assert layers["fc"].type == "InnerProduct" and layers["fc"].inner_product_param.num_output == 10
    assert Graph(net).shapes["conv1"] == (1, 8, 16, 16)


def test_v0_unknown_type_and_bad_padding():
    with pytest.raises(RebirthError, match="unknown legacy type 'warp'"):
        netio.parse_net_text(V0.replace('type: "relu"', 'type: "warp"'))
    with pytest.raises(RebirthError, match="padding layer 'pad1' must feed one conv or pool"):
        netio.parse_net_text(V0.replace('type: "conv"', 'type: "relu"'))


# ---------------------------------------------------------------------------------------------
# Commands on fork nets (no Caffe needed)


def test_fold_bn_on_fork_nets(tmp_path):
    for path in (DENSENET, SSD):
        weights = weights_file(path, tmp_path)
        result = fold.fold_bn(fold.load(path, weights))
        assert result.changes
        kept = {layer.type for layer in result.model.net.layer}
        assert "BatchNorm" not in kept
        if path == SSD:  # the TEST-only DetectionOutput of an SSD deploy file is kept
            assert "DetectionOutput" in kept and "PriorBox" in kept


def test_slim_and_inspect_cli_on_densenet(tmp_path):
    weights = weights_file(DENSENET, tmp_path)
    result = run("slim", DENSENET, "--weights", weights, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    slim_net = netio.read_net(tmp_path / "out" / "deploy.prototxt")
    assert any(layer.pooling_param.HasField("ceil_mode") for layer in slim_net.layer if layer.type == "Pooling")
    assert run("inspect", DENSENET, "--weights", weights).exit_code == 0
    assert run("inspect", SSD).exit_code == 0


# ---------------------------------------------------------------------------------------------
# Against the engine


@pytest.mark.caffe
@pytest.mark.parametrize("path", [DENSENET, SSD], ids=["densenet", "mobilenet_ssd"])
def test_shapes_and_memory_equal_pycaffe(caffe, path):
    from deeprebirth.runtime.pycaffe import CaffeNet
    net = deploy(path)
    graph = Graph(net)
    cnet = CaffeNet(net)
    assert graph.shapes == cnet.blob_shapes()
    cnet.fill_inputs(0)
    cnet.forward()
    shapes = cnet.blob_shapes()
    if "detection_out" in shapes:  # the number of kept boxes is only known after NMS
        assert shapes.pop("detection_out")[-1] == 7
        graph_bytes = graph.memory_bytes - 7 * 4 + int(np.prod(cnet.net.blobs["detection_out"].data.shape)) * 4
    else:
        graph_bytes = graph.memory_bytes
    assert graph_bytes == cnet.allocated_bytes()


@pytest.mark.caffe
@pytest.mark.parametrize("path", [DENSENET, SSD], ids=["densenet", "mobilenet_ssd"])
@pytest.mark.slow
def test_fold_bn_verify_on_fork_nets(caffe, path, tmp_path):
    weights = weights_file(path, tmp_path)
    result = run("fold-bn", path, weights, "-o", tmp_path / "folded", "--verify")
    assert result.exit_code == 0, result.output
    assert "ok" in result.output


@pytest.mark.caffe
@pytest.mark.slow
def test_bench_on_fork_net(caffe):
    result = run("bench", SSD, "--runs", "1", "--warmup", "0", "--json")
    assert result.exit_code == 0, result.output
