"""optuna-dashboard for a mergesweep storage, and the figures mergesweep publishes to it.

:func:`make_server` serves ``optuna_dashboard.wsgi`` from a threaded WSGI server (the
dashboard's own ``run_server`` handles one request at a time). The storage is opened with
:func:`mergesweep.storage.open_storage`, which creates the tables first and, for SQLite,
switches the file to WAL with a 30 s busy timeout: the dashboard reads while sweeps write
without "database is locked" on either side. A server bound to an address other than loopback
is reachable from other machines, with no authentication, and lets visitors edit notes and
delete studies: :func:`serve` warns about it.

:class:`FigureRefresher` is the driver's hook: it republishes :func:`study_figures` as trials
complete, at a bounded cost.
"""

from __future__ import annotations

import io
import ipaddress
import json
import logging
import math
import re
import signal
import socket
import sys
import threading
import time
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from mergesweep.errors import MergesweepError
from mergesweep.figures import ID_PREFIX, study_figures

if TYPE_CHECKING:
    import optuna

    from mergesweep.study import StudySetup

__all__ = [
    "FigureRefresher",
    "dashboard_app",
    "is_loopback",
    "make_server",
    "publish_figures",
    "serve",
]

log = logging.getLogger(__name__)
_MISSING = "dashboard: optuna-dashboard is not installed; pip install 'mergesweep[dashboard]'"


class _Server(ThreadingMixIn, WSGIServer):
    """One thread per request; worker threads do not keep the process alive."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A tab closed or reloaded mid-response is routine, not worth a traceback per poll.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # the dashboard polls every second
        pass


def is_loopback(host: str) -> bool:
    """True when every address ``host`` resolves to is a loopback address."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def make_server(
    storage_url: str, host: str = "127.0.0.1", port: int = 8080, *, access_log: bool = False
) -> WSGIServer:
    """A bound, not yet serving, threaded server of optuna-dashboard for ``storage_url``.

    ``port=0`` picks a free port (read it from ``server.server_address[1]``). Call
    ``serve_forever()`` on the result, ``shutdown()`` from another thread to stop it.

    Raises:
        MergesweepError: optuna-dashboard is not installed, or the address cannot be bound.
        StorageError: the storage cannot be opened.
    """
    app = dashboard_app(storage_url)
    cls = _Server6 if ":" in host.strip("[]") else _Server
    try:
        server = cls((host.strip("[]"), port), WSGIRequestHandler if access_log else _QuietHandler)
    except OSError as exc:
        raise MergesweepError(
            f"dashboard: cannot listen on {host}:{port}: {exc.strerror}"
        ) from None
    server.set_app(app)
    return server


def dashboard_app(storage_url: str, *, warm_up: bool = True) -> Any:
    """optuna-dashboard's WSGI app for ``storage_url``, kept fast on large studies.

    * The storage is wrapped in optuna's own trial cache (what ``optuna.load_study`` does):
      finished trials are read once, later reads fetch only new and unfinished trials. Bare,
      the dashboard re-reads every trial whenever its 2–10 s cache expires (20 s per read for
      2,000 trials × 40 parameters on a busy 2-core machine).
    * optuna-dashboard 0.21's search-space cache never moves its cursor once every trial is
      finished, so each re-read re-scans every trial (8 s at that size): :func:`_fix_cursor`.
    * Identical study-detail requests share one answer while it is computed
      (:class:`_SingleFlight`): the page asks again every 10 s until its first answer arrives,
      and at that size each answer is 23 MB of JSON that takes seconds to make.
    * With ``warm_up``, a background thread loads each study once at start, so the first page
      load pays only for turning the trials into JSON (or joins the warm-up's answer).

    Raises:
        MergesweepError: optuna-dashboard is not installed.
        StorageError: the storage cannot be opened.
    """
    try:
        from optuna_dashboard import wsgi
    except ImportError:
        raise MergesweepError(_MISSING) from None
    import optuna

    from mergesweep.storage import open_storage

    _fix_cursor()
    storage = optuna.storages.get_storage(open_storage(storage_url))  # + the trial cache
    app = _SingleFlight(wsgi(storage))
    if warm_up:
        ids = [s._study_id for s in storage.get_all_studies()]
        threading.Thread(target=_warm_up, args=(app, ids), daemon=True).start()
    return app


