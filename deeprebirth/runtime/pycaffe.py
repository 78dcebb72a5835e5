"""Run nets in real Caffe through pycaffe (imported lazily: only commands that run nets need it)."""
from __future__ import annotations

import os
import tempfile
from typing import Iterable

import numpy as np

from deeprebirth.caffe import netio
from deeprebirth.caffe import proto as pb
from deeprebirth.errors import RebirthError
from deeprebirth.graph.dag import Graph
from deeprebirth.graph.kinds import DATA_TYPES

_caffe = None


def import_caffe():
    """The pycaffe module, quiet and in CPU mode; a clear error when it is not installed."""
    global _caffe
    if _caffe is None:
        os.environ.setdefault("GLOG_minloglevel", "2")
        try:
            import caffe  # noqa: PLC0415
        except ImportError as exc:
            raise RebirthError(f"pycaffe is not available ({exc}); run `make caffe` to build it") from None
        caffe.set_mode_cpu()
        _caffe = caffe
    return _caffe


def engine_text(net: "pb.NetParameter") -> str:
    """The prototxt text handed to this engine. The engine (an SSD-Caffe derivative) spells BVLC's
    pooling ``round_mode: CEIL|FLOOR`` (field 13) as ``ceil_mode: true|false``."""
    text = netio.net_to_text(net)
    return text.replace("round_mode: FLOOR", "ceil_mode: false").replace("round_mode: CEIL", "ceil_mode: true")


def check_runnable(net: "pb.NetParameter", source: str, purpose: str = "bench") -> None:
    """Nets run on random input (bench, --verify) must take it from ``input:`` fields or Input layers."""
    readers = [layer for layer in net.layer if layer.type in DATA_TYPES and layer.type != "Input"]
    if readers:
        layer = readers[0]
        raise RebirthError(f"{source}: layer '{layer.name}' is a {layer.type} layer that reads a dataset; "
                           f"{purpose} needs a deploy net whose inputs are 'input:' fields or Input layers")
    has_inputs = len(net.input) or any(layer.type == "Input" for layer in net.layer)
    if not has_inputs:
        raise RebirthError(f"{source}: the net has no inputs ('input:' fields or Input layers) to feed")


class CaffeNet:
    """A pycaffe net built from our NetParameter (and optional weights, layer name -> arrays)."""

    def __init__(self, net: "pb.NetParameter", weights: netio.Weights | None = None, phase: int = pb.TEST):
        caffe = import_caffe()
        self.param = netio.strip_weights(net)
        fd, path = tempfile.mkstemp(suffix=".prototxt", prefix="deeprebirth-")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(engine_text(self.param))
            self.net = caffe.Net(path, phase)
        finally:
            os.unlink(path)
        names = list(self.net._layer_names)
        ours = {layer.name for layer in self.param.layer}
        # Caffe inserts Split layers where a blob feeds several layers; their tops share memory.
        self.auto_split_tops = {t for i, n in enumerate(names)
                                if n not in ours and self.net.layers[i].type == "Split"
                                for t in self.net.top_names[n]}
        if weights:
            self.set_weights(weights)

    # -- weights ---------------------------------------------------------------------------
    def set_weights(self, weights: netio.Weights) -> None:
        for name, arrays in weights.items():
            if name not in self.net.params:
                continue
            blobs = self.net.params[name]
            if len(arrays) != len(blobs):
                raise RebirthError(f"layer '{name}': {len(arrays)} weight blobs given, Caffe expects {len(blobs)}")
            for i, (blob, arr) in enumerate(zip(blobs, arrays)):
                if tuple(blob.data.shape) != tuple(arr.shape):
                    if blob.data.size != arr.size:
                        raise RebirthError(f"layer '{name}' blob {i}: shape {list(arr.shape)} does not match "
                                           f"Caffe's {list(blob.data.shape)}")
                blob.data[...] = np.asarray(arr, dtype=np.float32).reshape(blob.data.shape)

    def get_weights(self) -> netio.Weights:
        return {name: [b.data.copy() for b in blobs] for name, blobs in self.net.params.items()}

    # -- running ---------------------------------------------------------------------------
    @property
    def input_names(self) -> list[str]:
        return list(self.net.inputs)

    def fill_inputs(self, seed: int = 0, inputs: dict[str, np.ndarray] | None = None,
                    batch: int | None = None) -> dict[str, np.ndarray]:
        """Set every net input (given arrays, or uniform random in [-1, 1) from ``seed``, with the
        batch dimension replaced by ``batch`` when given)."""
        rng = np.random.default_rng(seed)
        used = {}
        for name in self.input_names:
            blob = self.net.blobs[name]
            shape = tuple(blob.data.shape)
            if batch and shape:
                shape = (batch, *shape[1:])
            used[name] = inputs[name] if inputs and name in inputs else \
                rng.uniform(-1, 1, size=shape).astype(np.float32)
        # Reshape every input first, then the net once: with several inputs (a Concat of two), a
        # reshape after each one would see them disagree.
        changed = False
        for name, arr in used.items():
            blob = self.net.blobs[name]
            if tuple(arr.shape) != tuple(blob.data.shape):
                blob.reshape(*arr.shape)
                changed = True
        if changed:
            self.net.reshape()
        for name, arr in used.items():
            self.net.blobs[name].data[...] = arr
        return used

    def forward_all(self, feeds: dict[str, np.ndarray], blobs: list[str], batch: int) -> dict[str, np.ndarray]:
        """Run the net over arrays of any length in batches of ``batch`` (the last may be short):
        ``feeds`` (input blob -> N x ...) in, a copy of each of ``blobs`` (N x ...) out. The one
        batching loop over pycaffe (like pycaffe's own ``Net.forward_all``, for several inputs)."""
        n = len(next(iter(feeds.values())))
        out: dict[str, list[np.ndarray]] = {b: [] for b in blobs}
        for i in range(0, n, batch):
            self.fill_inputs(inputs={k: v[i:i + batch] for k, v in feeds.items()})
            self.net.forward()
            for b in blobs:
                out[b].append(self.net.blobs[b].data.copy())
        return {b: np.concatenate(v) for b, v in out.items()}

    def forward(self) -> dict[str, np.ndarray]:
        out = self.net.forward()
        return {k: v.copy() for k, v in out.items()}

    def layer_names(self) -> list[str]:
        return list(self.net._layer_names)

    def forward_layer(self, index: int) -> None:
        self.net._forward(index, index)

    # -- shapes and memory -------------------------------------------------------------------
    def blob_shapes(self) -> dict[str, tuple[int, ...]]:
        """Blob name -> shape, without the Split tops Caffe adds by itself."""
        return {name: tuple(blob.shape) for name, blob in self.net.blobs.items()
                if name not in self.auto_split_tops}

    def allocated_bytes(self) -> int:
        """Bytes of distinct data buffers behind the net's blobs (measured: shared buffers count once).
        Call after a forward pass, when every layer has set up its tops."""
        seen, total = set(), 0
        for blob in self.net.blobs.values():
            arr = blob.data
            addr = arr.__array_interface__["data"][0]
            if addr in seen or arr.nbytes == 0:
                continue
            seen.add(addr)
            total += arr.nbytes
        return total


