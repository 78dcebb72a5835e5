"""Load and save Caffe nets (text prototxt) and weights (binary caffemodel).

* Legacy ``layers {}`` (V1LayerParameter) are upgraded to ``layer {}``.
* Phase filtering follows Caffe's NetStateRule semantics (include/exclude, phase, level, stage).
* Weights move between BlobProto and numpy without Python loops over elements.
* Every write is atomic (temporary file + rename) and refuses to overwrite an input file.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
from google.protobuf import descriptor_pb2, message_factory, text_format
from google.protobuf.message import DecodeError

from deeprebirth.caffe import proto as pb
from deeprebirth.errors import RebirthError, warn

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
# Legacy V1 layer types (enum name -> layer type string of the modern format).
V1_TYPES = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DATA": "Data", "DECONVOLUTION": "Deconvolution", "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise",
    "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col", "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice",
    "TANH": "TanH", "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}
# Sub-messages that V1 and modern layers share under the same field name.
_V1_SHARED_PARAMS = (
    "accuracy_param", "argmax_param", "concat_param", "contrastive_loss_param", "convolution_param",
    "data_param", "dropout_param", "dummy_data_param", "eltwise_param", "exp_param",
    "hdf5_data_param", "hdf5_output_param", "hinge_loss_param", "image_data_param",
    "infogain_loss_param", "inner_product_param", "lrn_param", "memory_data_param", "mvn_param",
    "pooling_param", "power_param", "relu_param", "sigmoid_param", "softmax_param", "slice_param",
    "tanh_param", "threshold_param", "window_data_param", "transform_param", "loss_param",
)


# Legacy V0 (``layers { layer { type: "conv" ... } bottom: ... }``): Caffe's UpgradeV0LayerType.
V0_TYPES = {
    "accuracy": "ACCURACY", "bnll": "BNLL", "concat": "CONCAT", "conv": "CONVOLUTION", "data": "DATA",
    "dropout": "DROPOUT", "euclidean_loss": "EUCLIDEAN_LOSS", "flatten": "FLATTEN",
    "hdf5_data": "HDF5_DATA", "hdf5_output": "HDF5_OUTPUT", "im2col": "IM2COL", "images": "IMAGE_DATA",
    "infogain_loss": "INFOGAIN_LOSS", "innerproduct": "INNER_PRODUCT", "lrn": "LRN",
    "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS", "pool": "POOLING", "relu": "RELU",
    "sigmoid": "SIGMOID", "softmax": "SOFTMAX", "softmax_loss": "SOFTMAX_LOSS", "split": "SPLIT",
    "tanh": "TANH", "window_data": "WINDOW_DATA",
}
# V0 field -> {V0 type (or "*" for any): (V1 sub-message, its field)}, as UpgradeV0LayerParameter
# moves them. A field on a type without an entry is dropped with a note (Caffe: "continuing anyway").
_SRC = {t: (f"{p}_param", "source") for t, p in (("data", "data"), ("hdf5_data", "hdf5_data"),
                                                 ("images", "image_data"), ("window_data", "window_data"),
                                                 ("infogain_loss", "infogain_loss"))}
_V0_FIELDS = {
    "num_output": {"conv": ("convolution_param", "num_output"), "innerproduct": ("inner_product_param", "num_output")},
    "biasterm": {"conv": ("convolution_param", "bias_term"), "innerproduct": ("inner_product_param", "bias_term")},
    "weight_filler": {"conv": ("convolution_param", "weight_filler"),
                      "innerproduct": ("inner_product_param", "weight_filler")},
    "bias_filler": {"conv": ("convolution_param", "bias_filler"), "innerproduct": ("inner_product_param", "bias_filler")},
    "pad": {"conv": ("convolution_param", "pad"), "pool": ("pooling_param", "pad")},
    "kernelsize": {"conv": ("convolution_param", "kernel_size"), "pool": ("pooling_param", "kernel_size")},
    "group": {"conv": ("convolution_param", "group")},
    "stride": {"conv": ("convolution_param", "stride"), "pool": ("pooling_param", "stride")},
    "pool": {"pool": ("pooling_param", "pool")},  # MAX/AVE/STOCHASTIC: same numbers
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio")},
    "local_size": {"lrn": ("lrn_param", "local_size")}, "alpha": {"lrn": ("lrn_param", "alpha")},
    "beta": {"lrn": ("lrn_param", "beta")}, "k": {"lrn": ("lrn_param", "k")},
    "source": _SRC,
    "scale": {"*": ("transform_param", "scale")}, "meanfile": {"*": ("transform_param", "mean_file")},
    "cropsize": {"*": ("transform_param", "crop_size")}, "mirror": {"*": ("transform_param", "mirror")},
    "batchsize": {t: (p, "batch_size") for t, (p, _) in _SRC.items() if t != "infogain_loss"},
    "rand_skip": {"data": ("data_param", "rand_skip"), "images": ("image_data_param", "rand_skip")},
    "shuffle_images": {"images": ("image_data_param", "shuffle")},
    "new_height": {"images": ("image_data_param", "new_height")},
    "new_width": {"images": ("image_data_param", "new_width")},
    "concat_dim": {"concat": ("concat_param", "concat_dim")},
    "det_fg_threshold": {"window_data": ("window_data_param", "fg_threshold")},
    "det_bg_threshold": {"window_data": ("window_data_param", "bg_threshold")},
    "det_fg_fraction": {"window_data": ("window_data_param", "fg_fraction")},
    "det_context_pad": {"window_data": ("window_data_param", "context_pad")},
    "det_crop_mode": {"window_data": ("window_data_param", "crop_mode")},
    "hdf5_output_param": {"hdf5_output": (None, "hdf5_output_param")},
}


def _set_field(msg, name: str, value) -> None:
    fd = msg.DESCRIPTOR.fields_by_name[name]
    if fd.message_type is not None:
        getattr(msg, name).CopyFrom(value)
    elif _is_repeated(fd):
        getattr(msg, name).append(value)
    else:
        setattr(msg, name, value)


def _is_repeated(fd) -> bool:
    return fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == fd.LABEL_REPEATED


def _upgrade_v0(net: "pb.NetParameter", source: str, notes: list[str]) -> None:
    """Rewrite V0 ``layers { layer { ... } }`` into V1 ``layers {}`` in place, as Caffe's UpgradeV0Net
    does: "padding" layers fold into the conv/pool layer they feed, then each V0 layer's fields move
    to the V1 parameter messages."""
    enum = pb.V1LayerParameter.DESCRIPTOR.enum_types_by_name["LayerType"].values_by_name
    producer: dict[str, int] = {name: -1 for name in net.input}
    kept: list = []
    for i, conn in enumerate(net.layers):
        v0 = conn.layer
        if v0.type != "padding":
            kept.append(_copy(conn))
        for j, b in enumerate(conn.bottom):
            if b not in producer:
                raise RebirthError(f"{source}: V0 layer '{v0.name}': bottom '{b}' is produced by no layer")
            src_idx = producer[b]
            src = net.layers[src_idx] if src_idx >= 0 else None
            if src is not None and src.layer.type == "padding":
                if v0.type not in ("conv", "pool") or len(conn.bottom) != 1 or len(src.bottom) != 1 \
                        or len(src.top) != 1:
                    raise RebirthError(f"{source}: V0 padding layer '{src.layer.name}' must feed one conv or pool "
                                       f"layer with a single bottom, not '{v0.name}' ({v0.type})")
                kept[-1].layer.pad = src.layer.pad
                kept[-1].bottom[j] = src.bottom[0]
        for t in conn.top:
            producer[t] = i
    upgraded = []
    for conn in kept:
        v0 = conn.layer
        new = pb.V1LayerParameter(name=v0.name)
        new.bottom.extend(conn.bottom)
        new.top.extend(conn.top)
        if v0.HasField("type"):
            if v0.type not in V0_TYPES:
                raise RebirthError(f"{source}: V0 layer '{v0.name}': unknown legacy type '{v0.type}' "
                                   f"(V0 types: {', '.join(sorted(V0_TYPES))})")
            new.type = enum[V0_TYPES[v0.type]].number
        new.blobs.extend(v0.blobs)
        new.blobs_lr.extend(v0.blobs_lr)
        new.weight_decay.extend(v0.weight_decay)
        for fd, value in v0.ListFields():
            if fd.name not in _V0_FIELDS:
                continue
            where = _V0_FIELDS[fd.name]
            target = where.get(v0.type) or where.get("*")
            if target is None:
                notes.append(f"{source}: V0 layer '{v0.name}' ({v0.type}): field '{fd.name}' does not apply "
                             "to this type and is dropped (as Caffe's upgrade does)")
                continue
            param, name = target
            _set_field(new if param is None else getattr(new, param), name, value)
        upgraded.append(new)
    del net.layers[:]
    net.layers.extend(upgraded)


def _copy(msg):
    out = type(msg)()
    out.CopyFrom(msg)
    return out


def _upgrade_v1(net: "pb.NetParameter", source: str) -> None:
    """Rewrite ``layers {}`` (V1) into ``layer {}`` in place."""
    type_names = pb.V1LayerParameter.DESCRIPTOR.enum_types_by_name["LayerType"].values_by_number
    upgraded = []
    for old in net.layers:
        new = pb.LayerParameter(name=old.name)
        kind = type_names[old.type].name if old.type in type_names else str(old.type)
        if kind not in V1_TYPES:
            raise RebirthError(f"{source}: layer '{old.name}': legacy type {kind} has no modern equivalent")
        new.type = V1_TYPES[kind]
        new.bottom.extend(old.bottom)
        new.top.extend(old.top)
        new.loss_weight.extend(old.loss_weight)
        new.include.extend(old.include)
        new.exclude.extend(old.exclude)
        new.blobs.extend(old.blobs)
        n_specs = max(len(old.param), len(old.blobs_lr), len(old.weight_decay))
        for i in range(n_specs):
            spec = new.param.add()
            if i < len(old.param):
                spec.name = old.param[i]
            if i < len(old.blobs_lr):
                spec.lr_mult = old.blobs_lr[i]
            if i < len(old.weight_decay):
                spec.decay_mult = old.weight_decay[i]
        for field in _V1_SHARED_PARAMS:
            if old.HasField(field):
                getattr(new, field).CopyFrom(getattr(old, field))
        upgraded.append(new)
    del net.layers[:]
    net.layer.extend(upgraded)


def upgrade(net: "pb.NetParameter", source: str = "<net>") -> "pb.NetParameter":
    """Upgrade legacy forms in place (V0 ``layers { layer {} }``, then V1 ``layers``) and return
    the net. What the V0 upgrade drops is reported as a RebirthWarning."""
    if len(net.layers):
        if len(net.layer):
            raise RebirthError(f"{source}: mixes legacy 'layers' and modern 'layer' fields")
        if any(old.HasField("layer") for old in net.layers):
            if not all(old.HasField("layer") for old in net.layers):
                raise RebirthError(f"{source}: mixes V0 (layers {{ layer {{ ... }} }}) and V1 layers")
            notes: list[str] = []
            _upgrade_v0(net, source, notes)
            for note in notes:
                warn(note)
        _upgrade_v1(net, source)
    return net


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
                           "(a .caffemodel goes to --weights)") from None
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
# Phase filtering (Caffe's Net::FilterNet / StateMeetsRule)


def _meets(state: "pb.NetState", rule: "pb.NetStateRule") -> bool:
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


def filter_phase(net: "pb.NetParameter", phase: int | None = None, level: int = 0,
                 stages: Iterable[str] = ()) -> "pb.NetParameter":
    """The layers of ``net`` that Caffe instantiates in ``phase`` (default: the net's own state, TEST)."""
    state = pb.NetState()
    state.CopyFrom(net.state)
    if phase is not None:
        state.phase = phase
    if level:
        state.level = level
    state.stage.extend(stages)
    out = pb.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    for layer in net.layer:
        included = not len(layer.include)
        if any(_meets(state, r) for r in layer.exclude):
            included = False
        if any(_meets(state, r) for r in layer.include):
            included = True
        if included:
            kept = out.layer.add()
            kept.CopyFrom(layer)
            del kept.include[:]
            del kept.exclude[:]
    out.state.phase = state.phase
    return out


def phases_used(net: "pb.NetParameter") -> set[int]:
    """The phases named by any include/exclude rule (empty for a plain deploy net)."""
    return {r.phase for layer in net.layer for r in list(layer.include) + list(layer.exclude)
            if r.HasField("phase")}


# --------------------------------------------------------------------------------------------
# Writing


def same_file(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` name the same file (after resolving links)."""
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _os_problem(path: Path, exc: OSError) -> RebirthError:
    """A one-line error for a failed file operation on ``path``."""
    what = exc.strerror or str(exc)
    if exc.errno == errno.ENAMETOOLONG:
        what = "file name too long"
    return RebirthError(f"{path}: cannot write ({what})")


def check_output_path(path: str | os.PathLike, is_dir: bool = False) -> Path:
    """Refuse, with one line, an output path that cannot be written: one of its parents is a file,
    the path itself exists as the wrong kind, or a name is too long. Missing parent directories
    are created (like ``mkdir -p``)."""
    path = Path(path)
    parent = path.parent
    try:
        for anc in [*reversed(path.parents)]:
            if anc.exists() and not anc.is_dir():
                raise RebirthError(f"{path}: '{anc}' is a file, not a directory")
        for part in (*path.parts[:-1], path.name):
            if len(os.fsencode(part)) > 255:
                raise RebirthError(f"{path}: cannot write (file name too long: '{part[:20]}...' has "
                                   f"{len(os.fsencode(part))} bytes)")
        parent.mkdir(parents=True, exist_ok=True)
        max_name = os.pathconf(parent, "PC_NAME_MAX") if hasattr(os, "pathconf") else 255
        if len(os.fsencode(path.name)) > max_name:
            raise RebirthError(f"{path}: cannot write (file name too long: {len(os.fsencode(path.name))} "
                               f"bytes, at most {max_name})")
        if is_dir and path.exists() and not path.is_dir():
            raise RebirthError(f"{path}: exists and is not a directory")
        if not is_dir and path.is_dir():
            raise RebirthError(f"{path}: is a directory, expected a file name")
    except OSError as exc:
        raise _os_problem(path, exc) from None
    return path


def check_writable_dir(path: str | os.PathLike) -> Path:
    """``check_output_path`` for a directory, plus a probe: a temporary directory is made (and
    removed) beside it, so that a parent without write permission (or on a read-only or pseudo
    file system) is a one-line error before any work, not after it."""
    out = check_output_path(path, is_dir=True)
    try:
        os.rmdir(tempfile.mkdtemp(prefix=f".{out.name[:100]}.", suffix=".probe", dir=str(out.parent)))
    except OSError as exc:
        raise _os_problem(out, exc) from None
    return out


def atomic_write(path: str | os.PathLike, data: bytes | str, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename; never onto an input. Every
    failure (no permission, disk full, a bad path) is a one-line RebirthError and leaves nothing."""
    path = Path(path)
    for src in inputs:
        if src is not None and same_file(path, Path(src)):
            raise RebirthError(f"{path}: refusing to overwrite an input file")
    check_output_path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:100]}.", suffix=".tmp", dir=str(path.parent))
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions of a new file
        os.replace(tmp, path)
    except OSError as exc:
        raise _os_problem(path, exc) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


MARKER = ".rebirth"
"""The file that makes a folder ours: JSON with the commands that wrote into it and the files they wrote.
A folder without it, or holding a name it does not list, belongs to the user."""



def read_marker(folder: Path) -> dict | None:
    """The marker of ``folder`` (``{"commands": [...], "files": [...]}``), or None when it has none
    or it cannot be read as ours."""
    import json  # noqa: PLC0415
    try:
        doc = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), list):
        return None
    return doc


def _marker_text(previous: dict | None, names: Iterable[str]) -> str:
    import json  # noqa: PLC0415
    commands = list((previous or {}).get("commands", []))[-20:] + [os.environ.get("REBIRTH_COMMAND", "rebirth")]
    files = sorted(set((previous or {}).get("files", [])) | set(names))
    return json.dumps({"made_by": "rebirth", "commands": commands, "files": files}, indent=2) + "\n"


def foreign_entries(folder: Path, names: Iterable[str]) -> list[str]:
    """What in the existing ``folder`` is not ours to touch when writing ``names`` into it:
    everything when it has no marker, else every entry the marker does not list, and every one of
    ``names`` that is there as a directory (a file would have to replace it)."""
    try:
        present = sorted(os.listdir(folder))
    except OSError as exc:
        raise _os_problem(folder, exc) from None
    marker = read_marker(folder)
    listed = set(marker["files"]) if marker is not None else set()
    dirs = {n for n in names if (folder / n).is_dir()}
    return [f"{n}/" if n in dirs else n for n in present
            if n != MARKER and (n not in listed or n in dirs)]


def _refuse_foreign(out: Path, foreign: list[str], what: str) -> None:
    more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
    raise RebirthError(f"{out}: holds files rebirth did not write ({', '.join(foreign[:3])}{more}); "
                       f"choose another output directory, or add --force to {what}")


def _check_inputs_outside(out: Path, files: Iterable[str], inputs: list[Path]) -> None:
    for name in files:
        for src in inputs:
            if same_file(out / name, src):
                raise RebirthError(f"{out / name}: refusing to overwrite an input file")
    if not out.exists():
        return
    for src in inputs:
        try:
            inside = src.resolve().is_relative_to(out.resolve())
        except OSError:
            inside = False
        if inside:
            raise RebirthError(f"{out}: holds the input {src}; it would be replaced with the directory: "
                               "choose another output directory")


def check_dir_is_ours(outdir: str | os.PathLike, force: bool = False) -> None:
    """Before any work: refuse an existing ``outdir`` that holds anything rebirth did not write
    (``foreign_entries``) unless ``force``, and a path that cannot be a folder. ``write_dir`` and
    ``claim_dir`` check again when they write."""
    out = Path(outdir)
    try:
        exists = out.is_dir()
    except OSError:
        exists = False
    if not exists:
        if out.parent.is_dir():
            check_output_path(out, is_dir=True)   # a file there, a name too long ...
        return
    if not force:
        foreign = foreign_entries(out, [])
        if foreign:
            _refuse_foreign(out, foreign, "replace the whole directory")


def write_dir(outdir: str | os.PathLike, files: dict[str, bytes | str], inputs: Iterable = (),
              force: bool = False) -> list[Path]:
    """Write ``files`` (name -> contents) and the marker as the directory ``outdir``, all or nothing.

    Everything is written into a fresh temporary directory next to ``outdir``, which then takes
    ``outdir``'s place (two renames), so old and new files never mix. An existing ``outdir`` is
    replaced only when it is ours (``foreign_entries``: its marker lists everything in it, and
    none of ``files`` is there as a directory) or ``force`` is given; one holding an input file is
    always refused. Any failure leaves ``outdir`` as it was and no temporary directory behind."""
    out = check_output_path(outdir, is_dir=True)
    inputs = [Path(p) for p in inputs if p is not None]
    if out.is_symlink():
        out = Path(os.path.realpath(out))
    _check_inputs_outside(out, files, inputs)
    if out.exists() and not force:
        foreign = foreign_entries(out, files)
        if foreign:
            _refuse_foreign(out, foreign, "replace the whole directory")
    files = {**files, MARKER: _marker_text(None, files)}
    tmp = old = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name[:100]}.", suffix=".new", dir=str(out.parent)))
        for name, data in files.items():
            with open(tmp / name, "wb") as fh:
                fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            os.chmod(tmp / name, 0o666 & ~_umask())
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name[:100]}.", suffix=".old", dir=str(out.parent)))
            os.rename(out, old / "replaced")
            try:
                os.rename(tmp, out)
            except OSError as exc:
                try:
                    os.rename(old / "replaced", out)
                except OSError:
                    kept, old = old, None  # never delete the only copy of the earlier output
                    raise RebirthError(f"{out}: cannot write ({exc.strerror or exc}); its earlier contents "
                                       f"are in {kept / 'replaced'}") from None
                raise
        else:
            os.rename(tmp, out)
        tmp = None
    except OSError as exc:
        raise _os_problem(out, exc) from None
    finally:
        for leftover in (tmp, old):
            if leftover is not None:
                shutil.rmtree(leftover, ignore_errors=True)
    return [out / name for name in files if name != MARKER]


def claim_dir(outdir: str | os.PathLike, names: Iterable[str], inputs: Iterable = (), force: bool = False) -> Path:
    """Make ``outdir`` ready for a command that adds ``names`` to it (relearn, finetune), before any
    work: a missing or empty folder is created and marked; an existing one must be ours
    (``foreign_entries``) unless ``force``, which lets the command write its own names beside the
    user's files (never removing any). A directory where a file would go is refused even then.
    A sub-folder with its own marker is another command's output made inside this one (finetune's
    and recover's default, SLIM_DIR/finetune and SLIM_DIR/recovered): ours, and left as it is."""
    out = check_output_path(outdir, is_dir=True)
    names = list(names)
    _check_inputs_outside_files(out, names, [Path(p) for p in inputs if p is not None])
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _os_problem(out, exc) from None
    foreign = foreign_entries(out, names)
    dirs = [n for n in foreign if n.endswith("/")]
    if dirs:
        raise RebirthError(f"{out / dirs[0].rstrip('/')}: is a directory where a file would be written; "
                           "choose another output directory")
    foreign = [n for n in foreign if read_marker(out / n) is None]
    if foreign and not force:
        _refuse_foreign(out, foreign, "write beside them")
    if read_marker(out) is None:
        record_files(out, [])
    return out


@contextlib.contextmanager
def claimed_dir(outdir: str | os.PathLike, names: Iterable[str], inputs: Iterable = (), force: bool = False):
    """``claim_dir`` for the body of a command: when the body fails (an error, Ctrl-C) and the
    folder claim_dir made holds nothing but its marker, the folder is removed again, so a refused
    run leaves no trace. A folder that existed before, or holds anything else, stays as it is."""
    existed = Path(outdir).exists()
    out = claim_dir(outdir, names, inputs, force)
    try:
        yield out
    except BaseException:
        if not existed:
            with contextlib.suppress(OSError):
                if [p.name for p in out.iterdir()] == [MARKER]:
                    (out / MARKER).unlink()
                    out.rmdir()
        raise


def _check_inputs_outside_files(out: Path, names: list[str], inputs: list[Path]) -> None:
    for name in names:
        for src in inputs:
            if same_file(out / name, src):
                raise RebirthError(f"{out / name}: refusing to overwrite an input file (give -o)")


def record_files(folder: str | os.PathLike, names: Iterable[str]) -> None:
    """Add ``names`` (and this command) to ``folder``'s marker, creating it when missing."""
    folder = Path(folder)
    atomic_write(folder / MARKER, _marker_text(read_marker(folder), names))


def net_to_text(net: "pb.NetParameter") -> str:
    return text_format.MessageToString(net)


def write_net(net: "pb.NetParameter", path: str | os.PathLike, inputs: Iterable = ()) -> Path:
    return atomic_write(path, net_to_text(net), inputs)


def write_weights(net: "pb.NetParameter", path: str | os.PathLike, inputs: Iterable = ()) -> Path:
    return atomic_write(path, net.SerializeToString(), inputs)
