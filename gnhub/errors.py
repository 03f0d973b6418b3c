"""The one error type a user can cause; the CLI prints its message and exits non-zero."""

__all__ = ["GnhubError", "first_line"]


class GnhubError(Exception):
    """A problem with the user's input, stated as one line naming the file and the fix. A library
    function names its parameters in backquotes (`score_threshold`, `force=True`); the `gnhub`
    command says its flags there instead (--score-threshold, --force)."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type's name where it has none), for one-line errors."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
