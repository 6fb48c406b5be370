"""Start/stop nginx + nchan on a free loopback port in a temporary prefix.

Usable as a library (``NchanServer``) or from the shell::

    python -m loadtests.peers.nchan.run --duration 600   # prints the port, stops by itself
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import resource
import shutil
import subprocess
import time
from pathlib import Path

from loadtests.common import LOOPBACK, raise_nofile_limit, wait_http_ok
from loadtests.gen.target import Target, nchan_target
from loadtests.servers import Server

log = logging.getLogger(__name__)

TEMPLATE = Path(__file__).with_name("nginx.conf.template")
MODULE_CANDIDATES = (
    "/usr/lib/nginx/modules/ngx_nchan_module.so",
    "/usr/share/nginx/modules/ngx_nchan_module.so",
)


def find_module() -> str:
    """Path of the nchan dynamic module."""
    for path in MODULE_CANDIDATES:
        if Path(path).exists():
            return path
    out = subprocess.run(["dpkg", "-L", "libnginx-mod-nchan"], capture_output=True, text=True, check=False)
    for line in out.stdout.splitlines():
        if line.endswith("ngx_nchan_module.so"):
            return line
    raise FileNotFoundError("ngx_nchan_module.so not found (apt-get install libnginx-mod-nchan)")


class NchanServer(Server):
    """nginx master + 1 worker with the nchan module."""

    name = "nchan"

    def __init__(
        self, core: int | None = 0, port: int | None = None, worker_connections: int = 30000
    ) -> None:
        # nchan uses connection slots beyond the client sockets, so with slots just under
        # the fd limit nginx reuses connections (drops streams) before it reaches that
        # limit.  The slots are set above it: the fd limit is then the real cap, and nginx
        # only warns that the slots exceed it.
        super().__init__(core, port)
        self.worker_connections = worker_connections

    def render(self) -> Path:
        """Write nginx.conf into the temp prefix."""
        conf = TEMPLATE.read_text().format(
            prefix=self.workdir,
            port=self.port,
            module=find_module(),
            # nginx cannot raise its limit above the hard limit (20,000 here).
            nofile=resource.getrlimit(resource.RLIMIT_NOFILE)[1],
            worker_connections=self.worker_connections,
        )
        path = self.workdir / "nginx.conf"
        path.write_text(conf)
        return path

    def command(self) -> list[str]:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        conf = str(self.render())
        return [nginx, "-p", str(self.workdir), "-c", conf, "-e", str(self.workdir / "error.log")]

    def wait_ready(self) -> None:
        wait_http_ok(f"http://{LOOPBACK}:{self.port}/readyz", alive=self.alive)

    def target(self) -> Target:
        return nchan_target(self.port)

    def log_tail(self, n: int = 2000) -> str:
        err = self.workdir / "error.log"
        text = err.read_text(errors="replace") if err.exists() else ""
        return (super().log_tail(n) + text)[-n:]


def main() -> None:
    """Run nchan in the foreground for a bounded time."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--core", type=int, default=None, help="pin to this core (taskset)")
    parser.add_argument("--duration", type=float, default=600.0, help="stop after this many seconds")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    raise_nofile_limit()
    with NchanServer(core=args.core, port=args.port) as srv:
        print(f"nchan on http://{LOOPBACK}:{srv.port}  pub: /pub/<ch>  sub: /sub/<ch>", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            time.sleep(args.duration)


if __name__ == "__main__":
    main()
