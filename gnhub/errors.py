"""The one error type a user can cause; the CLI prints its message and exits non-zero."""


class GnhubError(Exception):
    """A problem with the user's input, stated as one line naming the file and the fix."""
