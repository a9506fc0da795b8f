"""The exception family for errors a user can cause.

Every class derives from :class:`MergesweepError` and also from the built-in that fits, so
callers can catch either. The CLI prints ``str(error)`` on one line and exits with code 2.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ExecutorError",
    "MergesweepError",
    "MissingFileError",
    "ObjectiveError",
    "PoolError",
    "ResumeMismatchError",
    "SpaceError",
    "StorageError",
    "UnknownNameError",
]


class MergesweepError(Exception):
    """Root of every error a user can cause; the message names the key, file or tensor."""


class ConfigError(MergesweepError, ValueError):
    """An experiment config (or override) is malformed: the message starts with the key path."""


class UnknownNameError(MergesweepError, KeyError):
    """A registry lookup failed; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class MissingFileError(MergesweepError, FileNotFoundError):
    """A file or folder the config names does not exist or holds no weights."""


class PoolError(MergesweepError, ValueError):
    """Base and experts do not fit together (names, shapes, dtypes) or a selection is empty."""


class SpaceError(MergesweepError, ValueError):
    """A point lies outside its space, or a space cannot be built over a pool."""


class ObjectiveError(MergesweepError, ValueError):
    """An objective's data or callable is unusable (empty split, missing column, bad import)."""


class StorageError(MergesweepError, RuntimeError):
    """A storage URL cannot be opened, or a study does not exist in it."""


class ResumeMismatchError(MergesweepError, ValueError):
    """A study is resumed with a config or pool that no longer matches what it was built with."""


class ExecutorError(MergesweepError, RuntimeError):
    """Workers cannot run: the pool does not load on a worker, or Ray cannot be reached."""
