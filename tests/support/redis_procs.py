"""More real Redis processes for integration tests: TLS, Sentinel, Cluster.

Everything binds to free loopback ports, runs in a temp dir, is awaited by
polling with a deadline (never a bare sleep) and stopped by its own PID.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.procs import free_port, require_binary, wait_until


@dataclass(frozen=True)
class Certificates:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str) -> None:
    subprocess.run([require_binary("openssl"), *args], check=True, capture_output=True, timeout=60)


def make_certificates(directory: Path) -> Certificates:
    """A CA made with the openssl CLI, and two certificates it signed (EC P-256, two days)."""
    d = directory
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-days", "2", "-subj", "/CN=ssehub test CA",
             "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"))  # fmt: skip
    for name, extension in (
        ("server", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        (d / f"{name}.ext").write_text(extension + "\n")
        _openssl("req", *ec, "-subj", f"/CN=ssehub test {name}",
                 "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"))  # fmt: skip
        _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"),
                 "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "2",
                 "-extfile", str(d / f"{name}.ext"), "-out", str(d / f"{name}.pem"))  # fmt: skip
    return Certificates(d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key")


class RedisProcess:
    """One redis-server (or sentinel) started with the given arguments, in its own dir."""

    def __init__(self, port: int | None = None, name: str = "redis") -> None:
        self.binary = require_binary("redis-server")
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=f"hub-{name}-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.tls: Certificates | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *args: str, config: str | None = None) -> None:
        cmd = [self.binary]
        if config is not None:  # a sentinel needs a config file it may rewrite
            path = self.dir / "redis.conf"
            path.write_text(config)
            cmd.append(str(path))
        cmd += [
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
            "--loglevel", "warning",
            "--logfile", str(self.dir / "redis.log"),
            *args,
        ]  # fmt: skip
        if "--port" not in args:
            cmd += ["--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.ping, 10, f"redis on {self.port}\n{self.log()}")

    def ping(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"redis on {self.port} exited with {self.proc.returncode}:\n{self.log()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw:
                if self.tls is None:
                    return _pong(raw)
                context = ssl.create_default_context(cafile=str(self.tls.ca))
                context.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
                with context.wrap_socket(raw, server_hostname="127.0.0.1") as secure:
                    return _pong(secure)
        except OSError:
            return False

    def log(self) -> str:
        path = self.dir / "redis.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def kill(self) -> None:
        """SIGKILL, by PID."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        self.kill()
        self.proc = None


def _pong(sock: socket.socket) -> bool:
    sock.sendall(b"PING\r\n")
    return sock.recv(64).startswith(b"+PONG")


def start_tls_redis(certs: Certificates, auth_clients: str = "yes") -> RedisProcess:
    """redis-server with only a TLS port, the server certificate, and clients checked against the CA."""
    server = RedisProcess(name="redis-tls")
    server.tls = certs
    server.start(
        "--port", "0",
        "--tls-port", str(server.port),
        "--tls-cert-file", str(certs.server_cert),
        "--tls-key-file", str(certs.server_key),
        "--tls-ca-cert-file", str(certs.ca),
        "--tls-auth-clients", auth_clients,
    )  # fmt: skip
    return server


def distinct_ports(count: int) -> list[int]:
    """``count`` free loopback ports, all different (each held until all are found)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def stop_all(processes: Sequence[RedisProcess]) -> None:
    for process in processes:
        process.stop()


class SentinelSetup:
    """A master, a replica and three sentinels watching them (quorum 2), on loopback."""

    name = "mymaster"

    def __init__(self, down_after_ms: int = 1000) -> None:
        ports = distinct_ports(5)
        self.master = RedisProcess(ports[0], name="redis-master")
        self.replica = RedisProcess(ports[1], name="redis-replica")
        self.sentinels = [RedisProcess(port, name="sentinel") for port in ports[2:]]
        self.down_after_ms = down_after_ms

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.name}/0"

    @property
    def processes(self) -> list[RedisProcess]:
        return [self.master, self.replica, *self.sentinels]

    def start(self) -> None:
        self.master.start()
        self.replica.start("--replicaof", "127.0.0.1", str(self.master.port))
        for sentinel in self.sentinels:
            sentinel.start(
                "--sentinel",
                config=(
                    f"port {sentinel.port}\n"
                    f"sentinel monitor {self.name} 127.0.0.1 {self.master.port} 2\n"
                    f"sentinel down-after-milliseconds {self.name} {self.down_after_ms}\n"
                    f"sentinel failover-timeout {self.name} 10000\n"
                    f"sentinel parallel-syncs {self.name} 1\n"
                ),
            )
        # Ready for a failover once every sentinel knows the replica and the two others.
        wait_until(self._watching, 30, "the sentinels to find the replica and each other")

    def _watching(self) -> bool:
        for sentinel in self.sentinels:
            info = self.sentinel_master(sentinel)
            if int(info.get("num-slaves", 0)) < 1 or int(info.get("num-other-sentinels", 0)) < 2:
                return False
        return True

    def sentinel_master(self, sentinel: RedisProcess) -> dict[str, str]:
        out = redis_cli(sentinel.port, "SENTINEL", "MASTER", self.name)
        lines = out.splitlines()
        return dict(zip(lines[::2], lines[1::2], strict=False))

    def master_port(self) -> int | None:
        """The master's port as the first sentinel that answers sees it."""
        for sentinel in self.sentinels:
            try:
                out = redis_cli(sentinel.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name)
            except subprocess.SubprocessError:
                continue
            parts = out.split()
            if len(parts) == 2:
                return int(parts[1])
        return None

    def stop(self) -> None:
        stop_all(self.processes)


