"""Library messages name the caller's parameters (``{opt:NAME}``); the cli spells them as the
running command's flags, a library caller sees the parameter's name."""
import warnings

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
        warnings.warn("no {opt:weights}: random ones", errors.RebirthWarning)
        raise errors.RebirthError("net: needs weights (give {opt:weights})")
    try:
        result = CliRunner().invoke(main, ["_probe_messages"])
    finally:
        main.commands.pop("_probe_messages")
    assert result.exit_code == 1
    assert "rebirth: warning: no --weights: random ones" in result.output
    assert "rebirth: error: net: needs weights (give --weights)" in result.output
    assert "{opt:" not in result.output
