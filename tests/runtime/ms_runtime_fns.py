"""Objective callables for runtime tests, run inside Ray workers (and inline drivers).

They coordinate through files in ``$MS_RUNTIME_DIR`` so that the test, the driver and every
worker process agree on how many calls happened (``O_EXCL`` creates make the count atomic).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from torch import nn


def _claim(name: str) -> int:
    """Atomically take the next call number (0, 1, 2, ...) of the counter ``name``."""
    root = Path(os.environ["MS_RUNTIME_DIR"])
    n = 0
    while True:
        try:
            fd = os.open(root / f"{name}-{n}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            n += 1
            continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return n


def die_every_third(model: nn.Module, task: str) -> float:
    """Kill the worker process on calls 2, 5, 8, ... (a crash, an OOM kill: no exception)."""
    if _claim("die") % 3 == 2:
        os._exit(1)
    return 1.0


def hang_first(model: nn.Module, task: str) -> float:
    """Hang (as a deadlocked evaluation would) on the first call only."""
    if _claim("hang") == 0:
        time.sleep(3600)
    return 1.0


def slow(model: nn.Module, task: str) -> float:
    """A slow evaluation (0.3 s), so that concurrent drivers overlap."""
    time.sleep(0.3)
    return 1.0


def raise_once(model: nn.Module, task: str) -> float:
    """Raise (as a broken objective would) on task ``task``'s first call only."""
    if _claim(f"raise-{task}") == 0:
        raise RuntimeError(f"objective {task} broke on call 0")
    return 1.0


def hang_once(model: nn.Module, task: str) -> float:
    """Hang on task ``task``'s first call only."""
    if _claim(f"hang-{task}") == 0:
        time.sleep(3600)
    return 1.0