def tls_cli_args(certs: Certificates | None) -> list[str]:
    """redis-cli's options to speak TLS with ``certs`` (none without)."""
    if certs is None:
        return []
    return [
        "--tls",
        "--cacert",
        str(certs.ca),
        "--cert",
        str(certs.client_cert),
        "--key",
        str(certs.client_key),
    ]


def redis_cli(port: int, *args: str, timeout: float = 10, tls: Certificates | None = None) -> str:
    """``redis-cli -p port args...``; its output (raises on a failed run)."""
    cli = require_binary("redis-cli")
    done = subprocess.run(
        [cli, "-h", "127.0.0.1", "-p", str(port), *tls_cli_args(tls), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    return done.stdout


class ClusterSetup:
    """A Redis Cluster of ``masters`` masters with one replica each, on loopback.

    Built as an operator would: ``redis-server --cluster-enabled yes`` per node
    (with its bus on a free port of its own), then ``redis-cli --cluster create
    ... --cluster-replicas 1 --cluster-yes``; ready once every node says
    ``cluster_state:ok`` and every replica has its master.
    """

    def __init__(
        self, masters: int = 3, node_timeout_ms: int = 2000, tls: Certificates | None = None
    ) -> None:
        ports = distinct_ports(masters * 4)  # a client port and a bus port per node
        self.nodes = [RedisProcess(ports.pop(), name="redis-cluster") for _ in range(masters * 2)]
        self.bus_ports = {node.port: ports.pop() for node in self.nodes}
        self.masters = masters
        self.node_timeout_ms = node_timeout_ms
        # With certificates: TLS only, between the nodes too (clients checked against the CA).
        self.tls = tls
        for node in self.nodes:
            node.tls = tls

    def cli(self, port: int, *args: str) -> str:
        return redis_cli(port, *args, tls=self.tls)

    @property
    def url(self) -> str:
        scheme = "rediss+cluster" if self.tls is not None else "redis+cluster"
        return f"{scheme}://127.0.0.1:{self.nodes[0].port},127.0.0.1:{self.nodes[1].port}"

    def start(self) -> None:
        for node in self.nodes:
            tls: list[str] = []
            if self.tls is not None:
                tls = [
                    "--port", "0", "--tls-port", str(node.port),
                    "--tls-cluster", "yes", "--tls-replication", "yes",
                    "--tls-cert-file", str(self.tls.server_cert),
                    "--tls-key-file", str(self.tls.server_key),
                    "--tls-ca-cert-file", str(self.tls.ca),
                    "--tls-auth-clients", "yes",
                    # Nodes are clients too (the bus, replication): with a client certificate.
                    "--tls-client-cert-file", str(self.tls.client_cert),
                    "--tls-client-key-file", str(self.tls.client_key),
                ]  # fmt: skip
            node.start(
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(node.dir / "nodes.conf"),
                "--cluster-node-timeout", str(self.node_timeout_ms),
                "--cluster-port", str(self.bus_ports[node.port]),
                "--cluster-replica-validity-factor", "0",
                *tls,
            )  # fmt: skip
        cli = require_binary("redis-cli")
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [
                cli,
                *tls_cli_args(self.tls),
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_until(self.healthy, 60, "cluster_state:ok on every node")

    def alive(self) -> list[RedisProcess]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def healthy(self) -> bool:
        for node in self.alive():
            try:
                if "cluster_state:ok" not in self.cli(node.port, "CLUSTER", "INFO"):
                    return False
            except subprocess.SubprocessError:
                return False
        return len(self.primaries()) == self.masters and all(self._synced(n) for n in self.alive())

    def _synced(self, node: RedisProcess) -> bool:
        info = self.cli(node.port, "INFO", "replication")
        return "role:master" in info or "master_link_status:up" in info

    def primaries(self) -> list[RedisProcess]:
        """The nodes that are masters (owning slots) now, as the first live node sees it."""
        by_port = {n.port: n for n in self.nodes}
        out = self.cli(self.alive()[0].port, "CLUSTER", "NODES")
        found = []
        for line in out.splitlines():
            fields = line.split()
            if len(fields) > 8 and "master" in fields[2] and "fail" not in fields[2]:
                port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
                if port in by_port:
                    found.append(by_port[port])
        return found

    def owner(self, key: str) -> RedisProcess:
        """The master serving ``key``'s slot now."""
        slot = int(self.cli(self.alive()[0].port, "CLUSTER", "KEYSLOT", key))
        for node in self.primaries():
            for line in self.cli(node.port, "CLUSTER", "NODES").splitlines():
                fields = line.split()
                if "myself" in fields[2]:
                    for part in fields[8:]:
                        low, _, high = part.partition("-")
                        if low.isdigit() and int(low) <= slot <= int(high or low):
                            return node
        raise AssertionError(f"no master serves slot {slot}")

    def owner_port(self, key: str) -> int | None:
        """The port of the master serving ``key``'s slot; None while none claims it (a failover)."""
        try:
            return self.owner(key).port
        except (AssertionError, subprocess.SubprocessError):
            return None

    def replica_of(self, master: RedisProcess) -> RedisProcess:
        node_id = self.cli(master.port, "CLUSTER", "MYID").strip()
        by_port = {n.port: n for n in self.nodes}
        for line in self.cli(master.port, "CLUSTER", "NODES").splitlines():
            fields = line.split()
            if fields[3] == node_id:
                return by_port[int(fields[1].split("@")[0].rsplit(":", 1)[1])]
        raise AssertionError(f"no replica of {master.port}")

    def stop(self) -> None:
        stop_all(self.nodes)
