"""Devices that time nets with a timing program: ``rebirth-time`` (device/rebirth_time.cpp,
Caffe) or, for ``bench --engine ncnn``, ``rebirth-time-ncnn`` (device/ncnn_time.cpp, ncnn): on a
phone over adb, an ARM board over ssh, the cross-built program under qemu-user, or the host build
on this machine.

One runner serves them all. It writes each model's prototxt (in the engine's dialect, at the
bench's batch size), hands the program, the prototxts and any --weights to the device through
a ``Transport``, runs all models in one process of the program (which interleaves them run by
run, as the CPU device does), reads its JSON back and cleans up. The program measures what
engine/cpu.py measures (whole-pass and per-layer times, distinct blob buffers, peak resident
memory growth of creating and running each net), so `bench` builds the same report from it.
``NcnnProgramDevice`` does the same with each model exported to ncnn (runtime/export) and
rebirth-time-ncnn, which prints the same JSON without per-layer times or blob buffers.

Which program runs where: ``DEEPREBIRTH_DEVICE_BINARY`` names one explicitly; otherwise the
build that matches the device, from scripts/build_device.sh's cache
(``~/.cache/deeprebirth/device-<target>/bin/rebirth-time[-ncnn]``) or, for ``host`` and Caffe,
the engine's cache (scripts/build_rebirth_time.sh).
"""
from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sysconfig
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from deeprebirth.caffe import netio
from deeprebirth.errors import RebirthError
from deeprebirth.graph.dag import Graph
from deeprebirth.graph.model import Model
from deeprebirth.runtime.devices.base import Device, Memory, Session
from deeprebirth.runtime.pycaffe import engine_text

PROGRAM = "rebirth-time"
NCNN_PROGRAM = "rebirth-time-ncnn"
ADB_DIR = "/data/local/tmp/rebirth"
BINARY_ENV = "DEEPREBIRTH_DEVICE_BINARY"
STDERR_LINES = 5
QEMU_WARNING = ("qemu-aarch64 emulates an ARM CPU on this machine: its timings say nothing about real "
                "hardware; use it to check that the cross-built program runs")


def cache_root() -> Path:
    return Path(os.environ.get("DEEPREBIRTH_CACHE") or Path.home() / ".cache" / "deeprebirth")


def engine_dir() -> Path | None:
    """The engine's Caffe cache (scripts/install_caffe.sh), from the .pth file that puts pycaffe
    on the path; None when it is not installed."""
    pth = Path(sysconfig.get_paths()["purelib"]) / "deeprebirth_caffe.pth"
    try:
        first = pth.read_text().strip().splitlines()[0]
    except (OSError, IndexError):
        return None
    return Path(first).parent


def host_binary() -> Path | None:
    d = engine_dir()
    if d is not None and (d / "bin" / PROGRAM).is_file():
        return d / "bin" / PROGRAM
    return None


def built_binary(targets: Sequence[str], program: str = PROGRAM) -> Path | None:
    """The first built ``program`` among cache targets (glob patterns under device-<target>)."""
    for target in targets:
        for d in sorted(glob.glob(str(cache_root() / f"device-{target}"))):
            p = Path(d) / "bin" / program
            if p.is_file():
                return p
    return None


def build_hint(hint: str, program: str) -> str:
    """The build command ``hint`` (of rebirth-time) for ``program``."""
    if program != NCNN_PROGRAM or "build_device.sh" not in hint:
        return hint
    return hint.replace(" (or make device-check)", " (or make device-ncnn)").replace(
        "build_device.sh", "build_device.sh --engine ncnn", 1)


def _tail(text: str, n: int = STDERR_LINES) -> str:
    lines = [ln.strip() for ln in (text or "").replace("\r", "").splitlines() if ln.strip()]
    return " | ".join(lines[-n:]) if lines else "no output on stderr"


@dataclass
class RunResult:
    returncode: int
    stdout: str
    stderr: str


# ------------------------------------------------------------------------------------------------
# Transports


