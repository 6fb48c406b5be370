"""Real processes for integration tests: redis-server, hub nodes.

Everything binds to a free loopback port and is awaited by polling with a
deadline, never by a bare sleep.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_binary(name: str) -> str:
    """The path of ``name``; skips locally, fails loudly under CI=true."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if path is None:
        message = f"{name} is not installed (.ci/run installs it: apt-get install {name})"
        if CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def wait_until(check: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    delay = 0.005
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class RedisServer:
    """A redis-server of our own on a free port, so that a test may kill it."""

    def __init__(self) -> None:
        self.binary = require_binary("redis-server")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="hub-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self.ping, 10, f"redis-server on {self.port}")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


class HubProcess:
    """``python -m hub serve`` on a free port, with its log in a file."""

    def __init__(self, env: Mapping[str, str] | None = None, args: list[str] | None = None, port: int = 0):
        self.port = port or free_port()
        self.env = {**os.environ, "HUB_HEARTBEAT_SECONDS": "15", **(env or {})}
        self.args = args or []
        fd, path = tempfile.mkstemp(prefix="hub-", suffix=".log")
        os.close(fd)
        self.log_path = Path(path)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready: bool = True) -> None:
        cmd = [sys.executable, "-m", "hub", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [*cmd, *self.args], env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
            )
        if ready:
            wait_until(self.is_ready, 20, f"hub on {self.port} to be ready\n{self.log()}")

    def is_ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"hub exited with {self.proc.returncode}:\n{self.log()}")
        try:
            return httpx.get(self.url + "/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def memory_kb(self, field: str = "VmRSS") -> int:
        """The process's memory from /proc: ``VmRSS`` now, ``VmHWM`` its peak."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {field}")

    @property
    def admin_headers(self) -> dict[str, str]:
        """What the admin endpoints need from this hub: its first publish token, if it has one."""
        tokens = [t.strip() for t in self.env.get("HUB_PUBLISH_TOKENS", "").split(",") if t.strip()]
        return {"Authorization": f"Bearer {tokens[0]}"} if tokens else {}

    def metric(self, name: str) -> float:
        """One sample of ``/metrics`` (a counter by its name with or without ``_total``)."""
        for line in httpx.get(self.url + "/metrics", headers=self.admin_headers, timeout=5).text.splitlines():
            if line.startswith((name + " ", name + "_total ")):
                return float(line.split()[1])
        raise AssertionError(f"no metric {name}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        code = self.proc.returncode
        self.proc = None
        return code


@contextmanager
def running_hub(env: Mapping[str, str] | None = None, args: list[str] | None = None) -> Iterator[HubProcess]:
    hub = HubProcess(env, args)
    hub.start()
    try:
        yield hub
    finally:
        hub.stop()
