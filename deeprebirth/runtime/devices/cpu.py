"""The ``cpu`` device: nets run on this machine by pycaffe (Caffe's CPU mode).

Timing: ``time_forward`` wraps one C++ ``Net::ForwardFromTo(0, last)`` call (pycaffe
``net._forward``) in ``time.perf_counter``; ``time_layers`` calls ``net._forward(i, i)`` for each
layer index in turn and times each call, so the per-layer times add up to a whole pass plus the
cost of one Python call per layer.

Memory: the blob bytes come from the shapes (``graph.Graph.memory_bytes``, as `inspect` counts
them) and from the net itself (``CaffeNet.allocated_bytes``: distinct data buffers). The resident
memory is measured in a fresh subprocess per net (``python -m deeprebirth.runtime.devices.cpu PROTOTXT``):
after pycaffe is imported, it resets the kernel's peak-RSS mark (``/proc/self/clear_refs``),
reads the RSS (``/proc/self/statm``), creates the net, writes every parameter and input blob and
runs two forward passes, then reads the peak (``VmHWM`` in ``/proc/self/status``). The net's
``peak_rss_bytes`` is that peak minus the RSS before the net existed: a process-wide measure that
other nets in the benchmarking process cannot disturb.
"""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from deeprebirth.caffe import netio
from deeprebirth.caffe import proto as pb
from deeprebirth.errors import RebirthError
from deeprebirth.graph.dag import Graph
from deeprebirth.graph.model import Model
from deeprebirth.runtime.devices.base import Device, Memory, Session
from deeprebirth.runtime.pycaffe import CaffeNet

PROBE_TIMEOUT_S = 900
PEAK_METHOD = ("peak RSS growth (VmHWM after a /proc/self/clear_refs reset, minus the RSS before the net "
               "was created) while creating the net and running 2 forward passes, in a fresh subprocess")
RSS_METHOD = ("RSS growth (/proc/self/statm after creating the net and running 2 forward passes, minus "
              "before), in a fresh subprocess; the peak mark could not be reset here")


class CpuSession(Session):
    def __init__(self, model: Model, seed: int = 0):
        self.net_param = model.net  # the weights live in the Caffe net only
        self.caffe_net = CaffeNet(model.net, model.weights)
        self.caffe_net.fill_inputs(seed)
        self._net = self.caffe_net.net
        self.layer_names = list(self._net._layer_names)
        self.layer_types = [layer.type for layer in self._net.layers]
        self._last = len(self.layer_names) - 1
        self._memory: Memory | None = None

    def forward(self) -> None:
        self._net._forward(0, self._last)

    def forward_layer(self, index: int) -> None:
        self._net._forward(index, index)

    def time_forward(self) -> float:
        fwd, last, clock = self._net._forward, self._last, time.perf_counter
        start = clock()
        fwd(0, last)
        return clock() - start

    def time_layers(self) -> list[float]:
        # Same loop as Session.time_layers, with the pycaffe call bound locally: one Python call
        # per layer is all the overhead that separates the layer sum from a whole pass.
        fwd, clock = self._net._forward, time.perf_counter
        out = [0.0] * (self._last + 1)
        for i in range(self._last + 1):
            start = clock()
            fwd(i, i)
            out[i] = clock() - start
        return out

    def memory(self) -> Memory:
        if self._memory is None:
            graph = Graph(self.net_param, strict=False)
            self.forward()  # every layer has set up its tops
            mem = Memory(blob_bytes=graph.memory_bytes, allocated_bytes=self.caffe_net.allocated_bytes())
            if graph.notes:
                mem.extra["notes"] = list(graph.notes)
            probe = probe_memory(self.net_param)
            if probe is None:
                mem.method = "resident memory not measured (no /proc on this system)"
            else:
                mem.process_peak_rss_bytes = probe["peak_rss"]
                if probe["peak_reset"]:
                    mem.peak_rss_bytes = max(0, probe["peak_rss"] - probe["baseline_rss"])
                    mem.method = PEAK_METHOD
                else:
                    mem.peak_rss_bytes = max(0, probe["rss_after"] - probe["baseline_rss"])
                    mem.method = RSS_METHOD
                mem.extra["probe"] = probe
            self._memory = mem
        return self._memory

    def close(self) -> None:
        self._net = None
        self.caffe_net = None


class CpuDevice(Device):
    name = "cpu"

    @property
    def description(self) -> str:
        threads = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS") or "default"
        return (f"pycaffe, Caffe CPU mode, {os.cpu_count()} logical CPUs, BLAS threads: {threads}; "
                "times from time.perf_counter around net._forward calls")

    def open(self, model: Model, seed: int = 0) -> Session:
        return CpuSession(model, seed)


# ------------------------------------------------------------------------------------------------
# Resident-memory probe (runs in a subprocess)


def probe_memory(net: "pb.NetParameter", timeout: float = PROBE_TIMEOUT_S) -> dict | None:
    """Run the memory probe on ``net`` in a fresh Python process; None without /proc."""
    if not Path("/proc/self/statm").exists():
        return None
    fd, path = tempfile.mkstemp(suffix=".prototxt", prefix="deeprebirth-probe-")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(netio.net_to_text(netio.strip_weights(net)))
        env = dict(os.environ)
        env.setdefault("GLOG_minloglevel", "2")
        root = str(Path(__file__).resolve().parents[3])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        try:
            proc = subprocess.run([sys.executable, "-m", "deeprebirth.runtime.devices.cpu", path],
                                  capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise RebirthError(f"the memory probe of net '{net.name}' took more than {timeout:.0f} s") from None
    finally:
        os.unlink(path)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        why = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RebirthError(f"the memory probe of net '{net.name}' failed: {why}")
    return json.loads(lines[-1])


def _page_size() -> int:
    return os.sysconf("SC_PAGE_SIZE")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * _page_size()


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _probe(prototxt: str) -> dict:
    from deeprebirth.runtime.pycaffe import import_caffe  # noqa: PLC0415

    caffe = import_caffe()
    gc.collect()
    reset = _reset_peak()
    baseline = _rss_bytes()
    net = caffe.Net(prototxt, caffe.TEST)
    for blobs in net.params.values():
        for blob in blobs:
            blob.data[...] = 0.01  # in place: touches every page, no temporary array
    for name in net.inputs:
        net.blobs[name].data[...] = 0.5
    last = len(net.layers) - 1
    net._forward(0, last)
    net._forward(0, last)
    return {"baseline_rss": baseline, "peak_rss": _peak_rss_bytes(), "rss_after": _rss_bytes(),
            "peak_reset": reset}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m deeprebirth.runtime.devices.cpu PROTOTXT  (prints the memory probe as JSON)")
    print(json.dumps(_probe(sys.argv[1])))
