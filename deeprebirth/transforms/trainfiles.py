"""Fine-tuning files for a slim net: ``train_val.prototxt`` and ``solver.prototxt``.

The paper's recipe ("Adapting DeepRebirth to Overall Pipeline" and the GoogLeNet experiment):
regenerated layers start from Xavier weights and learn 10x faster than the layers kept from the
trained model; SGD with batch 32, base learning rate 0.001 (0.01 for the new layers), step policy
with step size 40,000 and gamma 0.1, momentum 0.9, about 90,000 iterations.

``train_val`` is the slim deploy body between data layers and losses:

* with a given train_val (``given``): its data layers (TRAIN and TEST) and, after the body, its
  training-only layers (losses, accuracies, auxiliary classifiers) whose bottoms still exist;
* without: ``ImageData`` layers reading list files the user fills in (``train.txt`` /
  ``val.txt``: "path label" lines), or synthetic ``DummyData`` (``data_layer="DummyData"``, to
  check that the net trains), plus ``SoftmaxWithLoss`` and top-1/top-5 ``Accuracy`` on the logits
  (the bottom of the deploy's output Softmax, else the last InnerProduct's top).

The deploy's output Softmax is dropped when nothing reads it (the loss computes its own).
"""
from __future__ import annotations

import math
from typing import Iterable

from deeprebirth.caffe import netio
from deeprebirth.caffe import proto as pb
from deeprebirth.caffe.phase import filter_phase
from deeprebirth.errors import RebirthError
from deeprebirth.graph.dag import Graph
from deeprebirth.graph.kinds import DATA_TYPES, DEPTHWISE_TYPES
from deeprebirth.transforms.rules.base import unique_name

NEW_LR_MULT = 10.0
KEPT_LR_MULT = 1.0
IMAGENET_MEAN_BGR = (104.0, 117.0, 123.0)
IMAGENET_VAL_IMAGES = 50_000

RECIPE = {
    "base_lr": 0.001, "lr_policy": "step", "stepsize": 40_000, "gamma": 0.1, "momentum": 0.9,
    "weight_decay": 0.0002, "max_iter": 90_000, "batch": 32,
}


# ----------------------------------------------------------------------------------------------
# Pieces of the deploy net


def deploy_inputs(deploy: "pb.NetParameter") -> list[tuple[str, tuple[int, ...] | None]]:
    """The deploy net's inputs, (blob name, shape): ``input`` fields and ``Input`` layers."""
    g = Graph(deploy, strict=False)
    out = [(name, g.version_shapes[(name, 0)]) for name in g.inputs]
    for node in g.nodes:
        if node.type == "Input":
            out += [(t[0], s) for t, s in zip(node.tops, node.top_shapes)]
    return out


def body(deploy: "pb.NetParameter") -> list["pb.LayerParameter"]:
    """The deploy's layers without its inputs."""
    return [layer for layer in deploy.layer if layer.type != "Input"]


def scratch_body(deploy: "pb.NetParameter") -> list["pb.LayerParameter"]:
    """The deploy body (no Input layers, no Softmax on the logits) as a net trained from scratch
    wants it: Convolutions get MSRA fillers and InnerProducts Xavier, weights lr_mult 1 / decay 1,
    biases (when the layer has them) a constant filler and 2 / 0; BatchNorm uses batch statistics
    while training (``use_global_stats`` cleared: Caffe then picks by phase) and its three blobs are
    not learned (0 / 0); Scale learns without weight decay (1 / 0)."""
    logits = logits_blob(deploy)
    out = []
    for layer in body(deploy):
        if layer.type == "Softmax" and layer.bottom[0] == logits:
            continue
        new = pb.LayerParameter()
        new.CopyFrom(layer)
        if layer.type == "BatchNorm":
            new.batch_norm_param.ClearField("use_global_stats")
            for _ in range(3):
                new.param.add(lr_mult=0, decay_mult=0)
        elif layer.type == "Scale":
            for _ in range(2 if layer.scale_param.bias_term else 1):
                new.param.add(lr_mult=1, decay_mult=0)
        elif layer.type in ("Convolution", "InnerProduct"):
            p = new.convolution_param if layer.type == "Convolution" else new.inner_product_param
            p.weight_filler.type = "msra" if layer.type == "Convolution" else "xavier"
            new.param.add(lr_mult=1, decay_mult=1)
            if p.bias_term:
                p.bias_filler.type = "constant"
                new.param.add(lr_mult=2, decay_mult=0)
        out.append(new)
    return out