_DETAIL = re.compile(r"/api/studies/\d+/?")


class _Flight:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: tuple[str, list[tuple[str, str]], bytes] | None = None


class _SingleFlight:
    """WSGI middleware: concurrent GETs of one study's detail (same ``after``) share the
    response the first of them computes."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.flights: dict[tuple[str, str], _Flight] = {}

    def __getattr__(self, name: str) -> Any:  # the Bottle app's attributes (its caches)
        return getattr(self.app, name)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") != "GET" or not _DETAIL.fullmatch(path):
            return self.app(environ, start_response)
        after = parse_qs(environ.get("QUERY_STRING", "")).get("after", ["0"])[0]
        key = (path.rstrip("/"), after)
        with self.lock:
            flight = self.flights.get(key)
            leader = flight is None
            if leader:
                flight = self.flights[key] = _Flight()
        if leader:
            try:
                flight.result = _collect(self.app, environ)
            finally:
                with self.lock:
                    del self.flights[key]
                flight.done.set()
        else:
            flight.done.wait()
        if flight.result is None:  # the leader failed: compute our own
            return self.app(environ, start_response)
        status, headers, body = flight.result
        start_response(status, headers)
        return [body]


def _collect(app: Any, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
    """Run a WSGI app to completion: status, headers and body."""
    got: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        got["status"], got["headers"] = status, headers
        return lambda data: None

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        if hasattr(result, "close"):
            result.close()
    return got["status"], got["headers"], body


def _fix_cursor() -> None:
    """Advance the search-space cursor past the last trial when every trial is finished."""
    from optuna_dashboard import _inmemory_cache as cache

    base = cache._CachedExtraStudyProperty
    if getattr(base, "mergesweep_fixed", False):
        return

    class Fixed(base):  # type: ignore[misc, valid-type]
        mergesweep_fixed = True

        def update(self, trials: list[Any]) -> None:
            start = self._cursor
            super().update(trials)
            # The library leaves the cursor at -1 when no scanned trial is unfinished.
            running = [t.number for t in trials if t.number >= start and not t.state.is_finished()]
            if running:
                self._cursor = min(running)
            elif trials:
                self._cursor = max(start, trials[-1].number + 1)

    cache._CachedExtraStudyProperty = Fixed


def _warm_up(app: Any, study_ids: list[int]) -> None:
    """Request each study's detail once through the app (fills its caches; body dropped)."""
    for sid in study_ids:
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": f"/api/studies/{sid}",
            "QUERY_STRING": "",
            "SERVER_NAME": "warm-up",
            "SERVER_PORT": "0",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.input": io.BytesIO(),
            "wsgi.errors": io.StringIO(),
            "wsgi.url_scheme": "http",
        }
        try:
            _collect(app, environ)
        except Exception as exc:  # a failed warm-up only costs the first visitor time
            log.debug("dashboard warm-up of study %s failed: %s", sid, exc)


