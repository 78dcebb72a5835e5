"""The rule registry: every rewrite rule, found by looking, in the order the rules declare.

A rule module is any module of this package except ``base`` (and names starting with ``_``), and
any ``*.py`` file in the directories listed in the environment variable ``REBIRTH_RULES_PATH``
(separated like PATH): a rule of your own is one file there. Each defines ``RULE``, an instance of
a ``rules.base.Rule`` subclass, which declares its name, order, defaults and needs (see base.py).
A module that fails to import, or that defines no RULE, is an error naming the file -- never a
rule that silently goes missing.

`rebirth slim` runs ``select()``'s rules; `rebirth fold-bn` runs ``get(["fold_bn"])``.

``tucker`` declares itself opt-in (``default = False``): it runs only through `rebirth tucker` and
`rebirth slim --tucker` (deeprebirth/tucker.py).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import sys
from pathlib import Path

from deeprebirth.errors import RebirthError
from deeprebirth.transforms.rules.base import Candidate, Change, Match, Rule, Skip  # noqa: F401

PATH_ENV = "REBIRTH_RULES_PATH"

# REBIRTH_RULES_PATH value -> name -> the module's RULE, in run order: the rule modules are imported
# once; what ``get`` and ``select`` hand out are fresh objects made from these (``Rule.fresh``).
_found: dict[str, dict[str, Rule]] = {}


def _rule_files() -> list[tuple[str, Path]]:
    """(module name, file) of every rule module: this package's, then those on REBIRTH_RULES_PATH."""
    here = Path(__file__).resolve().parent
    out = [(f"{__name__}.{m.name}", here / f"{m.name}.py") for m in pkgutil.iter_modules([str(here)])
           if m.name != "base" and not m.name.startswith("_")]
    for entry in os.environ.get(PATH_ENV, "").split(os.pathsep):
        if not entry:
            continue
        folder = Path(entry)
        if not folder.is_dir():
            raise RebirthError(f"{PATH_ENV}: '{entry}' is not a directory")
        out += [(f"rebirth_user_rules.{f.stem}", f) for f in sorted(folder.glob("*.py"))
                if not f.name.startswith("_")]
    return out


def _load(module: str, path: Path) -> Rule:
    try:
        if module.startswith(f"{__name__}."):
            mod = importlib.import_module(module)
        else:   # a file of one's own: read afresh each time the registry looks
            spec = importlib.util.spec_from_file_location(module, path)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[module] = mod
            try:
                spec.loader.exec_module(mod)
            except BaseException:
                sys.modules.pop(module, None)
                raise
    except Exception as exc:  # any failure is reported, with what failed
        raise RebirthError(f"{path}: the rule module failed to import ({type(exc).__name__}: {exc})") from exc
    rule = getattr(mod, "RULE", None)
    if not isinstance(rule, Rule):
        raise RebirthError(f"{path}: defines no RULE (an instance of a rules.base.Rule subclass)")
    if not rule.name:
        raise RebirthError(f"{path}: its rule declares no name")
    return rule


def discover(refresh: bool = False) -> dict[str, Rule]:
    """Rule name -> the module's ``RULE``, every rule found, in run order (declarations to read;
    to run rules, take fresh ones from ``get`` or ``select``)."""
    key = os.environ.get(PATH_ENV, "")
    if refresh or key not in _found:
        rules: dict[str, Rule] = {}
        where: dict[str, Path] = {}
        for module, path in _rule_files():
            rule = _load(module, path)
            if rule.name in rules:
                raise RebirthError(f"{path}: rule '{rule.name}' is already defined in {where[rule.name]}")
            rules[rule.name], where[rule.name] = rule, path
        for name, rule in rules.items():
            unknown = [a for a in rule.after if a not in rules]
            if unknown:
                raise RebirthError(f"{where[name]}: rule '{name}' runs after '{unknown[0]}', which is no rule "
                                   f"(rules: {', '.join(sorted(rules))})")
        _found[key] = {r.name: r for r in ordered(list(rules.values()))}
    return _found[key]


def ordered(rules: list[Rule]) -> list[Rule]:
    """``rules`` in run order: each after the rules it names in ``after`` (among those given), and
    otherwise by ``order``, then name."""
    names = {r.name for r in rules}
    todo = sorted(rules, key=lambda r: (r.order, r.name))
    out: list[Rule] = []
    done: set[str] = set()
    while todo:
        ready = next((r for r in todo if all(a in done or a not in names for a in r.after)), None)
        if ready is None:
            raise RebirthError("rules wait for each other: " + ", ".join(
                f"{r.name} after {', '.join(r.after)}" for r in todo))
        todo.remove(ready)
        out.append(ready)
        done.add(ready.name)
    return out


def available() -> list[str]:
    """Every rule's name, in run order."""
    return list(discover())


def get(names) -> list[Rule]:
    """Fresh rule instances by name, in the order given."""
    found = discover()
    rules = []
    for name in names:
        if name not in found:
            raise RebirthError(f"unknown rule '{name}' (rules: {', '.join(found)})")
        rules.append(found[name].fresh())
    return rules


def select(names: list[str] | None = None, keep_pooling: bool = False,
           have_weights: bool = True) -> tuple[list[Rule], list[str]]:
    """The rules a slim run applies (fresh instances), in run order, and notes about rules left out.

    ``names`` None: every rule that declares ``default``, except, without weights, those that need
    them. ``keep_pooling``: no pooling is absorbed into a convolution -- rules that do run with
    their ``keep_pooling_options``, or are left out (an error when named)."""
    found = discover()
    notes: list[str] = []
    if names is None:
        chosen = [r.fresh() for r in found.values() if r.default]
        if not have_weights:
            left_out = [r.name for r in chosen if r.needs_weights]
            if left_out:
                notes.append(f"no {{opt:weights}}: rule {', '.join(left_out)} (needs the trained weights) did not run")
            chosen = [r for r in chosen if not r.needs_weights]
        if keep_pooling:
            chosen = [r for r in chosen if not (r.absorbs_pooling and r.keep_pooling_options is None)]
    else:
        names = list(dict.fromkeys(n.strip() for n in names if n.strip()))
        if not names:
            raise RebirthError("{opt:rule_names}: no rule named (rules: " + ", ".join(found) + ")")
        chosen = get(names)
        if keep_pooling:
            clash = [r.name for r in chosen if r.absorbs_pooling and r.keep_pooling_options is None]
            if clash:
                raise RebirthError(f"{{opt:keep_pooling}} contradicts {{opt:rule_names}} {clash[0]} "
                                   "(it only removes poolings)")
        chosen = ordered(chosen)
    if keep_pooling:
        chosen = [r.with_options(**r.keep_pooling_options) if r.absorbs_pooling else r for r in chosen]
    return chosen, notes
