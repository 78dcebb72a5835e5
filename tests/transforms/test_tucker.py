"""Tucker-2 / SVD decomposition (rules/tucker.py, tucker.py, `rebirth tucker`, `slim --tucker`) and
its VBMF ranks (vbmf.py): known ranks found, full ranks exact in Caffe, skip notes, the written
files loading and training in pycaffe, and the bad-input errors (one line, nothing written)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import STEM, error_line, with_weights, write_random_weights
from helpers import run as rebirth

from deeprebirth.caffe import netio
from deeprebirth.errors import RebirthError
from deeprebirth.graph.dag import Graph
from deeprebirth.graph.model import Model
from deeprebirth.runtime import pycaffe, verify
from deeprebirth.transforms import runner, vbmf
from deeprebirth.transforms import tucker as tucker_api
from deeprebirth.transforms.rules.tucker import TuckerRule, ratio_ranks, reconstruct, tucker2

NET = """name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 6 dim: 12 dim: 12 } } }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
        convolution_param { num_output: 6 kernel_size: 3 pad: 2 dilation: 2 stride: 2 } }
layer { name: "r1" type: "ReLU" bottom: "c1" top: "c1" }
layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2" convolution_param { num_output: 6 kernel_size: 1 stride: 2 pad: 1 } }
layer { name: "fc" type: "InnerProduct" bottom: "c2" top: "fc" inner_product_param { num_output: 6 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""

# Low-rank weights: c1 is a Tucker-2 kernel with ranks (R3, R4) = (3, 5), fc has rank 4.
LOW_RANK = """name: "lowrank"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 16 dim: 10 dim: 10 } } }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1" convolution_param { num_output: 24 kernel_size: 3 pad: 1 } }
layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2" convolution_param { num_output: 32 kernel_size: 1 } }
layer { name: "g" type: "Convolution" bottom: "c2" top: "g" convolution_param { num_output: 32 kernel_size: 3 group: 4 } }
layer { name: "fc" type: "InnerProduct" bottom: "g" top: "fc" inner_product_param { num_output: 20 } }
"""


def net_of(text):
    return netio.parse_net_text(text)


def random_model(text=NET, seed=3):
    return with_weights(net_of(text), seed, "small.prototxt", "small.caffemodel")


def low_rank_model(noise=1e-3):
    m = random_model(LOW_RANK)
    rng = np.random.default_rng(0)
    core = rng.normal(size=(5, 3, 3, 3))
    U, V = np.linalg.qr(rng.normal(size=(24, 5)))[0], np.linalg.qr(rng.normal(size=(16, 3)))[0]
    m.weights["c1"][0] = (reconstruct(core, U, V) + noise * rng.normal(size=(24, 16, 3, 3))).astype(np.float32)
    w = rng.normal(size=(32, 6)) @ rng.normal(size=(6, 24))
    m.weights["c2"][0] = (w + noise * rng.normal(size=w.shape)).reshape(32, 24, 1, 1).astype(np.float32)
    w = rng.normal(size=(20, 4)) @ rng.normal(size=(4, 32 * 8 * 8))
    m.weights["fc"][0] = (w + noise * rng.normal(size=w.shape)).astype(np.float32)
    return m


# ----------------------------------------------------------------------------------------------
# VBMF and the linear algebra


def test_vbmf_finds_the_rank_and_the_noise_of_a_known_matrix():
    rng = np.random.default_rng(0)
    Y = rng.normal(size=(60, 5)) @ rng.normal(size=(5, 90)) + 0.1 * rng.normal(size=(60, 90))
    res = vbmf.evbmf(Y)
    assert res.rank == 5
    assert abs(res.sigma2 - 0.01) / 0.01 < 0.1
    assert vbmf.evbmf(Y.T).rank == 5
    # Pure noise: nothing stands out (rank 0); too small to estimate: None.
    assert vbmf.evbmf(rng.normal(size=(40, 70))).rank == 0
    assert vbmf.evbmf(rng.normal(size=(3, 50))).rank is None


def test_tucker2_full_ranks_reconstruct_and_ratio_budget():
    W = np.random.default_rng(1).normal(size=(12, 7, 3, 3))
    core, U, V = tucker2(W, 7, 12)
    assert np.allclose(reconstruct(core, U, V), W, atol=1e-10)
    R3, R4 = ratio_ranks(64, 128, 9, 0.5, True, True)
    kept = 64 * R3 + R3 * R4 * 9 + R4 * 128
    assert kept <= 0.5 * 64 * 128 * 9 and R3 / 64 == pytest.approx(R4 / 128, abs=0.02)


# ----------------------------------------------------------------------------------------------
# The rule


def test_vbmf_ranks_of_known_low_rank_layers_and_skip_notes():
    m = low_rank_model()
    out = tucker_api.tucker(m, data_layer="DummyData")
    by_layer = {d["layer"]: d for d in out.layers}
    assert by_layer["c1"]["ranks"] == {"R3": 3, "R4": 5} and by_layer["c1"]["rank_source"] == "vbmf"
    assert by_layer["c1"]["weight_error"] < 0.01
    assert by_layer["c1"]["new_layers"] == ["c1_in", "c1_core", "c1_out"]
    # SVD of the 1x1 convolution and of the InnerProduct: two layers each.
    assert by_layer["c2"]["method"] == "svd" and by_layer["c2"]["ranks"] == {"r": 6}
    assert by_layer["fc"]["ranks"] == {"r": 4} and by_layer["fc"]["weight_error"] < 0.01
    g = Graph(out.deploy)
    assert g.node("fc_in").top_shapes[0] == (1, 4) and g.node("fc_out").top_shapes[0] == (1, 20)
    assert g.node("c2_in").param_shapes == [(6, 24, 1, 1)] and g.node("c2_out").param_shapes == [(32, 6, 1, 1), (32,)]
    assert g.node("c1_core").param_shapes == [(5, 3, 3, 3)]
    for d in by_layer.values():
        assert d["params"]["after"] < d["params"]["before"] and d["macs"]["after"] < d["macs"]["before"]
    # The grouped convolution is left alone, with a note; so is a decomposition that saves nothing.
    skips = {s.substructure: s.reason for s in out.skips}
    assert "grouped (group 4)" in skips["g"]
    with pytest.raises(RebirthError, match="nothing to decompose.*rank 20 would cost 112,000 MACs.*not fewer than"):
        tucker_api.tucker(low_rank_model(), ranks=(20, 20), only=["c2"], data_layer="DummyData")


def test_full_rank_output_is_unchanged_in_caffe(caffe):
    m = random_model()
    rule = TuckerRule(ranks=(6, 6), require_saving=False, absorb_full=False)
    res = runner.run(m, [rule])
    assert [c.substructure for c in res.changes] == ["c1", "c2", "fc"]
    new = Graph(res.model.net)
    assert [n.type for n in new.nodes].count("Convolution") == 5   # 3 (Tucker-2) + 2 (SVD)
    outputs = []
    for model in (m, res.model):
        net = pycaffe.CaffeNet(model.net, model.weights)
        net.fill_inputs(seed=7)
        net.forward()
        outputs.append({b: net.net.blobs[b].data.copy() for b in ("c1", "c2", "fc")})
    for blob in ("c1", "c2", "fc"):
        a, b = outputs[0][blob], outputs[1][blob]
        assert np.linalg.norm(b - a) / np.linalg.norm(a) < 1e-4, blob


def test_output_errors_are_measured_in_caffe(caffe):
    out = tucker_api.tucker(low_rank_model(noise=0.0), data_layer="DummyData", measure=verify.output_errors)
    errors = {d["layer"]: d["output_error"] for d in out.layers}
    assert errors["c1"] < 1e-4 and errors["fc"] < 1e-4
    out = tucker_api.tucker(random_model(), ratio=0.5, data_layer="DummyData", measure=verify.output_errors)
    assert all(0.05 < d["output_error"] < 1.5 for d in out.layers)


# ----------------------------------------------------------------------------------------------
# The command


def run(*args):
    if args[0] == "tucker" and "--data-layer" not in args:
        args += ("--data-layer", "dummy")   # the test nets' inputs are not images
    return rebirth(*args)


@pytest.fixture
def files(tmp_path):
    m = low_rank_model()
    model = tmp_path / "lowrank.prototxt"
    model.write_text(LOW_RANK)
    weights = tmp_path / "lowrank.caffemodel"
    netio.write_weights(netio.with_weights(m.net, m.weights), weights)
    return model, weights


def test_cli_writes_files_that_load_and_train_in_caffe(tmp_path, files, caffe, monkeypatch):
    model, weights = files
    out = tmp_path / "out"
    res = run("tucker", model, weights, "-o", out)
    assert res.exit_code == 0, res.output
    assert "c1" in res.output and "tucker2" in res.output and "left alone" in res.output
    assert {p.name for p in out.iterdir() if p.name != ".rebirth"} == {"deploy.prototxt", "train_val.prototxt", "solver.prototxt",
                                              "init.caffemodel", "report.json"}
    report = json.loads((out / "report.json").read_text())
    assert [d["layer"] for d in report["tucker"]["layers"]] == ["c1", "c2", "fc"]
    relearn = report["relearn"]
    assert relearn["teacher"] == {"deploy": str(model), "weights": str(weights)}
    # the unit planner of `rebirth relearn`: one unit per decomposed layer, its original top the target
    unit = relearn["units"][0]
    assert relearn["version"] == 2 and unit["name"] == "c1" and unit["inputs"] == ["data"]
    assert unit["outputs"] == unit["targets"] == ["c1"] and set(unit["new"]) == {"c1_in", "c1_core", "c1_out"}
    # init.caffemodel starts from the decomposition; the new layers learn at 10x.
    init = netio.weights_of(netio.read_weights(out / "init.caffemodel"))
    w = reconstruct(init["c1_core"][0].astype(np.float64), init["c1_out"][0][:, :, 0, 0],
                    init["c1_in"][0][:, :, 0, 0].T)
    orig = netio.weights_of(netio.read_weights(weights))
    assert np.linalg.norm(w - orig["c1"][0]) / np.linalg.norm(orig["c1"][0]) < 0.01
    assert init["c1_out"][1].tobytes() == orig["c1"][1].tobytes()
    assert init["g"][0].tobytes() == orig["g"][0].tobytes()
    tv = {layer.name: layer for layer in netio.read_net(out / "train_val.prototxt").layer}
    assert [p.lr_mult for p in tv["c1_out"].param] == [10, 20] and [p.lr_mult for p in tv["g"].param] == [1, 2]
    monkeypatch.chdir(out)
    solver = caffe.get_solver("solver.prototxt")
    solver.net.copy_from("init.caffemodel")
    assert solver.net.params["c1_core"][0].data.tobytes() == init["c1_core"][0].tobytes()
    solver.step(2)
    assert solver.iter == 2 and np.isfinite(float(solver.net.blobs["loss"].data))
    net = caffe.Net("deploy.prototxt", caffe.TEST, weights="init.caffemodel")
    assert net.blobs["fc"].data.shape == (1, 20)


def test_cli_json_and_only(tmp_path, files):
    model, weights = files
    res = run("tucker", model, weights, "-o", tmp_path / "o", "--only", "fc", "--ranks", "3", "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert [(d["layer"], d["ranks"], d["rank_source"]) for d in report["tucker"]["layers"]] == [
        ("fc", {"r": 3}, "fixed")]
    assert report["tucker"]["fixed_ranks"] == [3, 3]
    line = error_line(run("tucker", model, weights, "-o", tmp_path / "x", "--only", "nope"))
    assert "'nope'" in line and "c1, c2, g, fc" in line


@pytest.mark.parametrize("args, words", [
    (["--ranks", "17,5", "--only", "c1"], ["c1", "R3 = 17 > 16 input channels"]),
    (["--ranks", "21", "--only", "fc"], ["fc", "larger than the layer allows", "at most 20"]),
    (["--ranks", "3,4", "--only", "fc"], ["fc", "one rank"]),
    (["--ranks", "x,y"], ["--ranks"]),
    (["--ratio", "0"], ["--ratio", "(0, 1]"]),
    (["--ratio", "1.5"], ["--ratio", "(0, 1]"]),
    (["--ratio", "0.5", "--ranks", "3"], ["a ratio", "not two of them"]),
    (["--time", "0.5", "--macs", "0.5"], ["--time", "not two of them"]),
    (["--time", "0"], ["--time", "(0, 1]"]),
    (["--layer-cost", "1000"], ["--layer-cost", "only with --time"]),
])
def test_bad_options_are_one_line_errors_and_write_nothing(tmp_path, files, args, words):
    model, weights = files
    out = tmp_path / "out"
    line = error_line(run("tucker", model, weights, "-o", out, *args))
    for w in words:
        assert w in line
    assert not out.exists()


def test_no_weights_and_nothing_to_decompose(tmp_path, files):
    model, weights = files
    other = tmp_path / "other.prototxt"
    other.write_text(LOW_RANK.replace('name: "c1" type', 'name: "k1" type'))
    out = tmp_path / "out"
    line = error_line(run("tucker", other, weights, "-o", out))
    assert "no weights for layer 'k1'" in line
    pool = tmp_path / "pool.prototxt"
    pool.write_text('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n'
                    'layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: MAX kernel_size: 2 } }\n')
    empty = tmp_path / "empty.caffemodel"
    netio.write_weights(netio.read_net(pool), empty)
    assert "no decomposable layer" in error_line(run("tucker", pool, empty, "-o", out))
    tiny = tmp_path / "tiny.prototxt"
    tiny.write_text(NET.replace("dim: 6 dim: 12", "dim: 3 dim: 12").replace("num_output: 6", "num_output: 3"))
    tm = random_model(tiny.read_text())
    tw = tmp_path / "tiny.caffemodel"
    netio.write_weights(netio.with_weights(tm.net, tm.weights), tw)
    line = error_line(run("tucker", tiny, tw, "-o", out))
    assert "nothing to decompose" in line and "nothing written" in line
    assert not out.exists()
    with pytest.raises(RebirthError, match="no weights"):
        tucker_api.tucker(Model(net_of(NET)))


def test_slim_tucker_in_one_go(tmp_path):
    model = tmp_path / "stem.prototxt"
    model.write_text(STEM)
    weights = tmp_path / "stem.caffemodel"
    write_random_weights(netio.read_net(model), weights, seed=2)
    res = run("slim", model, "--weights", weights, "--tucker", "--ratio", "0.5", "-o", tmp_path / "st", "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    rules = [c["rule"] for c in report["changes"]]
    assert "streamline" in rules and rules[-1] == "tucker"
    assert report["after"]["params"] < report["before"]["params"] / 1.5
    assert "relearn" in report
    assert "--weights" in error_line(run("slim", model, "--tucker", "-o", tmp_path / "x"))
    assert "--tucker" in error_line(run("slim", model, "--ratio", "0.5", "-o", tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def test_balance_splits_the_norm_and_keeps_the_product():
    from deeprebirth.transforms.rules.tucker import balance, reconstruct, tucker2
    rng = np.random.default_rng(3)
    W = 50 * rng.standard_normal((12, 10, 3, 3))
    core, U, V = tucker2(W, 6, 5)
    assert np.abs(core).max() > 20 * max(np.abs(U).max(), np.abs(V).max())
    c2, U2, V2 = balance(core, U, V)
    norms = [np.linalg.norm(a) for a in (c2, U2, V2)]
    assert max(norms) == pytest.approx(min(norms), rel=1e-6)
    np.testing.assert_allclose(reconstruct(c2, U2, V2), reconstruct(core, U, V), rtol=1e-5, atol=1e-5)
    c3, U3, V3 = balance(core, U, None)    # Tucker-1: core and one factor
    assert V3 is None and np.linalg.norm(c3) == pytest.approx(np.linalg.norm(U3))


def test_large_svds_are_remembered_by_content_within_a_byte_budget(monkeypatch):
    """tucker.thin_svd: a plan decomposes the same large InnerProduct in many variants."""
    from deeprebirth.transforms.rules import tucker as tk
    monkeypatch.setattr(tk, "SVD_MEMO_MIN", 100)
    monkeypatch.setattr(tk, "_svd_memo", {})
    rng = np.random.default_rng(0)
    W = rng.standard_normal((20, 30))
    P, s, Qt = tk.thin_svd(W)
    np.testing.assert_allclose((P * s) @ Qt, W, atol=1e-10)
    again = tk.thin_svd(W.copy())                          # the same content: the same arrays
    assert again[0] is P and not P.flags.writeable and len(tk._svd_memo) == 1
    assert tk.thin_svd(W + 1.0)[0] is not P and len(tk._svd_memo) == 2
    assert tk.thin_svd(W[:5, :10])[0].flags.writeable      # 50 elements: not remembered
    one = sum(a.nbytes for a in (P, s, Qt))
    monkeypatch.setattr(tk, "SVD_MEMO_BYTES", one + 10)    # room for one: the oldest goes
    tk.thin_svd(2.0 * W)
    assert len(tk._svd_memo) == 1 and tk.thin_svd(W)[0] is not P
    A, B = tk.svd_factors(W, 20)                             # full rank: exact
    np.testing.assert_allclose(A @ B, W, atol=1e-10)
