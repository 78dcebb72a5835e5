"""The `rebirth` command line: a thin click layer. Each command lives in its own module and calls
the library; RebirthError becomes a one-line message on stderr and exit code 1 (no traceback)."""
from __future__ import annotations

import sys
import warnings

import click

from deeprebirth import __version__, errors
from deeprebirth.errors import RebirthError, RebirthWarning


def _show_warning(message, category, filename, lineno, file=None, line=None):
    if issubclass(category, RebirthWarning):
        ctx = click.get_current_context(silent=True)
        text = errors.render(str(message), flag_namer(ctx.command if ctx is not None else None))
        click.echo(f"rebirth: warning: {text}", err=True)
    elif issubclass(category, RuntimeWarning):   # numpy's overflow, invalid value ...: one line, once
        if not _numeric_warned:
            _numeric_warned.append(message)
            import os  # noqa: PLC0415
            click.echo(f"rebirth: warning: a numeric problem in the computation ({message}, at "
                       f"{os.path.basename(filename)}:{lineno}); results may hold inf or NaN", err=True)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_numeric_warned: list = []
"""The numeric warning this command printed (at most one: the first tells what happened)."""


_default_showwarning = warnings.showwarning


INTERRUPTED = 130
"""Exit status after Ctrl-C or SIGTERM (128 + SIGINT, as shells report it)."""