class Transport(ABC):
    """How files reach a device and how the program runs there."""

    name = "?"
    warning: str | None = None
    #: the timing program's file name (rebirth-time, or rebirth-time-ncnn for --engine ncnn)
    program = PROGRAM

    @abstractmethod
    def connect(self) -> dict:
        """Check the device is usable; facts for the report (must include ``arch`` or ``abi``)."""

    @abstractmethod
    def binary(self, info: dict) -> Path:
        """The local path of the program built for this device (a one-line error when none is)."""

    @abstractmethod
    def start(self) -> None:
        """Create the working directory on the device."""

    @abstractmethod
    def put(self, local: Path, name: str) -> None:
        """Copy ``local`` into the working directory as ``name``."""

    @abstractmethod
    def run(self, args: Sequence[str], cpu_mask: str | None) -> RunResult:
        """Run ``./PROGRAM args...`` in the working directory."""

    @abstractmethod
    def finish(self) -> None:
        """Remove the working directory."""


def _override() -> Path | None:
    value = os.environ.get(BINARY_ENV)
    if not value:
        return None
    p = Path(value)
    if not p.is_file():
        raise RebirthError(f"{BINARY_ENV}={value}: no such file")
    return p


class LocalTransport(Transport):
    """This machine: the host build, or a cross build under an emulator (``wrapper``)."""

    def __init__(self, name: str, wrapper: Sequence[str] = (), targets: Sequence[str] = (),
                 build_hint: str = "", warning: str | None = None):
        self.name = name
        self.wrapper = list(wrapper)
        self.targets = list(targets)
        self.build_hint = build_hint
        self.warning = warning
        self.dir: Path | None = None

    def connect(self) -> dict:
        if self.wrapper and shutil.which(self.wrapper[0]) is None:
            raise RebirthError(f"{self.wrapper[0]} is not on PATH (Debian: apt-get install qemu-user)")
        return {"transport": self.name, "arch": os.uname().machine if not self.wrapper else self.wrapper[0]}

    def binary(self, info: dict) -> Path:
        p = _override()
        if p is None and self.name == "host" and self.program == PROGRAM:
            p = host_binary()
        elif p is None:
            p = built_binary(self.targets, self.program)
        if p is None:
            raise RebirthError(f"no {self.program} built for {{opt:device}} {self.name}: "
                               f"run {build_hint(self.build_hint, self.program)}")
        return p

    def start(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="rebirth-device-"))

    def put(self, local: Path, name: str) -> None:
        shutil.copyfile(local, self.dir / name)
        if name == self.program:
            os.chmod(self.dir / name, 0o755)

    def run(self, args: Sequence[str], cpu_mask: str | None) -> RunResult:
        argv = (["taskset", cpu_mask] if cpu_mask else []) + self.wrapper + [f"./{self.program}", *args]
        proc = subprocess.run(argv, cwd=self.dir, capture_output=True, text=True)
        return RunResult(proc.returncode, proc.stdout, proc.stderr)

    def finish(self) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


class ShellTransport(Transport):
    """A device reached by a command that runs shell lines on it (adb shell, ssh)."""

    workdir = ""

    @abstractmethod
    def shell(self, line: str) -> RunResult:
        """Run one shell line on the device."""

    def run(self, args: Sequence[str], cpu_mask: str | None) -> RunResult:
        # stdout and stderr go to files on the device and the exit code is echoed: old adb
        # versions neither keep the two streams apart nor pass the exit code on.
        d = shlex.quote(self.workdir)
        pin = f"taskset {shlex.quote(cpu_mask)} " if cpu_mask else ""
        cmd = " ".join(shlex.quote(a) for a in args)
        res = self.shell(f"cd {d} && {pin}./{self.program} {cmd} > out.json 2> err.txt; echo rebirth-rc=$?")
        m = re.search(r"rebirth-rc=(\d+)", res.stdout)
        if res.returncode != 0 or m is None:
            return RunResult(res.returncode or 1, "", res.stderr or res.stdout)
        out = self.shell(f"cat {d}/out.json")
        err = self.shell(f"tail -n {STDERR_LINES * 4} {d}/err.txt")
        return RunResult(int(m.group(1)), out.stdout.replace("\r\n", "\n"), err.stdout)

    def finish(self) -> None:
        if self.workdir:
            self.shell(f"rm -rf {shlex.quote(self.workdir)}")


