"""fold-bn: BatchNorm / Scale / Bias folded into the tensor layer before them (paper Lemma 2).

Every rewrite is checked against real Caffe: the original and the folded net run in pycaffe on the
same random inputs and must agree within 1e-5 relative (max|a - b| / max|a|). Small nets are
written inline; the ResNet-50 check uses the public deploy prototxt with random weights whose
BatchNorm statistics are realistic (s != 1, gamma/beta away from 1/0).
"""
from __future__ import annotations

import numpy as np
import pytest
from helpers import bn, conv, error_line, get_layer, input_layer, relu, run, scale, types, with_weights

from deeprebirth.caffe import netio
from deeprebirth.errors import RebirthError
from deeprebirth.graph.model import Model, load_model
from deeprebirth.runtime import verify
from deeprebirth.transforms import fold

TOL = 1e-5
NORMS = {"BatchNorm", "Scale", "Bias"}
INPUT = input_layer((2, 4, 7, 7))   # of the small nets


def model_of(text: str, seed: int = 0) -> Model:
    return with_weights(netio.parse_net_text(text, "test.prototxt"), seed, "test.prototxt", "test.caffemodel")


def assert_same_outputs(original: Model, folded: Model, blobs=()) -> verify.Verification:
    check = verify.compare(original, folded, seed=1, blobs=blobs)
    assert check.blobs
    assert check.max_rel <= TOL, check.format(TOL)
    return check


def assert_untouched_identical(original: Model, result) -> None:
    touched = {n for c in result.changes for n in c.removed + c.modified}
    for name, arrays in original.weights.items():
        if name in touched:
            continue
        after = result.model.weights[name]
        assert len(after) == len(arrays)
        for a, b in zip(arrays, after):
            assert a.dtype == b.dtype == np.float32 and a.shape == b.shape and a.tobytes() == b.tobytes(), name


# ---------------------------------------------------------------------------------------------
# ResNet-50 (public deploy prototxt, random weights with realistic statistics)


@pytest.fixture(scope="module")
def resnet(caffe, shared_models):
    net = netio.strip_weights(netio.read_net(shared_models / "resnet50/deploy.prototxt"))
    original = with_weights(net, 0, "resnet50", "random")
    return original, fold.fold_bn(original)


@pytest.mark.slow
def test_resnet50_folds_every_batchnorm_and_scale(resnet):
    original, result = resnet
    before = types(original.net)
    assert before.count("BatchNorm") == 53 and before.count("Scale") == 53
    after = types(result.model.net)
    assert not NORMS & set(after)
    assert len(after) == len(before) - 106
    assert not result.skips
    for c in result.changes:
        assert c.exact and get_layer(result.model.net, c.substructure).type == "Convolution"
        assert get_layer(result.model.net, c.substructure).convolution_param.bias_term


@pytest.mark.slow
def test_resnet50_outputs_equal_in_caffe(resnet):
    original, result = resnet
    check = assert_same_outputs(original, result.model, blobs=["fc1000"])
    names = {d.name for d in check.blobs}
    # the outputs, the pre-softmax scores and every blob both nets keep (e.g. each residual sum)
    assert {"prob", "fc1000", "res2a", "res5c", "pool5"} <= names and len(names) > 100


def test_resnet50_untouched_weights_bit_identical(resnet):
    original, result = resnet
    assert_untouched_identical(original, result)
    assert "fc1000" in result.model.weights  # the one parameterised layer not followed by BatchNorm
    # the input model is not modified
    assert types(original.net).count("BatchNorm") == 53 and "bn_conv1" in original.weights


# ---------------------------------------------------------------------------------------------
# Each semantic case on a small net, checked in pycaffe


