"""The one exception type users see.

A :class:`SparseDeployError` carries a message meant for a person: the CLI prints it on
one line and exits non-zero, without a traceback. Anything else is a bug and keeps its
traceback.
"""


class SparseDeployError(Exception):
    """A problem with the user's input or environment, explained in one line."""
