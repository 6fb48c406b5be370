"""The shipped ``nginx.conf``, run by a real nginx in a temp dir for the tests.

:func:`render_config` changes only ports, node addresses and file paths, and
each substitution must match the shipped file exactly as often as expected,
so a test can never quietly run some other configuration. :func:`parse_config`
reads nginx syntax into directives for the static checks.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from tests.support.procs import ROOT, HubProcess, RedisServer, free_port, require_binary, wait_until

NGINX_CONF = ROOT / "nginx.conf"

# Temp files of every module nginx is built with: it creates them at start,
# and their compiled-in defaults (/var/lib/nginx/...) are not ours to write.
_TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def _sub(pattern: str, replacement: str, text: str, count: int = 1) -> str:
    new, found = re.subn(pattern, lambda _: replacement, text, flags=re.MULTILINE)
    if found != count:
        raise AssertionError(f"nginx.conf: expected {count} match(es) of {pattern!r}, found {found}")
    return new


def render_config(
    text: str,
    *,
    workdir: Path,
    upstreams: Sequence[str],
    http_port: int,
    https_port: int,
    cert: Path,
    key: Path,
) -> str:
    """``text`` (the shipped nginx.conf) with the test's ports, nodes and paths."""
    lines = list(re.finditer(r"^([ \t]*)server\s+\S+:\d+((?:\s[^;]*)?);\n", text, flags=re.MULTILINE))
    if not lines or text[lines[0].start() : lines[-1].end()] != "".join(m.group(0) for m in lines):
        raise AssertionError("nginx.conf: expected one run of upstream server lines")
    indent, params = lines[0].group(1), lines[0].group(2)
    nodes = "".join(f"{indent}server {addr}{params};\n" for addr in upstreams)
    text = text[: lines[0].start()] + nodes + text[lines[-1].end() :]
    text = _sub(r"^pid /run/nginx\.pid;", f"pid {workdir}/nginx.pid;", text)
    text = _sub(r"/var/log/nginx/error\.log", f"{workdir}/error.log", text)
    text = _sub(r"/var/log/nginx/access\.log", f"{workdir}/access.log", text)
    temp = "".join(f"    {name}_temp_path {workdir}/{name};\n" for name in _TEMP_PATHS)
    text = _sub(r"^http \{\n", "http {\n" + temp, text)
    text = _sub(r"^ +listen 80 ", f"        listen 127.0.0.1:{http_port} ", text)
    text = _sub(r"^ +listen 443 ", f"        listen 127.0.0.1:{https_port} ", text)
    text = _sub(r"/etc/ssl/ssehub/fullchain\.pem", str(cert), text)
    return _sub(r"/etc/ssl/ssehub/privkey\.pem", str(key), text)


@dataclass
class Directive:
    """One nginx directive: ``name args...;`` or ``name args... { block }``."""

    name: str
    args: list[str]
    line: int
    block: list[Directive] | None = None

    @property
    def children(self) -> list[Directive]:
        if self.block is None:
            raise ValueError(f"{self.name} at line {self.line} has no block")
        return self.block

    def find(self, name: str) -> list[Directive]:
        return [d for d in self.block or [] if d.name == name]

    def one(self, name: str) -> Directive:
        found = self.find(name)
        assert len(found) == 1, f"expected one {name!r} in {self.name} {self.args}, found {len(found)}"
        return found[0]

    def value(self, name: str) -> list[str]:
        return self.one(name).args


_TOKEN = re.compile(r"""\s+|#[^\n]*|"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)'|([{};])|([^\s{};"'#]+)""")