@pytest.mark.slow
def test_conv_without_bias_gains_one_in_place(caffe):
    text = (INPUT + conv("conv", "data", 4, 3, 1, top="c", extra="bias_term: false") + bn("bn", "c", "c")
            + scale("sc", "c", "c") + relu("relu", "c", "c"))
    original = model_of(text)
    result = fold.fold_bn(original)
    assert types(result.model.net) == ["Input", "Convolution", "ReLU"]
    folded_conv = get_layer(result.model.net, "conv")
    assert folded_conv.convolution_param.bias_term and list(folded_conv.top) == ["c"]
    assert [a.shape for a in result.model.weights["conv"]] == [(4, 4, 3, 3), (4,)]
    assert all(a.dtype == np.float32 for a in result.model.weights["conv"])
    assert result.changes[0].removed == ["bn", "sc"] and result.changes[0].modified == ["conv"]
    assert_same_outputs(original, result.model)


@pytest.mark.slow
def test_conv_with_bias_and_scale_without_bias(caffe):
    text = INPUT + conv("conv", "data", 4, 3, 1, top="c") + bn("bn", "c", "c") + scale("sc", "c", "c", bias=False)
    original = model_of(text)
    result = fold.fold_bn(original)
    assert types(result.model.net) == ["Input", "Convolution"]
    assert_same_outputs(original, result.model)


def test_math_matches_lemma_2_with_caffe_statistics():
    """W~ = eta W, B~ = eta B + beta - eta mu, eta = gamma / sqrt(var + eps), statistics = blob / s."""
    text = input_layer((1, 2, 3, 3)) + conv("conv", "data", 3, 3, 1, top="c") + bn("bn", "c", "c",
                                                                     "batch_norm_param { eps: 0.001 }") \
        + scale("sc", "c", "c")
    original = model_of(text, seed=3)
    w, b = (a.astype(np.float64) for a in original.weights["conv"])
    m, v, s = (a.astype(np.float64) for a in original.weights["bn"])
    g, beta = (a.astype(np.float64) for a in original.weights["sc"])
    eps = float(np.float32(0.001))
    mu, var = m / s[0], v / s[0]
    eta = g / np.sqrt(var + eps)
    result = fold.fold_bn(original)
    w2, b2 = result.model.weights["conv"]
    np.testing.assert_array_equal(w2, (eta[:, None, None, None] * w).astype(np.float32))
    np.testing.assert_array_equal(b2, (eta * b + beta - eta * mu).astype(np.float32))


@pytest.mark.slow
def test_out_of_place_chain_writes_the_last_top(caffe):
    text = (INPUT + conv("conv", "data", 4, 3, 1, top="conv_out") + bn("bn", "conv_out", "bn_out")
            + scale("sc", "bn_out", "scale_out") + relu("relu", "scale_out", "relu_out"))
    original = model_of(text)
    result = fold.fold_bn(original)
    assert types(result.model.net) == ["Input", "Convolution", "ReLU"]
    assert list(get_layer(result.model.net, "conv").top) == ["scale_out"]
    assert list(get_layer(result.model.net, "relu").bottom) == ["scale_out"]
    assert_same_outputs(original, result.model, blobs=["scale_out"])


@pytest.mark.slow
def test_mixed_in_place_and_out_of_place(caffe):
    text = (INPUT + conv("conv", "data", 4, 3, 1, top="c") + bn("bn", "c", "c") + scale("sc", "c", "s")
            + relu("relu", "s", "s"))
    original = model_of(text)
    result = fold.fold_bn(original)
    assert types(result.model.net) == ["Input", "Convolution", "ReLU"]
    assert list(get_layer(result.model.net, "conv").top) == ["s"]
    assert_same_outputs(original, result.model, blobs=["s"])


@pytest.mark.slow
def test_batchnorm_without_scale_and_custom_eps(caffe):
    text = INPUT + conv("conv", "data", 4, 3, 1, top="c") + bn("bn", "c", "c", "batch_norm_param { eps: 0.01 }") \
        + relu("relu", "c", "c")
    original = model_of(text)
    result = fold.fold_bn(original)
    assert types(result.model.net) == ["Input", "Convolution", "ReLU"]
    assert_same_outputs(original, result.model)


