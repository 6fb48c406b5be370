"""Start/stop the naive FastAPI hub (uvicorn) and the redis-server it needs.

python -m loadtests.peers.naive.run --duration 600   # prints the port, stops by itself
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import time

from loadtests.common import LOOPBACK, raise_nofile_limit, wait_http_ok
from loadtests.gen.target import Target, naive_target
from loadtests.servers import RedisServer, WithOwnRedis, python_exe

log = logging.getLogger(__name__)


class NaiveServer(WithOwnRedis):
    """uvicorn (1 worker, uvloop, httptools) running peers/naive/app.py + its own redis."""

    name = "naive"

    def __init__(self, core: int | None = 0, port: int | None = None, max_connections: int = 0) -> None:
        super().__init__(core, port)
        self.redis = RedisServer(core)
        self.max_connections = max_connections  # 0: redis-py's default pool (100)
        if max_connections:
            self.name = "naive-pool"

    def command(self) -> list[str]:
        return [
            python_exe(), "-m", "uvicorn", "loadtests.peers.naive.app:app",
            "--host", LOOPBACK, "--port", str(self.port), "--loop", "uvloop", "--http", "httptools",
            "--no-access-log", "--log-level", "warning", "--backlog", "4096",
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["NAIVE_REDIS_URL"] = self.redis.url
        if self.max_connections:
            env["NAIVE_MAX_CONNECTIONS"] = str(self.max_connections)
        return env

    def wait_ready(self) -> None:
        wait_http_ok(f"http://{LOOPBACK}:{self.port}/readyz", alive=self.alive)

    def target(self) -> Target:
        return naive_target(self.port, self.name)

    def redis_rss_kb(self) -> int:
        """The redis-server's RSS (it holds one pub/sub client per subscriber)."""
        return self.redis.rss_kb()


def main() -> None:
    """Run the naive hub in the foreground for a bounded time."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--core", type=int, default=None)
    parser.add_argument("--duration", type=float, default=600.0, help="stop after this many seconds")
    parser.add_argument(
        "--max-connections", type=int, default=0, help="redis pool size (0: redis-py default)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    raise_nofile_limit()
    with NaiveServer(core=args.core, port=args.port, max_connections=args.max_connections) as srv:
        print(
            f"naive hub on http://{LOOPBACK}:{srv.port}  pub: /publish/<ch>  sub: /subscribe/<ch>", flush=True
        )
        with contextlib.suppress(KeyboardInterrupt):
            time.sleep(args.duration)


if __name__ == "__main__":
    main()
