"""Legacy Caffe nets upgraded to the current format, as Caffe's upgrade_proto.cpp does: V0
(``layers { layer { type: "conv" ... } }``) to V1 (``layers { type: CONVOLUTION }``), then V1 to
``layer { type: "Convolution" }``. What Caffe's V0 upgrade drops ("continuing anyway") is reported
as a RebirthWarning."""
from __future__ import annotations

from deeprebirth.caffe import proto as pb
from deeprebirth.errors import RebirthError, warn

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
    "bias_filler": {"conv": ("convolution_param", "bias_filler"),
                    "innerproduct": ("inner_product_param", "bias_filler")},
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
