"""The TRAIN net that `rebirth finetune` feeds from pycaffe: the slim directory's train_val.prototxt
(TRAIN phase) with its data layer replaced by an ``Input`` layer of the same tops and shapes (batch
size from the data layer, or the caller's; a solver ``iter_size`` folded into it), so that every
SOURCE kind trains the same way, whatever data layer the train_val names.

Labels: the train_val's own losses (SoftmaxWithLoss ...) read the source's labels.

Distillation (``distill=True``, for images without labels): the whole slim net learns to
reproduce the teacher's logits. The train_val's losses and accuracies (and what reads the label)
are removed, and one ``EuclideanLoss`` compares the student's logits (the input of its output
Softmax, else its last InnerProduct) with the teacher's, fed into the ``TEACHER_LOGITS`` input
from the very same (augmented) batch: loss = 1/(2N) sum_n ||z_student(n) - z_teacher(n)||^2.
Logits rather than SoftmaxWithLoss on the teacher's argmax because they carry the teacher's whole
ranking of the classes (which top-5 and KL measure), not just its top-1, and need no temperature
(regressing logits is the T -> infinity limit of soft-target distillation). With ``labels`` too,
that loss is added to the train_val's.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deeprebirth.caffe import phase
from deeprebirth.caffe import proto as pb
from deeprebirth.caffe.folders import SlimDir
from deeprebirth.errors import RebirthError
from deeprebirth.graph.dag import Graph
from deeprebirth.graph.kinds import DATA_TYPES
from deeprebirth.learning import preprocess
from deeprebirth.transforms import trainfiles

TEACHER_LOGITS = "teacher_logits"
DISTILL_LOSS = "distill_loss"
# Batch-size fields of the data layers Caffe knows.
_BATCH_FIELDS = ("image_data_param", "data_param", "hdf5_data_param", "memory_data_param", "window_data_param")


@dataclass
class TrainNet:
    net: "pb.NetParameter"       # TRAIN phase, data layer replaced by Input
    image: str                   # blob fed with images
    label: str | None            # blob fed with labels (None when distilling)
    batch: int
    pre: preprocess.Preprocess
    classes: int
    logits: str                  # the student's logits blob
    losses: dict[str, float]     # loss top -> loss weight


def _data_batch(layer: "pb.LayerParameter") -> int | None:
    for field in _BATCH_FIELDS:
        if layer.HasField(field) and getattr(layer, field).batch_size:
            return int(getattr(layer, field).batch_size)
    if layer.HasField("dummy_data_param") and len(layer.dummy_data_param.shape):
        return int(layer.dummy_data_param.shape[0].dim[0])
    return None


def _is_loss(layer: "pb.LayerParameter") -> bool:
    return layer.type.endswith("Loss") or (len(layer.loss_weight) and any(w != 0 for w in layer.loss_weight))


def build_train_net(sd: SlimDir, batch: int | None = None, distill: bool = False, labels: bool = False) -> TrainNet:
    """The TRAIN net fed from pycaffe (module doc); with ``distill`` the EuclideanLoss against the
    teacher's logits replaces the train_val's losses, or with ``labels`` too is added to them."""
    src = str(sd.path / "train_val.prototxt")
    tv = phase.filter_phase(sd.train_val, pb.TRAIN)
    reader, image, label = _reader(tv, sd, src)
    batch = batch or _data_batch(reader) or trainfiles.RECIPE["batch"]
    batch *= max(1, sd.solver.iter_size)  # one step = iter_size batches of equal weight = one batch that much larger
    _, c, h, w = dict(trainfiles.deploy_inputs(sd.deploy))[image]
    pre = preprocess.from_layer(reader, (batch, c, h, w), base_dir=sd.path, default=True)
    logits = trainfiles.logits_blob(sd.deploy)
    logit_shape = Graph(sd.deploy, strict=False).shapes.get(logits)
    if not logit_shape:
        raise RebirthError(f"{sd.path / 'deploy.prototxt'}: cannot infer the shape of the logits '{logits}'")

    net = pb.NetParameter()
    net.CopyFrom(tv)
    del net.layer[:]
    feed = net.layer.add(name=reader.name, type="Input")
    feed.top.append(image)
    feed.input_param.shape.add(dim=[batch, c, h, w])
    keep_labels = label is not None and (labels or not distill)
    if keep_labels:
        feed.top.append(label)
        feed.input_param.shape.add(dim=[batch])
    kept = [layer for layer in tv.layer if layer is not reader]
    if distill and not keep_labels:
        kept = _without_losses(kept, label)
    if distill:
        teacher = net.layer.add(name=TEACHER_LOGITS, type="Input")
        teacher.top.append(TEACHER_LOGITS)
        teacher.input_param.shape.add(dim=[batch, *logit_shape[1:]])
    net.layer.extend(kept)
    if distill:
        loss = net.layer.add(name=DISTILL_LOSS, type="EuclideanLoss")
        loss.bottom.extend([logits, TEACHER_LOGITS])
        loss.top.append(DISTILL_LOSS)
    try:   # what Caffe would CHECK when it builds the net (an abort there leaves a half-made run)
        Graph(net)
    except RebirthError as exc:
        raise RebirthError(f"{src}: the TRAIN net: {exc.template}") from None
    losses = _loss_weights(net)
    if not losses:
        raise RebirthError(f"{src}: has no loss layer in the TRAIN phase to train with")
    return TrainNet(net, image, label if keep_labels else None, batch, pre, int(np.prod(logit_shape[1:])), logits,
                    losses)


def _reader(tv: "pb.NetParameter", sd: SlimDir, src: str) -> tuple["pb.LayerParameter", str, str | None]:
    """The TRAIN phase's one data layer, the blob it makes images in (the deploy net's N x C x H x W
    input) and the one it makes labels in (None when it has one top)."""
    readers = [layer for layer in tv.layer if layer.type in DATA_TYPES and layer.type != "Input"]
    if len(readers) != 1:
        raise RebirthError(f"{src}: expected one data layer in the TRAIN phase, found {len(readers)}")
    reader = readers[0]
    inputs = dict(trainfiles.deploy_inputs(sd.deploy))
    image = reader.top[0]
    if image not in inputs or inputs[image] is None or len(inputs[image]) != 4:
        raise RebirthError(f"{src}: data layer '{reader.name}' makes '{image}', which is not the deploy net's "
                           "N x C x H x W input")
    if len(reader.top) > 2:
        raise RebirthError(f"{src}: data layer '{reader.name}' has {len(reader.top)} tops; expected image and label")
    return reader, image, (reader.top[1] if len(reader.top) > 1 else None)


def _without_losses(layers: list, label: str | None) -> list:
    """``layers`` without their losses and accuracies, and without whatever reads the label or a
    blob only they make (distillation without labels)."""
    dropped = {label} if label else set()
    body = []
    for layer in layers:
        if _is_loss(layer) or layer.type == "Accuracy" or any(b in dropped for b in layer.bottom):
            dropped.update(t for t in layer.top if t not in layer.bottom)
            continue
        body.append(layer)
    return body


def _loss_weights(net: "pb.NetParameter") -> dict[str, float]:
    """Loss top -> its weight, as Caffe weighs them (a loss layer's first top 1 unless set, others 0)."""
    losses = {}
    for layer in net.layer:
        if _is_loss(layer):
            for i, top in enumerate(layer.top):
                weight = layer.loss_weight[i] if i < len(layer.loss_weight) else (1.0 if i == 0 else 0.0)
                if weight:
                    losses[top] = float(weight)
    return losses
