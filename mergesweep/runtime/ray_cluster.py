"""Joining or starting Ray, and refusing resource requests a cluster can never satisfy."""

from __future__ import annotations

import logging
import os
import socket

from mergesweep.errors import ConfigError, ExecutorError

__all__ = ["CONNECT_TIMEOUT_S", "available", "check_resources", "connect_ray"]

CONNECT_TIMEOUT_S = 5.0


def _check_reachable(address: str) -> None:
    """Fail fast (bounded time) when ``host:port`` does not accept connections.

    ``ray.init`` itself retries an unreachable GCS for minutes.
    """
    if address == "local":
        return
    if address == "auto":  # the cluster ``ray start`` recorded on this machine, if any
        from ray._private.services import canonicalize_bootstrap_address

        found = canonicalize_bootstrap_address("auto")
        if found is None:
            raise ExecutorError(
                "executor.ray_address: 'auto' found no Ray cluster on this machine; "
                "start one with 'ray start --head' or give its host:port"
            )
        address = found
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(
            f"executor.ray_address: expected 'host:port' or 'ray://host:port', got {address!r}"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ExecutorError(
            f"executor.ray_address: cannot reach a Ray cluster at '{address}' ({reason}); "
            "start one with 'ray start --head --port PORT' or fix the address"
        ) from None


def connect_ray(address: str | None, *, cpus: int | None = None) -> bool:
    """Join the cluster at ``address``, or start a local instance; True when this call started
    (and so should shut down) Ray. An already initialised Ray is reused as is."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, logging_level=logging.WARNING)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExecutorError(
                f"executor.ray_address: cannot join Ray at '{address}': {first}"
            ) from None
        return True
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    ray.init(
        address="local",  # never join a cluster a ``ray start`` on this machine left behind
        num_cpus=max(os.cpu_count() or 1, cpus or 1),
        num_gpus=gpus,
        include_dashboard=False,
        logging_level=logging.WARNING,
    )
    return True


def check_resources(workers: int, cpus: float, gpus: float) -> None:
    """Refuse requests the cluster can never satisfy (Ray would keep the actors pending)."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    total_cpu = sum(n.get("CPU", 0.0) for n in nodes)
    total_gpu = sum(n.get("GPU", 0.0) for n in nodes)
    # How many workers each node can host: an actor's CPUs and GPUs come from one node.
    by_cpu = [int(n.get("CPU", 0.0) // cpus) if cpus else workers for n in nodes]
    by_gpu = [int(n.get("GPU", 0.0) // gpus) if gpus else workers for n in nodes]
    if gpus and sum(by_gpu) < workers:
        raise ConfigError(
            f"executor.num_gpus: {workers} worker(s) × {gpus:g} GPU need {workers * gpus:g} "
            f"GPU(s), {gpus:g} on one node each; the Ray cluster has {total_gpu:g} GPU(s) on "
            f"{len(nodes)} node(s). Lower executor.workers or executor.num_gpus"
        )
    if sum(min(c, g) for c, g in zip(by_cpu, by_gpu)) < workers:
        raise ConfigError(
            f"executor.workers: {workers} worker(s) × {cpus:g} CPU (executor.threads) need "
            f"{workers * cpus:g} CPU(s) beside their GPUs; the Ray cluster has {total_cpu:g} "
            f"CPU(s) on {len(nodes)} node(s). Lower executor.workers or executor.threads"
        )


def available() -> str:
    import ray

    try:
        res = ray.available_resources()
    except Exception:  # pragma: no cover - diagnostics only
        return "unknown"
    return ", ".join(f"{k} {v:g}" for k, v in sorted(res.items()) if k in ("CPU", "GPU"))
