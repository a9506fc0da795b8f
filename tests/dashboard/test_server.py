"""The dashboard server: loopback, warnings, errors, the CLI, and sweeps writing while it reads."""

from __future__ import annotations

import io
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from click.testing import CliRunner

from mergesweep import dashboard
from mergesweep.cli import main
from mergesweep.dashboard import dashboard_app, is_loopback, make_server, serve, url_of
from mergesweep.errors import MergesweepError
from mergesweep.storage import open_storage

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
WRITER = Path(__file__).resolve().parent / "load_writer.py"


def _get(url: str, timeout: float = 30.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _api(base: str) -> str:
    return base.removesuffix("/dashboard") + "/api"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.0.2.7", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def _fake_server(host: str):
    def stop() -> None:
        raise KeyboardInterrupt

    return SimpleNamespace(server_address=(host, 8080), serve_forever=stop, server_close=lambda: 0)


def test_serve_warns_only_off_loopback(monkeypatch, capsys) -> None:
    monkeypatch.setattr(dashboard, "make_server", lambda url, host, port, **kw: _fake_server(host))
    serve("sqlite:///x.db", "0.0.0.0", 8080)
    out = capsys.readouterr()
    assert "warning: the dashboard listens on 0.0.0.0, reachable from other machines" in out.err
    assert "http://0.0.0.0:8080/dashboard" in out.out
    serve("sqlite:///x.db", "127.0.0.1", 8080)
    out = capsys.readouterr()
    assert out.err == "" and "http://127.0.0.1:8080/dashboard" in out.out


def test_errors_are_one_line(tmp_path, monkeypatch) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MergesweepError, match=rf"dashboard: cannot listen on 127.0.0.1:{port}"):
            make_server(url, "127.0.0.1", port)
    result = CliRunner().invoke(main, ["dashboard", "--storage", f"sqlite:///{tmp_path}/no/s.db"])
    assert result.exit_code == 2 and "error: storage: folder" in result.output
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)
    with pytest.raises(MergesweepError, match=r"optuna-dashboard is not installed; pip install"):
        make_server(url, "127.0.0.1", 0)


def _call(app, path: str, query: str = "") -> dict:
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "t",
        "SERVER_PORT": "0",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": io.StringIO(),
        "wsgi.url_scheme": "http",
    }
    return json.loads(b"".join(app(environ, lambda *a: None)))


def test_app_rescans_only_new_trials(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    study = optuna.create_study(storage=open_storage(url), study_name="c")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=5)
    app = dashboard_app(url, warm_up=False)
    sid = study._study_id
    assert len(_call(app, f"/api/studies/{sid}")["trials"]) == 5
    cached = app._inmemory_cache._cached_extra_study_property_cache[sid]
    assert cached._cursor == 5  # optuna-dashboard alone leaves it at -1: rescans forever
    study.optimize(lambda t: t.suggest_float("x", 0, 1) + t.suggest_int("k", 2, 9), n_trials=2)
    app._inmemory_cache._trials_last_fetched_at.clear()  # the dashboard's 2 s cache expired
    detail = _call(app, f"/api/studies/{sid}", "after=5")
    assert [t["number"] for t in detail["trials"]] == [5, 6]
    assert [p["name"] for p in detail["union_search_space"]] == ["k", "x"]
    assert [p["name"] for p in detail["intersection_search_space"]] == ["x"]
    assert cached._cursor == 7


def test_concurrent_detail_requests_share_one_answer() -> None:
    from mergesweep.dashboard import _SingleFlight

    calls: list[str] = []
    gate = threading.Event()

    def slow(environ, start_response):
        calls.append(environ["PATH_INFO"] + "?" + environ["QUERY_STRING"])
        gate.wait(10)
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"q": environ["QUERY_STRING"], "call": len(calls)}).encode()]

    app = _SingleFlight(slow)
    got: list[dict] = []
    queries = ["", "after=0", "after=0", "after=3"]
    threads = [
        threading.Thread(target=lambda q=q: got.append(_call(app, "/api/studies/1", q)))
        for q in queries
    ]
    for t in threads:
        t.start()
    time.sleep(0.5)  # all four are waiting: two computations, "" and "after=0" share one
    gate.set()
    for t in threads:
        t.join(10)
    assert sorted(calls) == ["/api/studies/1?", "/api/studies/1?after=3"]
    assert len(got) == 4
    shared = [g for g in got if g["q"] != "after=3"]
    assert len(shared) == 3 and all(g == shared[0] for g in shared)  # one answer, three users
    gate.clear()
    gate.set()
    _call(app, "/api/studies/1", "after=0")  # nothing in flight now: computed afresh
    assert len(calls) == 3
    _call(app, "/api/studies", "")
    assert calls[-1] == "/api/studies?"  # other paths pass straight through


