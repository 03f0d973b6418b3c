"""The one error type a user can cause; the CLI prints its message and exits non-zero."""

__all__ = ["GnhubError"]


class GnhubError(Exception):
    """A problem with the user's input, stated as one line naming the file and the fix. A library
    function names its parameters in backquotes (`score_threshold`, `force=True`); the `gnhub`
    command says its flags there instead (--score-threshold, --force)."""
