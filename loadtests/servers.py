"""Start and stop the servers under test as child processes.

Every server is started through ``taskset -c CORE`` (core 0 by default) so the
generator, pinned to the other core, does not steal its CPU, with its open-file
soft limit raised to the hard limit, and its output sent to a log file in a
temporary directory.  Only processes started here are ever stopped, by pid.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from loadtests.common import (
    LOOPBACK,
    REPO_ROOT,
    cpu_seconds,
    free_port,
    preexec_raise_limit,
    process_tree,
    stop_process,
    tree_peak_rss_kb,
    tree_rss_kb,
    wait_http_ok,
    wait_tcp,
)
from loadtests.gen.target import Target, hub_target

log = logging.getLogger(__name__)

VENV_PYTHON = REPO_ROOT / ".venv" / "bin" / "python"


def python_exe() -> str:
    """The project's venv interpreter if there is one."""
    return str(VENV_PYTHON) if VENV_PYTHON.exists() else "python3"


class Server:
    """A child process listening on 127.0.0.1:port."""

    name = "server"

    def __init__(self, core: int | None = 0, port: int | None = None) -> None:
        self.core = core
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.workdir = Path(tempfile.mkdtemp(prefix=f"ssebench-{self.name}-"))
        self.log_path = self.workdir / "server.log"
        # Set by a scenario that needs the server configured its way (scenarios.server_env):
        # laid over env() at start, so it wins over the defaults and the caller's environment.
        self.extra_env: dict[str, str] = {}

    # Subclasses fill these in.
    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def wait_ready(self) -> None:
        wait_tcp(self.port, alive=self.alive)

    def target(self) -> Target:
        raise NotImplementedError

    def start(self) -> Server:
        """Start pinned to self.core and wait until ready."""
        cmd = self.command()
        if self.core is not None and shutil.which("taskset"):
            cmd = ["taskset", "-c", str(self.core), *cmd]
        extra = " ".join(f"{k}={v}" for k, v in self.extra_env.items())
        log.info("starting %s: %s%s", self.name, f"{extra} " if extra else "", " ".join(cmd))
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**self.env(), **self.extra_env},
                cwd=str(REPO_ROOT),
                preexec_fn=preexec_raise_limit,
            )
        try:
            self.wait_ready()
        except TimeoutError as exc:
            tail = self.log_tail()  # read before stop() removes the work dir
            self.stop()
            raise RuntimeError(f"{self.name} did not become ready ({exc}); log: {tail}") from None
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_kb(self) -> int:
        """VmRSS of the server and its worker processes."""
        return tree_rss_kb(self.proc.pid) if self.alive() and self.proc else 0

    def cpu_seconds(self) -> float:
        """User+system CPU seconds of the server and its worker processes so far."""
        return sum(cpu_seconds(p) for p in process_tree(self.proc.pid)) if self.alive() and self.proc else 0.0

    def peak_rss_kb(self) -> int:
        """VmHWM (peak RSS since start) of the server and its worker processes."""
        return tree_peak_rss_kb(self.proc.pid) if self.alive() and self.proc else 0

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RedisServer(Server):
    """A throw-away redis-server without persistence."""

    name = "redis"

    def command(self) -> list[str]:
        # redis keeps 32 fds for itself; naive-pool needs one redis client per subscriber.
        return [
            "redis-server", "--port", str(self.port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no",
            "--maxclients", "19900", "--dir", str(self.workdir),
        ]  # fmt: skip

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"


class HubServer(Server):
    """ssehub: memory broker, or Redis broker when redis_url is given."""

    name = "hub"

    def __init__(
        self, core: int | None = 0, redis_url: str | None = None, max_connections: int = 20000
    ) -> None:
        super().__init__(core)
        self.redis_url = redis_url
        self.max_connections = max_connections

    def command(self) -> list[str]:
        cmd = [python_exe(), "-m", "hub", "serve", "--host", LOOPBACK, "--port", str(self.port)]
        if self.redis_url:
            cmd += ["--redis-url", self.redis_url]
        return cmd

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["HUB_MAX_CONNECTIONS"] = str(self.max_connections)
        env.setdefault("HUB_HEARTBEAT_SECONDS", "15")
        return env

    def wait_ready(self) -> None:
        wait_http_ok(f"http://{LOOPBACK}:{self.port}/readyz", timeout=30, alive=self.alive)

    def target(self) -> Target:
        return hub_target(self.port, "hub-redis" if self.redis_url else "hub")


def hub_available() -> bool:
    """True once the hub package has a CLI to start."""
    return (REPO_ROOT / "hub" / "cli.py").exists() and (REPO_ROOT / "hub" / "__main__.py").exists()


class WithOwnRedis(Server):
    """A server with a throw-away redis-server of its own: started before it, stopped after it."""

    redis: RedisServer

    def start(self) -> Server:
        self.redis.start()
        try:
            return super().start()
        except BaseException:
            self.redis.stop()
            raise

    def stop(self) -> None:
        super().stop()
        self.redis.stop()

    def cpu_seconds(self) -> float:
        """Redis's CPU counts too: it shares the server's core."""
        return super().cpu_seconds() + self.redis.cpu_seconds()


class HubRedisServer(WithOwnRedis, HubServer):
    """ssehub with the Redis broker and its own throw-away redis-server (same core)."""

    name = "hub-redis"

    def __init__(self, core: int | None = 0, max_connections: int = 20000) -> None:
        self.redis = RedisServer(core)
        super().__init__(core, redis_url=self.redis.url, max_connections=max_connections)