@pytest.mark.parametrize("tail", [
    scale("sc", "c", "c"),                                                    # Scale alone
    scale("sc", "c", "c", bias=False),
    'layer { name: "bias" type: "Bias" bottom: "c" top: "c" }\n',             # Bias alone
    bn("bn", "c", "c") + scale("sc", "c", "c", bias=False)
    + 'layer { name: "bias" type: "Bias" bottom: "c" top: "c" }\n',         # BN, Scale, Bias
], ids=["scale", "scale-no-bias", "bias", "bn-scale-bias"])
@pytest.mark.slow
def test_scale_or_bias_without_batchnorm(caffe, tail):
    original = model_of(INPUT + conv("conv", "data", 4, 3, 1, top="c") + tail)
    result = fold.fold_bn(original)
    assert types(result.model.net) == ["Input", "Convolution"]
    assert_same_outputs(original, result.model)


@pytest.mark.slow
def test_batchnorm_with_zero_scale_factor_uses_zero_statistics(caffe):
    text = INPUT + conv("conv", "data", 4, 3, 1, top="c") + bn("bn", "c", "c") + scale("sc", "c", "c")
    original = model_of(text)
    mean, var, _ = original.weights["bn"]
    original.weights["bn"] = [mean + 5, var + 5, np.zeros(1, np.float32)]   # s == 0: ignore the sums
    result = fold.fold_bn(original)
    g = original.weights["sc"][0].astype(np.float64)
    w = original.weights["conv"][0].astype(np.float64)
    eta = g / np.sqrt(0 + float(np.float32(1e-5)))
    np.testing.assert_array_equal(result.model.weights["conv"][0],
                                  (eta[:, None, None, None] * w).astype(np.float32))
    assert_same_outputs(original, result.model)


