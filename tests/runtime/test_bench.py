"""`rebirth bench`: grouping, ratio arithmetic, the JSON document, the plot and the device interface.

Nothing here asserts on a measured time: the pure parts get made-up timings, and the real runs
(a tiny net, 2 runs) are only checked for the shape of what they report.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import TINY, FakeDevice, FakeSession, error_line, run, text_model

from deeprebirth.caffe import netio
from deeprebirth.cli import reports
from deeprebirth.errors import RebirthError
from deeprebirth.runtime import bench, plot
from deeprebirth.runtime.devices import get_device
from deeprebirth.runtime.devices.base import Memory

MODEL_KEYS = {"model", "best_ms", "median_ms", "non_tensor_percent", "memory_bytes", "peak_rss_bytes", "layers"}
LAYER_KEYS = {"name", "type", "kind", "ms"}

NAMES = ["data", "conv1", "relu1", "pool1", "fc", "prob"]
TYPES = ["Input", "Convolution", "ReLU", "Pooling", "InnerProduct", "Softmax"]


def fake(label="a", scale=1.0, runs=3, layers=True):
    """Made-up timings in seconds: layer i of run r takes scale * (i + 1) * (1 + r) ms."""
    per_run = [[scale * (i + 1) * (1 + r) / 1000 for i in range(len(NAMES))] for r in range(runs)]
    forward = [sum(row) for row in per_run]
    return bench.Measurement(label, NAMES, TYPES, forward, per_run if layers else [],
                             source=f"{label}.prototxt", weights="random (seed 0)",
                             memory=Memory(blob_bytes=1000, allocated_bytes=1000, peak_rss_bytes=5000,
                                           process_peak_rss_bytes=90000, method="test"))


# ------------------------------------------------------------------------------------------------
# Pure parts


def test_layer_table_median_min_and_percent():
    rows = bench.layer_table(["x", "y"], ["Convolution", "Split"], [[0.001, 0.003], [0.003, 0.001], [0.002, 0.002]])
    assert [(r["name"], r["kind"]) for r in rows] == [("x", "tensor"), ("y", "non-tensor")]
    assert rows[0]["ms"] == pytest.approx(2.0) and rows[0]["min_ms"] == pytest.approx(1.0)
    assert sum(r["percent"] for r in rows) == pytest.approx(100.0)
    assert bench.layer_table(["x"], ["ReLU"], []) == []
    with pytest.raises(ValueError):
        bench.layer_table(["x", "y"], ["ReLU", "ReLU"], [[0.1]])


def test_grouping_by_type_and_kind_and_eq1():
    layers = [
        {"name": "c1", "type": "Convolution", "kind": "tensor", "ms": 3.0},
        {"name": "p1", "type": "Pooling", "kind": "non-tensor", "ms": 4.0},
        {"name": "c2", "type": "Convolution", "kind": "tensor", "ms": 2.0},
        {"name": "r1", "type": "ReLU", "kind": "non-tensor", "ms": 0.5},
        {"name": "s1", "type": "Split", "kind": "non-tensor", "ms": 0.5},
    ]
    groups = bench.group_by_type(layers)
    assert [(g["type"], g["count"], g["ms"]) for g in groups] == [
        ("Convolution", 2, 5.0), ("Pooling", 1, 4.0), ("ReLU", 1, 0.5), ("Split", 1, 0.5)]
    assert sum(g["percent"] for g in groups) == pytest.approx(100.0)
    assert bench.group_by_kind(layers) == {"tensor": 5.0, "non-tensor": 5.0}
    assert bench.non_tensor_percent(layers) == pytest.approx(50.0)
    assert bench.non_tensor_percent([]) is None
    assert [r["name"] for r in bench.top_layers(layers, 2)] == ["p1", "c1"]


def test_layer_sum_agreement():
    # three runs: layer sums 10.3, 10.0, 12.0 ms against whole passes 10.0, 10.0, 10.0 ms
    layers_s = [[0.004, 0.0063], [0.005, 0.005], [0.006, 0.006]]
    a = bench.agreement([0.010, 0.010, 0.010], layers_s, margin_percent=5.0)
    assert a["forward_ms"] == pytest.approx(10.0) and a["layer_sum_ms"] == pytest.approx(10.3)
    assert a["diff_ms"] == pytest.approx(0.3)
    assert a["diff_percent"] == pytest.approx(3.0)  # median of the per-run differences 3, 0, 20 %
    assert a["within_margin"] is True
    assert bench.agreement([0.009, 0.009, 0.009], layers_s, margin_percent=5.0)["within_margin"] is False
    assert bench.agreement([0.01], []) is None


def test_ratio_arithmetic():
    models = [
        {"model": "ref", "best_ms": 10.0, "median_ms": 20.0, "runs_ms": [10.0, 20.0, 40.0]},
        {"model": "slim", "best_ms": 4.0, "median_ms": 12.0, "runs_ms": [4.0, 12.0, 8.0]},
    ]
    r = bench.ratios(models)
    assert r["reference"] == "ref"
    assert r["models"]["ref"] == {"best": 1.0, "median": 1.0, "paired_median": 1.0, "speedup": 1.0}
    slim = r["models"]["slim"]
    assert slim["best"] == pytest.approx(0.4)
    assert slim["median"] == pytest.approx(0.6)
    assert slim["paired_median"] == pytest.approx(0.4)  # median of 0.4, 0.6, 0.2
    assert slim["speedup"] == pytest.approx(2.5)
    assert bench.ratios([]) == {"reference": None, "models": {}}


def test_json_schema_from_fake_timings():
    doc = bench.build_json([fake("a"), fake("b", scale=2.0)], {"device": "cpu", "batch": 1})
    json.loads(json.dumps(doc))  # serialisable as is
    assert doc["device"] == "cpu" and doc["batch"] == 1
    assert [m["model"] for m in doc["models"]] == ["a", "b"]
    for m in doc["models"]:
        assert MODEL_KEYS <= set(m)
        assert len(m["layers"]) == len(NAMES)
        for layer in m["layers"]:
            assert LAYER_KEYS <= set(layer)
            assert layer["kind"] in ("tensor", "non-tensor")
        assert m["best_ms"] <= m["median_ms"]
        assert 0 <= m["non_tensor_percent"] <= 100
        assert m["memory_bytes"] == 1000 and m["peak_rss_bytes"] == 5000
    a = doc["models"][0]
    # Made-up timings: per-layer medians are (i + 1) * 2 ms; tensor layers are conv1 (2) and fc (5).
    assert [r["ms"] for r in a["layers"]] == pytest.approx([2.0 * (i + 1) for i in range(len(NAMES))])
    assert a["non_tensor_percent"] == pytest.approx(100.0 * (42 - 14) / 42)
    assert doc["ratios"]["reference"] == "a"
    assert doc["ratios"]["models"]["b"]["paired_median"] == pytest.approx(2.0)


def test_json_without_layer_times():
    m = bench.summarize(fake(layers=False))
    assert m["layers"] == [] and m["non_tensor_percent"] is None and m["layer_sum"] is None
    assert MODEL_KEYS <= set(m)


def test_text_report_mentions_everything():
    doc = bench.build_json([fake("a"), fake("b", scale=0.5)],
                           {"device": "cpu", "device_description": "test", "batch": 1, "runs": 3, "warmup": 0})
    text = reports.bench_text(doc)
    for needle in ("best ms", "median ms", "b vs a", "2.00x faster", "non-tensor share of latency (Eq. 1)",
                   "sum of layers", "top 6 layers", "Pooling", "peak RSS MB: test"):
        assert needle in text, needle


def test_set_batch_rewrites_every_input_form():
    net = netio.parse_net_text('input: "a" input_shape { dim: 10 dim: 3 dim: 4 dim: 4 }\n'
                            'layer { name: "in" type: "Input" top: "b" input_param { shape { dim: 10 dim: 2 } } }')
    legacy = netio.parse_net_text('input: "a" input_dim: 10 input_dim: 3 input_dim: 4 input_dim: 4')
    out = bench.set_batch(net, 1)
    assert list(out.input_shape[0].dim) == [1, 3, 4, 4]
    assert list(out.layer[0].input_param.shape[0].dim) == [1, 2]
    assert list(net.input_shape[0].dim)[0] == 10  # the original is untouched
    assert list(bench.set_batch(legacy, 2).input_dim) == [2, 3, 4, 4]
    assert bench.set_batch(net, None) is net


def test_dataset_nets_and_labels():
    data = netio.parse_net_text('layer { name: "d" type: "Data" top: "data" data_param { batch_size: 1 } }')
    with pytest.raises(RebirthError, match="'d' is a Data layer"):
        bench.check_runnable(data, "x.prototxt")
    assert bench.labels(["a", "b", "a", "a"]) == ["a", "b", "a #2", "a #3"]
    with pytest.raises(RebirthError, match="once per model"):
        bench.prepare(["googlenet", "alexnet"], ["w.caffemodel"])


# ------------------------------------------------------------------------------------------------
# Plot


def _rows(names, kinds):
    return [{"name": n, "type": "Convolution" if k == "tensor" else "ReLU", "kind": k, "ms": 1.0}
            for n, k in zip(names, kinds)]


def test_blocks_follow_table_4():
    """GoogLeNet by its '/' prefixes (pooling and LRN after conv1 belong to conv1), AlexNet and
    ResNet by their tensor layers; Input layers are not a block."""
    google = _rows(["conv1/7x7_s2", "conv1/relu_7x7", "pool1/3x3_s2", "pool1/norm1", "conv2/3x3_reduce",
                    "conv2/3x3", "pool2/3x3_s2", "inception_3a/1x1", "inception_3a/relu_1x1", "inception_3a/pool",
                    "inception_3a/output", "pool5/7x7_s1", "loss3/classifier"],
                   ["tensor", "non", "non", "non", "tensor", "tensor", "non", "tensor", "non", "non", "non", "non",
                    "tensor"])
    got = {b["block"]: (b["tensor_ms"], b["non_tensor_ms"]) for b in plot.blocks(google)}
    assert got == {"conv1": (1, 3), "conv2": (2, 1), "inception_3a": (1, 4), "loss3": (1, 0)}
    alex = _rows(["conv1", "relu1", "norm1", "pool1", "conv2", "relu2", "fc6", "drop6", "prob"],
                 ["tensor", "non", "non", "non", "tensor", "non", "tensor", "non", "non"])
    assert [b["block"] for b in plot.blocks(alex)] == ["conv1", "conv2", "fc6"]
    res = _rows(["conv1", "bn_conv1", "pool1", "res2a_branch1", "bn2a_branch1", "res2a_branch2a", "res2a",
                 "res2a_relu", "res2b_branch2a", "fc1000"],
                ["tensor", "non", "non", "tensor", "non", "tensor", "non", "non", "tensor", "tensor"])
    assert [(b["block"], b["layers"]) for b in plot.blocks(res)] == [("conv1", 3), ("res2a", 5), ("res2b", 1),
                                                                     ("fc1000", 1)]
    assert plot.blocks([{"name": "data", "type": "Input", "kind": "non-tensor", "ms": 0.0}]) == []


def test_speed_is_worded_one_way():
    assert plot.speed_words(0.5) == "2.00x faster"
    assert plot.speed_words(2.0) == "2.00x slower"
    assert plot.speed_words(1.0) == "1.00x (same)"


@pytest.mark.slow
def test_plot_is_a_png_with_stacked_blocks_side_by_side(tmp_path):
    from matplotlib.image import imread

    doc = bench.build_json([fake("a"), fake("b", scale=2.0)])
    fig = plot.make_figure(doc["models"])
    assert len(fig.axes) == 1  # one scale for all models
    n_blocks = len(plot.blocks(doc["models"][0]["layers"]))
    bars = fig.axes[0].patches
    assert len(bars) == 2 * 2 * n_blocks        # two models, tensor + non-tensor per block
    total = sum(b.get_height() for b in bars)
    assert total == pytest.approx(sum(r["ms"] for m in doc["models"] for r in m["layers"] if r["type"] != "Input"))
    assert "2.00x slower than a" in fig.axes[0].get_title(loc="left")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["conv1", "fc"]

    path = plot.save_plot(doc["models"], tmp_path / "layers.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_plot_needs_layer_times_and_a_png_name(tmp_path):
    doc = bench.build_json([fake(layers=False)])
    with pytest.raises(RebirthError, match=r"run with layers\)"):
        plot.make_figure(doc["models"])
    with pytest.raises(RebirthError, match=r"\.png"):
        plot.save_plot(bench.build_json([fake()])["models"], tmp_path / "layers.jpg")


def test_bench_refuses_a_plot_name_before_timing(tmp_path):
    line = error_line(run("bench", "googlenet", "--runs", "1000", "--plot", tmp_path / "x.jpg"))
    assert "x.jpg: --plot writes a PNG image" in line


# ------------------------------------------------------------------------------------------------
# Measuring with a fake device: interleaving, warm-up, progress


def test_runs_are_interleaved_after_warmup():
    dev = FakeDevice()
    sessions = [(x, dev.open(x)) for x in "ABC"]
    steps = []
    out = bench.measure(sessions, runs=2, warmup=1, layers=False, progress=steps.append)
    assert dev.log == list("ABC" * 3)
    assert [len(m.forward_s) for m in out] == [2, 2, 2] and all(not m.layers_s for m in out)
    assert sum(steps) == 9

    dev.log.clear()
    out = bench.measure(sessions[:2], runs=1, warmup=0, layers=True)
    assert dev.log == ["A", "A0", "A1", "B", "B0", "B1"]
    assert [len(m.layers_s[0]) for m in out] == [2, 2]
    with pytest.raises(RebirthError, match="^runs must be at least 1"):
        bench.measure(sessions, runs=0)


def test_turns_of_several_runs_time_each_model_as_if_alone(monkeypatch):
    dev = FakeDevice()
    sessions = [(x, dev.open(x)) for x in "AB"]
    steps = []
    monkeypatch.setattr(bench, "SETTLE_S", 0.0)          # one untimed run a turn (the settling: below)
    out = bench.measure(sessions, runs=5, warmup=1, block=3, progress=steps.append)
    # one warm-up round; then turns of 3 and 2 timed runs, each after an untimed run
    assert "".join(dev.log) == "AB" + "AAAA" + "BBBB" + "AAA" + "BBB"
    assert [len(m.forward_s) for m in out] == [5, 5] and sum(steps) == 2 * (1 + 5)
    assert bench.turns(5, 1, 3) == [(0, False), (3, True), (2, True)]
    assert bench.turns(2, 0, 1) == [(1, False), (1, False)]            # block 1: interleaved as before
    text = reports.bench_text(bench.build_json(out, {"device": "cpu", "runs": 5, "warmup": 1, "block": 3}))
    assert "the models taking turns of 3 runs (each after untimed runs)" in text
    with pytest.raises(RebirthError, match="^block must be at least 1"):
        bench.measure(sessions, block=0)


def test_each_turn_settles_for_a_while_before_its_runs_are_timed(monkeypatch):
    """A turn begins with untimed runs for SETTLE_S (one at least): the model before it leaves
    ONNX Runtime's threads spinning for a few milliseconds. Runs of 1 ms on a made-up clock."""
    from types import SimpleNamespace
    clock = [0.0]

    class Timed(FakeSession):
        def forward(self):
            super().forward()
            clock[0] += 0.001
    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=lambda: clock[0], sleep=lambda s: None))
    log = []
    out = bench.measure([(x, Timed(x, log)) for x in "AB"], runs=4, warmup=0, block=2)
    assert "".join(log) == ("A" * 5 + "AA" + "B" * 5 + "BB") * 2 and [len(m.forward_s) for m in out] == [4, 4]


