"""Load and save Caffe nets (text prototxt) and weights (binary caffemodel).

* Legacy nets (V0, V1 ``layers {}``) are upgraded to ``layer {}`` as they are read (``upgrade``).
* Weights move between BlobProto and numpy without Python loops over elements.
* Every write is atomic (temporary file + rename) and refuses to overwrite an input file.

Which layers a phase keeps is ``phase.filter_phase``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
from google.protobuf import descriptor_pb2, message_factory, text_format
from google.protobuf.message import DecodeError

from deeprebirth import outputs
from deeprebirth.caffe import proto as pb
from deeprebirth.caffe.upgrade import upgrade
from deeprebirth.errors import RebirthError

Weights = dict[str, list[np.ndarray]]

# --------------------------------------------------------------------------------------------
# Raw views of BlobProto: the packed float/double payloads as bytes, so numpy can wrap them.
_raw_file = descriptor_pb2.FileDescriptorProto(name="deeprebirth_raw_blob.proto", package="deeprebirth")
_raw_msg = _raw_file.message_type.add(name="RawBlob")
for _name, _num in (("data", 5), ("double_data", 8)):
    _raw_msg.field.add(name=_name, number=_num, type=descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
                       label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
pb.POOL.Add(_raw_file)
RawBlob = message_factory.GetMessageClass(pb.POOL.FindMessageTypeByName("deeprebirth.RawBlob"))

# --------------------------------------------------------------------------------------------
# Reading


def _read_bytes(path: str | os.PathLike) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise RebirthError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise RebirthError(f"{path}: is a directory, expected a file") from None
    except OSError as exc:
        raise RebirthError(f"{path}: cannot read ({exc.strerror})") from None


def parse_net_text(text: str, source: str = "<text>") -> "pb.NetParameter":
    """Parse a NetParameter from prototxt text; errors carry file, line and column."""
    net = pb.NetParameter()
    try:
        text_format.Parse(text, net)
    except text_format.ParseError as exc:
        # Say what the file is when it parses as another Caffe message (a solver, say).
        solver = pb.SolverParameter()
        try:
            text_format.Parse(text, solver)
            is_solver = bool(solver.ListFields())
        except text_format.ParseError:
            is_solver = False
        if is_solver:
            raise RebirthError(f"{source}: is a SolverParameter (solver file), expected a net "
                               "(NetParameter) prototxt") from None
        line, col = exc.GetLine(), exc.GetColumn()
        where = f"{source}:{line}:{col}" if line else source
        msg = str(exc)
        # protobuf prefixes "line:col : "; keep only the message.
        if line and msg.startswith(f"{line}:{col}"):
            msg = msg.split(":", 2)[-1].strip()
        raise RebirthError(f"{where}: {msg}") from None
    return upgrade(net, source)


def read_net(path: str | os.PathLike) -> "pb.NetParameter":
    """Load a text prototxt into a NetParameter (legacy V1 layers upgraded)."""
    data = _read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise RebirthError(f"{path}: is a binary file, expected a text prototxt "
                           "(a .caffemodel goes to {opt:weights})") from None
    net = parse_net_text(text, str(path))
    if not len(net.layer) and not len(net.input):
        raise RebirthError(f"{path}: not a Caffe net: it defines no layers and no inputs")
    return net


def read_weights(path: str | os.PathLike) -> "pb.NetParameter":
    """Load a binary .caffemodel (a NetParameter with blobs); legacy V1 models are upgraded."""
    data = _read_bytes(path)
    net = pb.NetParameter()
    try:
        net.ParseFromString(data)
    except DecodeError:
        hint = " (this looks like a text prototxt)" if data[:200].lstrip()[:1].isalpha() else ""
        raise RebirthError(f"{path}: not a binary caffemodel{hint}") from None
    if not len(net.layer) and not len(net.layers):
        raise RebirthError(f"{path}: not a caffemodel: it holds no layers")
    return upgrade(net, str(path))


# --------------------------------------------------------------------------------------------
# Blobs <-> numpy


def blob_shape(blob: "pb.BlobProto") -> tuple[int, ...]:
    if blob.HasField("shape"):
        return tuple(int(d) for d in blob.shape.dim)
    legacy = (blob.num, blob.channels, blob.height, blob.width)
    if any(legacy):
        return tuple(int(d) for d in legacy)
    return (len(blob.data) or len(blob.double_data),)


def blob_to_array(blob: "pb.BlobProto", where: str = "blob") -> np.ndarray:
    """A float32 copy of the blob's data (``double_data`` is converted), in its shape."""
    shape = blob_shape(blob)
    raw = RawBlob.FromString(blob.SerializeToString())
    if raw.data:
        arr = np.frombuffer(raw.data, dtype="<f4").astype(np.float32)
    elif raw.double_data:
        arr = np.frombuffer(raw.double_data, dtype="<f8").astype(np.float32)
    elif len(blob.data) or len(blob.double_data):  # unpacked encoding: still vectorised
        arr = np.array(blob.data if len(blob.data) else blob.double_data, dtype=np.float32)
    else:
        arr = np.zeros(0, dtype=np.float32)
    if arr.size != int(np.prod(shape, dtype=np.int64)):
        raise RebirthError(f"{where}: holds {arr.size} values but its shape {list(shape)} needs "
                           f"{int(np.prod(shape, dtype=np.int64))}")
    return arr.reshape(shape)


def array_to_blob(arr: np.ndarray, blob: "pb.BlobProto | None" = None) -> "pb.BlobProto":
    """Fill (or create) a BlobProto with ``arr`` as float32 data and an explicit shape."""
    blob = pb.BlobProto() if blob is None else blob
    blob.Clear()
    arr = np.ascontiguousarray(arr, dtype="<f4")
    blob.shape.dim.extend(int(d) for d in arr.shape)
    blob.MergeFromString(RawBlob(data=arr.tobytes()).SerializeToString())
    return blob


def weights_of(net: "pb.NetParameter") -> Weights:
    """Layer name -> list of float32 arrays, for every layer that carries blobs."""
    return {layer.name: [blob_to_array(b, f"layer '{layer.name}' blob {i}") for i, b in enumerate(layer.blobs)]
            for layer in net.layer if len(layer.blobs)}


def with_weights(net: "pb.NetParameter", weights: Weights) -> "pb.NetParameter":
    """A copy of ``net`` whose layers carry ``weights`` as blobs (layers not in ``weights`` get none)."""
    out = pb.NetParameter()
    out.CopyFrom(net)
    for layer in out.layer:
        del layer.blobs[:]
        for arr in weights.get(layer.name, ()):
            array_to_blob(arr, layer.blobs.add())
    return out


def strip_weights(net: "pb.NetParameter") -> "pb.NetParameter":
    out = pb.NetParameter()
    out.CopyFrom(net)
    for layer in out.layer:
        del layer.blobs[:]
    return out


# --------------------------------------------------------------------------------------------
# Writing (through deeprebirth.outputs: temporary file and rename)


def net_to_text(net: "pb.NetParameter") -> str:
    return text_format.MessageToString(net)


def write_net(net: "pb.NetParameter", path: str | os.PathLike, inputs: Iterable = ()) -> Path:
    return outputs.atomic_write(path, net_to_text(net), inputs)


def write_weights(net: "pb.NetParameter", path: str | os.PathLike, inputs: Iterable = ()) -> Path:
    return outputs.atomic_write(path, net.SerializeToString(), inputs)
