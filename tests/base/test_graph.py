"""The layer DAG: versions of in-place blobs, order, cycles, shapes and memory as Caffe computes them."""
from __future__ import annotations

import pytest
from helpers import net_of

from deeprebirth.caffe import netio
from deeprebirth.errors import RebirthError
from deeprebirth.graph.dag import Graph
from deeprebirth.graph.geometry import conv_out, pool_out
from deeprebirth.transforms.rules import branch, streamline

DIMS = (2, 3, 17, 17)   # the input of the small nets


# Small nets in the style of public Model Zoo nets, each exercising many layer types and
# parameter forms. Every one is checked blob by blob against pycaffe.
ZOO = {
    "squeezenet_fire": """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 16 kernel_size: 3 stride: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "squeeze" type: "Convolution" bottom: "pool1" top: "squeeze" convolution_param { num_output: 8 kernel_size: 1 } }
layer { name: "squeeze_relu" type: "ReLU" bottom: "squeeze" top: "squeeze" }
layer { name: "e1" type: "Convolution" bottom: "squeeze" top: "e1" convolution_param { num_output: 8 kernel_size: 1 } }
layer { name: "e3" type: "Convolution" bottom: "squeeze" top: "e3" convolution_param { num_output: 8 pad: 1 kernel_size: 3 } }
layer { name: "fire" type: "Concat" bottom: "e1" bottom: "e3" top: "fire" }
layer { name: "drop" type: "Dropout" bottom: "fire" top: "fire" dropout_param { dropout_ratio: 0.5 } }
layer { name: "conv10" type: "Convolution" bottom: "fire" top: "conv10" convolution_param { num_output: 10 kernel_size: 1 } }
layer { name: "gap" type: "Pooling" bottom: "conv10" top: "gap" pooling_param { pool: AVE global_pooling: true } }
layer { name: "prob" type: "Softmax" bottom: "gap" top: "prob" }
""",
    "mobilenet_depthwise": """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 bias_term: false pad: 1 kernel_size: 3 stride: 2 } }
layer { name: "conv1/bn" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "conv1/scale" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2/dw" type: "Convolution" bottom: "conv1" top: "conv2/dw"
        convolution_param { num_output: 8 bias_term: false pad: 1 kernel_size: 3 group: 8 } }
layer { name: "conv2/dw/bn" type: "BatchNorm" bottom: "conv2/dw" top: "conv2/dw/bn" }
layer { name: "conv2/dw/scale" type: "Scale" bottom: "conv2/dw/bn" top: "conv2/dw/scale" scale_param { bias_term: true } }
layer { name: "conv2/sep" type: "Convolution" bottom: "conv2/dw/scale" top: "conv2/sep"
        convolution_param { num_output: 16 kernel_h: 1 kernel_w: 1 stride_h: 1 stride_w: 1 } }
layer { name: "prelu" type: "PReLU" bottom: "conv2/sep" top: "conv2/sep" }
layer { name: "pool" type: "Pooling" bottom: "conv2/sep" top: "pool" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "flat" type: "Flatten" bottom: "pool" top: "flat" }
layer { name: "fc" type: "InnerProduct" bottom: "flat" top: "fc" inner_product_param { num_output: 7 } }
""",
    "densenet_preact": """
layer { name: "conv0" type: "Convolution" bottom: "data" top: "conv0" convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "b1/bn" type: "BatchNorm" bottom: "conv0" top: "b1/bn" }
layer { name: "b1/scale" type: "Scale" bottom: "b1/bn" top: "b1/bn" scale_param { bias_term: true } }
layer { name: "b1/relu" type: "ReLU" bottom: "b1/bn" top: "b1/bn" }
layer { name: "b1/conv" type: "Convolution" bottom: "b1/bn" top: "b1/conv" convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "b1/drop" type: "Dropout" bottom: "b1/conv" top: "b1/conv" }
layer { name: "concat1" type: "Concat" bottom: "conv0" bottom: "b1/conv" top: "concat1" }
layer { name: "t/bn" type: "BatchNorm" bottom: "concat1" top: "t/bn" }
layer { name: "t/scale" type: "Scale" bottom: "t/bn" top: "t/bn" scale_param { bias_term: true } }
layer { name: "t/pool" type: "Pooling" bottom: "t/bn" top: "t/pool" pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layer { name: "t/sum" type: "Eltwise" bottom: "t/pool" bottom: "t/pool" top: "t/sum" eltwise_param { operation: SUM } }
layer { name: "fc" type: "InnerProduct" bottom: "t/sum" top: "fc" inner_product_param { num_output: 5 } }
""",
    "odd_geometry": """
layer { name: "dil" type: "Convolution" bottom: "data" top: "dil"
        convolution_param { num_output: 6 kernel_size: 3 dilation: 2 pad: 2 stride: 3 } }
layer { name: "rect" type: "Convolution" bottom: "data" top: "rect"
        convolution_param { num_output: 6 kernel_h: 5 kernel_w: 1 pad_h: 2 pad_w: 0 stride_h: 2 stride_w: 1 } }
layer { name: "deconv" type: "Deconvolution" bottom: "dil" top: "deconv"
        convolution_param { num_output: 4 kernel_size: 4 stride: 2 pad: 1 group: 2 } }
layer { name: "p1" type: "Pooling" bottom: "rect" top: "p1" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "crop" type: "Crop" bottom: "deconv" bottom: "p1" top: "crop" crop_param { axis: 2 offset: 1 } }
layer { name: "p2" type: "Pooling" bottom: "rect" top: "p2" top: "p2_mask" pooling_param { pool: MAX kernel_h: 2 kernel_w: 3 stride_h: 3 stride_w: 2 } }
layer { name: "slice" type: "Slice" bottom: "rect" top: "s1" top: "s2" top: "s3" slice_param { axis: 1 slice_point: 1 slice_point: 4 } }
layer { name: "even" type: "Slice" bottom: "rect" top: "h1" top: "h2" slice_param { axis: 1 } }
layer { name: "cat" type: "Concat" bottom: "s1" bottom: "s3" bottom: "h2" top: "cat" concat_param { axis: -3 } }
layer { name: "lrn" type: "LRN" bottom: "cat" top: "lrn" lrn_param { local_size: 3 norm_region: WITHIN_CHANNEL } }
layer { name: "reshape" type: "Reshape" bottom: "lrn" top: "reshape" reshape_param { shape { dim: 0 dim: -1 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "reshape" top: "ip" inner_product_param { num_output: 3 axis: 2 } }
layer { name: "sig" type: "Sigmoid" bottom: "ip" top: "sig" }
layer { name: "tanh" type: "TanH" bottom: "sig" top: "tanh" }
layer { name: "abs" type: "AbsVal" bottom: "tanh" top: "abs" }
layer { name: "pow" type: "Power" bottom: "abs" top: "pow" power_param { power: 2 } }
layer { name: "bnll" type: "BNLL" bottom: "pow" top: "bnll" }
layer { name: "elu" type: "ELU" bottom: "bnll" top: "elu" }
layer { name: "bias" type: "Bias" bottom: "elu" top: "biased" bias_param { axis: 1 num_axes: 1 } }
layer { name: "scale2" type: "Scale" bottom: "biased" bottom: "ip" top: "scaled" scale_param { axis: 0 } }
layer { name: "flat" type: "Flatten" bottom: "scaled" top: "flat" flatten_param { axis: 1 end_axis: 2 } }
layer { name: "split" type: "Split" bottom: "flat" top: "f1" top: "f2" }
layer { name: "soft" type: "Softmax" bottom: "f1" top: "soft" }
layer { name: "silence" type: "Silence" bottom: "f2" }
""",
}


