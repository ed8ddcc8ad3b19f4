"""The one base of every user-facing error: bad config, data, model folder or request.

The CLI and the Ray jobs print a :class:`DiffreidError` as one line and exit with status 2; the Serve app answers
it with a 4xx. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class DiffreidError(Exception):
    """A failure the user can fix; the message names the file or field and what was expected."""

    status = 422  # the HTTP status the service answers with


def one_line(err: BaseException) -> str:
    """The message of a user-facing error as the CLI prints it (multi-line config errors keep their list)."""
    return str(err).strip() or type(err).__name__