#: Android ABIs to the build targets that run on them, best first (the static Linux build of
#: the same architecture runs on Android too, but has not been tried on a phone).
ABI_TARGETS = {
    "arm64-v8a": (["android-arm64-v8a-api*", "aarch64-linux-gnu"],
                  "scripts/build_device.sh --ndk NDK_DIR --abi arm64-v8a"),
    "armeabi-v7a": (["android-armeabi-v7a-api*", "arm-linux-gnueabihf"],
                    "scripts/build_device.sh --ndk NDK_DIR --abi armeabi-v7a"),
}
#: `uname -m` of an ssh host to build targets.
ARCH_TARGETS = {
    "aarch64": (["aarch64-linux-gnu"], "scripts/build_device.sh --cross aarch64-linux-gnu"),
    "arm64": (["aarch64-linux-gnu"], "scripts/build_device.sh --cross aarch64-linux-gnu"),
    "armv7l": (["arm-linux-gnueabihf"], "scripts/build_device.sh --cross arm-linux-gnueabihf"),
    "x86_64": (["host-x86_64"], "scripts/build_device.sh --host (on an x86_64 machine)"),
}


def _binary_for(table: dict, key: str, what: str, program: str = PROGRAM) -> Path:
    """``program`` for a device whose ABI or architecture is ``key`` (``table``: key -> (cache
    targets, build command)); the override when set; a one-line error naming the build to run."""
    override = _override()
    if override:
        return override
    if key not in table:
        raise RebirthError(f"{what}: there is no build for {key} (known: {', '.join(table)})")
    targets, hint = table[key]
    p = built_binary(targets, program)
    if p is None:
        raise RebirthError(f"no {program} built for {what}: run {build_hint(hint, program)}")
    return p