def test_the_devices_turn_is_the_default_block(monkeypatch):
    """bench.run's block, unless given: the device's turn (ONNX Runtime spinning: ORT_TURN; not
    spinning, and every other device: 1)."""
    from deeprebirth.runtime.engines.onnxruntime_engine import ORT_TURN, OrtDevice
    ort = OrtDevice(None)
    assert ort.turn == ORT_TURN == 10 and ort.crowded().turn == 1 and FakeDevice().turn == 1
    used = []
    monkeypatch.setattr(bench, "measure", lambda sessions, runs, warmup, layers, progress, cooldown, block:
                        used.append(block) or [])
    dev = FakeDevice()
    dev.turn = 3
    bench.run([bench.Prepared("a", text_model(TINY), "w")], dev, runs=2, warmup=0, memory=False)
    bench.run([bench.Prepared("a", text_model(TINY), "w")], dev, runs=2, warmup=0, memory=False, block=1)
    assert used == [3, 1]


def test_bench_refuses_turns_on_a_device_running_the_timing_program():
    line = error_line(run("bench", "googlenet", "--device", "qemu-aarch64", "--block", "5"))
    assert "--block applies to the engines run in this process" in line and "qemu-aarch64" in line


def test_devices():
    assert get_device("cpu").name == "cpu"
    assert get_device("adb").name == "adb"  # engine/remote.py; tested in test_device.py
    with pytest.raises(RebirthError, match="unknown device 'tpu'"):
        get_device("tpu")


