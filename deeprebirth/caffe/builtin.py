"""The built-in models: ``models/*.prototxt`` (and the weights shipped beside them), by name.

In a source checkout (or an editable install) they are read from the project's ``models/``; an
installed wheel carries a copy as package data in ``deeprebirth/caffe/builtin/`` (setup.py's
build step puts it there), so ``rebirth inspect googlenet`` works from any folder.
"""
from __future__ import annotations

from pathlib import Path

NAMES = ("googlenet", "alexnet", "resnet50", "squeezenet", "squeezenet11", "fmnist_googlenet")

_PACKAGED = Path(__file__).resolve().parent / "builtin"
_SOURCE = Path(__file__).resolve().parents[2] / "models"


def models_dir() -> Path:
    """The folder the built-in models are read from: the installed copy, else the source tree's."""
    return _PACKAGED if _PACKAGED.is_dir() else _SOURCE


def prototxt(name: str) -> Path:
    return models_dir() / f"{name}.prototxt"


def weights(name: str) -> Path | None:
    """The trained weights shipped with a built-in model, if any."""
    p = models_dir() / f"{name}.caffemodel"
    return p if p.is_file() else None


def train_val(name: str) -> Path | None:
    """The train_val a built-in model's preprocessing comes from, if one is shipped."""
    p = models_dir() / f"{name}_train_val.prototxt"
    return p if p.is_file() else None


def shipped_for(model: str, given_weights: str | None, given_train_val: str | None) -> dict[str, Path]:
    """What a MODEL given by built-in name brings with it, for the files not given: its shipped
    ``weights`` and ``train_val`` (those that exist); empty for a prototxt path or when given."""
    if model not in NAMES or Path(model).is_file():
        return {}
    found = {"weights": None if given_weights else weights(model),
             "train_val": None if given_train_val else train_val(model)}
    return {what: path for what, path in found.items() if path is not None}
