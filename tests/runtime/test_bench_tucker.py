"""scripts/bench_tucker.py's per-engine report (Tables 4-6, issue 16): the pure parts, on made-up
timings (no net is timed here)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from deeprebirth.runtime import bench
from deeprebirth.errors import RebirthError

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_tucker.py"
NETS = ["GoogLeNet", "GoogLeNet-Tucker", "GoogLeNet-Slim", "GoogLeNet-Slim-Tucker", "SqueezeNet v1.0",
        "SqueezeNet v1.1"]


@pytest.fixture(scope="module")
def bt():
    spec = importlib.util.spec_from_file_location("bench_tucker", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def timed(label, ms):
    """A made-up measurement: runs of ``ms`` milliseconds."""
    return bench.Measurement(label, [], [], [t / 1000 for t in ms])


def static():
    return [{"model": n, "params": 1e6 * (i + 1), "macs": 1e9 / (i + 1), "layers": 10, "file_bytes": 2 * 1024 * 1024}
            for i, n in enumerate(NETS)]


def test_latency_rows_speed_ups_and_a_refused_net(bt):
    ms = {"GoogLeNet": [80, 100], "GoogLeNet-Tucker": [40, 60], "GoogLeNet-Slim": [20, 25],
          "GoogLeNet-Slim-Tucker": [10, 20], "SqueezeNet v1.0": [30, 40]}
    rows = bt.latency_rows(NETS, [timed(n, ms[n]) for n in NETS if n in ms],
                           {"SqueezeNet v1.1": "layer 'pool10': refused"})
    assert [r["model"] for r in rows] == NETS
    st = rows[3]
    assert (st["best_ms"], st["median_ms"]) == pytest.approx((10, 15))
    assert (st["speedup_best"], st["speedup_median"]) == pytest.approx((8.0, 6.0))
    assert rows[5]["best_ms"] is None and rows[5]["note"] == "layer 'pool10': refused"
    t = bt.speed_targets(rows)
    assert t["slim_tucker_speedup_best"] == pytest.approx(8.0)
    assert t["slim_tucker_vs_squeezenet_best"] == pytest.approx(3.0)
    assert t["slim_tucker_vs_squeezenet_median"] == pytest.approx(35 / 15)

    # GoogLeNet itself refused: times, but no speed-ups
    rows = bt.latency_rows(NETS[:2], [timed(NETS[1], [5])], {NETS[0]: "no"})
    assert rows[0]["note"] == "no" and rows[1]["best_ms"] == pytest.approx(5) and rows[1]["speedup_best"] is None
    assert bt.speed_targets(rows)["slim_tucker_speedup_best"] is None


def test_markdown_table_has_one_column_block_per_engine(bt):
    ms = [100, 50, 25, 12.5, 40, 20]
    caffe = bt.latency_rows(NETS, [timed(n, [m, 2 * m, 2 * m]) for n, m in zip(NETS, ms)], {})
    ort = bt.latency_rows(NETS, [timed(n, [m / 2, m, m]) for n, m in zip(NETS[:-1], ms)],
                          {"SqueezeNet v1.1": "layer 'a|b'\n refused"})
    text = bt.markdown_table(static(), [(bt.engine_title("caffe", None), caffe),
                                        (bt.engine_title("onnxruntime", 1), ort)])
    lines = text.splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert head == ["model",
                    "Caffe: best ms", "Caffe: median ms", "Caffe: speed-up (best / median)",
                    "onnxruntime, 1 thread: best ms", "onnxruntime, 1 thread: median ms",
                    "onnxruntime, 1 thread: speed-up (best / median)",
                    "params", "GMACs", "file MB"]
    assert lines[1] == "|---|" + "---:|" * 9
    assert len(lines) == 2 + len(NETS)
    assert lines[2] == "| GoogLeNet | 100.0 | 200.0 | 1.00x | 50.0 | 100.0 | 1.00x | 1.00 M | 1.00 | 2.00 |"
    assert lines[5].startswith("| GoogLeNet-Slim-Tucker | 12.5 | 25.0 | 8.00x / 8.00x | 6.2 | 12.5 | 8.00x / 8.00x |")
    # the refused net: a note in its engine's block (a '|' escaped, one line), the other blocks as usual
    assert lines[7] == ("| SqueezeNet v1.1 | 20.0 | 40.0 | 5.00x / 5.00x | not run: layer 'a\\|b' refused | - | - "
                        "| 6.00 M | 0.17 | 2.00 |")
    assert bt.engine_title("ncnn", 2) == "ncnn, 2 threads"


def test_markdown_table_rows_must_line_up(bt):
    rows = bt.latency_rows(NETS[::-1], [timed(n, [1]) for n in NETS], {})
    with pytest.raises(ValueError, match="not GoogLeNet"):
        bt.markdown_table(static(), [("Caffe", rows)])


def test_engines_option(bt):
    assert bt.parse_engines("caffe, ONNXRuntime,ncnn,caffe") == ["caffe", "onnxruntime", "ncnn"]
    with pytest.raises(RebirthError, match="unknown engine 'tflite'"):
        bt.parse_engines("caffe,tflite")