def logits_blob(deploy: "pb.NetParameter") -> str:
    """What the loss reads: the bottom of the output Softmax, else the last InnerProduct's top."""
    g = Graph(deploy, strict=False)
    for node in reversed(g.topological_order()):
        if node.type == "Softmax" and not any(g.consumers_of(t) for t in node.tops):
            return node.bottoms[0][0]
    for node in reversed(g.topological_order()):
        if node.type == "InnerProduct":
            return node.tops[0][0]
    raise RebirthError("the net has no InnerProduct (or output Softmax) to attach a loss to; "
                       "give {opt:train_val} with its own loss layers")


# ----------------------------------------------------------------------------------------------
# Data layers


def generated_data_layers(inputs, data_layer: str = "ImageData", batch: int = RECIPE["batch"],
                          sources: tuple[str, str] = ("train.txt", "val.txt"),
                          label: str = "label", name: str = "data") -> list["pb.LayerParameter"]:
    """TRAIN and TEST data layers producing the deploy's single input and ``label``."""
    if len(inputs) != 1:
        raise RebirthError(f"the net has {len(inputs)} inputs ({', '.join(n for n, _ in inputs)}); a data layer "
                           "can only be generated for a single image input: give {opt:train_val}")
    blob, shape = inputs[0]
    if shape is None or len(shape) != 4:
        raise RebirthError(f"input '{blob}' has shape {list(shape) if shape else 'unknown'}, expected "
                           "N x C x H x W images; give {opt:train_val}")
    _, c, h, w = shape
    layers = []
    for phase, source, train in ((pb.TRAIN, sources[0], True), (pb.TEST, sources[1], False)):
        layer = pb.LayerParameter(name=name, type=data_layer)
        layer.top.extend([blob, label])
        layer.include.add(phase=phase)
        if data_layer == "ImageData":
            if c not in (1, 3):
                raise RebirthError(f"input '{blob}' has {c} channels; ImageData reads 1 (gray) or 3 (color): "
                                   "give {opt:train_val}")
            tp = layer.transform_param
            tp.mirror = train
            ip = layer.image_data_param
            if h == w and c == 3 and h >= 128:
                # The BVLC ImageNet recipe: resize to 256 (8/7 of the input above 256), crop.
                tp.crop_size = h
                ip.new_height = ip.new_width = 256 if h <= 256 else int(round(h * 8 / 7))
            else:
                # Small or gray inputs (MNIST-like): resize to the input, no crop.
                ip.new_height, ip.new_width = h, w
            if c == 3:
                tp.mean_value.extend(IMAGENET_MEAN_BGR)
            else:
                ip.is_color = False
            ip.source = source
            ip.batch_size = batch
            if train:
                ip.shuffle = True
        elif data_layer == "DummyData":
            dp = layer.dummy_data_param
            dp.shape.add(dim=[batch, c, h, w])
            dp.shape.add(dim=[batch])
            dp.data_filler.add(type="gaussian", std=1.0)
            dp.data_filler.add(type="constant", value=0.0)
        else:
            raise RebirthError(f"data layer '{data_layer}': expected ImageData or DummyData")
        layers.append(layer)
    return layers


def loss_layers(logits: str, label: str, taken: set[str], classes: int | None) -> list["pb.LayerParameter"]:
    loss = pb.LayerParameter(name=unique_name("loss", taken), type="SoftmaxWithLoss")
    loss.bottom.extend([logits, label])
    loss.top.append(loss.name)
    out = [loss]
    for name, k in (("accuracy", 1), ("accuracy_top5", 5)):
        if k > 1 and (classes is None or classes <= k):
            continue
        acc = pb.LayerParameter(name=unique_name(name, taken), type="Accuracy")
        acc.bottom.extend([logits, label])
        acc.top.append(acc.name)
        acc.include.add(phase=pb.TEST)
        if k > 1:
            acc.accuracy_param.top_k = k
        out.append(acc)
    return out


# ----------------------------------------------------------------------------------------------
# Learning rates