class AdbTransport(ShellTransport):
    name = "adb"
    workdir = ADB_DIR

    def __init__(self, serial: str | None = None):
        self.serial = serial or None

    def _adb(self, *args: str) -> RunResult:
        argv = ["adb"] + (["-s", self.serial] if self.serial else []) + list(args)
        try:
            proc = subprocess.run(argv, capture_output=True, text=True)
        except FileNotFoundError:
            raise RebirthError("adb is not on PATH (Debian: apt-get install adb; or the Android SDK's "
                               "platform-tools)") from None
        return RunResult(proc.returncode, proc.stdout, proc.stderr)

    def shell(self, line: str) -> RunResult:
        return self._adb("shell", line)

    def connect(self) -> dict:
        if shutil.which("adb") is None:
            raise RebirthError("adb is not on PATH (Debian: apt-get install adb; or the Android SDK's platform-tools)")
        states = dict(self._adb_devices())
        if self.serial is None:
            if not states:
                raise RebirthError("adb sees no device: connect a phone with USB debugging on (adb devices lists none)")
            if len(states) > 1:
                raise RebirthError(f"adb sees {len(states)} devices ({', '.join(states)}): "
                                   "choose one with {opt:device} adb:SERIAL")
            self.serial = next(iter(states))
        elif self.serial not in states:
            raise RebirthError(f"adb sees no device '{self.serial}' (devices: {', '.join(states) or 'none'})")
        state = states[self.serial]
        if state == "unauthorized":
            raise RebirthError(f"device {self.serial} is unauthorized: unlock it and accept the "
                               "USB debugging prompt, then run again")
        if state != "device":
            raise RebirthError(f"device {self.serial} is {state}, not ready (adb devices)")
        abi = self._getprop("ro.product.cpu.abi")
        if not abi:
            raise RebirthError(f"device {self.serial}: getprop ro.product.cpu.abi answered nothing")
        return {"transport": "adb", "serial": self.serial, "abi": abi,
                "model": self._getprop("ro.product.model"), "android": self._getprop("ro.build.version.release")}

    def _adb_devices(self) -> list[tuple[str, str]]:
        """``adb devices``: (serial, state) pairs."""
        try:
            proc = subprocess.run(["adb", "devices"], capture_output=True, text=True)
        except FileNotFoundError:
            raise RebirthError("adb is not on PATH (Debian: apt-get install adb)") from None
        if proc.returncode != 0:
            raise RebirthError(f"adb devices failed: {_tail(proc.stderr, 1)}")
        out = []
        for line in proc.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 2 and not line.startswith(("List of devices", "*")):
                out.append((parts[0], parts[1]))
        return out

    def _getprop(self, key: str) -> str:
        res = self.shell(f"getprop {key}")
        return res.stdout.strip() if res.returncode == 0 else ""

    def binary(self, info: dict) -> Path:
        return _binary_for(ABI_TARGETS, info["abi"], f"ABI {info['abi']} of device {self.serial}", self.program)

    def start(self) -> None:
        res = self.shell(f"rm -rf {ADB_DIR} && mkdir -p {ADB_DIR}")
        if res.returncode != 0:
            raise RebirthError(f"device {self.serial}: cannot create {ADB_DIR}: {_tail(res.stderr or res.stdout, 1)}")

    def put(self, local: Path, name: str) -> None:
        res = self._adb("push", str(local), f"{ADB_DIR}/{name}")
        if res.returncode != 0:
            raise RebirthError(f"adb push {local} failed: {_tail(res.stderr or res.stdout, 1)}")
        if name == self.program:
            self.shell(f"chmod 755 {ADB_DIR}/{name}")


class SshTransport(ShellTransport):
    """``ssh://[user@]host[:port]``: an ARM board (a Raspberry Pi, say) with a POSIX shell."""

    name = "ssh"

    def __init__(self, spec: str):
        m = re.fullmatch(r"ssh://(?:([^@/:]+)@)?([^@/:]+)(?::(\d+))?/?", spec)
        if not m:
            raise RebirthError(f"{{opt:device}} {spec}: expected ssh://[user@]host[:port]")
        self.user, self.host, self.port = m.group(1), m.group(2), m.group(3)
        self.dest = f"{self.user}@{self.host}" if self.user else self.host

    def _opts(self, port_flag: str) -> list[str]:
        return ["-o", "BatchMode=yes"] + ([port_flag, self.port] if self.port else [])

    def shell(self, line: str) -> RunResult:
        try:
            proc = subprocess.run(["ssh", *self._opts("-p"), self.dest, line], capture_output=True, text=True)
        except FileNotFoundError:
            raise RebirthError("ssh is not on PATH (Debian: apt-get install openssh-client)") from None
        return RunResult(proc.returncode, proc.stdout, proc.stderr)

    def connect(self) -> dict:
        res = self.shell("uname -m")
        if res.returncode != 0:
            raise RebirthError(f"ssh {self.dest} failed: {_tail(res.stderr, 1)}")
        return {"transport": "ssh", "host": self.dest, "arch": res.stdout.strip()}

    def binary(self, info: dict) -> Path:
        return _binary_for(ARCH_TARGETS, info["arch"], f"{info['arch']} ({self.dest})", self.program)

    def start(self) -> None:
        res = self.shell("mktemp -d /tmp/rebirth.XXXXXX")
        if res.returncode != 0 or not res.stdout.strip():
            raise RebirthError(f"ssh {self.dest}: cannot create a working directory: {_tail(res.stderr, 1)}")
        self.workdir = res.stdout.strip()

    def put(self, local: Path, name: str) -> None:
        try:
            proc = subprocess.run(["scp", "-q", *self._opts("-P"), str(local), f"{self.dest}:{self.workdir}/{name}"],
                                  capture_output=True, text=True)
        except FileNotFoundError:
            raise RebirthError("scp is not on PATH (Debian: apt-get install openssh-client)") from None
        if proc.returncode != 0:
            raise RebirthError(f"scp {local} to {self.dest} failed: {_tail(proc.stderr, 1)}")


