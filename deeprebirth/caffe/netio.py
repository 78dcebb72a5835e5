"""Load and save Caffe nets (text prototxt) and weights (binary caffemodel).

* Legacy ``layers {}`` (V1LayerParameter) are upgraded to ``layer {}``.
* Phase filtering follows Caffe's NetStateRule semantics (include/exclude, phase, level, stage).
* Weights move between BlobProto and numpy without Python loops over elements.
* Every write is atomic (temporary file + rename) and refuses to overwrite an input file.
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
# Writing (through deeprebirth.outputs: temporary file and rename)


def net_to_text(net: "pb.NetParameter") -> str:
    return text_format.MessageToString(net)


def write_net(net: "pb.NetParameter", path: str | os.PathLike, inputs: Iterable = ()) -> Path:
    return outputs.atomic_write(path, net_to_text(net), inputs)


def write_weights(net: "pb.NetParameter", path: str | os.PathLike, inputs: Iterable = ()) -> Path:
    return outputs.atomic_write(path, net.SerializeToString(), inputs)
