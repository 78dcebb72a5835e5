"""``proto/caffe.proto`` is BVLC Caffe master's schema (wire and text format) plus the well-known
fork extensions (SSD-Caffe, brocolli-caffe -- the engine --, ShuffleNet, DeepLab/PSPNet Interp,
pooling ``ceil_mode``), each with its upstream field number where BVLC leaves it free.

Two kinds of checks:

* Without Caffe: the schema holds exactly the BVLC message set plus the listed fork messages, a
  handful of well-known upstream facts hold (field numbers, defaults, enum values), and the public
  reference prototxts parse.
* With pycaffe (``caffe`` fixture): our descriptor is walked side by side with the engine's
  (``caffe.proto.caffe_pb2.DESCRIPTOR``; the engine is brocolli-caffe, an SSD-Caffe derivative).
  Every message, nested message/enum, field (by number: name, type, label, default, ``packed``,
  referenced type) and enum value must agree, except for the deviations listed below as data.
  An unlisted difference fails, and so does a listed deviation that is no longer there. Since
  everything the engine has beyond BVLC is in our schema too, the remaining deviations are the
  few places where a fork reused a BVLC number, and what we have that the engine lacks.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, text_format
from google.protobuf.descriptor import FieldDescriptor

from deeprebirth.caffe import proto as pb

# ---------------------------------------------------------------------------------------------
# What our schema must contain: BVLC master's top-level messages (and its one top-level enum).
# ---------------------------------------------------------------------------------------------

BVLC_MESSAGES = frozenset({
    # blobs, data records, fillers
    "BlobShape", "BlobProto", "BlobProtoVector", "Datum", "FillerParameter",
    # nets, solver, net state
    "NetParameter", "SolverParameter", "SolverState", "NetState", "NetStateRule", "ParamSpec",
    # layers
    "LayerParameter", "TransformationParameter", "LossParameter",
    "AccuracyParameter", "ArgMaxParameter", "BatchNormParameter", "BiasParameter",
    "ClipParameter", "ConcatParameter", "ContrastiveLossParameter", "ConvolutionParameter",
    "CropParameter", "DataParameter", "DropoutParameter", "DummyDataParameter",
    "EltwiseParameter", "ELUParameter", "EmbedParameter", "ExpParameter", "FlattenParameter",
    "HDF5DataParameter", "HDF5OutputParameter", "HingeLossParameter", "ImageDataParameter",
    "InfogainLossParameter", "InnerProductParameter", "InputParameter", "LogParameter",
    "LRNParameter", "MemoryDataParameter", "MVNParameter", "ParameterParameter",
    "PoolingParameter", "PowerParameter", "PReLUParameter", "PythonParameter",
    "RecurrentParameter", "ReductionParameter", "ReLUParameter", "ReshapeParameter",
    "ScaleParameter", "SigmoidParameter", "SliceParameter", "SoftmaxParameter", "SPPParameter",
    "SwishParameter", "TanHParameter", "ThresholdParameter", "TileParameter",
    "WindowDataParameter",
    # legacy layer formats
    "V1LayerParameter", "V0LayerParameter",
})
BVLC_TOP_LEVEL_ENUMS = frozenset({"Phase"})

# ---------------------------------------------------------------------------------------------
# How the engine (pycaffe built from brocolli-caffe 9.0.2) deviates from BVLC master.
# Names are relative to package ``caffe``; nested types are dotted ("PoolingParameter.RoundMode").
# ---------------------------------------------------------------------------------------------

# Fork messages in our schema that the engine has too (SSD-Caffe detection/augmentation,
# brocolli's extra layers): identical definitions, checked against the engine.
FORK_MESSAGES = frozenset({
    # SSD: annotated data, sampling, augmentation
    "LabelMapItem", "LabelMap", "Sampler", "SampleConstraint", "BatchSampler", "EmitConstraint",
    "NormalizedBBox", "Annotation", "AnnotationGroup", "AnnotatedDatum",
    "AnnotatedDataParameter", "OldResizeParameter", "SaltPepperParameter", "NoiseParameter",
    # SSD: detection layers
    "DetectionEvaluateParameter", "NonMaximumSuppressionParameter", "SaveOutputParameter",
    "DetectionOutputParameter", "MultiBoxLossParameter", "NormalizeParameter",
    "PermuteParameter", "PriorBoxParameter", "VideoDataParameter",
    # brocolli / other forks
    "BNParameter", "ProposalParameter", "PSROIPoolingParameter", "InceptionColumnParameter",
    "InceptionParameter", "ResizeParameter", "UpsampleParameter", "HardSigmoidParameter",
    "UnsqueezeParameter", "ReLU6Parameter", "PadParameter", "BilinearInterpolateParameter",
    "MaxUnPoolParameter", "PixelShuffleParameter",
})

# Fork messages in our schema from forks other than the engine's.
OTHER_FORK_MESSAGES = frozenset({"ShuffleChannelParameter", "InterpParameter"})

# Messages only the engine has: none any more (the schema accepts every engine extension).
ENGINE_EXTRA_MESSAGES: frozenset[str] = frozenset()

# BVLC master messages the engine predates or dropped.
BVLC_MESSAGES_MISSING_IN_ENGINE = frozenset({"SwishParameter", "ClipParameter"})

# Enums (top level or nested in a shared message) present on one side only.
ENGINE_EXTRA_ENUMS: frozenset[str] = frozenset()
BVLC_ENUMS_MISSING_IN_ENGINE = frozenset({"PoolingParameter.RoundMode"})

# Shared enums whose value sets differ: {enum: {"extra": {name: number}, "missing": {...}}}.
ENGINE_CHANGED_ENUM_VALUES: dict[str, dict[str, dict[str, int]]] = {}

# Fork fields in our shared messages, with the engine's numbers (BVLC leaves them unused).
FORK_FIELDS = {
    "LayerParameter": {
        # SSD-Caffe
        "annotated_data_param", "multibox_loss_param", "permute_param", "prior_box_param",
        "detection_output_param", "detection_evaluate_param", "norm_param", "video_data_param",
        # brocolli
        "bn_param", "inception_param", "resize_param", "upsample_param", "hardsigmoid_param",
        "unsqueeze_param", "relu6_param", "pad_param", "bilinear_interpolate_param",
        "max_unpool_param", "pixelshuffle_param", "proposal_param", "psroi_pooling_param",
    },
    "V1LayerParameter": {"bn_param", "batch_norm_param"},
    "TransformationParameter": {
        "crop_h", "crop_w", "old_resize_param", "noise_param", "emit_constraint",
    },
    "BatchNormParameter": {"weight_filler", "bias_filler", "use_alpha_beta", "do_all_reduce"},
    "ConvolutionParameter": {"width_group", "height_group"},
}

# Fields (by name) only the engine has: none any more.
ENGINE_EXTRA_FIELDS: dict[str, set[str]] = {}

# Fields (by name) of ours whose number the engine leaves unused: BVLC master fields the engine
# lacks, and fork fields of other forks (or moved off a number BVLC uses: ceil_mode 13 -> 1013).
BVLC_FIELDS_MISSING_IN_ENGINE = {
    "LayerParameter": {"swish_param", "clip_param", "shuffle_channel_param", "interp_param"},
    "InfogainLossParameter": {"axis"},
    "PoolingParameter": {"ceil_mode"},
}

# Same number on both sides, different definition: {message: {bvlc field name: {attribute:
# engine value}}}, listing only the attributes that differ (see ``_field_signature``).
ENGINE_CHANGED_FIELDS = {
    # SSD-Caffe reused BVLC's 41/42 for detection evaluation settings.
    "SolverParameter": {
        "layer_wise_reduce": {"name": "eval_type", "type": "string",
                              "default": "classification"},
        "weights": {"name": "ap_version", "label": "optional", "has_default": True,
                    "default": "Integral"},
    },
    # BVLC's `round_mode` enum is an older `ceil_mode` bool in the engine.
    "PoolingParameter": {
        "round_mode": {"name": "ceil_mode", "type": "bool", "default": True, "type_name": None},
    },
    # The engine gives the 2-D strides an explicit default of 1.
    "ConvolutionParameter": {
        "stride_h": {"has_default": True, "default": 1},
        "stride_w": {"has_default": True, "default": 1},
    },
}

# ---------------------------------------------------------------------------------------------
# Descriptor walking
# ---------------------------------------------------------------------------------------------

_TYPE_NAMES = {
    getattr(FieldDescriptor, name): name[len("TYPE_"):].lower()
    for name in dir(FieldDescriptor)
    if name.startswith("TYPE_")
}


def _label(field) -> str:
    if hasattr(field, "is_repeated"):  # protobuf >= 5.x; `label` is gone in newer releases
        repeated, required = field.is_repeated, field.is_required
    else:
        repeated = field.label == field.LABEL_REPEATED
        required = field.label == field.LABEL_REQUIRED
    return "repeated" if repeated else "required" if required else "optional"


def _packed(field):
    """The explicit ``packed`` option: True, False, or None when not given."""
    options = field.GetOptions()
    return options.packed if options.HasField("packed") else None


def _field_signature(field) -> dict:
    referenced = field.message_type or field.enum_type
    default = field.default_value if field.has_default_value else None
    return {
        "name": field.name,
        "type": _TYPE_NAMES[field.type],
        "label": _label(field),
        "has_default": bool(field.has_default_value),
        "default": default,
        "packed": _packed(field),
        "type_name": referenced.full_name if referenced is not None else None,
    }


def _relative(full_name: str) -> str:
    return full_name[len("caffe."):] if full_name.startswith("caffe.") else full_name


def _children(file_or_message):
    """(messages, enums) directly inside a FileDescriptor or a Descriptor."""
    if hasattr(file_or_message, "message_types_by_name"):  # FileDescriptor
        return (list(file_or_message.message_types_by_name.values()),
                list(file_or_message.enum_types_by_name.values()))
    return list(file_or_message.nested_types), list(file_or_message.enum_types)


def _values_equal(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b and type(a) is type(b)


def _signature_diff(ours: dict, theirs: dict) -> dict:
    return {key: theirs[key] for key in ours if not _values_equal(ours[key], theirs[key])}


def schema_differences(ours, engine) -> dict:
    """Everything in which ``engine`` differs from ``ours`` (two caffe FileDescriptors).

    Returns a dict of: extra_messages / missing_messages / extra_enums / missing_enums (sets of
    relative names; a type nested in a type that exists on one side only is not reported
    separately), extra_fields / missing_fields ({message: {field names}}), changed_fields
    ({message: {our field name: {attribute: engine value}}}) and changed_enum_values
    ({enum: {"extra": {...}, "missing": {...}}}).
    """
    diff = {
        "extra_messages": set(), "missing_messages": set(),
        "extra_enums": set(), "missing_enums": set(),
        "extra_fields": {}, "missing_fields": {}, "changed_fields": {},
        "changed_enum_values": {},
    }

    def compare_enums(mine, theirs):
        mine_values = {v.name: v.number for v in mine.values}
        their_values = {v.name: v.number for v in theirs.values}
        extra = {k: v for k, v in their_values.items() if mine_values.get(k) != v}
        missing = {k: v for k, v in mine_values.items() if their_values.get(k) != v}
        if extra or missing:
            diff["changed_enum_values"][_relative(mine.full_name)] = {
                "extra": extra, "missing": missing}

    def compare_messages(mine, theirs):
        name = _relative(mine.full_name)
        my_fields = {f.number: f for f in mine.fields}
        their_fields = {f.number: f for f in theirs.fields}
        for number in sorted(set(their_fields) - set(my_fields)):
            diff["extra_fields"].setdefault(name, set()).add(their_fields[number].name)
        for number in sorted(set(my_fields) - set(their_fields)):
            diff["missing_fields"].setdefault(name, set()).add(my_fields[number].name)
        for number in sorted(set(my_fields) & set(their_fields)):
            changed = _signature_diff(_field_signature(my_fields[number]),
                                      _field_signature(their_fields[number]))
            if changed:
                diff["changed_fields"].setdefault(name, {})[my_fields[number].name] = changed
        compare_scopes(mine, theirs)

    def compare_scopes(mine, theirs):
        my_msgs, my_enums = (dict((m.name, m) for m in group) for group in _children(mine))
        their_msgs, their_enums = (dict((m.name, m) for m in group)
                                   for group in _children(theirs))
        for key in set(their_msgs) - set(my_msgs):
            diff["extra_messages"].add(_relative(their_msgs[key].full_name))
        for key in set(my_msgs) - set(their_msgs):
            diff["missing_messages"].add(_relative(my_msgs[key].full_name))
        for key in set(their_enums) - set(my_enums):
            diff["extra_enums"].add(_relative(their_enums[key].full_name))
        for key in set(my_enums) - set(their_enums):
            diff["missing_enums"].add(_relative(my_enums[key].full_name))
        for key in sorted(set(my_enums) & set(their_enums)):
            compare_enums(my_enums[key], their_enums[key])
        for key in sorted(set(my_msgs) & set(their_msgs)):
            compare_messages(my_msgs[key], their_msgs[key])

    compare_scopes(ours, engine)
    return diff


EXPECTED_ENGINE_DIFFERENCES = {
    "extra_messages": set(ENGINE_EXTRA_MESSAGES),
    "missing_messages": set(BVLC_MESSAGES_MISSING_IN_ENGINE | OTHER_FORK_MESSAGES),
    "extra_enums": set(ENGINE_EXTRA_ENUMS),
    "missing_enums": set(BVLC_ENUMS_MISSING_IN_ENGINE),
    "extra_fields": {k: set(v) for k, v in ENGINE_EXTRA_FIELDS.items()},
    "missing_fields": {k: set(v) for k, v in BVLC_FIELDS_MISSING_IN_ENGINE.items()},
    "changed_fields": ENGINE_CHANGED_FIELDS,
    "changed_enum_values": ENGINE_CHANGED_ENUM_VALUES,
}


def _mismatch_report(actual: dict, expected: dict) -> list[str]:
    """Human-readable lines: unlisted differences and stale (no longer present) listings."""
    lines = []
    for kind in expected:
        got, want = actual[kind], expected[kind]
        if isinstance(want, set):
            lines += [f"{kind}: unlisted {x!r}" for x in sorted(got - want)]
            lines += [f"{kind}: stale listing {x!r}" for x in sorted(want - got)]
            continue
        for msg in sorted(set(got) | set(want)):
            g, w = got.get(msg, {}), want.get(msg, {})
            if g == w:
                continue
            if isinstance(w, set) or isinstance(g, set):
                g, w = set(g), set(w)
                lines += [f"{kind}: {msg}.{x} unlisted" for x in sorted(g - w)]
                lines += [f"{kind}: {msg}.{x} stale listing" for x in sorted(w - g)]
            else:
                for key in sorted(set(g) | set(w)):
                    if g.get(key) != w.get(key):
                        lines.append(f"{kind}: {msg}.{key}: engine {g.get(key)!r}, "
                                     f"listed {w.get(key)!r}")
    return lines


# ---------------------------------------------------------------------------------------------
# Tests against the engine
# ---------------------------------------------------------------------------------------------

@pytest.mark.caffe
def test_engine_schema_differs_from_ours_only_as_listed(caffe):
    from caffe.proto import caffe_pb2

    assert caffe_pb2.DESCRIPTOR.package == pb.FILE.package == "caffe"
    actual = schema_differences(pb.FILE, caffe_pb2.DESCRIPTOR)
    problems = _mismatch_report(actual, EXPECTED_ENGINE_DIFFERENCES)
    assert not problems, "engine vs proto/caffe.proto:\n  " + "\n  ".join(problems)


def test_deviation_lists_are_consistent():
    """The listed deviations refer to things that exist (or not) in *our* schema as claimed."""
    ours = {m: pb.FILE.message_types_by_name[m] for m in pb.FILE.message_types_by_name}
    assert not ENGINE_EXTRA_MESSAGES & set(ours)
    assert BVLC_MESSAGES_MISSING_IN_ENGINE | FORK_MESSAGES | OTHER_FORK_MESSAGES <= set(ours)
    for msg, names in ENGINE_EXTRA_FIELDS.items():
        assert not names & set(ours[msg].fields_by_name), msg
    for msg, names in FORK_FIELDS.items():
        assert names <= set(ours[msg].fields_by_name), msg
    for table in (BVLC_FIELDS_MISSING_IN_ENGINE, ENGINE_CHANGED_FIELDS):
        for msg, names in table.items():
            assert set(names) <= set(ours[msg].fields_by_name), msg
    for enum in BVLC_ENUMS_MISSING_IN_ENGINE:
        outer, inner = enum.split(".")
        assert inner in ours[outer].enum_types_by_name


def test_walker_reports_every_kind_of_difference():
    """schema_differences() compared with itself is empty; a tampered copy is caught."""
    empty = schema_differences(pb.FILE, pb.FILE)
    assert not any(empty.values())

    from google.protobuf import descriptor_pool

    proto = descriptor_pb2.FileDescriptorProto()
    pb.FILE.CopyToProto(proto)
    messages = {m.name: m for m in proto.message_type}
    conv = messages["ConvolutionParameter"]
    next(f for f in conv.field if f.name == "stride_h").default_value = "1"
    next(f for f in conv.field if f.name == "bias_term").default_value = "false"
    shape = messages["BlobShape"]
    shape.field[0].options.packed = False
    pooling = messages["PoolingParameter"]
    next(e for e in pooling.enum_type if e.name == "RoundMode").value[1].number = 7
    proto.message_type.remove(messages["SwishParameter"])
    layer = messages["LayerParameter"]
    layer.field.remove(next(f for f in layer.field if f.name == "swish_param"))
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(proto.SerializeToString())
    tampered = pool.FindFileByName(proto.name)

    d = schema_differences(pb.FILE, tampered)
    assert d["missing_messages"] == {"SwishParameter"}
    assert d["missing_fields"] == {"LayerParameter": {"swish_param"}}
    assert d["changed_fields"] == {
        "ConvolutionParameter": {"stride_h": {"has_default": True, "default": 1},
                                 "bias_term": {"default": False}},
        "BlobShape": {"dim": {"packed": False}},
    }
    assert d["changed_enum_values"] == {
        "PoolingParameter.RoundMode": {"extra": {"FLOOR": 7}, "missing": {"FLOOR": 1}}}


# ---------------------------------------------------------------------------------------------
# Tests that need no Caffe
# ---------------------------------------------------------------------------------------------

def test_schema_is_exactly_the_bvlc_and_fork_message_set():
    assert pb.FILE.package == "caffe"
    file_proto = descriptor_pb2.FileDescriptorProto()
    pb.FILE.CopyToProto(file_proto)
    assert file_proto.syntax in ("", "proto2")  # protoc leaves it unset for proto2
    assert not file_proto.HasField("edition")
    assert set(pb.FILE.message_types_by_name) == BVLC_MESSAGES | FORK_MESSAGES | OTHER_FORK_MESSAGES
    assert set(pb.FILE.enum_types_by_name) == BVLC_TOP_LEVEL_ENUMS
    assert not pb.FILE.extensions_by_name
    assert not pb.FILE.services_by_name


def _field(message: str, field: str):
    return pb.FILE.message_types_by_name[message].fields_by_name[field]


@pytest.mark.parametrize("message, field, number", [
    ("NetParameter", "layer", 100),
    ("NetParameter", "layers", 2),
    ("NetParameter", "input_dim", 4),
    ("LayerParameter", "convolution_param", 106),
    ("LayerParameter", "batch_norm_param", 139),
    ("LayerParameter", "scale_param", 142),
    ("LayerParameter", "input_param", 143),
    ("LayerParameter", "swish_param", 147),
    ("LayerParameter", "clip_param", 148),
    ("LayerParameter", "transform_param", 100),
    ("PoolingParameter", "round_mode", 13),
    ("SolverParameter", "layer_wise_reduce", 41),
    ("SolverParameter", "weights", 42),
    ("V1LayerParameter", "layer", 1),
    ("V1LayerParameter", "param", 1001),
    ("V0LayerParameter", "hdf5_output_param", 1001),
    # fork extensions at their upstream numbers
    ("LayerParameter", "annotated_data_param", 200),   # SSD-Caffe
    ("LayerParameter", "permute_param", 202),
    ("LayerParameter", "prior_box_param", 203),
    ("LayerParameter", "detection_output_param", 204),
    ("LayerParameter", "norm_param", 206),
    ("LayerParameter", "upsample_param", 500),         # brocolli-caffe
    ("LayerParameter", "relu6_param", 503),
    ("LayerParameter", "shuffle_channel_param", 164),  # ShuffleNet
    ("LayerParameter", "interp_param", 2143),          # DeepLab/PSPNet 143 is BVLC's input_param
    ("PoolingParameter", "ceil_mode", 1013),           # PR #3057's 13 is BVLC's round_mode
    ("TransformationParameter", "crop_h", 11),
    ("ConvolutionParameter", "width_group", 51),
])
def test_field_numbers(message, field, number):
    assert _field(message, field).number == number


def test_well_known_defaults_and_types():
    assert _field("ConvolutionParameter", "bias_term").default_value is True
    assert _field("ConvolutionParameter", "group").default_value == 1
    assert not _field("ConvolutionParameter", "stride_h").has_default_value
    assert _label(_field("ConvolutionParameter", "kernel_size")) == "repeated"
    assert _field("BatchNormParameter", "eps").default_value == pytest.approx(1e-5, rel=1e-6)
    assert _field("BatchNormParameter", "moving_average_fraction").default_value == \
        pytest.approx(0.999, rel=1e-6)
    assert _field("LRNParameter", "beta").default_value == pytest.approx(0.75)
    assert _field("FillerParameter", "type").default_value == "constant"
    assert _field("EltwiseParameter", "operation").default_value == 1  # SUM
    assert _field("SwishParameter", "beta").default_value == pytest.approx(1.0)
    assert _label(_field("ClipParameter", "min")) == "required"
    assert _label(_field("ClipParameter", "max")) == "required"
    assert _field("InfogainLossParameter", "axis").default_value == 1
    assert _field("SolverParameter", "layer_wise_reduce").default_value is True
    assert _field("SolverParameter", "random_seed").type == _field("BlobShape", "dim").type
    assert _field("SolverParameter", "weights").type == _field("NetParameter", "name").type
    # Legacy 4-d fields stay int32; only BlobShape.dim is int64 (and packed).
    assert _TYPE_NAMES[_field("BlobProto", "num").type] == "int32"
    assert _TYPE_NAMES[_field("Datum", "label").type] == "int32"
    assert _TYPE_NAMES[_field("BlobShape", "dim").type] == "int64"
    assert _packed(_field("BlobShape", "dim")) is True
    assert _packed(_field("BlobProto", "data")) is True
    assert _packed(_field("Datum", "float_data")) is None


def test_well_known_enums():
    assert (pb.TRAIN, pb.TEST) == (0, 1)
    layer_type = pb.FILE.message_types_by_name["V1LayerParameter"].enum_types_by_name["LayerType"]
    assert layer_type.values_by_name["CONVOLUTION"].number == 4
    assert layer_type.values_by_name["INNER_PRODUCT"].number == 14
    assert layer_type.values_by_name["DECONVOLUTION"].number == 39
    assert len(layer_type.values) == 40
    round_mode = pb.FILE.message_types_by_name["PoolingParameter"].enum_types_by_name["RoundMode"]
    assert {v.name: v.number for v in round_mode.values} == {"CEIL": 0, "FLOOR": 1}
    assert _field("PoolingParameter", "round_mode").default_value == 0  # CEIL
    hinge = pb.FILE.message_types_by_name["HingeLossParameter"].enum_types_by_name["Norm"]
    assert {v.name: v.number for v in hinge.values} == {"L1": 1, "L2": 2}


SHARED_PROTOTXTS = [
    "bvlc_googlenet/deploy.prototxt",
    "bvlc_googlenet/train_val.prototxt",
    "bvlc_googlenet/solver.prototxt",
    "bvlc_alexnet/deploy.prototxt",
    "bvlc_alexnet/train_val.prototxt",
    "bvlc_alexnet/solver.prototxt",
    "resnet50/deploy.prototxt",
]


@pytest.mark.parametrize("relpath", SHARED_PROTOTXTS)
def test_reference_prototxt_parses(shared_models: Path, relpath: str):
    text = (shared_models / relpath).read_text(encoding="utf-8")
    if Path(relpath).name == "solver.prototxt":
        msg = text_format.Parse(text, pb.SolverParameter())
        assert msg.net and msg.base_lr > 0 and msg.max_iter > 0
        assert msg.solver_mode == pb.SolverParameter.GPU
    else:
        msg = text_format.Parse(text, pb.NetParameter())
        assert msg.name and len(msg.layer) > 0 and not msg.layers
        assert all(layer.type for layer in msg.layer)
    # text -> binary -> text round trip is lossless
    again = type(msg).FromString(msg.SerializeToString())
    assert again == msg
    assert text_format.Parse(text_format.MessageToString(msg), type(msg)()) == msg