# ------------------------------------------------------------------------------------------------
# The device


@dataclass
class DeviceRun:
    """What the program measured for one model (times in seconds, as bench.Measurement keeps them)."""

    layer_names: list[str]
    layer_types: list[str]
    forward_s: list[float]
    layers_s: list[list[float]]
    memory: Memory
    blob_shapes: dict[str, list[int]] = field(default_factory=dict)
    raw: dict = field(default_factory=dict)


class ProgramDevice(Device):
    """A device that runs whole benchmarks at once in ``rebirth-time`` (``bench.run`` calls
    ``measure_models`` instead of opening sessions)."""

    def __init__(self, transport: Transport, threads: int | None = None, cpu_mask: str | None = None,
                 cooldown: float = 0.0):
        self.transport = transport
        self.threads = threads
        if cpu_mask is not None and not re.fullmatch(r"(0x)?[0-9a-fA-F]+", cpu_mask):
            raise RebirthError(f"{{opt:cpu_mask}} {cpu_mask}: expected a hexadecimal CPU mask such as f0")
        self.cpu_mask = cpu_mask
        self.cooldown = cooldown
        self.info: dict = {}
        self.warning = transport.warning

    @property
    def program(self) -> str:
        return self.transport.program

    @property
    def name(self) -> str:
        serial = getattr(self.transport, "serial", None)
        return f"adb:{serial}" if serial else self.transport.name

    def where(self) -> str:
        """The device, in words, for the report."""
        i = self.info
        words = {"adb": lambda: f"Android {i.get('android', '?')} phone {i.get('model', '?')} ({i.get('abi')}) "
                                "over adb",
                 "ssh": lambda: f"{i.get('host')} ({i.get('arch')}) over ssh",
                 "qemu-aarch64": lambda: "the aarch64 build under qemu-user on this machine (emulated: not real "
                                         "timings)",
                 "host": lambda: f"this machine ({i.get('arch')}), the host build"}
        return words.get(self.transport.name, lambda: "?")()

    @property
    def description(self) -> str:
        threads = self.info.get("blas_threads") or "default"
        extra = f", cpu mask {self.cpu_mask}" if self.cpu_mask else ""
        return (f"{PROGRAM} (Caffe CPU, C++) on {self.where()}; BLAS threads: {threads}{extra}; "
                "times from std::chrono::steady_clock around Net::ForwardFromTo")

    def open(self, model: Model, seed: int = 0) -> Session:
        raise RebirthError(f"{{opt:device}} {self.name} times whole benchmarks in {self.program}; use bench.run")

    def check(self, weight_files: Sequence[str | None], layers: bool) -> None:
        """Refuse what this program cannot do, before connecting to the device."""
        if weight_files and any(weight_files) and not all(weight_files):
            raise RebirthError(f"{{opt:device}} {self.name} needs {{opt:weights}} for every model or for none")

    def inputs(self, models: Sequence[Model], weight_files: Sequence[str | None], tmp: Path, runs: int,
               warmup: int, layers: bool, seed: int) -> tuple[list[tuple[Path, str]], list[str]]:
        """The files to put next to the program (local path, name there) and its arguments."""
        files: list[tuple[Path, str]] = []
        for k, m in enumerate(models):
            path = tmp / f"model{k}.prototxt"
            path.write_text(engine_text(netio.strip_weights(m.net)))
            files.append((path, path.name))
        for k, w in enumerate(weight_files or []):
            if w:
                files.append((Path(w), f"model{k}.caffemodel"))
        weights = [f"model{k}.caffemodel" for k, w in enumerate(weight_files or []) if w]
        return files, caffe_args([name for _, name in files[:len(models)]], weights, runs, warmup, seed, layers,
                                 self.threads, self.cooldown)

    def measure_models(self, models: Sequence[Model], weight_files: Sequence[str | None], runs: int, warmup: int,
                       layers: bool, seed: int = 0, progress: Callable[[int], None] | None = None) -> list[DeviceRun]:
        """Run every model in one process of the program on the device; one DeviceRun per model."""
        self.check(weight_files, layers)
        self.info = dict(self.transport.connect())
        program = self.transport.binary(self.info)
        self.info["binary"] = str(program)
        with tempfile.TemporaryDirectory(prefix="rebirth-bench-") as tmp:
            files, args = self.inputs(models, weight_files, Path(tmp), runs, warmup, layers, seed)
            self.transport.start()
            try:
                for local, name in [(program, self.program), *files]:
                    self.transport.put(local, name)
                res = self.transport.run(args, self.cpu_mask)
            finally:
                self.transport.finish()
        doc = parse_output(res, len(models), self.program, self.name)
        self.info["blas_threads"] = doc.get("blas_threads")
        self.info["hardware_threads"] = doc.get("hardware_threads")
        self.info.update({k: doc[k] for k in ("threads", "ncnn_version") if k in doc})
        if progress is not None:
            progress(len(models) * (runs + warmup))
        return [self._run_of(m, e) for m, e in zip(models, doc["models"])]

    @staticmethod
    def _run_of(model: Model, e: dict) -> DeviceRun:
        graph = Graph(model.net, strict=False)
        mem = Memory(blob_bytes=graph.memory_bytes, allocated_bytes=e.get("allocated_bytes"),
                     peak_rss_bytes=e.get("peak_rss_bytes"), process_peak_rss_bytes=e.get("process_peak_rss_bytes"),
                     method=e.get("memory_method", ""))
        if graph.notes:
            mem.extra["notes"] = list(graph.notes)
        mem.extra["probe"] = {k: e.get(k) for k in ("baseline_rss_bytes", "rss_after_bytes", "peak_reset")}
        return DeviceRun(list(e["layer_names"]), list(e["layer_types"]), [t / 1000.0 for t in e["runs_ms"]],
                         [[t / 1000.0 for t in run] for run in e.get("layers_runs_ms", [])], mem,
                         dict(e.get("blob_shapes", {})), e)


