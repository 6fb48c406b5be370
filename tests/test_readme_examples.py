"""The README's client examples, taken from README.md itself and run against a real hub.

Each example is read from its section, pointed at the test hub and a channel of
its own, and run until it has printed the events the test published (one JSON,
one text): an example that drifts from what the hub sends fails here.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import orjson
import pytest

from hub.brokers.memory import MemoryBroker
from hub.core.hub import Hub
from hub.core.subscriber import Subscriber
from hub.inputs import resumes_for
from tests.core.helpers import RecordingSink
from tests.support.procs import CI, HubProcess, require_binary, wait_until

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
NODE_DIR = ROOT / "tests" / "clients" / "node"
EXAMPLE_URL = "http://127.0.0.1:8000/channels/demo/stream"


def block(section: str, lang: str) -> str:
    """The first ```lang block under the README heading ``section``."""
    text = README.read_text()
    start = text.index(f"\n{section}\n")
    found = re.compile(rf"^```{lang}\n(.*?)^```$", re.M | re.S).search(text, start)
    assert found is not None, f"no ```{lang} block under {section!r}"
    return found.group(1)


def fresh_channel() -> str:
    return f"readme-{uuid.uuid4().hex[:10]}"


def wait_for_subscriber(hub: HubProcess, channel: str) -> None:
    def subscribed() -> bool:
        answer = httpx.get(f"{hub.url}/channels", params={"prefix": channel}, timeout=5).json()
        return any(c["channel"] == channel and c["subscribers"] > 0 for c in answer["channels"])

    wait_until(subscribed, 15, f"a subscriber on {channel}")


def publish_json_and_text(hub: HubProcess, channel: str) -> list[str]:
    endpoint = f"{hub.url}/channels/{channel}/events"
    first = httpx.post(endpoint, json={"data": {"hello": "world"}}, timeout=5)
    second = httpx.post(endpoint, content=b"plain words", headers={"Content-Type": "text/plain"}, timeout=5)
    assert first.status_code == second.status_code == 202
    return [first.json()["id"], second.json()["id"]]


# -- the Python example (httpx-sse) ----------------------------------------

# Runs the example with a print that stops it (SystemExit, so its `with`
# blocks close the stream) once it has printed ``count`` events.
PY_HARNESS = """
import builtins, sys
_print, _count, _seen = builtins.print, int(sys.argv[1]), [0]
def _stop_after(*args, **kwargs):
    _print(*args, **kwargs, flush=True)
    _seen[0] += 1
    if _seen[0] >= _count:
        raise SystemExit(0)
builtins.print = _stop_after
"""


def test_python_example_prints_json_and_text_events(hub_server: HubProcess) -> None:
    code = block("### From Python (httpx-sse)", "python")
    assert EXAMPLE_URL in code
    channel = fresh_channel()
    code = code.replace(EXAMPLE_URL, f"{hub_server.url}/channels/{channel}/stream")
    proc = subprocess.Popen(
        [sys.executable, "-c", PY_HARNESS + code, "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_subscriber(hub_server, channel)
        ids = publish_json_and_text(hub_server, channel)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert out.splitlines() == [
        f"{ids[0]} message {{'hello': 'world'}}",
        f"{ids[1]} message plain words",
    ]


# -- the browser example, in node with the eventsource package ----------------

NODE_HARNESS = """
import { EventSource } from "eventsource";
globalThis.EventSource = EventSource;
const count = Number(process.argv[1]);
let seen = 0;
const record = (level) => (...args) => {
  process.stdout.write(JSON.stringify([level, ...args]) + "\\n");
  if (++seen >= count) process.exit(0);
};
console.log = record("log");
console.warn = record("warn");
"""


def test_browser_example_handles_json_and_text_events(hub_server: HubProcess) -> None:
    html = block("### In a browser", "html")
    script = re.fullmatch(r"\s*<script>\n(.*)</script>\s*", html, re.S)
    assert script is not None, html
    code = script.group(1)
    assert EXAMPLE_URL in code
    node = require_binary("node")
    if not (NODE_DIR / "node_modules" / "eventsource" / "package.json").exists():
        message = "tests/clients/node has no node_modules (.ci/run runs npm ci there)"
        if CI:
            pytest.fail(message)
        pytest.skip(message)
    channel = fresh_channel()
    code = code.replace(EXAMPLE_URL, f"{hub_server.url}/channels/{channel}/stream")
    proc = subprocess.Popen(
        [node, "--input-type=module", "-e", NODE_HARNESS + code, "2"],
        cwd=NODE_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_subscriber(hub_server, channel)
        ids = publish_json_and_text(hub_server, channel)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert [json.loads(line) for line in out.splitlines()] == [
        ["log", "untyped", ids[0], {"hello": "world"}],
        ["log", "untyped", ids[1], "plain words"],
    ]


# -- the resume example -----------------------------------------------------


def test_resume_example_asks_for_an_id_you_received() -> None:
    text = README.read_text()
    quickstart = text[text.index("\n## Quickstart\n") : text.index("\n### In a browser\n")]
    curls = [
        line
        for part in re.findall(r"```sh\n(.*?)```", quickstart, re.S)
        for line in part.splitlines()
        if "Last-Event-ID" in line
    ]
    assert len(curls) == 1
    # No literal id to paste: one this hub never handed out gets a hub.gap and a full replay.
    assert not re.search(r"\d{6,}-\d+", curls[0]), curls[0]
    assert "ssehub tail demo --raw" in quickstart


# -- "requested is what was sent" (in-process, through the core) -------------


@pytest.mark.anyio
@pytest.mark.parametrize("sent", ["1-0", "yesterday", "not-a-cursor"])
async def test_gap_on_a_multi_channel_stream_names_what_was_sent(anyio_backend: str, sent: str) -> None:
    assert resumes_for(sent, 2, True)[0].requested == sent  # type: ignore[union-attr]
    hub = Hub(MemoryBroker(history_size=10), heartbeat_seconds=60)
    await hub.start()
    try:
        sink = RecordingSink()
        await hub.attach(Subscriber(["a", "b"], sink, multi=True), resumes_for(sent, 2, True))
        gaps = [orjson.loads(e.data) for e in sink.events() if e.type == "hub.gap"]
    finally:
        await hub.stop()
    assert gaps == [
        {"channel": "a", "requested": sent, "oldest": None},
        {"channel": "b", "requested": sent, "oldest": None},
    ]
