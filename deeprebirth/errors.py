"""What users see: RebirthError (a one-line message the CLI prints as ``rebirth: error: ...`` with
exit code 1, no traceback) and RebirthWarning (``rebirth: warning: ...`` on stderr).

Warnings about a net (a layer of unknown type) are not issued as they are found: they are carried
on what was computed (``Graph.warnings``, ``Model.warnings``, ``runner.Result.warnings``) and the
cli prints them, each once. ``warn`` is for what is found once per command (a legacy field dropped
while reading a V0 net, weights missing from a caffemodel)."""
import re
import warnings

OPTION = re.compile(r"\{opt:([a-z_]+)\}")
"""How library messages name one of the caller's parameters: ``{opt:weights}``. The library never
spells a command-line flag; the cli renders the placeholder as the running command's flag
(``--weights``), a library caller sees the parameter's name (``weights``)."""


def render(message: str, name_of=lambda param: param) -> str:
    """``message`` with every ``{opt:NAME}`` replaced by ``name_of(NAME)``."""
    return OPTION.sub(lambda m: name_of(m.group(1)), message)


class RebirthError(Exception):
    """A problem with the user's input (file, layer, what was expected). The message may name the
    caller's parameters as ``{opt:NAME}`` (``render``); ``str()`` gives the parameters' names."""

    @property
    def template(self) -> str:
        return str(self.args[0]) if self.args else ""

    def render(self, name_of=lambda param: param) -> str:
        return render(self.template, name_of)

    def __str__(self) -> str:
        return self.render()


class Interrupted(RebirthError):
    """Ctrl-C or SIGTERM ended a command whose finished steps stay for a second run to go on from
    (``accelerate``); the message says what was kept. The cli exits with 130 as for any interruption."""


class Diverged(Exception):
    """Training's loss stopped being finite or grew out of bounds at iteration ``it``, or (with
    ``collapse``, what was seen) the net collapsed (internal: relearn and finetune catch it and try
    a lower rate)."""

    def __init__(self, it: int, loss: float, collapse: str | None = None):
        super().__init__(it, loss)
        self.it, self.loss, self.collapse = it, loss, collapse


class RebirthWarning(UserWarning):
    """Something the user should know that does not stop the command (an unknown layer type, ...)."""


def os_error_line(exc: OSError) -> str:
    """An OSError on a path as the one line a user sees: the path (shortened when huge) and what
    the system said ("file name too long", "Permission denied", ...)."""
    import errno  # noqa: PLC0415
    what = "file name too long" if exc.errno == errno.ENAMETOOLONG else (exc.strerror or str(exc))
    if exc.filename is None:
        return what
    name = str(exc.filename)
    if len(name) > 120:
        name = f"{name[:60]}...{name[-40:]}"
    return f"{name}: {what}"


def warn(message: str) -> None:
    """Issue ``message`` as a RebirthWarning (the cli prints it as ``rebirth: warning: ...``)."""
    warnings.warn(message, RebirthWarning, stacklevel=2)