class NcnnProgramDevice(ProgramDevice):
    """``bench --engine ncnn --device ...``: every model exported to ncnn (runtime/export, as
    ``export --to ncnn`` writes it) and timed by rebirth-time-ncnn on the device. Whole passes
    only, batch 1, ncnn threads ``--threads`` (default 1, as engines/ncnn_engine.py)."""

    @property
    def description(self) -> str:
        i = self.info
        extra = f", cpu mask {self.cpu_mask}" if self.cpu_mask else ""
        return (f"{NCNN_PROGRAM} (ncnn {i.get('ncnn_version') or '?'}, C++, float32) on {self.where()}; "
                f"threads: {i.get('threads') or self.threads or 1}{extra}; "
                "times from std::chrono::steady_clock around one extractor's input + extract")

    def check(self, weight_files: Sequence[str | None], layers: bool) -> None:
        if layers:
            raise RebirthError(f"{NCNN_PROGRAM} times whole passes only (no per-layer times): leave out "
                               "{opt:layers} and {opt:plot}, or use {opt:engine} caffe")

    def inputs(self, models: Sequence[Model], weight_files: Sequence[str | None], tmp: Path, runs: int,
               warmup: int, layers: bool, seed: int) -> tuple[list[tuple[Path, str]], list[str]]:
        from deeprebirth.runtime import export  # noqa: PLC0415

        files: list[tuple[Path, str]] = []
        for k, m in enumerate(models):
            for name, data in export.export(m, "ncnn", batch=None).items():
                path = tmp / f"model{k}{Path(name).suffix}"   # model.param -> model0.param, model.bin -> model0.bin
                path.write_bytes(data)
                files.append((path, path.name))
        params = [name for _, name in files if name.endswith(".param")]
        return files, ncnn_args(params, runs, warmup, seed, self.threads, self.cooldown)


