"""Joining a Ray cluster: a real 2-node cluster on this machine (``ray start`` subprocesses)
driven through the CLI's ``--ray-address``, and an unreachable address."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from click.testing import CliRunner
from optuna.trial import TrialState

from mergesweep.cli import main
from mergesweep.storage import open_storage

RAY = str(Path(sys.executable).with_name("ray"))
MERGESWEEP = str(Path(sys.executable).with_name("mergesweep"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    # The nodes, the driver and the CLI must agree on auth; a throwaway cluster needs none.
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}


def _start(args: list[str], log: Path) -> subprocess.Popen:
    """``ray start ... --block`` in its own process group; returns once the node runs."""
    proc = subprocess.Popen(
        [RAY, "start", *args, "--num-cpus", "1", "--num-gpus", "0", "--block"],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=_env(),
        start_new_session=True,
    )
    end = time.monotonic() + 180
    while "Ray runtime started" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > end:
            _stop(proc)
            pytest.fail(f"ray start {args[0]} failed:\n{log.read_text()[-2000:]}")
        time.sleep(0.5)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    """Stop one node we started (never ``ray stop``: it would stop every Ray on the machine)."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 30)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def cluster(runtime_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A head and a worker node, 1 CPU each; yields the head's ``host:port``."""
    logs = tmp_path_factory.mktemp("ray-nodes")
    port = _free_port()
    # A private temp dir: the head records itself there, not in /tmp/ray where a later
    # ``ray.init()`` on this machine would find (and try to join) it after we stop it.
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths are limited
    head_args = ["--head", "--port", str(port), "--include-dashboard", "false", "--temp-dir", temp]
    head = _start(head_args, logs / "h")
    try:
        node = _start(["--address", f"127.0.0.1:{port}"], logs / "n")
        try:
            yield f"127.0.0.1:{port}"
        finally:
            _stop(node)
    finally:
        _stop(head)
        shutil.rmtree(temp, ignore_errors=True)


def _run_cli(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [MERGESWEEP, *args], capture_output=True, text=True, env=_env(), timeout=timeout
    )


def test_a_sweep_joins_a_two_node_cluster(cluster, make_config, tmp_path) -> None:
    # executor.kind stays inline in the file: --ray-address switches it to ray.
    cfg = make_config(name="cluster", budget__trials=6, executor={"kind": "inline", "workers": 2})
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = _run_cli(["run", str(path), "--ray-address", cluster, "--no-progress"])
    assert out.returncode == 0, out.stderr[-3000:]
    study = optuna.load_study(study_name="cluster", storage=open_storage(cfg["storage"]))
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    workers = {t.user_attrs["worker"] for t in trials}
    nodes = {w.rsplit("@", 1)[1] for w in workers}
    assert len(workers) == 2 and len(nodes) == 2, workers  # one actor on each node


def test_an_unreachable_address_is_a_one_line_error(make_config, tmp_path) -> None:
    ray = pytest.importorskip("ray")
    if ray.is_initialized():  # the executor would reuse it instead of joining the address
        pytest.skip("Ray is already initialised in this process")
    cfg = make_config(name="nocluster", executor={"kind": "ray", "workers": 1})
    path = tmp_path / "nocluster.yaml"
    path.write_text(yaml.safe_dump(cfg))
    port = _free_port()  # nothing listens there
    start = time.monotonic()
    out = CliRunner().invoke(
        main, ["run", str(path), "--ray-address", f"127.0.0.1:{port}", "--no-progress"]
    )
    assert time.monotonic() - start < 60  # bounded: Ray alone would retry for minutes
    assert out.exit_code == 2, out.output
    assert out.output.strip().splitlines()[-1] == (
        f"error: executor.ray_address: cannot reach a Ray cluster at '127.0.0.1:{port}' "
        "(Connection refused); start one with 'ray start --head --port PORT' or fix the address"
    )
    assert not ray.is_initialized()
    study = optuna.load_study(study_name="nocluster", storage=open_storage(cfg["storage"]))
    assert [t.state for t in study.get_trials()] == [TrialState.WAITING]  # storage intact
    # resume and fork take the same option; it contradicts an explicit inline executor.
    url, addr = cfg["storage"], f"127.0.0.1:{port}"
    for args, message in (
        (["resume", "nocluster", "--storage", url], "executor.ray_address: cannot reach"),
        (["fork", "nocluster", "--to", "forked", "--storage", url], "executor.ray_address: "),
        (
            ["resume", "nocluster", "--storage", url, "executor.kind=inline"],
            "--ray-address: executor.kind=inline runs trials in this process",
        ),
    ):
        out = CliRunner().invoke(main, [*args, "--ray-address", addr, "--no-progress"])
        assert out.exit_code == 2, out.output
        assert out.output.startswith(f"error: {message}"), out.output