def random_weights(graph: Graph, seed: int = 0, layers: Iterable[str] | None = None) -> netio.Weights:
    """Random weights for every parameterised layer of ``graph``, with realistic BatchNorm
    statistics (mean/variance sums scaled by a factor s != 1, positive variances) and
    Scale/PReLU parameters away from 1/0, so that exact rewrites are tested on real-looking values."""
    rng = np.random.default_rng(seed)
    wanted = set(layers) if layers is not None else None
    out: netio.Weights = {}
    for node in graph.nodes:
        if not node.param_shapes or (wanted is not None and node.name not in wanted):
            continue
        arrays = []
        if node.type == "BatchNorm":
            c = node.param_shapes[0]
            s = np.float32(rng.uniform(0.5, 2.0))
            mean = rng.normal(0, 0.2, size=c).astype(np.float32)
            var = rng.uniform(0.3, 1.5, size=c).astype(np.float32)
            arrays = [mean * s, var * s, np.array([s], dtype=np.float32)]
        elif node.type in ("Scale", "PReLU"):
            arrays = [rng.uniform(0.5, 1.5, size=node.param_shapes[0]).astype(np.float32)]
            arrays += [rng.normal(0, 0.2, size=s).astype(np.float32) for s in node.param_shapes[1:]]
        elif node.type == "Bias":
            arrays = [rng.normal(0, 0.2, size=s).astype(np.float32) for s in node.param_shapes]
        else:
            for i, shape in enumerate(node.param_shapes):
                if i == 0 and len(shape) > 1:
                    fan_in = int(np.prod(shape[1:])) if node.type != "InnerProduct" or len(shape) == 2 else shape[-1]
                    std = np.sqrt(2.0 / max(1, fan_in))
                    arrays.append(rng.normal(0, std, size=shape).astype(np.float32))
                else:
                    arrays.append(rng.normal(0, 0.1, size=shape).astype(np.float32))
        out[node.name] = arrays
    return out


def make_solver(net: "pb.NetParameter", solver: "pb.SolverParameter", workdir: str | os.PathLike | None = None):
    """A pycaffe solver training ``net`` (its TRAIN phase; a TEST phase too when the solver asks
    for test iterations) with ``solver``'s settings. Caffe only reads the net and the solver from
    files: they are written to a temporary directory of their own, never into ``workdir`` (where
    snapshots land, unless the solver's ``snapshot_prefix`` is absolute), so that a Caffe abort,
    which ends the process before any cleanup, leaves nothing in the user's folder."""
    from google.protobuf import text_format  # noqa: PLC0415

    caffe = import_caffe()
    where = tempfile.mkdtemp(prefix="deeprebirth-solver-")
    snapshots = where if workdir is None else os.fspath(workdir)
    try:
        net_path = os.path.join(where, "train_net.prototxt")
        with open(net_path, "w") as fh:
            fh.write(engine_text(netio.strip_weights(net)))
        s = pb.SolverParameter()
        s.CopyFrom(solver)
        s.ClearField("net")
        s.ClearField("train_net")
        s.net = net_path
        if s.snapshot_prefix and not os.path.isabs(s.snapshot_prefix):
            s.snapshot_prefix = os.path.join(snapshots, s.snapshot_prefix)
        s.solver_mode = pb.SolverParameter.CPU
        solver_path = os.path.join(where, "solver.prototxt")
        with open(solver_path, "w") as fh:
            fh.write(text_format.MessageToString(s))
        return caffe.get_solver(solver_path)
    finally:
        import shutil  # noqa: PLC0415
        shutil.rmtree(where, ignore_errors=True)


def caffe_tool() -> str:
    """The `caffe` tool `make install` puts beside the interpreter (bare `caffe` if it is elsewhere)."""
    import shutil  # noqa: PLC0415
    import sys  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    beside = Path(sys.executable).parent / "caffe"
    if beside.exists():
        return str(beside)
    return shutil.which("caffe") or "caffe"
