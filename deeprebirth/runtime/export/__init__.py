"""Exported models: a Caffe net (and weights) as the files another engine loads.

    files = export.export(model, "onnx", batch=1)   # {"model.onnx": bytes}

``onnx`` (to_onnx.py, the onnx package's helpers), ``ncnn`` (to_ncnn.py, ncnn's param/bin format
written from the Caffe net) and ``mnn`` (to_mnn.py, the ONNX model through MNN's converter binding).
The MNN conversion runs native code that may abort: callers run it through runtime.isolate.
"""
from __future__ import annotations

from deeprebirth.errors import RebirthError
from deeprebirth.graph.model import Model

FORMATS = {
    "onnx": "ONNX (opset 13), for ONNX Runtime and every ONNX consumer: model.onnx",
    "ncnn": "ncnn's param/bin pair: model.param and model.bin",
    "mnn": "MNN's model file, converted from the ONNX model by MNN's converter: model.mnn",
}


def check_format(fmt: str) -> str:
    key = (fmt or "").lower()
    if key not in FORMATS:
        raise RebirthError(f"unknown export format '{fmt}' (known: {', '.join(FORMATS)})")
    return key


def export(model: Model, fmt: str, batch: int | None = 1) -> dict[str, bytes]:
    """The files of ``model`` in format ``fmt``, name -> bytes (nothing is written)."""
    fmt = check_format(fmt)
    if fmt == "ncnn":
        from deeprebirth.runtime.export import to_ncnn  # noqa: PLC0415
        return to_ncnn.to_ncnn(model, batch)
    from deeprebirth.runtime.export import to_onnx  # noqa: PLC0415
    data = to_onnx.to_onnx(model, batch).SerializeToString()
    if fmt == "onnx":
        return {"model.onnx": data}
    from deeprebirth.runtime.export import to_mnn  # noqa: PLC0415
    return {to_mnn.FILE: to_mnn.onnx_to_mnn(data, model.source)}


#: Every file name an export may write (what `export -o DIR` may replace without --force).
ALL_FILES = ("model.onnx", "model.param", "model.bin", "model.mnn")


def load(spec: str, weights: str | None = None, seed: int = 0) -> Model:
    """MODEL as `rebirth export` takes it (a prototxt, a built-in name, or an output folder of
    slim/tucker/relearn/finetune: its deploy net and weights), at batch 1. Without weights every
    layer gets random weights (runtime.pycaffe.random_weights, from ``seed``), recorded in
    ``extras["random_weights"]``."""
    from deeprebirth.caffe.folders import model_files  # noqa: PLC0415
    from deeprebirth.graph.dag import Graph  # noqa: PLC0415
    from deeprebirth.graph.model import load_model  # noqa: PLC0415
    from deeprebirth.runtime.pycaffe import random_weights  # noqa: PLC0415 (numpy only)

    deploy, weights = model_files(spec, weights)
    model = load_model(deploy, weights, batch=1)
    if model.weights is None:
        model.weights = random_weights(Graph(model.net, batch=1), seed=seed)
        model.extras["random_weights"] = seed
    return model


def export_isolated(model: Model, fmt: str, batch: int | None = 1) -> dict[str, bytes]:
    """``export``; MNN's native converter runs in a child process (runtime.isolate), so that an
    abort in it is a one-line error."""
    fmt = check_format(fmt)
    if fmt != "mnn":
        return export(model, fmt, batch)
    from deeprebirth.runtime import isolate  # noqa: PLC0415
    return isolate.call(export, model, fmt, batch, what="MNN's converter")
