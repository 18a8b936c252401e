"""The one exception type the CLI turns into a one-line error and a non-zero exit."""


class DtcondError(Exception):
    """A problem with the user's input: the message names it and, where possible, the fix."""