# ------------------------------------------------------------------------------------------------
# The programs' command lines and output (pure)


def caffe_args(prototxts: Sequence[str], weights: Sequence[str], runs: int, warmup: int, seed: int,
               layers: bool = False, threads: int | None = None, cooldown: float = 0.0) -> list[str]:
    """rebirth-time's arguments (after the program's name)."""
    args = list(prototxts)
    for w in weights:
        args += ["--weights", w]
    args += ["--runs", str(runs), "--warmup", str(warmup), "--seed", str(seed)]
    if layers:
        args.append("--layers")
    if threads:
        args += ["--threads", str(threads)]
    if cooldown:
        args += ["--cooldown", str(cooldown)]
    return args


def ncnn_args(params: Sequence[str], runs: int, warmup: int, seed: int, threads: int | None = None,
              cooldown: float = 0.0) -> list[str]:
    """rebirth-time-ncnn's arguments: the param files (each with its .bin beside it), runs,
    warm-up, seed, threads (ncnn's: 1 unless given) and the cool-down."""
    args = list(params) + ["--runs", str(runs), "--warmup", str(warmup), "--seed", str(seed),
                           "--threads", str(threads or 1)]
    if cooldown:
        args += ["--cooldown", str(cooldown)]
    return args


def parse_output(res: RunResult, count: int, program: str, device: str) -> dict:
    """The JSON document a timing program printed for ``count`` models; a one-line error when it
    failed, printed no document or reported another number of models."""
    if res.returncode != 0:
        raise RebirthError(f"{program} failed on {{opt:device}} {device} (exit {res.returncode}): {_tail(res.stderr)}")
    try:
        doc = json.loads(res.stdout)
        entries = doc["models"]
        if not all(isinstance(e.get(k), list) for e in entries for k in ("layer_names", "layer_types", "runs_ms")):
            raise ValueError("a model without layer_names, layer_types or runs_ms")
    except (ValueError, KeyError, TypeError, AttributeError):
        raise RebirthError(f"{program} on {{opt:device}} {device} printed no JSON document: "
                           f"{_tail(res.stdout or res.stderr, 2)}") from None
    if len(entries) != count:
        raise RebirthError(f"{program} reported {len(entries)} models for {count}")
    return doc


def make_device(spec: str, threads: int | None = None, cpu_mask: str | None = None,
                cooldown: float = 0.0, engine: str = "caffe") -> ProgramDevice | None:
    """The program-running device named ``spec`` (host, qemu-aarch64, adb[:SERIAL], ssh://...),
    running rebirth-time (``engine`` caffe) or rebirth-time-ncnn (``engine`` ncnn); None when
    ``spec`` names none of them."""
    key = spec.strip()
    low = key.lower()
    if low == "host":
        t: Transport = LocalTransport("host", build_hint="scripts/build_rebirth_time.sh (part of make install)",
                                      targets=[f"host-{os.uname().machine}"])
        if engine == "ncnn":
            t.build_hint = "scripts/build_device.sh --host"
    elif low == "qemu-aarch64":
        t = LocalTransport("qemu-aarch64", wrapper=["qemu-aarch64"], targets=["aarch64-linux-gnu"],
                           build_hint="scripts/build_device.sh --cross aarch64-linux-gnu (or make device-check)",
                           warning=QEMU_WARNING)
    elif low == "adb" or low.startswith("adb:"):
        t = AdbTransport(key[4:] if low.startswith("adb:") else None)
    elif low.startswith("ssh://"):
        t = SshTransport(key)
    else:
        return None
    if engine == "ncnn":
        t.program = NCNN_PROGRAM
        return NcnnProgramDevice(t, threads, cpu_mask, cooldown)
    return ProgramDevice(t, threads, cpu_mask, cooldown)
