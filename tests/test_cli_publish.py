"""``ssehub publish``: --lines (batches, back-pressure, retries, no silent drop),
--text's final line break, --retry, and one-line errors for bad input."""

from __future__ import annotations

import array
import contextlib
import fcntl
import os
import subprocess
import sys
import termios
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from hub.client import LineSender, read_batches
from tests.support.procs import ROOT, HubProcess, free_port, wait_until

integration = pytest.mark.integration


def ssehub(
    *args: str, stdin: str | bytes | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hub", *args],
        input=stdin.decode() if isinstance(stdin, bytes) else stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def channel() -> str:
    return "pub-" + uuid.uuid4().hex[:8]


def events(hub: HubProcess, name: str, count: int) -> list[dict[str, Any]]:
    """The channel's first ``count`` events, as ``tail --json`` prints them."""
    result = ssehub(
        "tail", name, "--last-event-id", "earliest", "--json", "--count", str(count), "--url", hub.url
    )
    assert result.returncode == 0, result.stderr
    return [orjson.loads(line) for line in result.stdout.splitlines()]


# -- reading stdin in batches ------------------------------------------------------------------


@pytest.fixture
def pipe() -> Iterator[tuple[Any, int]]:
    """A pipe: its read end as a binary file, and its write end's descriptor."""
    read_fd, write_fd = os.pipe()
    reader = os.fdopen(read_fd, "rb", buffering=0)
    try:
        yield reader, write_fd
    finally:
        reader.close()
        with contextlib.suppress(OSError):
            os.close(write_fd)


def test_lines_are_batched_and_empty_ones_skipped(pipe: tuple[Any, int]) -> None:
    reader, write_fd = pipe
    os.write(write_fd, b"a\n\nb\r\nc\n\n\xffd\ne")  # the last line has no line break
    os.close(write_fd)
    batches = list(read_batches(reader, flush_lines=2))
    assert batches == [["a", "b"], ["c", "\ufffdd"], ["e"]]


def test_a_batch_goes_out_soon_after_its_first_line_while_stdin_stays_open(pipe: tuple[Any, int]) -> None:
    reader, write_fd = pipe
    os.write(write_fd, b"first\nsecond\n")
    started = time.monotonic()
    batches = read_batches(reader, flush_seconds=0.05)
    assert next(batches) == ["first", "second"]
    assert time.monotonic() - started < 2


def test_nothing_is_read_while_a_batch_is_handled(pipe: tuple[Any, int]) -> None:
    """Back-pressure: the generator reads stdin only when asked for the next batch."""
    reader, write_fd = pipe
    os.write(write_fd, b"one\n")
    batches = read_batches(reader, flush_seconds=0.01)
    assert next(batches) == ["one"]
    os.write(write_fd, b"two\n")
    os.close(write_fd)
    buffered = array.array("i", [0])
    fcntl.ioctl(reader.fileno(), termios.FIONREAD, buffered)
    assert buffered[0] == 4  # "two\n" waits in the pipe until the next batch is asked for
    assert list(batches) == [["two"]]


# -- sending, retrying, counting ---------------------------------------------------------------


def sender(handler: Any, *, text: bool = False, max_wait: float = 10.0) -> tuple[LineSender, list[float]]:
    slept: list[float] = []
    client = httpx.Client(transport=httpx.MockTransport(handler))

    def clock() -> float:  # time passes only in the sender's sleeps
        return sum(slept)

    return (
        LineSender(
            client,
            "http://hub/channels/c/events",
            event=None,
            retry=None,
            text=text,
            max_wait=max_wait,
            sleep=slept.append,
            clock=clock,
        ),
        slept,
    )


def test_a_busy_hub_is_retried_after_its_retry_after() -> None:
    answers = iter(
        [httpx.Response(503, headers={"Retry-After": "1"}), httpx.Response(429), httpx.Response(202)]
    )
    bodies: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(orjson.loads(request.content))
        return next(answers)

    send, slept = sender(handler)
    send.send(["x", "y"])
    assert (send.sent, send.failed) == (2, 0)
    assert bodies == [[{"data": "x"}, {"data": "y"}]] * 3
    assert slept[0] == 1.0  # Retry-After, longer than the first backoff
    assert 0 < slept[1] < 1


def test_lines_that_cannot_be_sent_are_counted() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    send, slept = sender(handler, max_wait=1.0)
    send.send(["x", "y", "z"])
    assert (send.sent, send.failed) == (0, 3)
    assert slept
    assert sum(slept) <= 1.0


def test_a_refused_line_does_not_cost_the_rest_of_its_batch() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        batch = orjson.loads(request.content)
        if any(item["data"] == "huge" for item in batch):
            return httpx.Response(413, json={"error": "event_too_large"})
        return httpx.Response(202)

    send, _ = sender(handler)
    send.send(["a", "huge", "b"])
    assert (send.sent, send.failed) == (2, 1)


def test_with_text_each_line_is_a_text_event() -> None:
    seen: list[tuple[str, bytes]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.headers["content-type"], request.content))
        return httpx.Response(202)

    send, _ = sender(handler, text=True)
    send.send(["a b", '"c"'])
    assert seen == [("text/plain; charset=utf-8", b"a b"), ("text/plain; charset=utf-8", b'"c"')]


