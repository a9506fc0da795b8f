"""Session-wide fixtures: no hub access, a private zoo cache, the ``digits`` zoo built once.

The zoo cache of a test session is a fresh temporary folder, or ``$MERGESWEEP_TEST_ZOO_CACHE``
when set (point it at a cache that persists across runs to skip the ~1 minute build). Every
test sees ``MERGESWEEP_CACHE`` set to it, so no test writes into ``~/.cache/mergesweep``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def zoo_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session's zoo cache folder, exported as ``MERGESWEEP_CACHE``."""
    shared = os.environ.get("MERGESWEEP_TEST_ZOO_CACHE")
    root = Path(shared).expanduser() if shared else tmp_path_factory.mktemp("mergesweep-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MERGESWEEP_CACHE", str(root))
        yield root


@pytest.fixture(scope="session")
def digits_zoo(zoo_cache: Path) -> Path:
    """The folder of the ``digits`` zoo, built once per session (or found in the cache)."""
    from mergesweep.zoo import ensure_zoo

    return ensure_zoo("digits", progress=False, threads=1)
