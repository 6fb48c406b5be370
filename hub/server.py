"""Running the hub: uvicorn with a drain on shutdown, and N worker processes.

uvicorn waits for open connections to close before it runs the lifespan
shutdown, and streams never close by themselves, so draining cannot hang off
the lifespan hook: :class:`DrainingServer` ends the streams (each told to
come back after a jittered ``retry:``) as the first step of uvicorn's own
shutdown sequence, then lets uvicorn wait for in-flight publishes.

``--workers N`` runs N such servers on one listening socket, each its own
process with its own hub and Redis connection.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import resource
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import uvicorn

from hub.http.app import HubApp, create_app
from hub.http.auth import install_redaction
from hub.http.protocol import protocol_class
from hub.settings import SECRET_SETTINGS, Settings

log = logging.getLogger(__name__)

# File descriptors a process needs besides its streams (listeners, Redis, logs).
FD_HEADROOM = 64


def raise_nofile_limit(wanted: int) -> int:
    """Raise the soft open-file limit to the hard one; warn if still short."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, hard, exc)
    if soft != resource.RLIM_INFINITY and soft < wanted + FD_HEADROOM:
        log.warning(
            "open-file limit %d is below HUB_MAX_CONNECTIONS (%d) + %d: streams past it will fail; "
            "raise it (ulimit -n, LimitNOFILE=) or lower HUB_MAX_CONNECTIONS",
            soft,
            wanted,
            FD_HEADROOM,
        )
    return int(soft)


def find_hub_app(app: Any) -> HubApp | None:
    """The HubApp inside uvicorn's middleware wrappers."""
    for _ in range(8):
        if isinstance(app, HubApp):
            return app
        app = getattr(app, "app", None)
    return None


class DrainingServer(uvicorn.Server):
    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn runs the lifespan (the broker connects) before it binds: the hub has
        # started only once the socket is bound too (a port in use exits in between).
        await super().startup(sockets)
        if self.started:
            hub_app = find_hub_app(self.config.loaded_app)
            broker = hub_app.hub.broker.name if hub_app is not None and hub_app.hub is not None else "?"
            where = f"{self.config.host}:{self.config.port}" if sockets is None else "the shared socket"
            log.info("hub started with the %s broker, listening on %s", broker, where)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            try:
                yield
            finally:
                # A stop asked for with SIGTERM or Ctrl-C that drained cleanly is a clean
                # exit (status 0): uvicorn would raise the signal again, and `make run`
                # would end with "make: *** [run] Terminated" (or "Interrupt").
                self._captured_signals.clear()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        hub_app = find_hub_app(self.config.loaded_app)
        if hub_app is not None:
            hub_app.drain()
        await super().shutdown(sockets)


def fd_reserve(settings: Settings) -> int:
    """Descriptors kept from client connections: the headroom, and Redis's pool when used."""
    return FD_HEADROOM + (settings.redis_pool_size if settings.redis_url else 0)


def uvicorn_config(
    settings: Settings, app: HubApp | None = None, metrics_dir: str | None = None
) -> uvicorn.Config:
    app = app if app is not None else create_app(settings)
    protocol = protocol_class(settings.max_header_bytes, settings.header_timeout, fd_reserve(settings))
    app.state.connections = protocol.guard  # its counters are in /metrics
    # Publishes are answered in the connection itself (HubApp.answer_now) unless every
    # request is to be logged: uvicorn's access log sees only what goes through ASGI.
    access_log = settings.log_level in ("debug", "trace")
    protocol.now = None if access_log else app
    app.state.metrics_dir = metrics_dir  # --workers: one scrape for the node
    # JSON lines: uvicorn's own loggers go through the root handler too (configure_logging).
    logging_options: dict[str, Any] = {"log_config": None} if settings.log_format == "json" else {}
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        # uvicorn's httptools protocol with connection guards (hub.http.protocol):
        # head size and time limits, one stream per connection, an fd ration.
        http=protocol,
        lifespan="on",
        log_level=settings.log_level,
        access_log=access_log,
        timeout_graceful_shutdown=max(1, int(settings.shutdown_seconds)),
        # The hub answers with its own JSON; no Server header needed.
        server_header=False,
        # Who the client is behind a proxy is the hub's own rule (HUB_TRUSTED_PROXIES, in
        # hub.http.auth), the same for every path: uvicorn's middleware would also rewrite
        # scope["client"] from X-Forwarded-For for 127.0.0.1, on ASGI requests only.
        proxy_headers=False,
        backlog=4096,
        **logging_options,
    )
    # After uvicorn has set up its loggers: no query-string token reaches a log line.
    install_redaction()
    return config


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``msg``, ``logger``, ``pid``, and the
    record's ``fields`` (``log.info(..., extra={"fields": {...}})``) as keys of their own."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
            "logger": record.name,
            "pid": record.process,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update((key, value) for key, value in fields.items() if key not in out)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def configure_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(
        level=logging.DEBUG if level in ("debug", "trace") else getattr(logging, level.upper()),
        handlers=[handler],
    )