def url_of(server: WSGIServer) -> str:
    """The dashboard's address as a browser takes it."""
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in str(host) else host
    return f"http://{shown}:{port}/dashboard"


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def serve(storage_url: str, host: str = "127.0.0.1", port: int = 8080, **kwargs: Any) -> None:
    """Serve the dashboard until interrupted (SIGINT, i.e. Ctrl-C, or SIGTERM, i.e. ``kill``);
    warns when reachable from other machines.

    A process started in the background by a non-interactive shell inherits SIGINT ignored
    (the shell keeps a terminal's Ctrl-C from its background jobs), so such a dashboard stops
    on SIGTERM: ``kill PID``.
    """
    server = make_server(storage_url, host, port, **kwargs)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)  # a clean stop: the socket closed, no traceback
    if not is_loopback(host):
        print(
            f"warning: the dashboard listens on {host}, reachable from other machines; it has "
            "no authentication and lets anyone who reaches it edit notes and delete studies",
            file=sys.stderr,
        )
    print(f"mergesweep dashboard: {url_of(server)} (storage {storage_url})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


# -- figures ----------------------------------------------------------------------------------
# optuna-dashboard 0.21 reads a study's custom plotly figures from study system attrs
# "dashboard:plot_data:<id>:<i>", the figure's JSON cut into chunks of 2,045 characters (what
# optuna_dashboard.save_plotly_graph_object writes). They are written here directly: importing
# optuna_dashboard pulls in its preferential GP sampler (botorch, gpytorch: ~7 s on a busy
# 2-core machine), too much for every sweep's driver. The dashboard tests read them back with
# optuna_dashboard's own reader and in a browser, so a format change fails the tests.
_PLOT_KEY = "dashboard:plot_data:"
_CHUNK = 2045


def _finite(node: Any) -> Any:
    """NaN/inf → null: the dashboard parses the figures with JSON.parse."""
    if isinstance(node, float):
        return node if math.isfinite(node) else None
    if isinstance(node, dict):
        return {k: _finite(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_finite(v) for v in node]
    return node


def publish_figures(study: optuna.Study, figures: dict[str, dict[str, Any]]) -> list[str]:
    """Store ``figures`` (from :func:`mergesweep.figures.study_figures`) in the study for
    optuna-dashboard, as ``mergesweep-<key>``; returns the graph object ids.

    The ``front`` figure is stored only when it carries MAP's predicted front (the dashboard
    draws the evaluated Pareto front itself). Needs neither plotly nor optuna-dashboard.
    """
    storage, sid = study._storage, study._study_id
    old = storage.get_study_system_attrs(sid)
    ids = []
    for key, fig in figures.items():
        if key == "front" and len(fig["data"]) < 3:
            continue
        graph_id = ID_PREFIX + key
        text = json.dumps(_finite(fig), separators=(",", ":"), default=float)
        prefix = f"{_PLOT_KEY}{graph_id}:"
        chunks = [text[i : i + _CHUNK] for i in range(0, len(text), _CHUNK)]
        stale = sum(k.startswith(prefix) for k in old)
        for i in range(max(len(chunks), stale)):  # blank what a longer version left behind
            storage.set_study_system_attr(sid, f"{prefix}{i}", chunks[i] if i < len(chunks) else "")
        ids.append(graph_id)
    return ids


class FigureRefresher:
    """Republishes a running study's figures as trials complete, at a bounded cost.

    :meth:`tick` refreshes when at least ``every`` trials completed since the last refresh and
    the time since then is at least ``1 / max_share`` times what the last refresh took (so
    figures take at most ``max_share`` of the driver's time) and at least ``min_interval_s``
    (the dashboard polls every 10 s: fresher figures than that are never seen, and on a
    2-core machine each refresh is CPU taken from the workers); the first tick always refreshes
    and :meth:`close` always does. A failing refresh logs one warning and turns the refresher
    off: figures never stop a sweep.

    Args:
        setup: the running study (its space and layout draw the coefficient heatmap).
        every: least number of newly complete trials between two refreshes.
        max_share: most of the driver's time spent on figures.
        min_interval_s: least number of seconds between two refreshes.
    """

    def __init__(
        self,
        setup: StudySetup,
        *,
        every: int = 10,
        max_share: float = 0.05,
        min_interval_s: float = 2.0,
    ) -> None:
        self.setup = setup
        self.every = every
        self.max_share = max_share
        self.min_interval_s = min_interval_s
        self.enabled = True
        self.last_done: int | None = None
        self.last_end = time.monotonic()
        self.cost = 0.0
        self.refreshes = 0

    def tick(self, done: int) -> None:
        """Called after each finished trial with the study's complete count."""
        if not self.enabled:
            return
        if self.last_done is not None and done - self.last_done < self.every:
            return
        if time.monotonic() - self.last_end < max(self.cost / self.max_share, self.min_interval_s):
            return
        self.last_done = done
        self._refresh()

    def close(self) -> None:
        """The final refresh (after the searcher's ``finalize``, e.g. MAP's predicted front)."""
        if self.enabled:
            self._refresh()

    def _refresh(self) -> None:
        t0 = time.monotonic()
        s = self.setup
        try:
            publish_figures(s.study, study_figures(s.study, space=s.space, layout=s.layout))
            self.refreshes += 1
        except Exception as exc:  # a figure must never stop a sweep
            log.warning("mergesweep figures: refresh failed, turned off: %s", exc)
            self.enabled = False
        self.last_end = time.monotonic()
        self.cost = self.last_end - t0
