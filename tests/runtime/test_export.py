"""`rebirth export` to ONNX, ncnn and MNN, checked against pycaffe blob by blob (issue 16).

Small nets run in this process (runtime.verify._compare_export_here: Caffe and the engine on the
same input); the CLI and the built-in models run as a user would (`export --verify`, a child process)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from helpers import (
    DATA,
    bn,
    concat,
    conv,
    dropout,
    error_line,
    ip,
    layer,
    lrn,
    net_of,
    pool,
    relu,
    run,
    scale,
    with_weights,
)

from deeprebirth.runtime import export, verify

pytestmark = pytest.mark.caffe
FORMATS = ("onnx", "ncnn", "mnn")
TOL = 1e-4


def check(model, fmt: str, min_blobs: int = 1):
    files = export.export(model, fmt)
    result = verify._compare_export_here(model, fmt, files, 0)
    assert len(result.blobs) >= min_blobs, result.format()
    assert result.passed(TOL), result.format(TOL)
    return result


def pool_net(size: int, extra_layers: str):
    return with_weights(net_of(conv("c", "data", n=3, k=1) + extra_layers, [1, 2, size, size]))


# Caffe's pooling semantics, case by case. Each: (input size, layers); the comment says what it checks.
POOLS = {
    # 8x8, 3x3/2: Caffe rounds up to 4x4 (ONNX's default floor: 3x3)
    "ceil": (8, pool("p", "c", k=3, stride=2)),
    # 5x5, 2x2/2 pad 1: ceil gives 4, but the 4th window would start in the padding: Caffe drops it (3x3)
    "ceil_dropped_window": (5, pool("p", "c", k=2, stride=2, pad=1)),
    # average 3x3/1 pad 1: Caffe counts the padding in the divisor
    "avg_pad": (7, pool("p", "c", k=3, stride=1, pad=1, method="AVE")),
    # average 3x3/2 pad 1 on 8: the last window reaches past the padding; Caffe divides by the clipped window
    "avg_pad_tail": (8, pool("p", "c", k=3, stride=2, pad=1, method="AVE")),
    # average 2x2/2 on 9, no padding: the last window holds one input column
    "avg_tail_no_pad": (9, pool("p", "c", k=2, stride=2, method="AVE")),
    "global_avg": (6, layer("p", "Pooling", ["c"], extra="pooling_param { pool: AVE global_pooling: true }")),
    "global_max": (6, layer("p", "Pooling", ["c"], extra="pooling_param { pool: MAX global_pooling: true }")),
    "floor": (8, pool("p", "c", k=3, stride=2, extra="round_mode: FLOOR")),
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", sorted(POOLS))
def test_pooling_matches_caffe(caffe, case, fmt):
    size, body = POOLS[case]
    m = pool_net(size, body)
    if fmt == "ncnn" and case == "avg_pad_tail":
        with pytest.raises(Exception, match="layer 'p'.*reaches past the padding"):
            export.export(m, fmt)
        return
    result = check(m, fmt)
    assert "p" in {d.name for d in result.blobs}


# Most layer types inspect knows, with their options (ONNX expresses all of these).
MANY = (conv("c1", "data", n=4, k=3, pad=1, extra="group: 2 dilation: 2") + relu("r1", "c1", slope=0.1)
        + bn("bn1", "c1", "c1") + scale("s1", "c1", "c1")
        + conv("dw", "c1", n=4, k=3, pad=1, extra="group: 4") + layer("pr", "PReLU", ["dw"], "dw")
        + layer("de", "Deconvolution", ["dw"], extra="convolution_param { num_output: 2 kernel_size: 2 stride: 2 }")
        + pool("pd", "de", k=2, stride=2) + layer("el", "ELU", ["pd"], extra="elu_param { alpha: 0.5 }")
        + layer("sg", "Sigmoid", ["c1"], "sg") + layer("th", "TanH", ["dw"], "th")
        + layer("pw", "Power", ["th"], extra="power_param { power: 2 scale: 0.5 shift: 1 }")
        + lrn("n1", "sg") + layer("n2", "LRN", ["pw"], extra="lrn_param { local_size: 3 alpha: 0.01 beta: 0.75 "
                                                              "norm_region: WITHIN_CHANNEL }")
        + layer("e1", "Eltwise", ["n1", "n2"], extra="eltwise_param { operation: SUM coeff: 0.5 coeff: -2 }")
        + layer("e2", "Eltwise", ["n1", "n2"], extra="eltwise_param { operation: PROD }")
        + layer("e3", "Eltwise", ["e1", "e2"], extra="eltwise_param { operation: MAX }")
        + concat("cat", ["e3", "el", "el"])
        + layer("sl", "Slice", ["cat"], extra='top: "sl_b" slice_param { axis: 1 slice_point: 3 }')
        + dropout("dr", "sl") + layer("fl", "Flatten", ["sl"])
        + ip("fc", "fl", n=6) + layer("fc2", "InnerProduct", ["sl_b"], extra="inner_product_param { num_output: 3 "
                                                                                "transpose: true }")
        + layer("sm", "Softmax", ["fc"]) + layer("rs", "Reshape", ["fc2"], extra="reshape_param { shape { dim: 0 "
                                                                                 "dim: 3 dim: 1 } }"))
BIASED = MANY + layer("b", "Bias", ["rs"], extra="bias_param { axis: 1 num_axes: 1 }")


def test_many_layer_types_onnx(caffe):
    m = with_weights(net_of(BIASED, [1, 4, 8, 8]))
    result = check(m, "onnx", min_blobs=20)
    assert {"c1", "e1", "e2", "e3", "fc", "sm", "sl_b"} <= {d.name for d in result.blobs}


@pytest.mark.parametrize("fmt", ["ncnn", "mnn"])
def test_many_layer_types_ncnn_mnn(caffe, fmt):
    m = with_weights(net_of(MANY, [1, 4, 8, 8]))
    check(m, fmt, min_blobs=3 if fmt == "mnn" else 20)


def test_onnx_names_checks_and_opset(caffe):
    import onnx
    m = pool_net(8, relu("r", "c") + pool("p", "c", k=3, stride=2))
    proto = onnx.load_from_string(export.export(m, "onnx")["model.onnx"])
    onnx.checker.check_model(proto)
    assert [o.version for o in proto.opset_import] == [13]
    assert [o.name for o in proto.graph.output] == ["p"]
    tensors = {t for n in proto.graph.node for t in n.output}
    assert {"c#0", "c", "p"} <= tensors    # the in-place ReLU's input is a version of 'c', its output 'c'
    assert {n.name for n in proto.graph.node} >= {"c", "r", "p"}


def test_mnn_export_starts_no_process_and_opens_no_socket(caffe, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a process or a connection was attempted")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr(os, "system", refuse)
    m = pool_net(8, pool("p", "c"))
    files = export.export(m, "mnn")
    assert len(files["model.mnn"]) > 100
    assert "MNN.tools" not in sys.modules and "MNN.tools.utils.log" not in sys.modules


def test_cli_export_verify_writes_all_files(tmp_path):
    src = tmp_path / "net.prototxt"
    src.write_text(f'name: "t" {DATA_INPUT}' + conv("c", "data", n=3, k=3) + pool("p", "c", k=3, stride=2))
    for fmt, names in (("onnx", ["model.onnx"]), ("ncnn", ["model.bin", "model.param"]), ("mnn", ["model.mnn"])):
        out = tmp_path / fmt
        r = run("export", src, "--to", fmt, "-o", out, "--verify")
        assert r.exit_code == 0, r.output
        assert "<= tolerance 0.0001: ok" in r.output
        assert sorted(os.listdir(out)) == sorted([".rebirth", *names])   # our marker beside the files


DATA_INPUT = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 9 dim: 9 } } }\n'


def test_cli_export_refuses_a_layer_type_the_engine_lacks(tmp_path):
    out = tmp_path / "out"
    r = run("export", DATA / "fork_mobilenet_ssd.prototxt", "--to", "ncnn", "-o", out, catch_exceptions=True)
    line = error_line(r, stream="stderr")
    assert "layer 'conv2_norm'" in line and "Normalize" in line
    assert not out.exists() and os.listdir(tmp_path) == []


def test_cli_export_refuses_an_unwritable_outdir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run("export", "squeezenet11", "--to", "onnx", "-o", blocker / "out", catch_exceptions=True)
    assert "is a file" in error_line(r, stream="stderr")
    assert os.listdir(tmp_path) == ["file"]


def test_bench_engine_reports_and_refuses_layers():
    r = run("bench", "squeezenet11", "--engine", "onnxruntime", "--runs", "2", "--warmup", "0", "--json",
            catch_exceptions=True)
    assert r.exit_code == 0, r.output
    assert '"engine": "onnxruntime"' in r.output
    r = run("bench", "squeezenet11", "--engine", "ncnn", "--layers", catch_exceptions=True)
    assert "whole passes only" in error_line(r, stream="stderr")


def test_bench_of_more_than_two_nets_on_onnx_runtime_turns_spinning_off_and_says_so():
    import json
    three = run("bench", "squeezenet11", "squeezenet11", "squeezenet11", "--engine", "onnxruntime", "--runs", "2",
                "--warmup", "0", "--json", catch_exceptions=True)
    assert three.exit_code == 0, three.output
    assert "spinning off" in json.loads(three.stdout)["device_description"]
    assert "rebirth: note: more than two nets" in three.stderr
    two = run("bench", "squeezenet11", "squeezenet11", "--engine", "onnxruntime", "--runs", "2", "--warmup", "0",
              "--json", catch_exceptions=True)
    assert "spinning off" not in json.loads(two.stdout)["device_description"] and "note" not in two.stderr
    # asked for: off for a pair too, on for three; and a clear error for an engine without spinning
    off = run("bench", "squeezenet11", "squeezenet11", "--engine", "onnxruntime", "--spinning", "off", "--runs", "2",
              "--warmup", "0", "--json", catch_exceptions=True)
    assert off.exit_code == 0 and "spinning off" in json.loads(off.stdout)["device_description"], off.output
    on = run("bench", "squeezenet11", "squeezenet11", "squeezenet11", "--engine", "onnxruntime", "--spinning", "on",
             "--runs", "2", "--warmup", "0", "--json", catch_exceptions=True)
    assert "spinning off" not in json.loads(on.stdout)["device_description"] and "note" not in on.stderr
    r = run("bench", "squeezenet11", "--spinning", "off", catch_exceptions=True)
    assert "--spinning applies to --engine onnxruntime only, not caffe" in error_line(r, stream="stderr")


# ------------------------------------------------------------------------------------------------
# The built-in models, their slim and Slim-Tucker outputs, and the fork nets (slow: Caffe in child
# processes and MNN's converter on big nets)

BUILTINS = ("alexnet", "googlenet", "resnet50", "squeezenet", "squeezenet11")


@pytest.fixture(scope="module")
def variant_dirs(tmp_path_factory):
    """name -> {"plain": (MODEL, WEIGHTS), "slim": (DIR, None), "slim-tucker": (DIR, None)}, made on
    first use, with random weights written as a caffemodel."""
    from deeprebirth.caffe import netio
    from deeprebirth.graph.model import load_model
    from deeprebirth.runtime.pycaffe import random_weights
    root = tmp_path_factory.mktemp("variants")
    made = {}

    def get(name: str) -> dict:
        if name not in made:
            m = load_model(name)
            weights = root / f"{name}.caffemodel"
            netio.write_weights(netio.with_weights(m.net, random_weights(m.graph(), seed=0)), weights)
            made[name] = {"plain": (name, weights)}
            for kind, extra in (("slim", []), ("slim-tucker", ["--tucker"])):
                d = root / f"{name}-{kind}"
                r = run("slim", name, "-w", weights, "-o", d, *extra, catch_exceptions=True)
                assert r.exit_code == 0, r.output
                made[name][kind] = (d, None)
        return made[name]
    return get


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", ["plain", "slim", "slim-tucker"])
@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_export_verify(variant_dirs, tmp_path, name, kind, fmt):
    model, weights = variant_dirs(name)[kind]
    args = ["export", model, "--to", fmt, "-o", tmp_path / "out", "--verify"]
    if weights is not None:
        args += ["--weights", weights]
    r = run(*args, catch_exceptions=True)
    assert r.exit_code == 0, r.output
    assert "<= tolerance 0.0001: ok" in r.output


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_fork_nets(tmp_path, fmt):
    r = run("export", DATA / "fork_densenet.prototxt", "--to", fmt, "-o", tmp_path / "d", "--verify",
            catch_exceptions=True)
    assert r.exit_code == 0, r.output
    # MobileNet-SSD's Normalize/PriorBox/DetectionOutput exist in none of the three: a one-line refusal
    r = run("export", DATA / "fork_mobilenet_ssd.prototxt", "--to", fmt, "-o", tmp_path / "s", catch_exceptions=True)
    assert "layer 'conv2_norm'" in error_line(r, stream="stderr")


def test_cli_export_refuses_a_folder_of_the_users_before_any_work(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    r = run("export", "squeezenet11", "--to", "onnx", "-o", out, catch_exceptions=True)
    line = error_line(r, stream="stderr")
    assert "notes.txt" in line and "--force" in line
    assert "random weights" not in r.stderr          # refused before exporting anything
    assert sorted(os.listdir(out)) == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"


def test_onnx_runtime_sessions_timed_in_a_crowd_do_not_spin(caffe):
    """Many ONNX Runtime sessions timed in turn (the plan's table of candidates) run with their
    worker threads not spinning; one timed alone or in a pair runs as deployed (spinning)."""
    from deeprebirth.runtime.engines.onnxruntime_engine import OrtDevice
    model = with_weights(net_of(conv("c1", "data", n=4, k=3) + relu("r1", "c1"), (1, 3, 8, 8)))
    files = export.export(model, "onnx")
    key = "session.intra_op.allow_spinning"
    alone = OrtDevice()
    crowd = alone.crowded()
    assert alone.spinning and not crowd.spinning and "spinning off" in crowd.description
    assert alone.crowded_note and "not spinning" in alone.crowded_note
    options = crowd.load(files).session.get_session_options()
    assert options.get_session_config_entry(key) == "0"
    deployed = alone.load(files).session.get_session_options()
    with pytest.raises(RuntimeError, match="does not have configuration"):    # ONNX Runtime's default: spinning
        deployed.get_session_config_entry(key)
