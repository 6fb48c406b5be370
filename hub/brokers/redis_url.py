"""``HUB_REDIS_URL`` -> how to reach Redis: one server, the master a Sentinel names, a cluster.

- ``redis://host:port/db``, ``rediss://...`` (TLS), ``unix:///path.sock?db=0``: one server.
- ``redis+sentinel://[user:password@]host:26379[,host2:26379...]/<master name>[/<db>]``
  (``rediss+sentinel://`` for TLS, to the sentinels and the master alike): every
  connection asks the sentinels which server is the master, when it connects. A
  connection to a master that was demoted (a failover) is dropped at its first
  ``READONLY`` reply (Sentinel itself closes them all when it demotes it), and the
  next one asks again, so the hub follows a failover as it comes back from an outage.
- ``redis+cluster://[user:password@]host:7000[,host2:7001...]`` (``rediss+cluster://``):
  a Redis Cluster, discovered from these nodes (:mod:`hub.brokers.redis_cluster`).

TLS files (``HUB_REDIS_CA_CERT``, ``HUB_REDIS_CLIENT_CERT``, ``HUB_REDIS_CLIENT_KEY``)
are for a TLS URL only: given with another one they are refused, as they would be
silently unused.

:func:`redis_target` returns the keyword arguments of a redis-py connection pool
(``connection_class`` included); nothing connects here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection, parse_url
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError

SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for TLS to Redis: the CA of its certificate, the hub's own certificate and key."""

    ca_cert: str | None = None
    client_cert: str | None = None
    client_key: str | None = None

    def __bool__(self) -> bool:
        return any((self.ca_cert, self.client_cert, self.client_key))

    def options(self) -> dict[str, Any]:
        if bool(self.client_cert) != bool(self.client_key):
            raise ValueError("HUB_REDIS_CLIENT_CERT and HUB_REDIS_CLIENT_KEY go together")
        options: dict[str, Any] = {"ssl_cert_reqs": "required"}
        if self.ca_cert:
            options["ssl_ca_certs"] = self.ca_cert
        if self.client_cert:
            options["ssl_certfile"] = self.client_cert
            options["ssl_keyfile"] = self.client_key
        return options


@dataclass(frozen=True)
class RedisTarget:
    """Where the broker's connections go. ``kwargs`` make a connection pool's connections
    (one server, Sentinel), or a cluster client's (cluster: TLS and credentials only)."""

    mode: str  # "single", "sentinel" or "cluster"
    kwargs: dict[str, Any]
    # Without credentials, for logs and errors.
    where: str
    # The client of the sentinels (Sentinel mode): the broker closes it when it stops.
    sentinel: Sentinel | None = None
    # Cluster mode: the nodes to discover the cluster from.
    seeds: list[tuple[str, int]] = field(default_factory=list)

    async def close(self) -> None:
        if self.sentinel is not None:
            for client in self.sentinel.sentinels:
                await client.aclose()


def redis_target(url: str, tls: TlsFiles | None = None, timeout: float = 5.0) -> RedisTarget:
    """Parse ``url`` (see the module's docstring); ValueError naming what is wrong.

    ``timeout``: seconds for a sentinel's connection and answer."""
    tls = tls or TlsFiles()
    lowered = url.lower()
    if lowered.startswith(CLUSTER_SCHEMES):
        return _cluster_target(url, lowered.startswith("rediss+"), tls)
    if lowered.startswith(SENTINEL_SCHEMES):
        return _sentinel_target(url, lowered.startswith("rediss+"), tls, timeout)
    secure = lowered.startswith("rediss://")
    if tls and not secure:
        raise ValueError("HUB_REDIS_CA_CERT and the client certificate settings need a rediss:// URL")
    kwargs: dict[str, Any] = dict(parse_url(url))
    if secure:
        kwargs.update(tls.options())
    where = kwargs.get("path") or f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
    return RedisTarget("single", kwargs, str(where))


def _split_host(text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):  # [::1]:26379
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = text.rpartition(":")
        if not host:
            host, port = text, ""
    if not host:
        raise ValueError(f"an address without a host: {text!r}")
    try:
        number = int(port) if port else default_port
    except ValueError:
        raise ValueError(f"an address with a bad port: {text!r}") from None
    if not 0 < number < 65536:
        raise ValueError(f"an address with a bad port: {text!r}")
    return unquote(host), number


@dataclass(frozen=True)
class _Parts:
    username: str
    password: str
    nodes: list[tuple[str, int]]
    path: list[str]
    query: dict[str, str]


