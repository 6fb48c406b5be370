"""The README's producer examples, taken from README.md and run as written (only the
addresses, the token and the channel names are swapped for the test's own). The token
renewal example runs in a browser: tests/ui/test_token_renewal.py."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.support.procs import HubProcess, RedisServer

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[1] / "README.md"
TOKEN = "readme-publish-token-0123"


def blocks(section: str, lang: str) -> list[str]:
    """Every ```lang block under the README heading ``section``, up to the next heading."""
    text = README.read_text()
    start = text.index(f"\n{section}\n") + len(section) + 2
    end = min(
        (i for i in (text.find("\n## ", start), text.find("\n### ", start)) if i >= 0), default=len(text)
    )
    found = re.findall(rf"^```{lang}\n(.*?)^```$", text[start:end], re.M | re.S)
    assert found, f"no ```{lang} block under {section!r}"
    return found


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def channel() -> str:
    return f"readme-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def hub() -> Iterator[HubProcess]:
    node = HubProcess({"HUB_PUBLISH_TOKENS": TOKEN})
    node.start()
    yield node
    node.stop()


def kept(hub: HubProcess, name: str, count: int) -> list[str]:
    """The data of the first ``count`` events ``name`` keeps (a replay from the start)."""
    lines: list[str] = []
    with httpx.stream(
        "GET", f"{hub.url}/channels/{name}/stream", headers={"Last-Event-ID": "earliest"}, timeout=10
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                lines.append(line[6:])
                if len(lines) == count:
                    break
    return lines


def test_the_http_producer_examples_run_as_written(hub: HubProcess) -> None:
    sync, asynchronous = blocks("### Over HTTP, from Python", "python")
    orders, logs = channel(), channel()

    def ours(code: str) -> str:
        return (
            code.replace('"http://hub:8000"', repr(hub.url))
            .replace('"<a publish token>"', repr(TOKEN))
            .replace('"orders"', repr(orders))
            .replace('"logs"', repr(logs))
        )

    out = run_python(ours(sync) + "\nprint(event_id, *ids)\n")
    assert len(out.split()) == 3
    assert kept(hub, orders, 3) == ['{"id":42}', '{"id":43}', '{"id":44}']
    assert kept(hub, logs, 1) == ["a line"]
    # The asyncio one is a body for an async function, as the README's reader writes it.
    body = textwrap.indent(ours(asynchronous), "    ")
    run_python(f"import asyncio\n\nasync def main():\n{body}\n    print(event_id)\n\nasyncio.run(main())\n")
    assert kept(hub, orders, 4)[3] == '{"id":42}'


def test_the_redis_publisher_example_runs_as_written(redis_server: RedisServer) -> None:
    [code] = blocks("### Straight to Redis, from Python", "python")
    orders = channel()
    code = code.replace('"redis://127.0.0.1:6379/0"', repr(redis_server.url)).replace(
        '"orders"', repr(orders)
    )
    # Run twice: the idempotent publish is stored once.
    run_python(code)
    run_python(code)
    client = redis.Redis.from_url(redis_server.url)
    entries = client.xrange(f"hub:{orders}:log")
    assert entries is not None
    # Twice 42, 43 and "shipped", and 44 once (its key).
    assert len(entries) == 7
    client.close()
