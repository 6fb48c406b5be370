"""What a running node says about itself: JSON logs, a line per stream, its figures
stream, Redis outages in /metrics, and one scrape for all its workers."""

from __future__ import annotations

import json
import socket
from typing import Any

import httpx
import pytest

from hub.server import effective_settings
from hub.settings import Settings
from tests.support.procs import HubProcess, RedisServer, wait_until

pytestmark = pytest.mark.integration


def json_lines(hub: HubProcess) -> list[dict[str, Any]]:
    lines = [line for line in hub.log().splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # every line is one object


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    seen = b""
    while marker not in seen:
        chunk = sock.recv(65536)
        assert chunk, f"closed before {marker!r}"
        seen += chunk
    return seen


def metric(hub: HubProcess, name: str, **labels: str) -> float:
    """One sample of /metrics, by name and labels (0 when absent)."""
    wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in httpx.get(hub.url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    return 0.0


def test_settings_are_logged_with_secrets_redacted() -> None:
    settings = Settings(redis_url="redis://user:hunter2@redis:6379/0", jwt_secret="k" * 40)
    values = effective_settings(settings)
    assert values["redis_url"] == "redis://user:(redacted)@redis:6379/0"
    assert values["jwt_secret"] == "(redacted)"
    assert values["history_size"] == 1000
    assert "hunter2" not in json.dumps(values, default=str)
    assert "k" * 40 not in json.dumps(values)


def test_json_logs_one_object_per_line_and_one_line_per_stream() -> None:
    hub = HubProcess({"HUB_LOG_FORMAT": "json"})
    hub.start()
    try:
        with socket.create_connection(("127.0.0.1", hub.port), timeout=10) as sock:
            sock.sendall(b"GET /channels/logs/stream HTTP/1.1\r\nHost: hub\r\nX-Request-ID: req-42\r\n\r\n")
            read_until(sock, b": ok")
            local = sock.getsockname()
            for n in range(2):
                assert httpx.post(f"{hub.url}/channels/logs/events", json={"data": n}).status_code == 202
            read_until(sock, b"data: 1\n")
        wait_until(lambda: "req-42" in hub.log(), 10, "the stream's line")
    finally:
        hub.stop()
    lines = json_lines(hub)
    assert all({"ts", "level", "msg", "logger", "pid"} <= set(line) for line in lines)
    start = next(line for line in lines if "settings" in line)
    assert start["settings"]["log_format"] == "json"
    assert any("streams_max" in line and line["open_file_limit"] for line in lines)
    ended = next(line for line in lines if line.get("request_id") == "req-42")
    assert ended["level"] == "info"
    assert ended["channels"] == ["logs"]
    assert ended["events"] == 2
    assert ended["bytes"] > 2 * len("data: 1\n")
    assert ended["end"] == "client gone"
    assert ended["remote"] == f"{local[0]}:{local[1]}"
    assert 0 < ended["duration_s"] < 30
    # uvicorn's own lines are JSON too, and publishes are not logged one by one at info.
    assert any(line["logger"].startswith("uvicorn") for line in lines)
    assert not any("publish to logs" in line["msg"] for line in lines)


def test_a_text_log_has_the_stream_line_too() -> None:
    hub = HubProcess()
    hub.start()
    try:
        with socket.create_connection(("127.0.0.1", hub.port), timeout=10) as sock:
            sock.sendall(b"GET /channels/t/stream HTTP/1.1\r\nHost: hub\r\n\r\n")
            read_until(sock, b": ok")
        wait_until(lambda: "stream of t ended" in hub.log(), 10, "the stream's line")
    finally:
        hub.stop()
    line = next(line for line in hub.log().splitlines() if "stream of t ended" in line)
    assert "(client gone)" in line
    assert "0 events" in line
    assert "request " in line


def test_the_stats_stream_sends_the_figures_each_second() -> None:
    hub = HubProcess()
    hub.start()
    try:
        figures: list[dict[str, Any]] = []
        with httpx.stream("GET", hub.url + "/_hub/stats", timeout=10) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if line.startswith("data: "):
                    figures.append(json.loads(line[6:]))
                    if len(figures) == 3:
                        break
    finally:
        hub.stop()
    assert {"streams", "channels", "events_per_s", "deliveries_per_s", "publish_p99_ms"} <= set(figures[-1])
    assert 0.5 < (figures[2]["ts"] - figures[1]["ts"]) / 1000 < 2


def test_a_redis_outage_is_counted(redis_server: RedisServer) -> None:
    hub = HubProcess({"HUB_REDIS_URL": redis_server.url, "HUB_HEARTBEAT_SECONDS": "0.5"})
    hub.start()
    try:
        with socket.create_connection(("127.0.0.1", hub.port), timeout=10) as sock:
            sock.sendall(b"GET /channels/o/stream HTTP/1.1\r\nHost: hub\r\n\r\n")
            read_until(sock, b": ok")
            httpx.post(f"{hub.url}/channels/o/events", json={"data": 1})
            read_until(sock, b"data: 1\n")
            assert metric(hub, "ssehub_redis_messages_total") >= 1
            assert metric(hub, "ssehub_redis_reconnects_total") == 0
            redis_server.stop()
            wait_until(lambda: metric(hub, "ssehub_broker_ready") == 0, 20, "the node to notice")
            down = metric(hub, "ssehub_redis_outage_seconds_total")
            wait_until(lambda: metric(hub, "ssehub_redis_outage_seconds_total") > down, 10, "outage to grow")
            redis_server.start()  # the same port, without the data
            wait_until(lambda: metric(hub, "ssehub_broker_ready") == 1, 30, "the node to reconnect")
            assert metric(hub, "ssehub_redis_reconnects_total") == 1
            outage = metric(hub, "ssehub_redis_outage_seconds_total")
            assert outage > 0
            # Over: the outage no longer grows.
            assert metric(hub, "ssehub_redis_outage_seconds_total") == outage
    finally:
        hub.stop()


def test_one_scrape_adds_up_every_worker(redis_server: RedisServer) -> None:
    hub = HubProcess({"HUB_REDIS_URL": redis_server.url}, args=["--workers", "2"])
    hub.start()
    try:
        wait_until(lambda: metric(hub, "ssehub_workers") == 2, 20, "both workers' series")
        # A new connection each: the kernel spreads them over the workers.
        with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0), timeout=10) as client:
            for n in range(20):
                r = client.post(f"{hub.url}/channels/w/events", json={"data": n})
                assert r.status_code == 202
            assert client.post(f"{hub.url}/channels/w/events", content=b"{").status_code in (400, 415)
        # Whichever worker answers, it answers for the node (others' figures are up to 1 s old).
        wait_until(
            lambda: all(metric(hub, "ssehub_publishes_total", code="202") == 20 for _ in range(6)),
            10,
            "every scrape to count the 20 publishes",
        )
        assert metric(hub, "ssehub_events_published_total") == 20
        assert metric(hub, "ssehub_publish_duration_seconds_count") == 21
        assert metric(hub, "ssehub_broker_ready") == 1
    finally:
        hub.stop()
