"""Library messages name the caller's parameters (``{opt:NAME}``); the cli spells them as the
running command's flags, a library caller sees the parameter's name."""
import ast
import re
import warnings
from pathlib import Path

import click
from click.testing import CliRunner

from deeprebirth import errors
from deeprebirth.cli import flag_namer, main


def test_library_caller_sees_the_parameter_name():
    exc = errors.RebirthError("net.prototxt: relearning needs weights (give {opt:weights})")
    assert str(exc) == "net.prototxt: relearning needs weights (give weights)"
    assert exc.template.endswith("{opt:weights})")


def test_flag_namer_uses_the_command_s_longest_flag_and_falls_back_to_a_flag_spelling():
    @click.command()
    @click.option("-w", "--weights")
    @click.argument("model")
    def cmd(weights, model):
        pass
    name = flag_namer(cmd)
    assert name("weights") == "--weights"
    assert name("model") == "MODEL"
    assert name("max_drop") == "--max-drop"
    assert flag_namer(None)("val") == "--val"


def test_cli_renders_errors_and_warnings_with_the_command_s_flags():
    @main.command("_probe_messages", hidden=True)
    @click.option("-w", "--weights")
    def probe(weights):
        warnings.warn("no {opt:weights}: random ones", errors.RebirthWarning, stacklevel=1)
        raise errors.RebirthError("net: needs weights (give {opt:weights})")
    try:
        result = CliRunner().invoke(main, ["_probe_messages"])
    finally:
        main.commands.pop("_probe_messages")
    assert result.exit_code == 1
    assert "rebirth: warning: no --weights: random ones" in result.output
    assert "rebirth: error: net: needs weights (give --weights)" in result.output
    assert "{opt:" not in result.output


# ---------------------------------------------------------------------------------------------
# The library never spells a flag in what it raises or warns


PKG = Path(__file__).resolve().parents[2] / "deeprebirth"
FLAG = re.compile(r"(?<![\w-])--[a-z]")
MESSAGE_CALLS = {"RebirthError", "warn"}
"""Calls whose arguments are messages a user reads: ``RebirthError(...)``, ``errors.RebirthError(...)``,
``warn(...)``, ``errors.warn(...)``, ``warnings.warn(...)``."""


def _strings_in(node: ast.AST):
    """Every string constant that is part of ``node``'s value: the constant itself, the literal
    parts of an f-string, the pieces of a concatenation, ``%`` or ``.format``/``.join``, the
    branches of a conditional. A name or a call's result is a value computed elsewhere, not text."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node
    elif isinstance(node, ast.JoinedStr):
        for part in node.values:
            yield from _strings_in(part)
    elif isinstance(node, ast.FormattedValue):
        yield from _strings_in(node.value)
    elif isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mod)):
        yield from _strings_in(node.left)
        yield from _strings_in(node.right)
    elif isinstance(node, ast.IfExp):
        yield from _strings_in(node.body)
        yield from _strings_in(node.orelse)
    elif isinstance(node, (ast.Tuple, ast.List)):
        for elt in node.elts:
            yield from _strings_in(elt)
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
            and node.func.attr in ("format", "join", "replace"):
        yield from _strings_in(node.func.value)
        for arg in node.args:
            yield from _strings_in(arg)


def _message_args(node: ast.AST):
    """The arguments of ``node`` that are messages: those of a RebirthError or warn call, and of
    the exception a ``raise`` builds."""
    if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
        yield from node.exc.args
    elif isinstance(node, ast.Call):
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
        if name in MESSAGE_CALLS:
            yield from node.args
            yield from (kw.value for kw in node.keywords if kw.arg == "message")


def flags_in_library_messages(root: Path = PKG) -> list[str]:
    """``path:line: text`` for every string in a library message that spells a flag."""
    found = set()
    for path in sorted(root.rglob("*.py")):
        if "cli" in path.relative_to(root).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for arg in _message_args(node):
                for const in _strings_in(arg):
                    if FLAG.search(const.value):
                        found.add((str(path.relative_to(root.parent)), const.lineno, const.value.strip()[:70]))
    return [f"{p}:{line}: {text!r}" for p, line, text in sorted(found)]


def test_the_flag_finder_sees_messages_and_nothing_else(tmp_path):
    pkg = tmp_path / "deeprebirth"
    (pkg / "cli").mkdir(parents=True)
    (pkg / "lib.py").write_text('''"""A docstring may say --weights."""
import warnings
from deeprebirth.errors import RebirthError, warn
from deeprebirth import errors

def f(x, n):
    """So may a function's: --force."""
    # and a comment: --only
    argv = ["tool", "--model-file", x]
    if n:
        raise RebirthError(f"{x}: give --weights")
    if x:
        raise errors.RebirthError("a " + "b (--only " + str(n) + ")")
    warn(f"{x}: {'--batch' if n else 'b'}")
    warnings.warn("see --runs".format(), UserWarning)
    raise ValueError(f"--seed {n}")
    raise RebirthError("fine {opt:weights}, and a -1 and x--y")
''')
    (pkg / "cli" / "cmd.py").write_text('raise RebirthError("--the-cli-may")\n')
    found = flags_in_library_messages(pkg)
    assert [line.split(": ", 1)[1] for line in found] == [
        "': give --weights'", "'b (--only'", "'--batch'", "'see --runs'", "'--seed'"]
    assert [int(line.split(":")[1]) for line in found] == [11, 13, 14, 15, 16]


def test_library_messages_name_parameters_not_flags():
    """Errors and warnings raised outside cli/ name a caller's parameter as ``{opt:NAME}``; the cli
    spells it as the running command's flag (a library caller has no flags)."""
    found = flags_in_library_messages()
    assert not found, f"{len(found)} library messages spell a flag:\n" + "\n".join(found)


def test_eval_names_the_defaults_it_took_by_the_input():
    from deeprebirth.cli import reports
    base = {"model": "m", "weights": "w", "data": "photos", "images": 3, "preprocess_from": "defaults", "seconds": 1.0}
    gray = reports.eval_text({**base, "preprocess": {"channels": 1, "height": 64, "width": 64, "scale": 1 / 256}})
    colour = reports.eval_text({**base, "preprocess": {"channels": 3, "height": 224, "width": 224, "scale": 1.0,
                                                       "mean": [104, 117, 123]}})
    assert "from the defaults for a gray input" in gray and "ImageNet" not in gray
    assert "mean 104,117,123, scale 1, from the ImageNet defaults (give --train-val" in colour
    given = reports.eval_text({**base, "preprocess_from": "tv.prototxt", "preprocess": {"channels": 1, "height": 8,
                                                                                       "width": 8, "scale": 1.0}})
    assert given.splitlines()[1].endswith("from tv.prototxt")
