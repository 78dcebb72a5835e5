"""The one exception type users see: a one-line message, printed by the CLI without a traceback."""


class RebirthError(Exception):
    """A problem with the user's input (file, layer, what was expected)."""
