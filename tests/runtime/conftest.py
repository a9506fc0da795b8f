"""Fixtures for runtime tests: digits experiments, a shared local Ray, coordination files."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # rt_configs and ms_runtime_fns live beside this file
    sys.path.insert(0, str(HERE))

from rt_configs import runtime_config  # noqa: E402


@pytest.fixture(scope="session")
def runtime_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``$MS_RUNTIME_DIR`` (call counters) and ``PYTHONPATH`` so that workers started from
    here (Ray actors, ``ray start`` nodes, CLI subprocesses) import ``ms_runtime_fns``."""
    root = tmp_path_factory.mktemp("ms-runtime")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MS_RUNTIME_DIR", str(root))
        mp.setenv(
            "PYTHONPATH", os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
        )
        mp.syspath_prepend(str(HERE))
        yield root


@pytest.fixture(scope="module")
def local_ray(runtime_dir: Path) -> Iterator[None]:
    """One local Ray instance (2 CPUs, no GPU) shared by a module's tests."""
    ray = pytest.importorskip("ray")
    import logging

    ray.init(
        address="local",
        num_cpus=2,
        num_gpus=0,
        include_dashboard=False,
        logging_level=logging.WARNING,
    )
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture
def make_config(digits_zoo: Path, tmp_path: Path):
    """``make_config(**changes)``: a Ray digits experiment on a fresh SQLite file."""

    def make(storage: str | None = None, **changes) -> dict:
        url = storage or f"sqlite:///{tmp_path / 'studies.db'}"
        return runtime_config(digits_zoo, url, **changes)

    return make