@pytest.mark.parametrize("name", sorted(ZOO))
@pytest.mark.slow
def test_shapes_and_memory_match_pycaffe(name, caffe):
    from deeprebirth.runtime.pycaffe import CaffeNet
    net = net_of(ZOO[name], DIMS)
    graph = Graph(net)
    cnet = CaffeNet(net)
    cnet.fill_inputs()
    cnet.forward()
    assert graph.shapes == cnet.blob_shapes()
    assert graph.memory_bytes == cnet.allocated_bytes()
    ours = {n.name: n.param_shapes for n in graph.nodes if n.param_shapes}
    theirs = {k: [tuple(b.data.shape) for b in v] for k, v in cnet.net.params.items()}
    assert ours == theirs


@pytest.mark.parametrize("rel,batch", [("bvlc_googlenet/deploy.prototxt", None),
                                       ("bvlc_alexnet/deploy.prototxt", 1),
                                       ("resnet50/deploy.prototxt", 3)])
@pytest.mark.slow
def test_reference_nets_match_pycaffe(rel, batch, shared_models, caffe):
    from deeprebirth.runtime.pycaffe import CaffeNet
    net = netio.read_net(shared_models / rel)
    graph = Graph(net, batch=batch)
    cnet = CaffeNet(net)
    cnet.fill_inputs(batch=batch)
    cnet.forward()
    assert graph.shapes == cnet.blob_shapes()
    assert graph.memory_bytes == cnet.allocated_bytes()


