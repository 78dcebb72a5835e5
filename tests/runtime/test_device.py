"""On-device timing: the rebirth-time program and the devices that run it (engine/remote.py).

* The adb transport is tested at the process boundary: tests/stand_in/adb, put first on PATH,
  emulates `adb devices/push/shell/getprop` against a temporary directory and runs shell lines
  here (there is no phone on this machine). With a stand-in timing program (a script printing
  the program's JSON) these tests need no Caffe; with the real host build of rebirth-time they
  run the whole way through.
* The host build of rebirth-time is compared with `--device cpu` (pycaffe) on the built-in nets:
  the same layers, blob shapes and blob memory.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import IN_CI, ROOT, STAND_IN, TINY, FakeDevice, run, write_random_weights

from deeprebirth.caffe import netio
from deeprebirth.errors import RebirthError
from deeprebirth.runtime import bench
from deeprebirth.runtime.devices import get_device, remote

# A stand-in for rebirth-time: answers with the program's JSON for the layers of each prototxt,
# records its arguments, and fails like a Caffe CHECK when FAKE_PROGRAM_FAIL is set.
FAKE_PROGRAM = r'''
import json, os, re, sys
args = sys.argv[1:]
if os.environ.get("FAKE_PROGRAM_LOG"):
    open(os.environ["FAKE_PROGRAM_LOG"], "a").write(" ".join(args) + "\n")
if os.environ.get("FAKE_PROGRAM_FAIL"):
    sys.stderr.write("I1123 net.cpp:52] Initializing net\nF1123 net.cpp:99] Check failed: boom on the device\n")
    sys.exit(134)
runs = int(args[args.index("--runs") + 1])
models = []
for path in [a for a in args if a.endswith(".prototxt")]:
    layers = re.findall(r'name: "([^"]+)"\s+type: "([^"]+)"', open(path).read())
    names, types = [n for n, _ in layers], [t for _, t in layers]
    per = [[0.5 + i for i in range(len(names))] for _ in range(runs)]
    models.append({"model": path, "layer_names": names, "layer_types": types, "blob_shapes": {},
                   "runs_ms": [sum(r) for r in per], "layers_runs_ms": per if "--layers" in args else [],
                   "allocated_bytes": 1234, "peak_rss_bytes": 5678, "process_peak_rss_bytes": 9999,
                   "memory_method": "stand-in"})
print(json.dumps({"program": "rebirth-time", "blas_threads": 1, "models": models}))
'''


@pytest.fixture
def fake_phone(tmp_path, monkeypatch):
    """The stand-in adb first on PATH, one authorized arm64 device, a stand-in timing program."""
    program = tmp_path / "fake-rebirth-time"
    program.write_text(f"#!{sys.executable}\n{FAKE_PROGRAM}")
    program.chmod(0o755)
    root = tmp_path / "phone"
    root.mkdir()
    monkeypatch.setenv("PATH", f"{STAND_IN}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ADB_ROOT", str(root))
    monkeypatch.setenv("FAKE_ADB_LOG", str(tmp_path / "adb.log"))
    monkeypatch.setenv("FAKE_PROGRAM_LOG", str(tmp_path / "program.log"))
    monkeypatch.setenv("FAKE_ADB_DEVICES", "FAKE0001:device")
    monkeypatch.setenv(remote.BINARY_ENV, str(program))
    monkeypatch.setenv("DEEPREBIRTH_CACHE", str(tmp_path / "cache"))
    proto = tmp_path / "tiny.prototxt"
    proto.write_text(TINY)
    return {"root": root, "adb_log": tmp_path / "adb.log", "program_log": tmp_path / "program.log",
            "proto": proto, "tmp": tmp_path}


@pytest.mark.slow
def test_adb_pushes_runs_reads_back_and_cleans_up(fake_phone):
    p = fake_phone["proto"]
    res = run("bench", p, p, "--device", "adb", "--runs", "3", "--warmup", "1", "--layers", "--threads", "2",
                    "--cpu-mask", "1", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["device"] == "adb:FAKE0001" and doc["device_info"]["abi"] == "arm64-v8a"
    assert "Stand-in phone" in doc["device_description"]
    a, b = doc["models"]
    assert a["runs"] == 3 and [r["name"] for r in a["layers"]][:2] == ["data", "conv"]
    assert a["allocated_bytes"] == 1234 and a["peak_rss_bytes"] == 5678
    assert a["memory_bytes"] > 0  # from shapes, on the host
    assert doc["ratios"]["models"][b["model"]]["best"] == pytest.approx(1.0)
    adb = fake_phone["adb_log"].read_text().splitlines()
    pushed = sorted(line.split()[-1] for line in adb if " push " in f" {line}")
    assert pushed == [f"{remote.ADB_DIR}/{n}" for n in ("model0.prototxt", "model1.prototxt", "rebirth-time")]
    assert any("taskset 1 ./rebirth-time" in line for line in adb)
    assert adb[-1].endswith(f"shell rm -rf {remote.ADB_DIR}")
    assert not (fake_phone["root"] / remote.ADB_DIR.lstrip("/")).exists()
    (call,) = fake_phone["program_log"].read_text().splitlines()  # one process for both models
    assert call.startswith("model0.prototxt model1.prototxt ") and "--threads 2" in call and "--layers" in call


@pytest.mark.slow
def test_adb_report_and_weights(fake_phone, monkeypatch):
    p = fake_phone["proto"]
    w = fake_phone["tmp"] / "tiny.caffemodel"
    write_random_weights(netio.parse_net_text(TINY), w)
    monkeypatch.setenv("FAKE_ADB_DEVICES", "AAA:device,BBB:device")
    res = run("bench", p, "--device", "adb:BBB", "-w", w, "--runs", "2", "--layers")
    assert res.exit_code == 0, res.output
    assert "device: adb:BBB" in res.stdout and "per-layer forward time" in res.stdout
    assert "--weights model0.caffemodel" in fake_phone["program_log"].read_text()
    assert any(line.startswith("-s BBB push") and line.endswith("model0.caffemodel")
               for line in fake_phone["adb_log"].read_text().splitlines())


@pytest.mark.parametrize("devices, spec, expected", [
    ("", "adb", "adb sees no device"),
    ("AAA:device,BBB:device", "adb", "choose one with --device adb:SERIAL"),
    ("AAA:device", "adb:CCC", "adb sees no device 'CCC'"),
    ("AAA:unauthorized", "adb", "device AAA is unauthorized"),
    ("AAA:offline", "adb", "device AAA is offline"),
])
def test_adb_device_errors(fake_phone, monkeypatch, devices, spec, expected):
    monkeypatch.setenv("FAKE_ADB_DEVICES", devices)
    res = run("bench", fake_phone["proto"], "--device", spec, "--runs", "1")
    assert res.exit_code == 1 and expected in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_adb_without_adb_on_path(fake_phone, monkeypatch):
    monkeypatch.setenv("PATH", str(fake_phone["tmp"]))  # no adb there
    res = run("bench", fake_phone["proto"], "--device", "adb", "--runs", "1")
    assert res.exit_code == 1 and "adb is not on PATH" in res.output and "apt-get install adb" in res.output


@pytest.mark.slow
def test_adb_abi_without_a_build_says_which_build(fake_phone, monkeypatch):
    monkeypatch.delenv(remote.BINARY_ENV)
    monkeypatch.setenv("FAKE_ADB_ABI", "armeabi-v7a")
    res = run("bench", fake_phone["proto"], "--device", "adb", "--runs", "1")
    assert res.exit_code == 1
    assert "no rebirth-time built for ABI armeabi-v7a" in res.output
    assert "scripts/build_device.sh --ndk NDK_DIR --abi armeabi-v7a" in res.output
    monkeypatch.setenv("FAKE_ADB_ABI", "mips")
    res = run("bench", fake_phone["proto"], "--device", "adb", "--runs", "1")
    assert res.exit_code == 1 and "there is no build for mips" in res.output
    # A build in the cache is found by ABI.
    built = fake_phone["tmp"] / "cache" / "device-android-arm64-v8a-api24" / "bin" / "rebirth-time"
    built.parent.mkdir(parents=True)
    built.write_text(f"#!{sys.executable}\n{FAKE_PROGRAM}")
    built.chmod(0o755)
    monkeypatch.setenv("FAKE_ADB_ABI", "arm64-v8a")
    res = run("bench", fake_phone["proto"], "--device", "adb", "--runs", "1", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["device_info"]["binary"] == str(built)


@pytest.mark.slow
def test_adb_failing_run_shows_stderr_tail_and_cleans_up(fake_phone, monkeypatch):
    monkeypatch.setenv("FAKE_PROGRAM_FAIL", "1")
    res = run("bench", fake_phone["proto"], "--device", "adb", "--runs", "1")
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "rebirth-time failed on --device adb" in res.output and "exit 134" in res.output
    assert "Check failed: boom on the device" in res.output
    assert not (fake_phone["root"] / remote.ADB_DIR.lstrip("/")).exists()


def test_device_names_and_options(fake_phone, monkeypatch):
    assert get_device("host").name == "host"
    assert get_device("adb:XYZ").name == "adb:XYZ"
    assert get_device("ssh://pi@board:2222").transport.dest == "pi@board"
    with pytest.raises(RebirthError, match="expected ssh://"):
        get_device("ssh://")
    with pytest.raises(RebirthError, match="hexadecimal CPU mask"):
        get_device("adb", cpu_mask="big")
    with pytest.raises(RebirthError, match="for device cpu set OPENBLAS_NUM_THREADS"):
        get_device("cpu", threads=2)
    monkeypatch.delenv(remote.BINARY_ENV)
    res = run("bench", fake_phone["proto"], "--device", "qemu-aarch64", "--runs", "1")
    assert res.exit_code == 1
    assert ("scripts/build_device.sh --cross aarch64-linux-gnu" in res.output
            or "qemu-aarch64 is not on PATH" in res.output)


def test_qemu_warns_that_its_timings_are_not_real(fake_phone, monkeypatch):
    # The stand-in program runs directly when "qemu-aarch64" is a script that just runs it.
    qemu = fake_phone["tmp"] / "bin" / "qemu-aarch64"
    qemu.parent.mkdir()
    qemu.write_text('#!/bin/sh\nexec "$@"\n')
    qemu.chmod(0o755)
    monkeypatch.setenv("PATH", f"{qemu.parent}{os.pathsep}{os.environ['PATH']}")
    res = run("bench", fake_phone["proto"], "--device", "qemu-aarch64", "--runs", "1")
    assert res.exit_code == 0, res.output
    assert "say nothing about real hardware" in res.stderr
    assert "warning: qemu-aarch64 emulates" in res.stdout


def test_ssh_runs_in_a_temporary_directory_and_removes_it(fake_phone, monkeypatch):
    monkeypatch.setenv("FAKE_SSH_LOG", str(fake_phone["tmp"] / "ssh.log"))
    res = run("bench", fake_phone["proto"], "--device", "ssh://pi@board:2222", "--runs", "2", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["device"] == "ssh" and doc["device_info"]["arch"] == "aarch64"
    log = (fake_phone["tmp"] / "ssh.log").read_text().splitlines()
    scp = [line for line in log if line.startswith("scp ")]
    assert len(scp) == 2 and all(" pi@board:/tmp/rebirth." in line for line in scp)
    workdir = scp[0].split(":", 1)[1].rsplit("/", 1)[0]
    assert log[-1] == f"ssh pi@board rm -rf {workdir}" and not os.path.exists(workdir)
    monkeypatch.delenv(remote.BINARY_ENV)
    monkeypatch.setenv("FAKE_SSH_ARCH", "armv7l")
    res = run("bench", fake_phone["proto"], "--device", "ssh://board", "--runs", "1")
    assert res.exit_code == 1 and "scripts/build_device.sh --cross arm-linux-gnueabihf" in res.output


def test_cooldown_rests_before_every_turn_but_the_first(monkeypatch):
    dev, rests = FakeDevice(), []
    monkeypatch.setattr(bench.time, "sleep", lambda s: rests.append((s, list(dev.log))))
    bench.measure([(x, dev.open(x)) for x in "AB"], runs=1, warmup=1, cooldown=2.5)
    assert dev.log == list("ABAB")
    assert rests == [(2.5, ["A"]), (2.5, ["A", "B"]), (2.5, ["A", "B", "A"])]


# ------------------------------------------------------------------------------------------------
# The real program (host build against the engine's Caffe)


@pytest.fixture(scope="session")
def host_program(caffe):
    path = remote.host_binary()
    if path is None:
        proc = subprocess.run(["bash", str(ROOT / "scripts" / "build_rebirth_time.sh"), sys.executable],
                              capture_output=True, text=True, cwd=ROOT)
        path = remote.host_binary()
        if path is None:
            msg = f"scripts/build_rebirth_time.sh failed: {proc.stderr.strip()[-300:]}"
            if IN_CI:
                pytest.fail(msg)
            pytest.skip(msg)
    return path


@pytest.mark.parametrize("name", ["googlenet", "alexnet", "resnet50"])
@pytest.mark.slow
def test_host_program_agrees_with_cpu_device(host_program, name, monkeypatch):
    from deeprebirth.runtime.devices.cpu import CpuSession

    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    (prep,) = bench.prepare([name], batch=1)
    (got,) = get_device("host").measure_models([prep.model], [None], runs=1, warmup=0, layers=True)
    cpu = CpuSession(prep.model)
    try:
        cpu.forward()
        assert got.layer_names == cpu.layer_names and got.layer_types == cpu.layer_types
        shapes = {k: list(b.data.shape) for k, b in cpu.caffe_net.net.blobs.items()}
        assert got.blob_shapes == shapes
        assert got.memory.allocated_bytes == cpu.caffe_net.allocated_bytes()
    finally:
        cpu.close()
    assert len(got.forward_s) == 1 and len(got.layers_s) == 1 and len(got.layers_s[0]) == len(got.layer_names)
    assert got.memory.peak_rss_bytes > 0 and got.memory.process_peak_rss_bytes >= got.memory.peak_rss_bytes


@pytest.mark.slow
def test_host_program_through_the_stand_in_adb(host_program, fake_phone, monkeypatch):
    monkeypatch.setenv(remote.BINARY_ENV, str(host_program))
    p = fake_phone["proto"]
    res = run("bench", p, p, "--device", "adb", "--runs", "2", "--warmup", "0", "--layers", "--batch", "2",
                    "--threads", "1", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["device_info"]["blas_threads"] == 1
    for m in doc["models"]:
        assert m["runs"] == 2 and 0 < m["best_ms"] <= m["median_ms"]
        kinds = {r["name"]: (r["type"], r["kind"]) for r in m["layers"]}
        assert kinds["conv"] == ("Convolution", "tensor") and ("Split", "non-tensor") in kinds.values()
        assert m["memory_bytes"] == m["allocated_bytes"]  # batch 2 on both sides


def test_host_program_errors(host_program, tmp_path):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('layer { name: "x" type: "NoSuchLayer" top: "x" }\n')
    proc = subprocess.run([str(host_program), str(bad), "--runs", "1"], capture_output=True, text=True)
    assert proc.returncode != 0 and "NoSuchLayer" in proc.stderr and proc.stdout == ""
    proc = subprocess.run([str(host_program), str(bad), "--runs", "0"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--runs expects an integer >= 1" in proc.stderr


# ------------------------------------------------------------------------------------------------
# The build script's checks (nothing is built)


@pytest.mark.parametrize("args, expected", [
    ([], "give one of --ndk DIR, --cross TRIPLE, --host"),
    (["--ndk", "{tmp}"], "is not an Android NDK (no build/cmake/android.toolchain.cmake)"),
    (["--cross", "mips-linux-gnu"], "only aarch64-* and arm-* triples are known"),
    (["--host", "--frobnicate"], "unknown option: --frobnicate"),
])
def test_build_device_script_rejects_bad_arguments(tmp_path, args, expected):
    args = [a.format(tmp=tmp_path) for a in args]
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "build_device.sh"), *args], capture_output=True,
                          text=True, env={**os.environ, "DEEPREBIRTH_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 1 and expected in proc.stderr
    assert not (tmp_path / "cache").exists()  # nothing was fetched or built
