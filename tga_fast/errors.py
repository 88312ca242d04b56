"""The one exception type for mistakes a user can fix (a bad argument, a missing folder, a file in the way).

``tga-fast`` prints a :class:`UserError` as one line on stderr and exits with code 2 (``-v`` shows the traceback);
library callers can catch it as the ``ValueError`` it is.
"""

from __future__ import annotations

__all__ = ["UserError", "require_positive"]


class UserError(ValueError):
    """A mistake in what the user asked for; the message names the argument, file or record and the fix."""


def require_positive(value: int, name: str) -> int:
    """``value`` if it is an integer >= 1, else a :class:`UserError` naming ``name`` (e.g. ``--batch-size``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{name} must be a whole number >= 1, got {value!r}")
    return value
