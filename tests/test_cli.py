"""The ``ssehub`` command against a running hub."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import httpx
import pytest

from tests.support.procs import ROOT, HubProcess, wait_until

pytestmark = pytest.mark.integration


def ssehub(
    *args: str, env: dict[str, str] | None = None, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hub", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def test_publish_then_tail_replays_and_follows(hub_server: HubProcess) -> None:
    channel = "cli-" + uuid.uuid4().hex[:8]
    first = ssehub("publish", channel, '{"hello": "world"}', "--url", hub_server.url)
    assert first.returncode == 0, first.stderr
    assert channel in first.stdout
    ssehub("publish", channel, "second line", "--text", "--event", "note", "--url", hub_server.url)
    tail = ssehub("tail", channel, "--last-event-id", "earliest", "--count", "2", "--url", hub_server.url)
    assert tail.returncode == 0, tail.stderr
    lines = tail.stdout.splitlines()
    assert lines[0].endswith('{"hello":"world"}')
    assert lines[1].endswith("[note] second line")


def test_tail_prints_events_as_they_arrive(hub_server: HubProcess) -> None:
    channel = "cli-" + uuid.uuid4().hex[:8]
    proc = subprocess.Popen(
        [sys.executable, "-m", "hub", "tail", channel, "--raw", "--count", "1", "--url", hub_server.url],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        wait_until(
            lambda: any(
                c["channel"] == channel and c["subscribers"] == 1
                for c in httpx.get(hub_server.url + "/channels").json()["channels"]
            ),
            what="tail to subscribe",
        )
        assert ssehub("publish", channel, "[1, 2]", "--url", hub_server.url).returncode == 0
        out, _ = proc.communicate(timeout=10)
        assert "retry: 3000\n" in out
        assert "data: [1,2]\n\n" in out
        assert proc.returncode == 0
    finally:
        proc.kill()


def test_publish_reports_a_refused_event(hub_server: HubProcess) -> None:
    result = ssehub("publish", "bad name", "1", "--url", hub_server.url)
    assert result.returncode == 1
    assert "bad_channel" in result.stdout


def test_serve_refuses_a_bad_setting_with_a_clear_message() -> None:
    result = ssehub("serve", env={"HUB_HEARTBEAT_SECONDS": "soon"})
    assert result.returncode == 2
    assert "HUB_HEARTBEAT_SECONDS" in result.stderr


def test_serve_refuses_a_misspelt_setting() -> None:
    result = ssehub("serve", env={"HUB_HEARTBEAT_SECOND": "5"})
    assert result.returncode == 2
    assert "HUB_HEARTBEAT_SECOND" in result.stderr


def test_serve_refuses_workers_with_the_memory_broker() -> None:
    result = ssehub("serve", "--workers", "2", "--port", "0", env={"HUB_REDIS_URL": ""})
    assert result.returncode == 2
    assert "--redis-url" in result.stderr