def _terminate_like_interrupt():
    """SIGTERM unwinds like Ctrl-C (KeyboardInterrupt), so that every ``finally`` removes its
    temporary files instead of the process vanishing (only where a handler can be set). Returns
    the previous handler, or None."""
    import signal  # noqa: PLC0415
    import threading  # noqa: PLC0415

    def _raise(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        return signal.signal(signal.SIGTERM, _raise)
    return None


def _after_the_command(previous_sigterm, leaving: bool) -> None:
    """Put SIGTERM's handler back; or, when ``leaving`` (the ``rebirth`` program, whose arguments
    come from sys.argv: the process ends now), ignore SIGINT and SIGTERM: the command is over and
    its exit status stands, a signal during the interpreter's shutdown neither kills the process
    nor prints a traceback."""
    import signal  # noqa: PLC0415
    import threading  # noqa: PLC0415
    if threading.current_thread() is not threading.main_thread():
        return
    if leaving:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    elif previous_sigterm is not None:
        signal.signal(signal.SIGTERM, previous_sigterm)


def _interrupted():
    """The one line and exit status of an interrupted command (every ``finally`` has run)."""
    click.echo("rebirth: error: interrupted (outputs are complete or as they were)", err=True)
    sys.exit(INTERRUPTED)


class RebirthGroup(click.Group):
    def main(self, args=None, *rest, **kwargs):
        # SIGTERM is Ctrl-C from the start, while the arguments are read too
        previous = _terminate_like_interrupt()
        try:
            return super().main(args, *rest, **kwargs)
        finally:
            _after_the_command(previous, leaving=args is None)

    def make_context(self, *args, **kwargs):
        try:     # reading the arguments: an interruption here ends like one in a command
            return super().make_context(*args, **kwargs)
        except KeyboardInterrupt:
            _interrupted()

    def parse_args(self, ctx, args):
        ctx.meta["rebirth_argv"] = list(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        import os  # noqa: PLC0415
        import shlex  # noqa: PLC0415
        # What output folders' markers record (caffe/netio.py; children inherit it).
        os.environ["REBIRTH_COMMAND"] = shlex.join(["rebirth", *ctx.meta.get("rebirth_argv", [])])
        warnings.showwarning = _show_warning
        warnings.simplefilter("always", RebirthWarning)
        _numeric_warned.clear()
        previous = _terminate_like_interrupt()
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:   # Ctrl-C or SIGTERM: every finally has run, temporary files are gone
            _interrupted()
        except errors.Interrupted as exc:   # finished steps kept: the line says where to go on from
            sub = self.get_command(ctx, ctx.invoked_subcommand) if ctx.invoked_subcommand else None
            click.echo(f"rebirth: error: interrupted: {exc.render(flag_namer(sub))}", err=True)
            sys.exit(INTERRUPTED)
        except RebirthError as exc:
            sub = self.get_command(ctx, ctx.invoked_subcommand) if ctx.invoked_subcommand else None
            click.echo(f"rebirth: error: {exc.render(flag_namer(sub))}", err=True)
            sys.exit(1)
        except OSError as exc:  # a path the system refuses (too long, no permission ...): one line too
            click.echo(f"rebirth: error: {errors.os_error_line(exc)}", err=True)
            sys.exit(1)
        finally:
            if previous is not None:
                import signal  # noqa: PLC0415
                signal.signal(signal.SIGTERM, previous)


class _PathKind(click.ParamType):
    """A path argument checked for its kind only (a file where a directory is expected, or the
    reverse, is one `rebirth: error:` line naming the option; whether it exists is the command's
    business, so the message can say what the file is for)."""

    def __init__(self, directory: bool):
        self.directory = directory
        self.name = "DIR" if directory else "FILE"

    def convert(self, value, param, ctx):
        import os  # noqa: PLC0415
        what = max(param.opts, key=len) if param is not None and param.opts else "argument"
        if param is not None and param.param_type_name == "argument":
            what = param.human_readable_name
        try:
            isdir = os.path.isdir(value)
            exists = os.path.exists(value)
        except (OSError, ValueError):
            return value
        if self.directory and exists and not isdir:
            raise RebirthError(f"{value}: is a file; {what} takes a directory")
        if not self.directory and isdir:
            raise RebirthError(f"{value}: is a directory; {what} takes a file")
        return value


FILE = _PathKind(directory=False)
DIR = _PathKind(directory=True)


@click.group(cls=RebirthGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rebirth")
def main():
    """DeepRebirth: make trained Caffe models run faster by slimming non-tensor layers.

    MODEL is a .prototxt path or a built-in name: googlenet, alexnet, resnet50, squeezenet,
    squeezenet11, fmnist_googlenet.
    """


def flag_namer(command: click.Command | None):
    """How ``command`` spells a library parameter (``errors.render``): its longest flag
    (``weights`` -> ``--weights``), its argument's name, else the parameter as a flag would spell it."""
    flags = {}
    for param in getattr(command, "params", []):
        if param.opts and param.param_type_name == "option":
            flags[param.name] = max(param.opts, key=len)
        elif param.name:
            flags[param.name] = param.human_readable_name
    return lambda name: flags.get(name, "--" + name.replace("_", "-"))


def current_flags():
    """``flag_namer`` of the command that is running (of none outside a command)."""
    ctx = click.get_current_context(silent=True)
    return flag_namer(ctx.command if ctx is not None else None)


def echo(text: str = "", err: bool = False) -> None:
    """``click.echo`` of text that may hold library messages: their ``{opt:NAME}`` become the
    running command's flags."""
    click.echo(errors.render(str(text), current_flags()), err=err)


def show_warnings(*lists: list[str]) -> None:
    """Print the warnings carried on results (``Model.warnings``, ``Result.warnings``), each once."""
    shown: set[str] = set()
    for messages in lists:
        for message in messages:
            if message not in shown:
                shown.add(message)
                echo(f"rebirth: warning: {message}", err=True)


def model_inputs(model: str, weights: str | None, train_val: str | None = None, need_weights: str | None = None
                 ) -> tuple[str, str | None, str | None, str | None]:
    """MODEL, WEIGHTS and the train_val as a command that rewrites a net takes them: a built-in name
    with the files shipped for it, a model folder with its own (caffe.folders.brought_by), each
    only where not given; and the line saying which (None: none), to print once the model loaded
    (an error is the only line otherwise). ``need_weights``: the command, which fails in one line
    when no weights are given or brought."""
    from deeprebirth.caffe import folders  # noqa: PLC0415
    brought = folders.brought_by(model, weights, train_val)
    line = folders.using_line(model, brought)
    weights = weights or brought.get("weights")
    if need_weights and weights is None:
        raise RebirthError(f"{model}: {need_weights} needs the model's weights: give WEIGHTS (or a model folder "
                           "holding weights.caffemodel)")
    return brought.get("deploy", model), weights, train_val or brought.get("train_val"), line


def output_json(obj) -> None:
    import json  # noqa: PLC0415
    echo(json.dumps(obj, indent=2))


def _register() -> None:
    """Import every command module (``*_cmd.py`` in this package); each registers its command on
    ``main``. One that fails to import is an error, never a command that silently goes missing."""
    import importlib  # noqa: PLC0415
    import pkgutil  # noqa: PLC0415
    for info in pkgutil.iter_modules(__path__):
        if info.name.endswith("_cmd"):
            importlib.import_module(f"{__name__}.{info.name}")



def _load_commands() -> None:
    """``_register``, interruptible like a command: loading the commands (numpy, protobuf, the
    rules ...) takes a while, and Ctrl-C or SIGTERM meanwhile ends in the one line too."""
    previous = _terminate_like_interrupt()
    try:
        _register()
    except KeyboardInterrupt:
        _interrupted()
    finally:
        if previous is not None:
            import signal  # noqa: PLC0415
            signal.signal(signal.SIGTERM, previous)


_load_commands()