# ------------------------------------------------------------------------------------------------
# Real runs (pycaffe)


@pytest.mark.slow
def test_cpu_session_layers_include_caffe_splits(tmp_path, caffe):
    from deeprebirth.graph.dag import Graph
    from deeprebirth.graph.model import Model
    from deeprebirth.runtime.pycaffe import random_weights

    net = netio.parse_net_text(TINY)
    with get_device("cpu").open(Model(net, random_weights(Graph(net)))) as s:
        assert "Split" in s.layer_types and len(s.layer_names) == len(net.layer) + 1
        times = s.time_layers()
        assert len(times) == len(s.layer_names) and all(t >= 0 for t in times)
        mem = s.memory()
        assert mem.blob_bytes == Graph(net).memory_bytes == mem.allocated_bytes
        assert mem.peak_rss_bytes is not None and mem.peak_rss_bytes >= 0 and mem.method


@pytest.mark.slow
def test_cli_bench_json(tmp_path, caffe):
    proto = tmp_path / "tiny.prototxt"
    proto.write_text(TINY)
    png = tmp_path / "fig.png"
    res = run("bench", proto, proto, "--runs", "2", "--warmup", "0", "--batch", "2", "--json", "--plot", png)
    assert res.exit_code == 0, res.output
    # stderr is not a terminal: progress, if any (the timing took over 3 s), is lines, never a bar
    assert all(line.startswith("rebirth: timing ") for line in res.stderr.splitlines())
    doc = json.loads(res.stdout)
    assert doc["device"] == "cpu" and doc["batch"] == 2 and doc["layers_timed"] is True  # --plot implies --layers
    assert [m["model"] for m in doc["models"]] == [str(proto), f"{proto} #2"]
    for m in doc["models"]:
        assert MODEL_KEYS <= set(m) and m["runs"] == 2
        assert 0 < m["best_ms"] <= m["median_ms"]
        assert 0 <= m["non_tensor_percent"] <= 100
        assert m["memory_bytes"] > 0 and m["peak_rss_bytes"] >= 0
        kinds = {layer["name"]: (layer["type"], layer["kind"]) for layer in m["layers"]}
        assert kinds["conv"] == ("Convolution", "tensor") and kinds["pool"] == ("Pooling", "non-tensor")
        assert ("Split", "non-tensor") in kinds.values()
        assert all(LAYER_KEYS <= set(layer) for layer in m["layers"])
    assert set(doc["ratios"]["models"]) == {str(proto), f"{proto} #2"}
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_cli_bench_errors(tmp_path):
    res = run("bench", "googlenet", "--device", "tpu")
    assert res.exit_code == 1 and "unknown device 'tpu'" in res.output and "Traceback" not in res.output
    res = run("bench", "googlenet", "alexnet", "-w", tmp_path / "x.caffemodel")
    assert res.exit_code == 1 and "once per model" in res.output