def set_lr_mults(net: "pb.NetParameter", param_counts: dict[str, int], new_layers: Iterable[str]) -> None:
    """``param { lr_mult }`` on every layer with parameters: 10 (weights) and 20 (biases) for new
    layers, 1 and 2 for the others. BatchNorm statistics are not learned (Caffe requires lr_mult 0)
    and keep their specs; an explicit lr_mult 0 on a kept layer (frozen on purpose) stays 0.
    decay_mult and sharing names are kept. New layers also get Xavier/zero fillers."""
    new = set(new_layers)
    for layer in net.layer:
        n = param_counts.get(layer.name, 0)
        if not n or layer.type == "BatchNorm":
            continue
        base = NEW_LR_MULT if layer.name in new else KEPT_LR_MULT
        while len(layer.param) > n:
            del layer.param[-1]
        while len(layer.param) < n:
            layer.param.add()
        for i, spec in enumerate(layer.param):
            if layer.name not in new and spec.HasField("lr_mult") and spec.lr_mult == 0:
                continue
            spec.lr_mult = base if i == 0 else 2 * base
        if layer.name in new:
            p = {"Convolution": layer.convolution_param, "Deconvolution": layer.convolution_param,
                 "InnerProduct": layer.inner_product_param}.get(layer.type)
            if p is not None:
                p.weight_filler.Clear()
                p.weight_filler.type = "xavier"
                p.bias_filler.Clear()
                p.bias_filler.type = "constant"
                p.bias_filler.value = 0.0


def add_fillers(net: "pb.NetParameter", layers: Iterable[str]) -> list[str]:
    """Give the named convolution / inner-product layers the fillers a from-scratch training run
    needs where they have none (a deploy prototxt usually has none, and Caffe's default filler is
    constant 0, which never trains): msra for convolutions, Xavier for inner products, constant 0
    biases. Returns the layers changed."""
    wanted, changed = set(layers), []
    for layer in net.layer:
        if layer.name not in wanted:
            continue
        if layer.type == "InnerProduct":
            p, kind = layer.inner_product_param, "xavier"
        elif layer.type in ("Convolution", "Deconvolution") or layer.type in DEPTHWISE_TYPES:
            p, kind = layer.convolution_param, "msra"
        else:
            continue
        touched = False
        if not p.HasField("weight_filler"):
            p.weight_filler.type = kind
            touched = True
        if p.bias_term and not p.HasField("bias_filler"):
            p.bias_filler.type = "constant"
            p.bias_filler.value = 0.0
            touched = True
        if touched:
            changed.append(layer.name)
    return changed


# ----------------------------------------------------------------------------------------------
# train_val


def build_train_val(deploy: "pb.NetParameter", new_layers: Iterable[str] = (),
                    given: "pb.NetParameter | None" = None, given_source: str = "<train_val>",
                    original_names: Iterable[str] = (), data_layer: str = "ImageData",
                    batch: int = RECIPE["batch"], untrained: Iterable[str] = ()) -> tuple["pb.NetParameter", list[str]]:
    """The fine-tuning net for ``deploy`` (see the module doc) and notes on what was left out.

    ``original_names``: the layers of the deploy net before slimming; a given train_val's layers of
    those names are the body (replaced by the slim one), the rest are training-only layers.
    ``untrained``: kept layers without trained weights; they get fillers (``add_fillers``).
    """
    inputs = deploy_inputs(deploy)
    layers = body(deploy)
    body_names = {layer.name for layer in layers}
    body_tops = {t for layer in layers for t in layer.top}
    notes: list[str] = []
    net = pb.NetParameter(name=deploy.name)
    if given is not None:
        data = [layer for layer in given.layer if layer.type in DATA_TYPES]
        if not data:
            raise RebirthError(f"{given_source}: has no data layers ({', '.join(sorted(DATA_TYPES))})")
        data_tops = {t for layer in data for t in layer.top}
        for name, _ in inputs:
            if name not in data_tops:
                raise RebirthError(f"{given_source}: its data layers produce {sorted(data_tops)}, "
                                   f"but the net reads input '{name}'")
        net.layer.extend(data)
        net.layer.extend(layers)
        _adopt_param_specs(net, given)
        available = data_tops | body_tops
        skip = set(original_names) | body_names
        for layer in given.layer:
            if layer.type in DATA_TYPES or layer.name in skip:
                continue
            missing = [b for b in layer.bottom if b not in available]
            if missing:
                notes.append(f"'{layer.name}' ({layer.type}) of {given_source} left out: it reads "
                             f"'{missing[0]}', which the slim net no longer has")
                continue
            net.layer.add().CopyFrom(layer)
            available.update(layer.top)
    else:
        taken = body_names | {"data"}
        label = unique_name("label", body_tops | {n for n, _ in inputs})
        data_name = "data" if "data" not in body_names else unique_name("input_data", set(body_names))
        logits = logits_blob(deploy)
        shapes = Graph(deploy, strict=False).shapes
        classes = shapes.get(logits)[-1] if shapes.get(logits) else None
        net.layer.extend(generated_data_layers(inputs, data_layer, batch, label=label, name=data_name))
        net.layer.extend(layers)
        net.layer.extend(loss_layers(logits, label, taken | {data_name}, classes))
    _drop_unread_softmax(net, body_names)
    param_counts = {n.name: len(n.param_shapes) for n in Graph(deploy, strict=False).nodes}
    set_lr_mults(net, param_counts, new_layers)
    filled = add_fillers(net, set(untrained) - set(new_layers))
    if filled:
        notes.append(f"{len(filled)} layer(s) without trained weights start from fillers in train_val "
                     "(msra for convolutions, Xavier for inner products, zero biases)")
    return net, notes


