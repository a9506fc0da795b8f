"""mergesweep: coefficient search for model merging.

Importing does no work (no Ray, no torch thread changes, no network); the API below loads
its modules on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["__version__", "fork", "resume", "run"]
__version__ = "0.1.0"


def run(*args: Any, **kwargs: Any) -> Any:
    """See :func:`mergesweep.api.run`."""
    from mergesweep.api import run as _run

    return _run(*args, **kwargs)


def resume(*args: Any, **kwargs: Any) -> Any:
    """See :func:`mergesweep.api.resume`."""
    from mergesweep.api import resume as _resume

    return _resume(*args, **kwargs)


def fork(*args: Any, **kwargs: Any) -> Any:
    """See :func:`mergesweep.api.fork`."""
    from mergesweep.api import fork as _fork

    return _fork(*args, **kwargs)
