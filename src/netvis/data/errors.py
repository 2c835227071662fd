"""The one exception type netvis's data loaders raise for bad or missing data."""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """A data file or folder is missing, corrupt, truncated or inconsistent.

    The message always names the offending path (or, for a missing data set, the places that were
    searched and how to get the data). It subclasses :class:`ValueError`, so code that already catches
    ``ValueError`` keeps working.
    """