def test_rounding_rules():
    # Caffe's pooling rounds up, convolution rounds down.
    assert pool_out(112, 3, 0, 2) == 56 and conv_out(112, 3, 0, 2) == 55
    # A padded pooling drops a last window that would start in the padding.
    assert pool_out(5, 2, 1, 2) == 3
    assert pool_out(4, 3, 1, 3) == 2
    assert pool_out(6, 3, 0, 2, ceil=False) == 2


def test_in_place_chain_has_versions():
    net = net_of(ZOO["mobilenet_depthwise"], DIMS)
    g = Graph(net)
    conv = g.node("conv1")
    assert conv.tops == [("conv1", 0)]
    assert [n.name for n in g.in_place_chain(conv)] == ["conv1/bn", "conv1/scale", "relu1"]
    assert g.node("relu1").bottoms == [("conv1", 2)] and g.node("relu1").tops == [("conv1", 3)]
    assert g.node("conv2/dw").bottoms == [("conv1", 3)]
    order = [n.name for n in g.topological_order()]
    assert order.index("relu1") < order.index("conv2/dw")


def test_costs_and_kinds():
    g = Graph(net_of(ZOO["squeezenet_fire"], (1, 3, 17, 17)))
    conv1 = g.node("conv1")
    assert conv1.kind == "tensor" and g.node("pool1").kind == "non-tensor"
    assert conv1.param_shapes == [(16, 3, 3, 3), (16,)]
    assert conv1.params == 16 * 27 + 16
    assert conv1.top_shapes == [(1, 16, 8, 8)]
    assert conv1.macs == 16 * 8 * 8 * 27
    assert g.node("fire").top_shapes == [(1, 16, 4, 4)]  # pooling 8 -> 4 rounds up
    assert g.node("gap").top_shapes == [(1, 10, 1, 1)]
    totals = g.totals()
    assert totals["tensor_layers"] == 5 and 0 < totals["non_tensor_mac_percent"] < 100


def test_candidates():
    # The structures the rules match (rules/streamline.py, rules/branch.py; the Graph itself no
    # longer has a notion of slimming candidates).
    g = Graph(net_of(ZOO["squeezenet_fire"], DIMS))
    streams = streamline.streamline_chains(g)
    assert streams[0]["layers"] == ["conv1", "relu1", "pool1"]
    branches = branch.branch_groups(g)
    assert branches == [{"name": "fire", "source": "squeeze", "concat": "fire",
                         "branches": [["e1"], ["e3"]]}] or branches[0]["branches"] == [["e1"], ["e3"]]


def test_googlenet_candidates(shared_models):
    g = Graph(netio.read_net(shared_models / "bvlc_googlenet" / "deploy.prototxt"))
    names = [c["head"] for c in streamline.streamline_chains(g)] + [c["name"] for c in branch.branch_groups(g)]
    assert names[:2] == ["conv1/7x7_s2", "conv2/3x3"]
    assert [n for n in names if n.startswith("inception")] == [
        "inception_3a", "inception_3b", "inception_4a", "inception_4b", "inception_4c",
        "inception_4d", "inception_4e", "inception_5a", "inception_5b"]
    block = next(c for c in branch.branch_groups(g) if c["name"] == "inception_3a")
    assert block["source"] == "pool2/3x3_s2" and len(block["branches"]) == 4


def test_missing_bottom_is_an_error():
    with pytest.raises(RebirthError, match="layer 'r' \\(ReLU\\): bottom 'nothing' is produced by no layer"):
        Graph(net_of('layer { name: "r" type: "ReLU" bottom: "nothing" top: "r" }', DIMS))


def test_unknown_type_is_a_barrier_with_a_warning():
    net = net_of('layer { name: "mystery" type: "FancyNewLayer" bottom: "data" top: "m" }\n'
                 'layer { name: "r" type: "ReLU" bottom: "m" top: "r" }', DIMS)
    g = Graph(net)   # the warning is carried on the graph (the cli prints it), not issued
    assert len(g.warnings) == 1 and "layer 'mystery': unknown layer type 'FancyNewLayer'" in g.warnings[0]
    assert g.shapes["r"] is None and [n.name for n in g.barriers] == ["mystery"]
    assert g.unknown_cause(g.node("r")).name == "mystery"
    with pytest.raises(RebirthError, match="layer 'r' \\(ReLU\\): fusing needs its output shape, but it "
                                           "depends on layer 'mystery' of unknown type 'FancyNewLayer'"):
        g.require_shapes(g.node("r"), "fusing")


