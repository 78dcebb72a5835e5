"""Caffe's protobuf schema, loaded into a private descriptor pool.

The schema is ``proto/caffe.proto`` (ours, wire- and text-compatible with BVLC Caffe). It is
compiled to a FileDescriptorSet with grpcio-tools' bundled protoc (at install time, or on first
use when the compiled set is missing or older than the .proto) and loaded into a descriptor pool
of its own. A private pool matters: pycaffe registers its own ``caffe.proto`` in protobuf's default
pool, and both must live in one process.

Usage::

    from deeprebirth.caffe import proto as pb
    net = pb.NetParameter()
    pb.TRAIN, pb.TEST
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_HERE = Path(__file__).resolve().parent
# An installed wheel carries the schema beside this file; a source checkout reads proto/caffe.proto.
PROTO_FILE = _HERE / "caffe.proto" if (_HERE / "caffe.proto").is_file() else _HERE.parents[2] / "proto" / "caffe.proto"
DESCRIPTOR_FILE = _HERE / "caffe.desc"


def compile_descriptor(proto_file: Path = PROTO_FILE, out: Path = DESCRIPTOR_FILE) -> Path:
    """Compile ``proto_file`` to a binary FileDescriptorSet at ``out`` (atomically)."""
    from grpc_tools import protoc  # noqa: PLC0415  (only needed when (re)compiling)

    fd, tmp = tempfile.mkstemp(prefix=".caffe.desc.", dir=str(out.parent))
    os.close(fd)
    try:
        rc = protoc.main(["protoc", f"-I{proto_file.parent}", f"--descriptor_set_out={tmp}",
                          proto_file.name])
        if rc != 0:
            raise RuntimeError(f"{proto_file}: protoc failed with exit code {rc}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _needs_compile() -> bool:
    if not DESCRIPTOR_FILE.exists():
        return True
    return PROTO_FILE.exists() and PROTO_FILE.stat().st_mtime > DESCRIPTOR_FILE.stat().st_mtime


def _load():
    if _needs_compile():
        compile_descriptor()
    fds = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_FILE.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for f in fds.file:
        pool.Add(f)
    files = [f.name for f in fds.file]
    return pool, message_factory.GetMessageClassesForFiles(files, pool)


POOL, _CLASSES = _load()
FILE = POOL.FindFileByName("caffe.proto")

# Top-level messages as module attributes (pb.NetParameter, pb.LayerParameter, ...).
for _name in FILE.message_types_by_name:
    globals()[_name] = _CLASSES[f"caffe.{_name}"]
# Top-level enum values (pb.TRAIN, pb.TEST).
for _enum in FILE.enum_types_by_name.values():
    for _value in _enum.values:
        globals()[_value.name] = _value.number
del _name, _enum, _value