def _adopt_param_specs(net: "pb.NetParameter", given: "pb.NetParameter") -> None:
    """Body layers without ``param`` specs take those of the given train_val's layer of the same
    name and type (decay_mult, sharing names; lr_mult is set afterwards)."""
    theirs = {layer.name: layer for layer in given.layer}
    for layer in net.layer:
        other = theirs.get(layer.name)
        if other is not None and other.type == layer.type and not len(layer.param) and len(other.param):
            layer.param.extend(other.param)


def _drop_unread_softmax(net: "pb.NetParameter", body_names: set[str]) -> None:
    """Remove the deploy's output Softmax layers when nothing reads their top."""
    read = {b for layer in net.layer for b in layer.bottom}
    for i in range(len(net.layer) - 1, -1, -1):
        layer = net.layer[i]
        if layer.type == "Softmax" and layer.name in body_names and not any(t in read for t in layer.top):
            del net.layer[i]


def eval_batch_size(train_val: "pb.NetParameter", default: int = RECIPE["batch"]) -> int:
    """The batch size of the TEST phase's data (``default`` when it cannot be told)."""
    test = filter_phase(train_val, pb.TEST)
    for layer in test.layer:
        if layer.type not in DATA_TYPES:
            continue
        for sub in ("data_param", "image_data_param", "memory_data_param", "hdf5_data_param",
                    "window_data_param"):
            if layer.HasField(sub) and getattr(layer, sub).batch_size:
                return int(getattr(layer, sub).batch_size)
        if layer.type == "DummyData":
            p = layer.dummy_data_param
            if len(p.shape) and len(p.shape[0].dim):
                return int(p.shape[0].dim[0])
            if len(p.num):
                return int(p.num[0])
        if layer.type == "Input" and len(layer.input_param.shape):
            return int(layer.input_param.shape[0].dim[0])
    return default


# ----------------------------------------------------------------------------------------------
# solver


def build_solver(net_file: str = "train_val.prototxt", test_batch: int = RECIPE["batch"],
                 val_images: int = IMAGENET_VAL_IMAGES, test_interval: int = 4000,
                 snapshot: int = 10_000, snapshot_prefix: str = "slim", **overrides) -> "pb.SolverParameter":
    """The paper's fine-tuning schedule as a SolverParameter (CPU; paths relative to the solver's
    directory, which is where Caffe must be run from)."""
    s = pb.SolverParameter()
    s.net = net_file
    s.test_iter.append(max(1, math.ceil(val_images / max(1, test_batch))))
    s.test_interval = test_interval
    s.test_initialization = False
    s.display = 40
    s.average_loss = 40
    s.base_lr = RECIPE["base_lr"]
    s.lr_policy = RECIPE["lr_policy"]
    s.stepsize = RECIPE["stepsize"]
    s.gamma = RECIPE["gamma"]
    s.momentum = RECIPE["momentum"]
    s.weight_decay = RECIPE["weight_decay"]
    s.max_iter = RECIPE["max_iter"]
    s.type = "SGD"
    s.snapshot = snapshot
    s.snapshot_prefix = snapshot_prefix
    s.solver_mode = pb.SolverParameter.CPU
    for key, value in overrides.items():
        if isinstance(value, (list, tuple)):
            getattr(s, key)[:] = value
        else:
            setattr(s, key, value)
    return s


# ----------------------------------------------------------------------------------------------
# text


def _comment(lines: Iterable[str]) -> str:
    return "".join(f"# {line}\n" if line else "#\n" for line in lines)


def render_net(net: "pb.NetParameter", header: Iterable[str] = ()) -> str:
    return _comment(header) + netio.net_to_text(net)


def render_solver(solver: "pb.SolverParameter", header: Iterable[str] = ()) -> str:
    from google.protobuf import text_format  # noqa: PLC0415

    return _comment(header) + text_format.MessageToString(solver)
