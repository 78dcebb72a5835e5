"""What every engine gives: a ``Runner`` (an exported model loaded, run on given inputs) and, for
`bench --engine`, a ``Session`` (runtime/devices/base.py) over it on random input.

An engine runs whole passes only: ``forward_layer`` is not available (none of ONNX Runtime,
ncnn or MNN exposes one layer's forward), so `bench --engine X --layers` is refused.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from deeprebirth.errors import RebirthError
from deeprebirth.graph.dag import Graph
from deeprebirth.graph.model import Model
from deeprebirth.runtime.devices.base import Device, Memory, Session


class Runner(ABC):
    """An exported model loaded in its engine."""

    #: Output names (the Caffe net's outputs); run() may be asked for other blobs too.
    outputs: list[str]

    @abstractmethod
    def run(self, feeds: dict[str, np.ndarray], names: list[str] | None = None) -> dict[str, np.ndarray]:
        """One forward pass on ``feeds`` (input blob -> array with the batch axis): the ``names``
        (default: the outputs) as arrays with the batch axis."""

    def close(self) -> None:  # noqa: B027 - a default that does nothing, not an abstract method
        """Release the engine's objects."""


def random_feeds(graph: Graph, seed: int) -> dict[str, np.ndarray]:
    """Uniform [-1, 1) inputs from ``seed``, as CaffeNet.fill_inputs draws them."""
    rng = np.random.default_rng(seed)
    return {name: rng.uniform(-1, 1, size=graph.version_shapes[(name, 0)]).astype(np.float32)
            for name in graph.input_blobs}


class EngineSession(Session):
    """A Runner timed on one fixed random input."""

    def __init__(self, model: Model, runner: Runner, seed: int = 0):
        self.graph = Graph(model.net, strict=False)
        self.runner = runner
        self.feeds = random_feeds(self.graph, seed)
        self.layer_names, self.layer_types = [], []

    def forward(self) -> None:
        self.runner.run(self.feeds)

    def forward_layer(self, index: int) -> None:
        raise RebirthError("this engine runs whole passes only (no per-layer times)")

    def memory(self) -> Memory:
        return Memory(blob_bytes=self.graph.memory_bytes,
                      method="resident memory not measured for this engine (blob bytes from the Caffe shapes)")

    def close(self) -> None:
        self.runner.close()


class EngineDevice(Device):
    """`bench --engine X`: every model exported to X and opened in X, in this process."""

    #: format of runtime.export that the engine loads, and the Runner class that loads it
    fmt = "?"
    runner_class: type = Runner

    def __init__(self, threads: int | None = None):
        self.threads = threads

    def open(self, model: Model, seed: int = 0) -> Session:
        from deeprebirth.runtime import export  # noqa: PLC0415
        files = export.export(model, self.fmt, batch=None)
        return EngineSession(model, self.load(files), seed)

    def load(self, files: dict[str, bytes]) -> Runner:
        """The exported files loaded in this engine."""
        return self.runner_class(files, self.threads)
