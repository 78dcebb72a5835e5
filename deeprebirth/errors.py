"""What users see: RebirthError (a one-line message the CLI prints as ``rebirth: error: ...`` with
exit code 1, no traceback) and RebirthWarning (``rebirth: warning: ...`` on stderr, once per message)."""
import contextlib
import warnings

# Messages already issued, when deduplicating (the CLI turns it on per command: graphs are built
# many times, and each should not repeat its warnings); None: every call warns.
_warned: set[str] | None = None


class RebirthError(Exception):
    """A problem with the user's input (file, layer, what was expected)."""


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