def _split_url(url: str, default_port: int) -> _Parts:
    """``scheme://[user:password@]host:port,host:port/path?query`` -> its parts."""
    rest = url.split("://", 1)[1]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        hosts, userinfo = netloc, ""
    username, _, password = userinfo.partition(":")
    return _Parts(
        unquote(username),
        unquote(password),
        [_split_host(h, default_port) for h in hosts.split(",") if h],
        [unquote(p) for p in path.split("/") if p],
        {k: v[0] for k, v in parse_qs(query).items() if v},
    )


def _cluster_target(url: str, secure: bool, tls: TlsFiles) -> RedisTarget:
    if tls and not secure:
        raise ValueError("HUB_REDIS_CA_CERT and the client certificate settings need a rediss+cluster:// URL")
    parts = _split_url(url, 6379)
    if not parts.nodes:
        raise ValueError("redis+cluster:// needs at least one node: redis+cluster://host:7000,host2:7001")
    if parts.path not in ([], ["0"]) or parts.query:
        raise ValueError("a Redis Cluster has only db 0: redis+cluster://host:7000,host2:7001")
    kwargs: dict[str, Any] = tls.options() if secure else {}
    if secure:
        kwargs["ssl"] = True
    if parts.username:
        kwargs["username"] = parts.username
    if parts.password:
        kwargs["password"] = parts.password
    where = "cluster " + ",".join(f"{h}:{p}" for h, p in parts.nodes)
    return RedisTarget("cluster", kwargs, where, seeds=parts.nodes)


def _sentinel_target(url: str, secure: bool, tls: TlsFiles, timeout: float) -> RedisTarget:
    if tls and not secure:
        raise ValueError(
            "HUB_REDIS_CA_CERT and the client certificate settings need a rediss+sentinel:// URL"
        )
    parts = _split_url(url, 26379)
    if not parts.nodes:
        raise ValueError(
            "redis+sentinel:// needs at least one sentinel: redis+sentinel://host:26379/mymaster/0"
        )
    if not parts.path or len(parts.path) > 2:
        raise ValueError(
            "redis+sentinel:// names the master and optionally the db: redis+sentinel://host:26379/mymaster/0"
        )
    service = parts.path[0]
    try:
        db = int(parts.path[1]) if len(parts.path) > 1 else 0
    except ValueError:
        raise ValueError(f"the db of a redis+sentinel:// URL is a number, got {parts.path[1]!r}") from None
    options = dict(parts.query)
    sentinel_password = options.pop("sentinel_password", None)
    if options:
        raise ValueError(f"redis+sentinel:// takes only ?sentinel_password=, not {sorted(options)}")
    common: dict[str, Any] = tls.options() if secure else {}
    if secure:
        common["ssl"] = True
    sentinel_kwargs: dict[str, Any] = {
        **common,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "protocol": 2,
    }
    if sentinel_password:
        sentinel_kwargs["password"] = sentinel_password
    sentinel = Sentinel(parts.nodes, sentinel_kwargs=sentinel_kwargs)
    kwargs: dict[str, Any] = {
        **common,
        "connection_class": SentinelSSLConnection if secure else SentinelConnection,
        "sentinel": sentinel,
        "service_name": service,
        "db": db,
    }
    kwargs.pop("ssl", None)  # the connection class says it
    if parts.username:
        kwargs["username"] = parts.username
    if parts.password:
        kwargs["password"] = parts.password
    where = f"master {service!r} of sentinels {','.join(f'{h}:{p}' for h, p in parts.nodes)}"
    return RedisTarget("sentinel", kwargs, where, sentinel)


class _SentinelMixin(AbstractConnection):
    """Asks the sentinels for the master's address before each connect; drops the
    connection at a READONLY reply (its master was demoted by a failover), so that
    the next connect asks again."""

    host: str
    port: int

    def __init__(self, **kwargs: Any) -> None:
        self._sentinel: Sentinel = kwargs.pop("sentinel")
        self.service_name: str = kwargs.pop("service_name")
        super().__init__(**kwargs)

    async def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if not self.is_connected:
            self.host, self.port = await self._sentinel.discover_master(self.service_name)
        await super().connect_check_health(check_health, retry_socket_connect)

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except ReadOnlyError:
            await self.disconnect()
            raise RedisConnectionError("the Redis master was demoted to a replica (a failover)") from None


class SentinelConnection(_SentinelMixin, Connection):
    pass


class SentinelSSLConnection(_SentinelMixin, SSLConnection):
    pass