def test_help() -> None:
    result = CliRunner().invoke(main, ["dashboard", "--help"])
    assert result.exit_code == 0
    assert "--host" in result.output and "127.0.0.1" in result.output and "--port" in result.output
    assert "--plot" in CliRunner().invoke(main, ["show", "--help"]).output


def test_cli_dashboard_serves_the_sweep(cli_dashboard: str, pareto_sweep) -> None:
    status, body = _get(_api(cli_dashboard) + "/studies")
    assert status == 200
    (summary,) = json.loads(body)["study_summaries"]
    assert summary["study_name"] == pareto_sweep.name
    status, body = _get(f"{_api(cli_dashboard)}/studies/{summary['study_id']}")
    detail = json.loads(body)
    assert status == 200 and len(detail["trials"]) == len(pareto_sweep.study.trials)
    ids = {g["id"] for g in detail["plotly_graph_objects"]}
    assert ids == {f"mergesweep-{k}" for k in ("hypervolume", "best", "coefficients", "tasks")}
    assert _get(cli_dashboard)[0] == 200  # the single-page app


def _concurrent_load(url: str, trials: int = 60, readers: int = 2) -> None:
    """A writer process adds ``trials`` while ``readers`` threads poll the dashboard's API."""
    storage = open_storage(url)
    study = optuna.create_study(storage=storage, study_name="load", directions=["maximize"] * 2)
    study.set_metric_names(["low", "parity"])
    server = make_server(url, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    api = _api(url_of(server))
    writer = subprocess.Popen(
        [sys.executable, str(WRITER), url, "load", str(trials)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    errors: list[str] = []
    served = [0]
    deadline = time.monotonic() + 240  # bounded in time and in requests

    def read() -> None:
        paths = ["/studies", f"/studies/{study._study_id}"]
        for i in range(3000):
            if writer.poll() is not None or time.monotonic() > deadline:
                return
            status, body = _get(api + paths[i % 2])
            if status != 200:
                errors.append(f"{status}: {body[:300]!r}")
            served[0] += 1

    threads = [threading.Thread(target=read) for _ in range(readers)]
    for t in threads:
        t.start()
    try:
        out, err = writer.communicate(timeout=300)
        for t in threads:
            t.join(timeout=60)
        assert writer.returncode == 0, err[-3000:]
        assert errors == [], errors[:3]
        assert served[0] >= 10, "the readers barely ran beside the writer"
        assert f"wrote {trials} trials" in out

        def complete():
            status, body = _get(f"{api}/studies/{study._study_id}")
            detail = json.loads(body)
            return status == 200 and len(detail["trials"]) == trials and detail

        detail = _wait(complete)
        ids = {g["id"] for g in detail["plotly_graph_objects"]}
        assert {"mergesweep-best", "mergesweep-hypervolume", "mergesweep-tasks"} <= ids
    finally:
        if writer.poll() is None:
            writer.kill()
        server.shutdown()
        server.server_close()


def _wait(check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, "the dashboard never showed every trial"
        time.sleep(0.5)
    return got


def test_sqlite_sweep_and_dashboard_side_by_side(tmp_path) -> None:
    _concurrent_load(f"sqlite:///{tmp_path / 'load.db'}")


@pytest.mark.postgres
def test_postgres_sweep_and_dashboard_side_by_side() -> None:
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        admin = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="postgres")
    except psycopg2.OperationalError as exc:
        pytest.skip(f"postgres: no server at 127.0.0.1:5432 for user postgres ({exc})")
    admin.autocommit = True
    db = f"ms_dash_{uuid.uuid4().hex[:8]}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {db}")
    try:
        _concurrent_load(f"postgresql://postgres@127.0.0.1:5432/{db}", trials=40)
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE {db} WITH (FORCE)")
        admin.close()


def test_cli_dashboard_started_in_the_background_stops_on_sigterm(tmp_path) -> None:
    """A non-interactive shell's background job has SIGINT ignored; ``kill`` (SIGTERM) still
    stops the dashboard cleanly: exit code 0, no traceback."""
    url = f"sqlite:///{tmp_path / 'bg.db'}"
    optuna.create_study(storage=open_storage(url), study_name="bg")
    cmd = [sys.executable, "-m", "mergesweep.cli", "dashboard", "--storage", url, "--port", "0"]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        line = proc.stdout.readline()
        assert "http://" in line, line + proc.stderr.read()
        assert _get(_api(line.split()[2]) + "/studies")[0] == 200
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0
    assert "Traceback" not in proc.stderr.read()