def effective_settings(settings: Settings) -> dict[str, Any]:
    """Every setting's value, secrets (and a Redis URL's password) redacted."""
    out: dict[str, Any] = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if name in SECRET_SETTINGS and value:
            value = "(redacted)"
        elif name == "redis_url" and value:
            value = _without_password(value)
        out[name] = value
    return out


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:(redacted)@{host}"))


def log_start(settings: Settings, nofile: int) -> None:
    """What this process runs with: its settings, broker, open-file limit, streams it can hold."""
    values = effective_settings(settings)
    log.info(
        "settings: %s",
        " ".join(f"{key}={value}" for key, value in values.items()),
        extra={"fields": {"settings": values}},
    )
    unlimited = nofile in (resource.RLIM_INFINITY, -1)
    streams = settings.max_connections if unlimited else max(0, nofile - fd_reserve(settings))
    streams = min(settings.max_connections, streams)
    broker = "redis" if settings.redis_url else "memory"
    log.info(
        "%s broker; open-file limit %s: up to %d streams in this process",
        broker,
        "unlimited" if unlimited else nofile,
        streams,
        extra={"fields": {"broker": broker, "open_file_limit": nofile, "streams_max": streams}},
    )


def serve(settings: Settings) -> int:
    configure_logging(settings.log_level, settings.log_format)
    if settings.workers > 1 and settings.redis_url is None:
        log.error(
            "--workers %d needs the Redis broker (--redis-url): with the in-memory broker each "
            "worker would be a separate hub with its own history",
            settings.workers,
        )
        return 2
    log_start(settings, raise_nofile_limit(settings.max_connections))
    if settings.workers == 1:
        server = DrainingServer(uvicorn_config(settings))
        server.run()
        return 0 if server.started else 1
    return _run_workers(settings)


def _worker(settings: Settings, sock: socket.socket, metrics_dir: str) -> None:
    configure_logging(settings.log_level, settings.log_format)
    raise_nofile_limit(settings.max_connections)
    DrainingServer(uvicorn_config(settings, metrics_dir=metrics_dir)).run(sockets=[sock])


def _run_workers(settings: Settings) -> int:
    """A small supervisor: N workers on one socket; SIGTERM/SIGINT drain them all."""
    config = uvicorn_config(settings)
    sock = config.bind_socket()
    ctx = multiprocessing.get_context("spawn")
    stopping = False
    # Each worker's metrics meet here, so that one scrape answers for the node.
    metrics_dir = tempfile.mkdtemp(prefix="ssehub-metrics-")

    def start_one() -> multiprocessing.process.BaseProcess:
        proc = ctx.Process(target=_worker, args=(settings, sock, metrics_dir), daemon=False)
        proc.start()
        return proc

    procs = [start_one() for _ in range(settings.workers)]

    def on_signal(signum: int, _: Any) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.pid is not None and proc.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM if signum == signal.SIGTERM else signal.SIGINT)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("started %d workers on %s:%d", settings.workers, settings.host, settings.port)
    while not stopping:
        for i, proc in enumerate(procs):
            if not proc.is_alive() and not stopping:
                log.warning("worker %s exited with %s; starting another", proc.pid, proc.exitcode)
                procs[i] = start_one()
        time.sleep(0.5)
    for proc in procs:
        proc.join(settings.shutdown_seconds + 5)
        if proc.is_alive():
            proc.kill()
    sock.close()
    shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0
