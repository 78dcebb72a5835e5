"""What users see: RebirthError (a one-line message the CLI prints as ``rebirth: error: ...`` with
exit code 1, no traceback) and RebirthWarning (``rebirth: warning: ...`` on stderr, once per message)."""
import contextlib
import warnings

# Messages already issued, when deduplicating (the CLI turns it on per command: graphs are built
# many times, and each should not repeat its warnings); None: every call warns.
_warned: set[str] | None = None


class RebirthError(Exception):
    """A problem with the user's input (file, layer, what was expected)."""


class Diverged(Exception):
    """Training's loss stopped being finite or grew out of bounds at iteration ``it`` (internal:
    relearn and finetune catch it and try a lower rate)."""

    def __init__(self, it: int, loss: float):
        super().__init__(it, loss)
        self.it, self.loss = it, loss


class RebirthWarning(UserWarning):
    """Something the user should know that does not stop the command (an unknown layer type, ...)."""


def warn(message: str) -> None:
    """Issue ``message`` as a RebirthWarning (once per command under the CLI)."""
    if _warned is not None:
        if message in _warned:
            return
        _warned.add(message)
    warnings.warn(message, RebirthWarning, stacklevel=2)


@contextlib.contextmanager
def each_warning_once():
    """Inside, each distinct warning is issued once (the CLI wraps every command in this)."""
    global _warned
    saved, _warned = _warned, set()
    try:
        yield
    finally:
        _warned = saved