@pytest.mark.parametrize("group,n", [(2, 6), (4, 4)], ids=["grouped", "depthwise"])
@pytest.mark.slow
def test_grouped_and_depthwise_convolution(caffe, group, n):
    text = (INPUT + conv("conv", "data", n, 3, 1, top="c", extra=f"group: {group} bias_term: false")
            + bn("bn", "c", "c") + scale("sc", "c", "c"))
    original = model_of(text)
    result = fold.fold_bn(original)
    assert types(result.model.net) == ["Input", "Convolution"]
    assert result.model.weights["conv"][0].shape == (n, 4 // group, 3, 3)
    assert_same_outputs(original, result.model)


@pytest.mark.parametrize("extra", ["", "bias_term: false", "transpose: true"])
@pytest.mark.slow
def test_inner_product(caffe, extra):
    text = (input_layer((3, 4, 2, 2)) + 'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
            f'inner_product_param {{ num_output: 5 {extra} }} }}\n'
            + bn("bn", "fc", "fc") + scale("sc", "fc", "fc"))
    original = model_of(text)
    result = fold.fold_bn(original)
    assert types(result.model.net) == ["Input", "InnerProduct"]
    assert get_layer(result.model.net, "fc").inner_product_param.bias_term
    assert_same_outputs(original, result.model)


@pytest.mark.parametrize("group,n", [(1, 6), (2, 6), (4, 4)], ids=["plain", "grouped", "depthwise"])
@pytest.mark.slow
def test_deconvolution_channels_on_second_axis(caffe, group, n):
    text = (INPUT + conv("up", "data", n, 3, 1, 2, top="u", kind="Deconvolution",
                                                 extra=f"group: {group} bias_term: false")
            + bn("bn", "u", "u") + scale("sc", "u", "u"))
    original = model_of(text)
    assert original.weights["up"][0].shape == (4, n // group, 3, 3)
    result = fold.fold_bn(original)
    assert types(result.model.net) == ["Input", "Deconvolution"]
    assert_same_outputs(original, result.model)


# ---------------------------------------------------------------------------------------------
# Guards and the no-tensor-layer case


@pytest.mark.slow
def test_pre_normalisation_blob_with_another_reader_is_not_folded(caffe):
    # (The in-place form, a layer reading 'c' before an in-place BatchNorm, is refused by Caffe
    # itself: "Top blob 'c' produced by multiple sources".)
    text = (INPUT + conv("conv", "data", 4, 3, 1, top="c") + bn("bn", "c", "b") + scale("sc", "b", "b")
            + 'layer { name: "sum" type: "Eltwise" bottom: "c" bottom: "b" top: "sum" }\n')
    original = model_of(text)
    result = fold.fold_bn(original)
    assert len(result.skips) == 1 and result.skips[0].substructure == "conv"
    assert "also read by" in result.skips[0].reason
    # BatchNorm + Scale still become one Scale layer (exact); the convolution is untouched.
    assert types(result.model.net) == ["Input", "Convolution", "Scale", "Eltwise"]
    assert get_layer(result.model.net, "sc").scale_param.bias_term
    assert_untouched_identical(original, result)
    assert "conv" not in {n for c in result.changes for n in c.modified}
    assert_same_outputs(original, result.model)


@pytest.mark.slow
def test_scale_with_second_bottom_is_left_alone(caffe):
    text = (INPUT + input_layer((2, 4), "gate") + conv("conv", "data", 4, 3, 1, top="c") + bn("bn", "c", "c")
            + 'layer { name: "se" type: "Scale" bottom: "c" bottom: "gate" top: "c" scale_param { axis: 0 } }\n')
    original = model_of(text)
    result = fold.fold_bn(original)
    assert types(result.model.net) == ["Input", "Input", "Convolution", "Scale"]
    assert [s.substructure for s in result.skips] == ["se"]
    assert "second bottom" in result.skips[0].reason
    assert_same_outputs(original, result.model)


@pytest.mark.parametrize("params", ["num_axes: 3", "axis: 0 num_axes: 2", "num_axes: 0"])
@pytest.mark.slow
def test_scale_with_non_default_axes_is_left_alone(caffe, params):
    text = INPUT + conv("conv", "data", 4, 3, 1, top="c") + scale("sc", "c", "c", extra=params)
    original = model_of(text)
    result = fold.fold_bn(original)
    assert types(result.model.net) == ["Input", "Convolution", "Scale"]
    assert [s.substructure for s in result.skips] == ["sc"] and "axis" in result.skips[0].reason
    assert not result.changes
    assert_same_outputs(original, result.model)


@pytest.mark.slow
def test_pre_activation_batchnorm_becomes_one_scale(caffe):
    """DenseNet-style: BatchNorm + Scale on a Concat (and on the input) -> one Scale with bias each."""
    text = (INPUT + bn("bn1", "data", "n1") + scale("sc1", "n1", "n1") + relu("r1", "n1", "n1")
            + conv("conv", "n1", 4, 3, 1, top="c")
            + 'layer { name: "cat" type: "Concat" bottom: "data" bottom: "c" top: "cat" }\n'
            + bn("bn2", "cat", "n2") + scale("sc2", "n2", "n2") + relu("r2", "n2", "n2")
            + bn("bn3", "n2", "n2"))
    original = model_of(text)
    result = fold.fold_bn(original)
    assert types(result.model.net) == ["Input", "Scale", "ReLU", "Convolution", "Concat", "Scale", "ReLU", "Scale"]
    assert [x.name for x in result.model.net.layer if x.type == "Scale"] == ["sc1", "sc2", "bn3"]
    assert [(c.removed, c.modified) for c in result.changes] == [
        (["bn1"], ["sc1"]), (["bn2"], ["sc2"]), ([], ["bn3"])]
    assert "bn1 (BatchNorm), sc1 (Scale) replaced by one Scale layer 'sc1'" in result.changes[0].notes[0]
    for name in ("sc1", "sc2", "bn3"):
        assert get_layer(result.model.net, name).scale_param.bias_term
        assert [a.shape for a in result.model.weights[name]] == [(original.weights["bn1"][0].shape[0]
                                                                  if name == "sc1" else 8,)] * 2
    sc1 = get_layer(result.model.net, "sc1")
    assert list(sc1.bottom) == ["data"] and list(sc1.top) == ["n1"]
    assert_untouched_identical(original, result)
    assert_same_outputs(original, result.model, blobs=["n1", "n2"])


def test_folding_twice_changes_nothing(caffe):
    text = INPUT + conv("conv", "data", 4, 3, 1, top="c") + bn("bn", "c", "c") + scale("sc", "c", "c")
    once = fold.fold_bn(model_of(text)).model
    twice = fold.fold_bn(once)
    assert not twice.changes and types(twice.model.net) == types(once.net)


# ---------------------------------------------------------------------------------------------
# Bad input: one-line RebirthError naming the layer


SIMPLE = INPUT + conv("conv", "data", 4, 3, 1, top="c") + bn("bn", "c", "c") + scale("sc", "c", "c")


@pytest.mark.parametrize("variance,words", [(-0.5, "negative variance"), (0.0, None)])
def test_variance_checks(variance, words):
    original = model_of(SIMPLE)
    mean, var, s = original.weights["bn"]
    var = var.copy()
    var[2] = variance
    original.weights["bn"] = [mean, var, s]
    if words is None:   # zero variance is valid in Caffe (eps > 0): folded exactly
        fold.fold_bn(original)
        return
    with pytest.raises(RebirthError, match=r"layer 'bn' \(BatchNorm\): channel 2 has a negative variance"):
        fold.fold_bn(original)


def test_zero_variance_and_zero_eps_divides_by_zero():
    original = model_of(INPUT + conv("conv", "data", 4, 3, 1, top="c")
                        + bn("bn", "c", "c", "batch_norm_param { eps: 0 }"))
    mean, var, s = original.weights["bn"]
    original.weights["bn"] = [mean, np.zeros_like(var), s]
    with pytest.raises(RebirthError, match="layer 'bn'.*divides by zero"):
        fold.fold_bn(original)


def test_missing_weights_for_a_folded_layer():
    original = model_of(SIMPLE)
    del original.weights["sc"]
    with pytest.raises(RebirthError, match=r"layer 'sc' \(Scale\) has no weights"):
        fold.fold_bn(original)


def test_mismatched_weights():
    original = model_of(SIMPLE)
    original.weights["bn"] = [a[:3] if a.size == 4 else a for a in original.weights["bn"]]
    with pytest.raises(RebirthError, match="layer 'bn' blob 0"):
        fold.fold_bn(original)


def test_training_nets_are_refused():
    with pytest.raises(RebirthError, match="TRAIN phase"):
        fold.check_inference_net(netio.parse_net_text("state { phase: TRAIN }\n" + SIMPLE), "t.prototxt")
    with pytest.raises(RebirthError, match="train/test net"):
        fold.check_inference_net(netio.parse_net_text(
            SIMPLE + 'layer { name: "acc" type: "Accuracy" bottom: "c" bottom: "c" top: "a" '
                     'include { phase: TRAIN } }\n'), "t.prototxt")
    # TEST-only layers alone are fine: SSD deploy files mark DetectionOutput so.
    fold.check_inference_net(netio.parse_net_text(
        SIMPLE + 'layer { name: "r" type: "ReLU" bottom: "c" top: "r" include { phase: TEST } }\n'), "t.prototxt")
    text = (INPUT + conv("conv", "data", 4, 3, 1, top="c")
            + bn("bn", "c", "c", "batch_norm_param { use_global_stats: false }"))
    with pytest.raises(RebirthError, match="layer 'bn' .*use_global_stats: false"):
        fold.fold_bn(model_of(text))


# ---------------------------------------------------------------------------------------------
# CLI


def write_inputs(tmp_path, text, weights_text=None, edit=None):
    """A prototxt and a caffemodel (from ``weights_text``'s net, default ``text``) in tmp_path."""
    proto = tmp_path / "deploy.prototxt"
    proto.write_text(text)
    src = model_of(weights_text or text)
    if edit:
        edit(src.weights)
    caffemodel = tmp_path / "in.caffemodel"
    netio.write_weights(netio.with_weights(src.net, src.weights), caffemodel)
    return proto, caffemodel


@pytest.mark.slow
def test_cli_writes_folded_net_and_verifies(caffe, tmp_path):
    text = SIMPLE + relu("relu", "c", "c")
    proto, caffemodel = write_inputs(tmp_path, text)
    out = tmp_path / "out"
    res = run("fold-bn", proto, caffemodel, "-o", out, "--verify")
    assert res.exit_code == 0, res.output
    assert "bn (BatchNorm), sc (Scale) folded into conv (Convolution)" in res.stdout
    assert "layers: 5 -> 3 (removed: 1 BatchNorm, 1 Scale)" in res.stdout and "ok" in res.stdout
    assert sorted(p.name for p in out.iterdir() if p.name != ".rebirth") == ["deploy.prototxt", "weights.caffemodel"]
    folded = load_model(out / "deploy.prototxt", out / "weights.caffemodel")
    assert types(folded.net) == ["Input", "Convolution", "ReLU"]
    expected = fold.fold_bn(load_model(proto, caffemodel)).model.weights["conv"]
    for a, b in zip(folded.weights["conv"], expected):
        assert a.tobytes() == b.tobytes()


def test_cli_help_names_the_relative_difference():
    res = run("fold-bn", "--help")
    assert res.exit_code == 0 and "max|a - b| / max|a|" in res.output


def no_output(res, out, *words):
    line = error_line(res, stream="stderr")
    for w in words:
        assert w in line
    assert not out.exists() or not any(out.iterdir())


def test_cli_mismatched_weights(tmp_path):
    other = INPUT + conv("conv", "data", 6, 3, 1, top="c") + bn("bn", "c", "c") + scale("sc", "c", "c")
    proto, caffemodel = write_inputs(tmp_path, SIMPLE, weights_text=other)
    out = tmp_path / "out"
    no_output(run("fold-bn", proto, caffemodel, "-o", out), out, "in.caffemodel", "layer 'conv'")


def test_cli_missing_weights(tmp_path):
    proto, caffemodel = write_inputs(tmp_path, SIMPLE, edit=lambda w: w.pop("bn"))
    out = tmp_path / "out"
    no_output(run("fold-bn", proto, caffemodel, "-o", out), out, "layer 'bn'", "no weights")


def test_cli_negative_variance(tmp_path):
    def negate(w):
        w["bn"][1] = -np.abs(w["bn"][1])
    proto, caffemodel = write_inputs(tmp_path, SIMPLE, edit=negate)
    out = tmp_path / "out"
    no_output(run("fold-bn", proto, caffemodel, "-o", out), out, "layer 'bn'", "negative variance")


def test_cli_refuses_a_training_net(tmp_path):
    proto, caffemodel = write_inputs(tmp_path, SIMPLE)
    proto.write_text("state { phase: TRAIN }\n" + SIMPLE)
    out = tmp_path / "out"
    no_output(run("fold-bn", proto, caffemodel, "-o", out), out, "TRAIN", "deploy")


@pytest.mark.slow
def test_cli_failed_verification_writes_nothing(caffe, tmp_path):
    proto, caffemodel = write_inputs(tmp_path, SIMPLE)
    out = tmp_path / "out"
    res = run("fold-bn", proto, caffemodel, "-o", out, "--verify", "--tolerance", "0")
    no_output(res, out, "verification failed", "tolerance 0")
    assert "FAILED" in res.stdout
