"""scripts/reproduce/speed.py (the paper's Tables 2 and 4-6 per engine, by `rebirth bench --json`):
the pure parts, on made-up bench documents (no net is timed here), and the commands it runs."""
from __future__ import annotations

from pathlib import Path

import pytest
import speed
from helpers import ROOT

from deeprebirth.cli import main as cli_main


def bench_doc(ms: dict[str, list[float]], memory: bool = True) -> dict:
    """A `rebirth bench --json` document of made-up runs (ms), the first net the reference."""
    models = []
    for name, runs in ms.items():
        srt = sorted(runs)
        models.append({"model": name, "best_ms": srt[0], "median_ms": srt[len(srt) // 2], "runs_ms": runs,
                       "memory_bytes": 2 * 1024 * 1024 if memory else None,
                       "peak_rss_bytes": 3 * 1024 * 1024 if memory else None})
    ref = models[0]
    ratios = {m["model"]: {"best": m["best_ms"] / ref["best_ms"], "median": m["median_ms"] / ref["median_ms"],
                           "paired_median": sorted(a / b for a, b in zip(m["runs_ms"], ref["runs_ms"]))[
                               len(m["runs_ms"]) // 2]} for m in models}
    return {"models": models, "ratios": {"reference": ref["model"], "models": ratios}}


def static():
    return {n: {"params": 1e6 * (i + 1), "macs": 1e9 / (i + 1), "layers": 10 + i, "weight_bytes": 4e6 * (i + 1)}
            for i, n in enumerate(speed.NETS)}


MS = {"GoogLeNet": [80, 100, 90], "GoogLeNet-Tucker": [40, 60, 50], "GoogLeNet-Slim": [20, 25, 22],
      "GoogLeNet-Slim-Tucker": [10, 20, 15], "SqueezeNet v1.0": [30, 40, 35], "SqueezeNet v1.1": [20, 30, 25]}


def test_latency_rows_and_targets():
    rows = speed.latency_rows(bench_doc(MS))
    st = rows[3]
    assert (st["best_ms"], st["median_ms"]) == (10, 15)
    assert (st["speedup_best"], st["speedup_median"]) == pytest.approx((8.0, 6.0))
    t = speed.targets(dict(zip(speed.NETS, rows)), static())
    assert t["slim_tucker_speedup_best"] == pytest.approx(8.0)
    assert t["squeezenet_over_slim_tucker_best"] == pytest.approx(3.0)
    assert t["squeezenet_over_slim_tucker_median"] == pytest.approx(35 / 15)
    assert t["slim_tucker_weights_over_slim"] == pytest.approx(4 / 3)
    # a net missing from an engine's run: no speed-up, no error
    assert speed.targets({"GoogLeNet": rows[0]}, static())["slim_tucker_speedup_best"] is None
    assert "8.00x (best)" in speed.targets_line("Caffe", t) and "target 6x" in speed.targets_line("Caffe", t)


def test_engine_table_has_one_column_block_per_engine_and_notes_a_refusal():
    caffe = speed.latency_rows(bench_doc(MS))
    ort = speed.latency_rows(bench_doc({k: [v / 2 for v in r] for k, r in MS.items()}, memory=False))
    lines = speed.engines_md([(speed.engine_title("caffe", 1), caffe), (speed.engine_title("onnxruntime", 1), ort),
                              (speed.engine_title("ncnn", 2), "rebirth bench failed (exit 1) | a | b")],
                             static(), caffe)
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert head[:4] == ["model", "Caffe: best ms", "Caffe: median ms", "Caffe: speed-up (best / median)"]
    assert head[4] == "onnxruntime, 1 thread: best ms" and head[7] == "ncnn, 2 threads: best ms"
    assert head[-6:] == ["params", "GMACs", "layers", "weights MB", "blob MB (Caffe)", "peak RSS MB (Caffe)"]
    assert lines[1] == "|---|" + "---:|" * (len(head) - 1) and len(lines) == 2 + len(speed.NETS)
    assert lines[2].startswith("| GoogLeNet | 80.0 | 90.0 | 1.00x | 40.0 | 45.0 | 1.00x | not run: ")
    assert "\\|" in lines[2] and lines[2].endswith("| 1.00 M | 1.00 | 10 | 3.81 | 2.0 | 3.0 |")
    assert "| 10.0 | 15.0 | 8.00x / 6.00x | 5.0 | 7.5 | 8.00x / 6.00x |" in lines[5]


def test_table2_rows_beside_the_paper():
    doc = bench_doc({"googlenet": [50, 60, 55], "alexnet": [20, 22, 21], "resnet50": [100, 110, 105]})
    for m, share in zip(doc["models"], (57.7, 15.6, 30.9)):
        m.update(non_tensor_percent=share, non_tensor_percent_iqr=[share - 2, share + 2],
                 layer_sum={"diff_percent": 1.25})
    lines = speed.table2_md(doc)
    assert lines[2] == "| googlenet | 62.0 % | 37.8 % | 57.7 % (56-60) | - | - | 55.0 | +1.2 % |"
    assert lines[3].startswith("| alexnet | 32.1 % | 25.1 % | 15.6 %")
    check = {"googlenet": {"B": {"percent": 58.7, "iqr": [57.1, 60.2]}, "C": {"percent": 61.0, "iqr": [60, 62]}}}
    lines = speed.table2_md(doc, check)
    assert lines[2] == "| googlenet | 62.0 % | 37.8 % | 57.7 % (56-60) | 58.7 % (57-60) | 61.0 % (60-62) | 55.0 | +1.2 % |"
    assert lines[3].endswith("| - | - | 21.0 | +1.2 % |")


def test_every_command_is_one_rebirth_accepts(tmp_path):
    work = tmp_path / "w"
    steps = speed.build_steps(work, 0.5)
    assert [s.name for s in steps] == ["GoogLeNet-Slim", "GoogLeNet-Tucker", "GoogLeNet-Slim-Tucker"]
    for s in steps:
        cli_main.commands[s.cmd[0]].make_context(s.cmd[0], s.cmd[1:] + ["--json"])
    specs = speed.net_specs(work)
    assert [Path(s).name for s in specs[1:4]] == ["googlenet_tucker", "googlenet_slim", "googlenet_slim_tucker"]
    assert all(s.record.parent == Path(s.cmd[-1]) for s in steps)      # each step's record is in its -o folder
    for engine in ("onnxruntime", "ncnn"):
        cmd = ["bench", *specs, "--engine", engine, "--threads", "1", "--runs", "3", "--json"]
        cli_main.commands["bench"].make_context("bench", cmd[1:])
    cli_main.commands["bench"].make_context("bench", [*(str(ROOT / m) for m in speed.FMNIST_NETS),
                                                      "--fit-layer-cost", "--json"])
