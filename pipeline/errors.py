"""The one exception type users see.

A :class:`SparseDeployError` carries a message meant for a person: the CLI prints it on
one line and exits non-zero, without a traceback. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

MESSAGE_LIMIT = 300  # characters of a library's message quoted in ours (transformers' can run to 5,000)


class SparseDeployError(Exception):
    """A problem with the user's input or environment, explained in one line."""


def first_line(exc: BaseException, limit: int = MESSAGE_LIMIT) -> str:
    """The first non-empty line of a third-party exception, cut to ``limit`` characters: enough
    to name the cause inside one of our lines, never a wall of text."""
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    return text if len(text) <= limit else text[: limit - 3] + "..."
