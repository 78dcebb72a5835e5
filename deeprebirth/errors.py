"""What users see: RebirthError (a one-line message the CLI prints as ``rebirth: error: ...`` with
exit code 1, no traceback) and RebirthWarning (``rebirth: warning: ...`` on stderr, once per message)."""
import warnings


class RebirthError(Exception):
    """A problem with the user's input (file, layer, what was expected)."""


class RebirthWarning(UserWarning):
    """Something the user should know that does not stop the command (an unknown layer type, ...)."""


def warn(message: str) -> None:
    warnings.warn(message, RebirthWarning, stacklevel=2)
