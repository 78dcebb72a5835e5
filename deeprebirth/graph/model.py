"""A model in memory: a deploy NetParameter (layers only, no blobs) plus weights as numpy arrays.

This is what rules rewrite and engines run. ``load_model`` resolves built-in names, filters the
phase, checks weights against the shapes the prototxt implies, and names the first mismatch.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from deeprebirth.caffe import builtin, netio
from deeprebirth.caffe import proto as pb
from deeprebirth.caffe.phase import filter_phase
from deeprebirth.errors import RebirthError, warn
from deeprebirth.graph.dag import Graph
from deeprebirth.graph.fillers import fresh

BUILTIN = builtin.NAMES


def resolve(model: str | Path) -> Path:
    """A prototxt path, or the path of a built-in model name (``BUILTIN``)."""
    p = Path(model)
    if str(model) in BUILTIN and not p.is_file():  # a directory of that name never hides the built-in
        return builtin.prototxt(str(model))
    if p.is_dir():
        raise RebirthError(f"{model}: is a directory, expected a .prototxt file or a built-in model name "
                           f"({', '.join(BUILTIN)})")
    if not p.exists():
        hint = f" (built-in models: {', '.join(BUILTIN)})" if p.suffix == "" else ""
        raise RebirthError(f"{model}: no such file{hint}")
    return p


@dataclass
class Model:
    net: "pb.NetParameter"
    weights: netio.Weights | None = None
    source: str = "<model>"
    weights_source: str | None = None
    extras: dict = field(default_factory=dict)
    # Arrays of the caffemodel's layers that this net lacks (e.g. a train_val's auxiliary heads).
    spare_weights: netio.Weights = field(default_factory=dict)
    # What the user should be told about the net as loaded (layers of unknown type: Graph.warnings).
    warnings: list[str] = field(default_factory=list)

    # Picklable (engine/isolate.py sends models to child processes): the net travels as bytes,
    # since its class lives in our private descriptor pool.
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["net"] = self.net.SerializeToString()
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        state["net"] = pb.NetParameter.FromString(state["net"])
        self.__dict__.update(state)

    def graph(self, **kwargs) -> Graph:
        return Graph(self.net, **kwargs)

    def copy(self) -> "Model":
        net = pb.NetParameter()
        net.CopyFrom(self.net)
        weights = None if self.weights is None else {k: list(v) for k, v in self.weights.items()}
        return Model(net, weights, self.source, self.weights_source, copy.deepcopy(self.extras),
                     dict(self.spare_weights), list(self.warnings))

    def with_blobs(self) -> "pb.NetParameter":
        """The net with weights embedded (what a .caffemodel holds)."""
        return netio.with_weights(self.net, self.weights or {})


def check_weights(graph: Graph, weights: netio.Weights, source: str) -> None:
    """Every weight blob must have the shape (or at least the size, as Caffe accepts) the prototxt implies."""
    for node in graph.nodes:
        arrays = weights.get(node.name)
        if arrays is None or not all(s is not None for s in node.top_shapes):
            continue  # below a layer of unknown type the shapes are unknown: Caffe checks them
        if len(arrays) != len(node.param_shapes):
            raise RebirthError(f"{source}: layer '{node.name}' ({node.type}) has {len(arrays)} weight blobs, "
                               f"the prototxt implies {len(node.param_shapes)}")
        for i, (arr, want) in enumerate(zip(arrays, node.param_shapes)):
            if tuple(arr.shape) != tuple(want):
                # Caffe accepts legacy 4-D shapes of equal size (e.g. 1x1xNxK for an InnerProduct).
                if arr.size == int(np.prod(want, dtype=np.int64)) and arr.ndim == 4 and len(want) != 4:
                    weights[node.name][i] = arr.reshape(want)
                    continue
                raise RebirthError(f"{source}: layer '{node.name}' blob {i}: the caffemodel has shape "
                                   f"{list(arr.shape)}, the prototxt implies {list(want)}")


def check_coverage(graph: Graph, arrays: netio.Weights, source: str, weights_source: str,
                   allow_missing: bool = False) -> list[str]:
    """The layers with parameters that ``arrays`` has no weights for. A caffemodel sharing no such
    layer with the net, or lacking some, is an error unless ``allow_missing`` (then they are
    returned, and named in a RebirthWarning)."""
    with_params = [n for n in graph.nodes if n.param_shapes or n.kind == "tensor"]
    missing = [n.name for n in with_params if n.name not in arrays]
    if not missing:
        return []
    listing = ", ".join(f"layer '{n}' ({graph.by_name[n].type})" for n in missing[:8]) + \
        (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
    if not allow_missing:
        if len(missing) == len(with_params):
            raise RebirthError(f"{weights_source}: shares no layer with parameters with {source} (is it the "
                               f"caffemodel of another net?); the net's layers with parameters: {listing} "
                               "({opt:allow_missing} gives them all fresh weights)")
        what = listing if len(missing) == 1 else f"{len(missing)} layers with parameters: {listing}"
        raise RebirthError(f"{weights_source}: no weights for {what} of {source} "
                           "({opt:allow_missing} gives them fresh weights)")
    warn(f"{weights_source}: no weights for {len(missing)} layer(s) of {source}, which get fresh weights "
         f"(fillers): {listing}")
    return missing


def load_model(model: str | Path, weights: str | Path | None = None, phase: int = pb.TEST,
               batch: int | None = None, check: Callable[["pb.NetParameter", str], None] | None = None,
               allow_missing: bool = False) -> Model:
    """Load a prototxt (or built-in name) and optional caffemodel, filtered to ``phase``.
    ``check`` sees the net as read, before phase filtering, and may raise RebirthError.
    The caffemodel must have weights for every layer with parameters (``check_coverage``); with
    ``allow_missing`` the missing ones get fresh weights (``fillers.fresh``) and are listed in
    ``extras["fresh_weights"]``."""
    path = resolve(model)
    raw = netio.read_net(path)
    if check is not None:
        check(raw, str(path))
    net = filter_phase(raw, phase)
    net = netio.strip_weights(net)
    m = Model(net, None, str(path))
    graph = Graph(net, batch=batch)  # validates the net (what Caffe CHECKs) before any command runs
    m.warnings = list(graph.warnings)
    if weights is not None:
        arrays = netio.weights_of(netio.read_weights(weights))
        known = {n.name for n in graph.nodes}
        m.spare_weights = {k: v for k, v in arrays.items() if k not in known}
        arrays = {k: v for k, v in arrays.items() if k in known}
        check_weights(graph, arrays, str(weights))
        missing = check_coverage(graph, arrays, str(path), str(weights), allow_missing)
        if missing:
            from deeprebirth.graph.fillers import fresh  # noqa: PLC0415
            rng = np.random.default_rng(0)
            for name in missing:
                node = graph.by_name[name]
                if node.param_shapes:  # below a layer of unknown type they are unknown: Caffe fills them
                    arrays[name] = fresh(node, rng)
            m.extras["fresh_weights"] = missing
        m.weights, m.weights_source = arrays, str(weights)
    return m


def stand_in(model: Model) -> Model:
    """``model`` itself when it has weights; else a copy with the weights a training run would start
    from (graph/fillers.py, seed 0): what the structure of a rewrite that computes new weights
    (a BatchNorm fold, a decomposition) is made from when there are no trained ones. Those weights
    are never written: the structure is the same as with trained weights, their values are not."""
    if model.weights is not None:
        return model
    rng = np.random.default_rng(0)
    weights = {n.name: fresh(n, rng) for n in Graph(model.net, strict=False).nodes if n.param_shapes}
    return dataclasses.replace(model, weights=weights)
