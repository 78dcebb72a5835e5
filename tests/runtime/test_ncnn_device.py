"""`bench --engine ncnn --device host|qemu-aarch64|adb|ssh://...`: each model exported to ncnn and
timed by rebirth-time-ncnn (device/ncnn_time.cpp) on the device (runtime/devices/remote.py).

* The command line built for the program and the parsing of its JSON are pure functions.
* The transports are exercised with a stand-in program (a script that checks the param/bin pairs
  it is given and prints the program's JSON), through a stand-in qemu and the stand-in adb.
* The real program: the host build (`scripts/build_device.sh --host --engine ncnn`), when it is in
  the cache; without it the test is skipped, and fails under CI=true.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import IN_CI, ROOT, STAND_IN, TINY, error_line, run

from deeprebirth.errors import RebirthError
from deeprebirth.runtime import bench
from deeprebirth.runtime.devices import get_device, remote

# A stand-in for rebirth-time-ncnn: checks that every MODEL.param has its MODEL.bin beside it and
# starts like an ncnn param file, records its arguments and prints the program's JSON.
FAKE_NCNN_PROGRAM = r'''
import json, os, sys
args = sys.argv[1:]
if os.environ.get("FAKE_PROGRAM_LOG"):
    open(os.environ["FAKE_PROGRAM_LOG"], "a").write(" ".join(args) + "\n")
runs = int(args[args.index("--runs") + 1])
models = []
for path in [a for a in args if a.endswith(".param")]:
    lines = open(path).read().splitlines()
    assert lines[0] == "7767517", "not an ncnn param file"
    assert os.path.getsize(path[:-len(".param")] + ".bin") > 0
    layers = [ln.split()[:2] for ln in lines[2:]]
    models.append({"model": path, "layer_names": [n for _, n in layers], "layer_types": [t for t, _ in layers],
                   "runs_ms": [2.0 + r for r in range(runs)], "layers_runs_ms": [], "allocated_bytes": None,
                   "peak_rss_bytes": 4321, "process_peak_rss_bytes": 8765, "memory_method": "stand-in"})
print(json.dumps({"program": "rebirth-time-ncnn", "ncnn_version": "1.0.20261020",
                  "threads": int(args[args.index("--threads") + 1]), "blas_threads": None, "models": models}))
'''


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    """A stand-in program (as the override), a stand-in qemu-aarch64 that just runs it, the
    stand-in adb and ssh first on PATH, an empty build cache and the tiny net."""
    program = tmp_path / "fake-rebirth-time-ncnn"
    program.write_text(f"#!{sys.executable}\n{FAKE_NCNN_PROGRAM}")
    program.chmod(0o755)
    qemu = tmp_path / "bin" / "qemu-aarch64"
    qemu.parent.mkdir()
    qemu.write_text('#!/bin/sh\nexec "$@"\n')
    qemu.chmod(0o755)
    (tmp_path / "phone").mkdir()
    monkeypatch.setenv("PATH", os.pathsep.join([str(qemu.parent), str(STAND_IN), os.environ["PATH"]]))
    monkeypatch.setenv("FAKE_ADB_ROOT", str(tmp_path / "phone"))
    monkeypatch.setenv("FAKE_ADB_LOG", str(tmp_path / "adb.log"))
    monkeypatch.setenv("FAKE_ADB_DEVICES", "FAKE0001:device")
    monkeypatch.setenv("FAKE_PROGRAM_LOG", str(tmp_path / "program.log"))
    monkeypatch.setenv(remote.BINARY_ENV, str(program))
    monkeypatch.setenv("DEEPREBIRTH_CACHE", str(tmp_path / "cache"))
    proto = tmp_path / "tiny.prototxt"
    proto.write_text(TINY)
    return {"tmp": tmp_path, "proto": proto, "program": program, "program_log": tmp_path / "program.log",
            "adb_log": tmp_path / "adb.log", "phone": tmp_path / "phone"}


# ------------------------------------------------------------------------------------------------
# Pure: the command line and the JSON


def test_ncnn_program_command_line():
    assert remote.ncnn_args(["model0.param", "model1.param"], runs=3, warmup=1, seed=0) == [
        "model0.param", "model1.param", "--runs", "3", "--warmup", "1", "--seed", "0", "--threads", "1"]
    assert remote.ncnn_args(["model0.param"], 50, 5, 7, threads=4, cooldown=2.5)[-6:] == [
        "--seed", "7", "--threads", "4", "--cooldown", "2.5"]
    # rebirth-time's own command line is unchanged by the refactoring
    assert remote.caffe_args(["model0.prototxt"], ["model0.caffemodel"], 2, 0, 0, layers=True, threads=2) == [
        "model0.prototxt", "--weights", "model0.caffemodel", "--runs", "2", "--warmup", "0", "--seed", "0",
        "--layers", "--threads", "2"]


def _doc(n: int) -> str:
    return json.dumps({"program": "rebirth-time-ncnn", "threads": 1, "models": [
        {"layer_names": ["data", "conv"], "layer_types": ["Input", "Convolution"], "runs_ms": [1.5, 1.25]}] * n})


def test_parse_output_reads_the_document_and_refuses_in_one_line():
    ok = remote.RunResult(0, _doc(2), "")
    assert remote.parse_output(ok, 2, remote.NCNN_PROGRAM, "qemu-aarch64")["models"][1]["runs_ms"] == [1.5, 1.25]
    cases = [
        (remote.RunResult(2, "", "rebirth-time-ncnn: error: model0.bin: cannot read this file\n"), 1,
         "rebirth-time-ncnn failed on device qemu-aarch64 (exit 2): rebirth-time-ncnn: error: model0.bin"),
        (remote.RunResult(0, "Segmentation fault\n", ""), 1, "printed no JSON document: Segmentation fault"),
        (remote.RunResult(0, json.dumps({"models": [{"layer_names": []}]}), ""), 1, "printed no JSON document"),
        (remote.RunResult(0, json.dumps({"models": ["x"]}), ""), 1, "printed no JSON document"),
        (ok, 3, "rebirth-time-ncnn reported 2 models for 3"),
    ]
    for res, count, expected in cases:
        with pytest.raises(RebirthError) as err:
            remote.parse_output(res, count, remote.NCNN_PROGRAM, "qemu-aarch64")
        assert expected in str(err.value) and "\n" not in str(err.value)


def test_ncnn_devices_and_their_build_commands(stand_in, monkeypatch):
    dev = get_device("qemu-aarch64", engine="ncnn")
    assert isinstance(dev, remote.NcnnProgramDevice) and dev.program == "rebirth-time-ncnn"
    assert type(get_device("qemu-aarch64")) is remote.ProgramDevice
    monkeypatch.delenv(remote.BINARY_ENV)
    for spec, hint in [("qemu-aarch64", "scripts/build_device.sh --engine ncnn --cross aarch64-linux-gnu"),
                       ("host", "scripts/build_device.sh --engine ncnn --host"),
                       ("adb", "scripts/build_device.sh --engine ncnn --ndk NDK_DIR --abi arm64-v8a")]:
        res = run("bench", stand_in["proto"], "--device", spec, "--engine", "ncnn", "--runs", "1")
        line = res.output.strip().splitlines()[-1]  # after qemu's warning
        assert res.exit_code == 1 and "no rebirth-time-ncnn built for" in line and hint in line, res.output


@pytest.mark.parametrize("args, expected", [
    (["--device", "qemu-aarch64", "--layers"], "times whole passes only"),
    (["--device", "qemu-aarch64", "--batch", "2"], "ncnn runs one image at a time"),
    (["--device", "host", "--engine", "onnxruntime"], "or ncnn's rebirth-time-ncnn with --engine ncnn"),
    (["--device", "cpu", "--cpu-mask", "3"], "--cpu-mask applies to devices that run a timing program"),
])
def test_ncnn_device_refusals(stand_in, args, expected):
    engine = [] if "--engine" in args else ["--engine", "ncnn"]
    res = run("bench", stand_in["proto"], *engine, *args, "--runs", "1")
    assert expected in error_line(res)
    assert not stand_in["program_log"].exists()  # refused before anything ran


# ------------------------------------------------------------------------------------------------
# Through the transports, with the stand-in program


def test_qemu_exports_every_model_and_runs_one_process(stand_in):
    p = stand_in["proto"]
    res = run("bench", p, "squeezenet", "--device", "qemu-aarch64", "--engine", "ncnn", "--runs", "3",
              "--warmup", "1", "--threads", "2", "--json")
    assert res.exit_code == 0, res.output
    assert "say nothing about real hardware" in res.stderr
    doc = json.loads(res.stdout)
    assert doc["engine"] == "ncnn" and doc["device"] == "qemu-aarch64"
    assert doc["device_info"]["threads"] == 2 and doc["device_info"]["ncnn_version"] == "1.0.20261020"
    assert doc["device_description"].startswith("rebirth-time-ncnn (ncnn 1.0.20261020, C++, float32) on the aarch64")
    a, b = doc["models"]
    assert a["runs_ms"] == [2.0, 3.0, 4.0] and a["best_ms"] == 2.0 and a["layers"] == []
    assert a["peak_rss_bytes"] == 4321 and a["allocated_bytes"] is None and a["memory_bytes"] > 0
    assert b["model"] == "squeezenet"
    (call,) = stand_in["program_log"].read_text().splitlines()
    assert call == "model0.param model1.param --runs 3 --warmup 1 --seed 0 --threads 2"


@pytest.mark.slow
def test_adb_pushes_the_program_and_each_param_bin_pair(stand_in):
    p = stand_in["proto"]
    res = run("bench", p, p, "--device", "adb", "--engine", "ncnn", "--runs", "2", "--cpu-mask", "1")
    assert res.exit_code == 0, res.output
    assert "rebirth-time-ncnn (ncnn 1.0.20261020" in res.stdout
    adb = stand_in["adb_log"].read_text().splitlines()
    pushed = sorted(line.split()[-1].rsplit("/", 1)[1] for line in adb if " push " in f" {line}")
    assert pushed == ["model0.bin", "model0.param", "model1.bin", "model1.param", "rebirth-time-ncnn"]
    assert any("taskset 1 ./rebirth-time-ncnn model0.param model1.param" in line for line in adb)
    assert adb[-1].endswith(f"shell rm -rf {remote.ADB_DIR}")
    assert not (stand_in["phone"] / remote.ADB_DIR.lstrip("/")).exists()


def test_a_layer_ncnn_cannot_run_is_refused_before_the_device(stand_in):
    net = stand_in["tmp"] / "permute.prototxt"
    net.write_text('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 3 '
                   'dim: 4 } } }\nlayer { name: "p" type: "Permute" bottom: "data" top: "p" '
                   'permute_param { order: 0 order: 2 order: 1 order: 3 } }\n')
    res = run("bench", net, "--device", "qemu-aarch64", "--engine", "ncnn", "--runs", "1")
    assert res.exit_code == 1 and "'Permute' has no ncnn translation" in res.output.strip().splitlines()[-1]
    assert not stand_in["program_log"].exists()


def test_build_script_rejects_an_unknown_engine(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "build_device.sh"), "--host", "--engine", "tflite"],
                          capture_output=True, text=True, env={**os.environ, "DEEPREBIRTH_CACHE": str(tmp_path / "c")})
    assert proc.returncode == 1 and "--engine tflite: expected caffe or ncnn" in proc.stderr
    assert not (tmp_path / "c").exists()


# ------------------------------------------------------------------------------------------------
# The real program: the host build


@pytest.fixture(scope="session")
def ncnn_host_program():
    path = remote.built_binary([f"host-{os.uname().machine}"], remote.NCNN_PROGRAM)
    if path is None:
        msg = ("rebirth-time-ncnn has no host build in the cache: run scripts/build_device.sh --host --engine ncnn "
               "(about 6 min on 2 busy cores)")
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.mark.slow
def test_host_program_times_exported_nets(ncnn_host_program, stand_in, monkeypatch):
    monkeypatch.setenv(remote.BINARY_ENV, str(ncnn_host_program))
    res = run("bench", stand_in["proto"], "squeezenet", "--device", "host", "--engine", "ncnn", "--runs", "2",
              "--warmup", "1", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    ncnn = pytest.importorskip("ncnn")
    assert doc["device_info"]["ncnn_version"] == ncnn.__version__ and doc["device_info"]["threads"] == 1
    for m in doc["models"]:
        assert m["runs"] == 2 and 0 < m["best_ms"] <= m["median_ms"] and m["peak_rss_bytes"] > 0
    # ncnn's own layer list: the exported net's layers, with the Split layers ncnn needs
    (prep,) = bench.prepare([str(stand_in["proto"])])
    (got,) = get_device("host", engine="ncnn").measure_models([prep.model], [None], runs=1, warmup=0, layers=False)
    assert got.layer_types == ["Input", "Convolution", "ReLU", "Pooling", "Split", "InnerProduct", "InnerProduct",
                               "Concat", "Softmax"]
    assert got.raw["outputs"] == ["prob"] and got.raw["blob_shapes"] == {"data": [1, 3, 12, 12]}


@pytest.mark.slow
def test_host_program_errors(ncnn_host_program, stand_in):
    tmp = stand_in["tmp"]
    param = tmp / "m.param"
    param.write_text("7767517\n1 1\nInput data 0 1 data 0=4 1=4 2=3\n")
    for args, expected in [([str(param)], "m.bin: cannot read this file"),
                           ([str(param), "--layers"], "--layers: ncnn gives no per-layer times"),
                           ([str(param), "--runs", "0"], "--runs expects an integer >= 1")]:
        proc = subprocess.run([str(ncnn_host_program), *args], capture_output=True, text=True)
        assert proc.returncode == 2 and expected in proc.stderr and proc.stdout == "", proc.stderr
    (tmp / "m.bin").write_bytes(b"")
    proc = subprocess.run([str(ncnn_host_program), str(param), "--runs", "1"], capture_output=True, text=True)
    assert proc.returncode == 0 and json.loads(proc.stdout)["models"][0]["layer_types"] == ["Input"]