class RefusingDevice(FakeDevice):
    """Opens every model but "B", which its export refuses (as an engine refuses a layer)."""

    def open(self, model, seed=0):
        if model.name == "B":
            raise RebirthError("layer 'pool' (Pooling): refused by this engine")
        return FakeSession(model.name, self.log)


def test_run_reports_a_model_the_device_refuses_when_asked():
    from types import SimpleNamespace
    prepared = [bench.Prepared(x, SimpleNamespace(name=x, source=f"{x}.prototxt", weights={}), "random (seed 0)") for x in "ABC"]
    dev = RefusingDevice()
    refused = {}
    out = bench.run(prepared, dev, runs=2, warmup=0, memory=False, refused=refused)
    assert [m.label for m in out] == ["A", "C"] and dev.log == list("AC" * 2)
    assert refused == {"B": "layer 'pool' (Pooling): refused by this engine"}
    with pytest.raises(RebirthError, match="refused by this engine"):
        bench.run(prepared, dev, runs=1, warmup=0)  # without ``refused``: the first refusal raises
    assert bench.refusal(ValueError("bad\n  graph")) == "ValueError: bad graph"


def test_a_model_without_weights_gets_random_ones_where_it_is_timed():
    """bench.run makes the random weights of a model given without them (in run_isolated's child,
    so that a large net's weights are not sent over); a model with weights keeps them."""
    bare, kept = text_model(TINY), text_model(TINY, seed=1)
    mine = kept.weights
    seen = []

    class Recording(FakeDevice):
        def open(self, model, seed=0):
            seen.append(model.weights)
            return super().open(model.source, seed)
    bench.run([bench.Prepared("a", bare, "random (seed 4)"), bench.Prepared("b", kept, "trained")], Recording(),
              runs=1, warmup=0, memory=False, seed=4)
    assert seen[0] is not None and seen[1] is mine
    again = text_model(TINY)
    bench.run([bench.Prepared("a", again, "random (seed 4)")], Recording(), runs=1, warmup=0, memory=False, seed=4)
    assert all(np.array_equal(x, y) for k in seen[0] for x, y in zip(seen[0][k], seen[2][k]))   # seeded
