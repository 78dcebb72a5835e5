"""The `rebirth` command line: a thin click layer. Each command lives in its own module and calls
the library; RebirthError becomes a one-line message on stderr and exit code 1 (no traceback)."""
from __future__ import annotations

import sys
import warnings

import click

from deeprebirth import __version__
from deeprebirth.errors import RebirthError, RebirthWarning


def _show_warning(message, category, filename, lineno, file=None, line=None):
    if issubclass(category, RebirthWarning):
        click.echo(f"rebirth: warning: {message}", err=True)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


class RebirthGroup(click.Group):
    def invoke(self, ctx):
        warnings.showwarning = _show_warning
        warnings.simplefilter("always", RebirthWarning)
        try:
            return super().invoke(ctx)
        except RebirthError as exc:
            click.echo(f"rebirth: error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=RebirthGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rebirth")
def main():
    """DeepRebirth: make trained Caffe models run faster by slimming non-tensor layers.

    MODEL is a .prototxt path or a built-in name: googlenet, alexnet, resnet50, squeezenet,
    squeezenet11, fmnist_googlenet.
    """


def show_warnings(*lists: list[str]) -> None:
    """Print the warnings carried on results (``Model.warnings``, ``Result.warnings``), each once."""
    shown: set[str] = set()
    for messages in lists:
        for message in messages:
            if message not in shown:
                shown.add(message)
                click.echo(f"rebirth: warning: {message}", err=True)


def output_json(obj) -> None:
    import json  # noqa: PLC0415
    click.echo(json.dumps(obj, indent=2))


def _register() -> None:
    """Import every command module (``*_cmd.py`` in this package); each registers its command on
    ``main``. One that fails to import is an error, never a command that silently goes missing."""
    import importlib  # noqa: PLC0415
    import pkgutil  # noqa: PLC0415
    for info in pkgutil.iter_modules(__path__):
        if info.name.endswith("_cmd"):
            importlib.import_module(f"{__name__}.{info.name}")


_register()