def test_cycle_is_detected():
    net = net_of('layer { name: "a" type: "Eltwise" bottom: "data" bottom: "b" top: "a" }\n'
                 'layer { name: "b" type: "ReLU" bottom: "a" top: "b" }', DIMS)
    with pytest.raises(RebirthError, match="cycle"):
        Graph(net)


def test_crop_out_of_bounds_is_an_error():
    with pytest.raises(RebirthError, match="layer 'crop' \\(Crop\\): .*out of bounds"):
        Graph(net_of('layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { kernel_size: 2 stride: 2 } }\n'
                     'layer { name: "crop" type: "Crop" bottom: "p" bottom: "data" top: "crop" crop_param { axis: 2 } }', DIMS))


def test_shape_errors_name_the_layer():
    with pytest.raises(RebirthError, match="layer 'cat' \\(Concat\\)"):
        Graph(net_of('layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { kernel_size: 2 stride: 2 } }\n'
                     'layer { name: "cat" type: "Concat" bottom: "data" bottom: "p" top: "cat" }', DIMS))
    with pytest.raises(RebirthError, match="divisible by group"):
        Graph(net_of('layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
                     'convolution_param { num_output: 4 kernel_size: 1 group: 2 } }', DIMS))


def test_batch_override(shared_models):
    net = netio.read_net(shared_models / "bvlc_googlenet" / "deploy.prototxt")
    g1, g10 = Graph(net, batch=1), Graph(net)
    assert g1.shapes["prob"] == (1, 1000) and g10.shapes["prob"] == (10, 1000)
    assert g10.memory_bytes == 10 * g1.memory_bytes


def test_floor_round_mode_matches_engine(caffe):
    from deeprebirth.runtime.pycaffe import CaffeNet
    net = net_of('layer { name: "p" type: "Pooling" bottom: "data" top: "p" '
                 'pooling_param { pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR } }\n'
                 'layer { name: "q" type: "Pooling" bottom: "data" top: "q" '
                 'pooling_param { pool: MAX kernel_size: 3 stride: 2 } }', (1, 1, 8, 8))
    g = Graph(net)
    assert g.shapes["p"] == (1, 1, 3, 3) and g.shapes["q"] == (1, 1, 4, 4)
    assert CaffeNet(net).blob_shapes() == g.shapes


def test_graph_modules_import_each_other_without_a_cycle():
    """kinds and geometry at the bottom, then shapes, costs, dag, model: no module of graph/ reaches
    itself through its imports (function-level ones included)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "deeprebirth" / "graph"
    uses = {}
    for path in root.glob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("deeprebirth.graph"):
                names.add(node.module.split(".")[2] if node.module.count(".") >= 2 else None)
                names.update(a.name for a in node.names if node.module == "deeprebirth.graph")
        uses[path.stem] = {n for n in names if n and n != path.stem and (root / f"{n}.py").exists()}

    def reaches(start, target, seen=()):
        return any(n == target or (n not in seen and reaches(n, target, (*seen, n))) for n in uses[start])

    assert uses["dag"] >= {"shapes", "costs", "kinds"}, uses   # the parse sees the imports
    assert not [m for m in uses if m != "__init__" and reaches(m, m)], uses
    assert "dag" not in uses["shapes"] and "dag" not in uses["costs"]


def test_dropout_ratio_outside_0_1_is_one_line_not_a_caffe_abort():
    from deeprebirth.caffe import netio
    from deeprebirth.errors import RebirthError
    head = 'layer { name: "d" type: "Input" top: "x" input_param { shape { dim: 1 dim: 4 } } }\n'
    for ratio in ("nan", "-0.5", "1.5"):
        net = netio.parse_net_text(head + 'layer { name: "drop" type: "Dropout" bottom: "x" top: "x" '
                                   f'dropout_param {{ dropout_ratio: {ratio} }} }}\n')
        with pytest.raises(RebirthError, match="'drop' \\(Dropout\\): dropout_ratio must be in \\[0, 1\\]"):
            Graph(net)
    ok = netio.parse_net_text(head + 'layer { name: "drop" type: "Dropout" bottom: "x" top: "x" }\n')
    assert Graph(ok).shapes["x"] == (1, 4)


def test_split_in_place_is_one_line_not_a_caffe_abort():
    from deeprebirth.caffe import netio
    from deeprebirth.errors import RebirthError
    net = netio.parse_net_text('layer { name: "d" type: "Input" top: "x" input_param { shape { dim: 1 dim: 4 } } }\n'
                               'layer { name: "s" type: "Split" bottom: "x" top: "x" }\n')
    with pytest.raises(RebirthError, match="'s' \\(Split\\): cannot compute in place"):
        Graph(net)
