"""``ssehub tail --json`` for jq, and ``--count`` counting the channels' events only."""

from __future__ import annotations

import subprocess
import sys
import uuid
from typing import Any

import orjson
import pytest

from hub.client import as_json
from hub.sse import SSEEvent
from tests.support.procs import ROOT, HubProcess

integration = pytest.mark.integration


def ssehub(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hub", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def channel() -> str:
    return "tail-" + uuid.uuid4().hex[:8]


def tail_json(hub: HubProcess, *args: str) -> list[dict[str, Any]]:
    result = ssehub("tail", *args, "--json", "--url", hub.url)
    assert result.returncode == 0, result.stderr
    return [orjson.loads(line) for line in result.stdout.splitlines()]


def test_json_data_is_parsed_and_text_kept() -> None:
    assert as_json(SSEEvent("message", '{"a":[1]}', "5-0"), ["c"]) == {
        "id": "5-0",
        "event": "message",
        "channel": "c",
        "data": {"a": [1]},
    }
    assert as_json(SSEEvent("note", "not {json", "6-0"), ["c"])["data"] == "not {json"


def test_a_multi_channel_envelope_is_unwrapped() -> None:
    event = SSEEvent("order", '{"channel":"b","data":"shipped"}', "cursor")
    assert as_json(event, ["a", "b"]) == {"id": "cursor", "event": "order", "channel": "b", "data": "shipped"}


def test_the_hubs_own_events_have_no_id() -> None:
    gap = SSEEvent("hub.gap", '{"channel":"c","requested":"x","oldest":null}', "4-0")
    assert as_json(gap, ["c"]) == {
        "id": None,
        "event": "hub.gap",
        "channel": "c",
        "data": {"channel": "c", "requested": "x", "oldest": None},
    }


@integration
def test_tail_json_prints_one_object_per_event(hub_server: HubProcess) -> None:
    name = channel()
    assert ssehub("publish", name, '{"n": 1}', "--url", hub_server.url).returncode == 0
    assert (
        ssehub(
            "publish", name, "plain words", "--text", "--event", "note", "--url", hub_server.url
        ).returncode
        == 0
    )
    first, second = tail_json(hub_server, name, "--last-event-id", "earliest", "--count", "2")
    assert (first["event"], first["channel"], first["data"]) == ("message", name, {"n": 1})
    assert (second["event"], second["channel"], second["data"]) == ("note", name, "plain words")
    assert first["id"]
    assert second["id"]
    assert first["id"] != second["id"]


@integration
def test_tail_json_on_several_channels_names_each_events_channel(hub_server: HubProcess) -> None:
    a, b = channel(), channel()
    assert ssehub("publish", a, "[1]", "--url", hub_server.url).returncode == 0
    assert ssehub("publish", b, "two", "--text", "--url", hub_server.url).returncode == 0
    got = tail_json(hub_server, a, b, "--last-event-id", "earliest", "--count", "2")
    # Sorted both sides: the channel names are random, either may sort first.
    assert sorted((e["channel"], orjson.dumps(e["data"]).decode()) for e in got) == sorted(
        [(a, "[1]"), (b, '"two"')]
    )


@integration
def test_count_does_not_count_the_hubs_own_events(hub_server: HubProcess) -> None:
    name = channel()
    assert ssehub("publish", name, '"only"', "--url", hub_server.url).returncode == 0
    # A malformed id: the hub answers hub.gap, then replays what it keeps.
    gap, event = tail_json(hub_server, name, "--last-event-id", "malformed", "--count", "1")
    assert gap["event"] == "hub.gap"
    assert gap["channel"] == name
    assert gap["id"] is None
    assert (event["event"], event["data"]) == ("message", "only")