# -- against a real hub ------------------------------------------------------------------------


@integration
def test_lines_from_stdin_become_events(hub_server: HubProcess) -> None:
    name = channel()
    lines = [f"line {i} {{not json}}" for i in range(1200)]
    result = ssehub(
        "publish",
        name,
        "--lines",
        "--url",
        hub_server.url,
        stdin="\n".join(lines[:600]) + "\n\n" + "\n".join(lines[600:]) + "\n",
    )
    assert result.returncode == 0, result.stderr
    # History keeps the last 50 (HUB_HISTORY_SIZE of the session hub).
    got = events(hub_server, name, 50)
    assert [e["data"] for e in got] == lines[-50:]
    assert {e["channel"] for e in got} == {name}


@integration
def test_lines_with_text_arrive_as_the_exact_text(hub_server: HubProcess) -> None:
    name = channel()
    result = ssehub(
        "publish",
        name,
        "--lines",
        "--text",
        "--event",
        "log",
        "--url",
        hub_server.url,
        stdin='a "b"\n\n{"c": 1}\n',
    )
    assert result.returncode == 0, result.stderr
    tail = ssehub(
        "tail", name, "--last-event-id", "earliest", "--raw", "--count", "2", "--url", hub_server.url
    )
    assert 'data: a "b"\n' in tail.stdout
    assert 'data: {"c": 1}\n' in tail.stdout
    assert tail.stdout.count("event: log\n") == 2


@integration
def test_lines_wait_for_a_hub_that_is_not_up_yet(tmp_path: Path) -> None:
    hub = HubProcess(port=free_port())
    errors = tmp_path / "stderr"
    with errors.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hub", "publish", "late", "--lines", "--url", hub.url, "--max-wait", "30"],
            stdin=subprocess.PIPE,
            stderr=err,
            stdout=subprocess.DEVNULL,
            cwd=ROOT,
        )
    try:
        assert proc.stdin is not None
        proc.stdin.write(b"one\ntwo\n")
        proc.stdin.close()
        wait_until(lambda: b"retrying in" in errors.read_bytes(), 15, "a retry")
        assert proc.poll() is None
        hub.start()
        assert proc.wait(30) == 0, errors.read_text()
        assert [e["data"] for e in events(hub, "late", 2)] == ["one", "two"]
    finally:
        proc.kill()
        proc.wait(10)
        hub.stop()


@integration
def test_lines_never_sent_are_counted_and_the_exit_status_says_so() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = ssehub("publish", "c", "--lines", "--max-wait", "0.5", "--url", url, stdin="a\nb\n\nc\n")
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == "ssehub publish: 3 line(s) could not be sent (0 sent)"


@integration
def test_text_drops_one_final_line_break_of_stdin(hub_server: HubProcess) -> None:
    name = channel()
    assert ssehub("publish", name, "--text", "--url", hub_server.url, stdin="hi\n").returncode == 0
    assert ssehub("publish", name, "--text", "--url", hub_server.url, stdin="two\n\n").returncode == 0
    assert [e["data"] for e in events(hub_server, name, 2)] == ["hi", "two\n"]


@integration
def test_retry_is_sent_for_json_and_text(hub_server: HubProcess) -> None:
    name = channel()
    assert ssehub("publish", name, "1", "--retry", "1234", "--url", hub_server.url).returncode == 0
    assert ssehub("publish", name, "t", "--text", "--retry", "4321", "--url", hub_server.url).returncode == 0
    tail = ssehub(
        "tail", name, "--last-event-id", "earliest", "--raw", "--count", "2", "--url", hub_server.url
    )
    assert "retry: 1234\ndata: 1\n" in tail.stdout
    assert "retry: 4321\ndata: t\n" in tail.stdout


@integration
@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "/nonexistent.json: no such file"),
        ("dir", "is a directory"),
        (b"\xff\xfe", "not UTF-8 text"),
        (b'{"a": ', "not JSON"),
    ],
)
def test_bad_data_is_one_line_and_exit_status_2(
    tmp_path: Path, content: str | bytes | None, expected: str
) -> None:
    if content is None:
        arg = "@/nonexistent.json"
    elif content == "dir":
        arg = f"@{tmp_path}"
    else:
        path = tmp_path / "data.json"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        arg = f"@{path}"
    result = ssehub("publish", "demo", arg, "--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("ssehub publish: ")
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


@integration
def test_help_names_the_environment_and_the_lines_rules() -> None:
    result = ssehub("publish", "--help")
    out = " ".join(result.stdout.split())
    assert "$HUB_URL" in out
    assert "$HUB_TOKEN" in out
    assert "Empty lines are skipped" in out
    assert "--retry MS" in out
    tail = " ".join(ssehub("tail", "--help").stdout.split())
    assert "$HUB_URL" in tail
    assert "$HUB_TOKEN" in tail
