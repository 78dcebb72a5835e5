"""Rewrite rules, one module each, all in the shape of rules.base.Rule.

Each module defines ``RULE``, an instance of its Rule subclass. ``DEFAULT_ORDER`` is the order in
which `rebirth slim` applies them; `rebirth fold-bn` runs only ``fold_bn``. ``tucker`` is not in it:
it runs only through `rebirth tucker` and `rebirth slim --tucker` (deeprebirth/tucker.py).
"""
from __future__ import annotations

import importlib

from ..errors import RebirthError
from .base import Change, Match, Rule, Skip  # noqa: F401

DEFAULT_ORDER = (
    "fold_bn",            # exact: BatchNorm/Scale into the preceding tensor layer
    "push_pool_concat",   # exact: a pooling after a Concat moves into the Concat's branches
    "streamline",         # conv + pooling/LRN/Dropout -> one slim conv (regenerated)
    "branch",             # inception branches absorbed and reducers shrunk (regenerated)
    "merge_parallel",     # exact: parallel convs with identical geometry on one input
    "pool_into_conv",     # a pooling whose consumers are all convs -> their strides (regenerated)
)


def available() -> list[str]:
    out = []
    for name in DEFAULT_ORDER:
        try:
            importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue
            raise
        out.append(name)
    return out


def get(names) -> list[Rule]:
    """Rule instances by module name, in the order given."""
    have = available()
    rules = []
    for name in names:
        if name not in have:
            raise RebirthError(f"unknown rule '{name}' (rules: {', '.join(have)})")
        rules.append(importlib.import_module(f"{__name__}.{name}").RULE)
    return rules
