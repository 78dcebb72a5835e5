"""Where a net runs, behind two small classes: a ``Device`` opens a model as a ``Session``.

`bench` talks only to these. A session runs one net on random input and reports

* ``time_forward()``: seconds of one whole forward pass,
* ``time_layers()``: one forward pass made of per-layer forward calls, each timed on its own,
* ``memory()``: what the net's blobs take and what running it costs in resident memory.

``cpu`` is pycaffe in this process (cpu.py); ``host``, ``adb[:SERIAL]``, ``ssh://...`` and
``qemu-aarch64`` run the timing program rebirth-time there and parse its JSON (remote.py). A new
device implements these methods and adds its name to ``devices.get_device``.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from deeprebirth.graph.model import Model


@dataclass
class Memory:
    """Memory of one net, in bytes. ``None`` means the device could not measure it."""

    blob_bytes: int                      # counted from shapes, as `inspect` does (graph.Graph.memory_bytes)
    allocated_bytes: int | None = None   # measured: distinct data buffers behind the net's blobs
    peak_rss_bytes: int | None = None    # measured: peak resident memory growth of creating + running the net
    process_peak_rss_bytes: int | None = None  # measured: the probe process's own peak resident memory
    method: str = ""                     # how the resident memory was measured, one line
    extra: dict = field(default_factory=dict)


class Session(ABC):
    """One net, ready to run on random input. ``layer_names``/``layer_types`` follow the engine's
    own layer list (for Caffe this includes the Split layers it inserts by itself)."""

    layer_names: list[str]
    layer_types: list[str]

    @abstractmethod
    def forward(self) -> None:
        """One whole forward pass."""

    @abstractmethod
    def forward_layer(self, index: int) -> None:
        """The forward computation of layer ``index`` alone (its bottoms are the last pass's)."""

    @abstractmethod
    def memory(self) -> Memory:
        """Blob memory and resident memory of this net (may run a separate probe)."""

    def time_forward(self) -> float:
        """Seconds of one whole forward pass."""
        clock = time.perf_counter
        start = clock()
        self.forward()
        return clock() - start

    def time_layers(self) -> list[float]:
        """One forward pass, layer by layer in order: seconds spent in each layer's forward call."""
        clock = time.perf_counter
        step = self.forward_layer
        out = [0.0] * len(self.layer_names)
        for i in range(len(out)):
            start = clock()
            step(i)
            out[i] = clock() - start
        return out

    def close(self) -> None:  # noqa: B027 - a default that does nothing, not an abstract method
        """Release the net (nothing to do by default)."""

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Device(ABC):
    """Something that runs Caffe nets: the local CPU, later a phone."""

    name: str = "?"
    #: One line for reports: what runs the net and how it is timed.
    description: str = ""

    #: What ``crowded`` changes, for a report's notes (None: nothing).
    crowded_note: str | None = None
    #: The runs of a model in a row (bench.measure's ``block``) that time it as deployed when
    #: several models take turns: 1 (A B A B) unless one session's runs disturb the next one's
    #: first runs (OrtDevice).
    turn: int = 1

    def crowded(self) -> "Device":
        """This device set to time many nets in turn in one process (more than two sessions open
        at once): itself, unless its sessions disturb each other (OrtDevice)."""
        return self

    @abstractmethod
    def open(self, model: Model, seed: int = 0) -> Session:
        """A session running ``model`` at its net's own input shapes, with the model's weights (or,
        when it has none, whatever the net's fillers make), on random input drawn from ``seed``."""