def parse_config(text: str) -> Directive:
    """nginx syntax (words, quoted strings, blocks, comments) as a tree under a root directive."""
    root = Directive("main", [], 0, [])
    stack = [root]
    words: list[str] = []
    line = start = 1
    for match in _TOKEN.finditer(text):
        double, single, punct, word = match.groups()
        if word is not None or double is not None or single is not None:
            if not words:
                start = line
            words.append(next(w for w in (word, double, single) if w is not None))
        elif punct in (";", "{"):
            if not words:
                raise ValueError(f"line {line}: {punct} without a directive")
            directive = Directive(words[0], words[1:], start, [] if punct == "{" else None)
            stack[-1].children.append(directive)
            if punct == "{":
                stack.append(directive)
            words = []
        elif punct == "}":
            if words or len(stack) == 1:
                raise ValueError(f"line {line}: unexpected }}")
            stack.pop()
        line += match.group(0).count("\n")
    if words or len(stack) > 1:
        raise ValueError("unterminated block or directive")
    return root


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0, what: str = "") -> None:
    """:func:`~tests.support.procs.wait_until` for async tests: polls without blocking the loop."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while time.monotonic() < deadline:
        if await check():
            return
        await anyio.sleep(delay)
        delay = min(delay * 2, 0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1 made with the openssl CLI."""
    openssl = require_binary("openssl")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Nginx:
    """nginx with the rendered shipped config, in the foreground, in a temp dir."""

    def __init__(self, upstreams: Sequence[str]) -> None:
        self.binary = require_binary("nginx")
        self.dir = Path(tempfile.mkdtemp(prefix="hub-nginx-"))
        # Started as root, nginx runs its workers as the config's `user`; they
        # must be able to reach their temp dirs in here.
        self.dir.chmod(0o755)
        self.http_port = free_port()
        self.https_port = free_port()
        self.cert, self.key = self_signed_certificate(self.dir)
        self.config_path = self.dir / "nginx.conf"
        self.config_path.write_text(
            render_config(
                NGINX_CONF.read_text(),
                workdir=self.dir,
                upstreams=upstreams,
                http_port=self.http_port,
                https_port=self.https_port,
                cert=self.cert,
                key=self.key,
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def https_url(self) -> str:
        return f"https://localhost:{self.https_port}"

    def _command(self, *extra: str) -> list[str]:
        return [self.binary, "-p", str(self.dir), "-c", str(self.config_path), *extra]

    def check(self) -> subprocess.CompletedProcess[str]:
        """``nginx -t`` on the rendered config."""
        return subprocess.run(self._command("-t"), capture_output=True, text=True, timeout=30)

    def start(self) -> None:
        with (self.dir / "stderr.log").open("ab") as out:
            self.proc = subprocess.Popen(self._command("-g", "daemon off;"), stdout=out, stderr=out)
        try:
            wait_until(self._listening, 10, f"nginx on {self.http_port} and {self.https_port}")
        except AssertionError as exc:
            self.stop()
            raise AssertionError(f"{exc}\n{self.log()}") from None

    def _listening(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"nginx exited with {self.proc.returncode}:\n{self.log()}")
        return _accepts(self.http_port) and _accepts(self.https_port)

    def log(self) -> str:
        paths = (self.dir / "stderr.log", self.dir / "error.log")
        return "".join(p.read_text(errors="replace") for p in paths if p.exists())

    def access_log(self) -> list[str]:
        path = self.dir / "access.log"
        return path.read_text(errors="replace").splitlines() if path.exists() else []

    def stop(self) -> None:
        """Fast shutdown (SIGTERM): open streams are cut, not waited for."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


PUBLISH_TOKEN = "nginx-test-publish-token"


@dataclass
class Cluster:
    """Redis, hub nodes on it, and nginx in front of them."""

    redis: RedisServer
    nodes: list[HubProcess]
    nginx: Nginx

    # What a publish through nginx sends: the nodes have a publish token, as in production
    # (behind a proxy no client is local, so none may publish without one).
    auth: dict[str, str] = field(default_factory=lambda: {"Authorization": f"Bearer {PUBLISH_TOKEN}"})


@contextmanager
def running_cluster(env: dict[str, str] | None = None, nodes: int = 2) -> Iterator[Cluster]:
    """Redis, ``nodes`` hubs with ``HUB_REDIS_URL`` and ``env``, nginx in front; all stopped after."""
    redis = RedisServer()
    hubs: list[HubProcess] = []
    nginx: Nginx | None = None
    try:
        redis.start()
        hubs = [
            HubProcess({"HUB_PUBLISH_TOKENS": PUBLISH_TOKEN, **(env or {}), "HUB_REDIS_URL": redis.url})
            for _ in range(nodes)
        ]
        for hub in hubs:
            hub.start(ready=False)
        for hub in hubs:
            try:
                wait_until(hub.is_ready, 20, f"hub on {hub.port} to be ready")
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{hub.log()}") from None
        nginx = Nginx([f"127.0.0.1:{hub.port}" for hub in hubs])
        nginx.start()
        yield Cluster(redis, hubs, nginx)
    finally:
        if nginx is not None:
            nginx.stop()
        for hub in hubs:
            hub.stop()
        redis.stop()
