"""Error types that cross module boundaries.

``UserError`` is a mistake in what the user asked for (a flag, a file, a path). The CLI turns
it into one line on stderr and exit code 2, before any work starts and with nothing written.
Everything else is a bug or an infrastructure failure and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A bad input; ``str(err)`` is the one line shown to the user (name the flag or file)."""


class DiskFullError(OSError):
    """The disk filled up while writing; the run is marked failed and never retried."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest of ``choices``, or ''."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
