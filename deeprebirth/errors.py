"""What users see: RebirthError (a one-line message the CLI prints as ``rebirth: error: ...`` with
exit code 1, no traceback) and RebirthWarning (``rebirth: warning: ...`` on stderr).

Warnings about a net (a layer of unknown type) are not issued as they are found: they are carried
on what was computed (``Graph.warnings``, ``Model.warnings``, ``runner.Result.warnings``) and the
cli prints them, each once. ``warn`` is for what is found once per command (a legacy field dropped
while reading a V0 net, weights missing from a caffemodel)."""
import warnings


class RebirthError(Exception):
    """A problem with the user's input (file, layer, what was expected)."""


class RebirthWarning(UserWarning):
    """Something the user should know that does not stop the command (an unknown layer type, ...)."""


def warn(message: str) -> None:
    """Issue ``message`` as a RebirthWarning (the cli prints it as ``rebirth: warning: ...``)."""
    warnings.warn(message, RebirthWarning, stacklevel=2)
