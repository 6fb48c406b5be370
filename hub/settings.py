"""All configuration, in one place: ``HUB_*`` environment variables, flags win.

``Settings()`` reads the environment; the CLI passes its flags as keyword
arguments, which take precedence. Every field is one setting: its name gives
its variable (:func:`env_var`) and its ``ssehub serve`` flag (:func:`flag`),
its annotation and bounds its type, its ``description`` its meaning, which
``ssehub serve --help`` prints (the README's table is tested against it).
A bad value raises :class:`pydantic.ValidationError`, which the CLI turns into
a one-line message naming the variable or flag it came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]
# What HUB_REDIS_URL may start with (hub/brokers/redis_url.py reads the rest).
_REDIS_SCHEMES = (
    "redis://",
    "rediss://",
    "unix://",
    "redis+sentinel://",
    "rediss+sentinel://",
    "redis+cluster://",
    "rediss+cluster://",
)


class Settings(BaseSettings):
    """Every setting of the hub. Each field's ``description`` is its documentation:
    ``ssehub serve --help`` shows it, and the README's Settings table is tested against it."""

    model_config = SettingsConfigDict(env_prefix="HUB_", extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="listen address")
    port: int = Field(8000, ge=0, le=65535, description="listen port (0: any free port)")
    redis_url: str | None = Field(
        None,
        description="unset: the embedded in-memory broker;"
        " redis://host:port/db (or rediss://, unix://, redis+sentinel://host:26379/master/db,"
        " redis+cluster://host:7000): the Redis broker",
    )
    # No ":": it separates the prefix from the channel in every key (see _redis_prefix).
    redis_prefix: str = Field(
        "hub",
        pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
        description="prefix of the Redis keys and pub/sub channels; no colon",
    )
    redis_pool_size: int = Field(
        32,
        ge=1,
        le=10_000,
        description="Redis command connections per process; a burst of publishes queues for one",
    )
    redis_timeout: float = Field(
        5.0,
        gt=0,
        le=300,
        description="seconds a publish waits for a Redis connection or reply before a 503",
    )
    workers: int = Field(1, ge=1, le=256, description="worker processes on one port (Redis broker only)")
    log_level: LogLevel = Field("info", description="log level; debug and trace also log every request")

    heartbeat_seconds: float = Field(
        15.0, gt=0, le=3600, description="a stream idle this long gets a comment line"
    )
    retry_ms: int = Field(
        3000, ge=0, le=86_400_000, description="the retry: (reconnect delay, ms) sent first on every stream"
    )
    history_size: int = Field(1000, ge=1, le=1_000_000, description="events kept per channel for replay")
    history_ttl: float = Field(
        3600.0,
        ge=0,
        le=365 * 86400,
        description="seconds an event is kept for replay (0: until pushed out by size); idle channels go",
    )
    history_max_bytes: int = Field(
        256 << 20,
        ge=1 << 20,
        le=1 << 40,
        description="memory broker: bytes of all kept history; past it the oldest events go first",
    )
    max_event_bytes: int = Field(
        65536, ge=1, le=64 << 20, description="bytes of one event's data on the wire; past it 413"
    )
    max_body_bytes: int = Field(
        1 << 20, ge=1, le=256 << 20, description="bytes of one publish request body; past it 413"
    )
    max_channels_per_stream: int = Field(32, ge=1, le=1024, description="channels on one /stream")
    max_pending_bytes: int = Field(
        1 << 20,
        ge=1024,
        le=1 << 30,
        description="bytes a subscriber may fall behind before it is cut",
    )
    stall_seconds: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="a stream whose socket takes nothing this long while its replay waits is cut as slow",
    )
    max_connections: int = Field(
        10_000, ge=1, le=10_000_000, description="streams per process; more are refused"
    )
    shutdown_seconds: float = Field(
        10.0, ge=0, le=3600, description="seconds a drain waits for in-flight requests"
    )
    max_header_bytes: int = Field(
        65536,
        ge=1024,
        le=16 << 20,
        description="bytes of a request's line and headers; past it 414 (URL) or 431 (headers)",
    )
    header_timeout: float = Field(
        10.0, gt=0, le=3600, description="seconds a client has to send a whole request head"
    )
    cors_origins: str = Field(
        "*",
        description="comma-separated allowed origins, * for any (no cookies then), empty for no CORS headers",
    )

    # -- security (see the README's Security section) --
    publish_tokens: str = Field(
        "",
        description="comma-separated bearer tokens that may publish to any channel and read the admin"
        " endpoints (unset, and no JWT key: only local unproxied clients may)",
    )
    publish_open: bool = Field(
        False,
        description="with no publish credential: let every client publish and read the admin endpoints"
        " (a private network only)",
    )
    private_channels: str = Field(
        "",
        description="comma-separated globs (private-*,user-*; * for all): streams of these channels need"
        " a JWT that grants them",
    )
    jwt_secret: str = Field(
        "",
        description="HS256 key of subscriber and publisher JWTs (at least 32 characters)",
    )
    jwt_public_key: str = Field(
        "",
        description="RS256 or ES256 public key of JWTs: PEM text, or the path of a PEM file",
    )
    jwt_audience: str = Field("", description="a JWT must carry this aud (unset: no aud check)")
    jwt_issuer: str = Field("", description="a JWT must carry this iss (unset: no iss check)")
    jwt_cookie: str = Field(
        "", description="name of a cookie a subscriber JWT is also read from (unset: no cookie)"
    )
    publish_rate: float = Field(
        0.0,
        ge=0,
        le=10_000_000,
        description="events/s one credential (or client address) may publish; 0: off",
    )
    publish_burst: int = Field(
        0,
        ge=0,
        le=10_000_000,
        description="events one credential may publish at once (0: one second's worth)",
    )
    max_streams_per_ip: int = Field(
        0, ge=0, le=10_000_000, description="streams one client address may hold; 0: no limit"
    )
    trusted_proxies: str = Field(
        "",
        description="comma-separated addresses or networks whose X-Forwarded-For names the client"
        " (127.0.0.1 behind the shipped nginx)",
    )
    docs: bool = Field(False, description="serve /docs, /redoc and /openapi.json (admin endpoints)")

    # -- Redis in production: idempotent publishes, TLS --
    idempotency_seconds: float = Field(
        300.0,
        ge=1,
        le=7 * 86400,
        description="seconds a publish's Idempotency-Key is remembered: a retry within it is not stored"
        " twice",
    )
    redis_ca_cert: str | None = Field(
        None,
        description="rediss:// only: PEM file of the CA that signed Redis's certificate (unset: the"
        " system's)",
    )
    redis_client_cert: str | None = Field(
        None,
        description="rediss:// only: PEM file of the hub's client certificate, for Redis's tls-auth-clients",
    )
    redis_client_key: str | None = Field(
        None, description="rediss:// only: PEM file of that client certificate's key"
    )

    # -- seeing the hub: dashboard, logs, metrics --
    ui: bool = Field(True, description="serve the live dashboard at /ui and its stats stream at /_hub/stats")
    log_format: Literal["text", "json"] = Field(
        "text",
        description="log lines: text for people, json for one object per line (ts, level, msg, fields)",
    )
    metrics_channels: str = Field(
        "",
        description="comma-separated globs (orders.*,chat): /metrics counts the events and streams"
        " of the channels each matches, labelled by the glob",
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        assert value is not None
        if not value.startswith(_REDIS_SCHEMES):
            raise ValueError(
                "must start with redis://, rediss://, unix://, redis+sentinel://, rediss+sentinel://,"
                " redis+cluster:// or rediss+cluster://"
            )
        path = value.split("://", 1)[1].split("?")[0].partition("/")[2]
        if "+sentinel://" in value and not path.strip("/"):
            raise ValueError("a Sentinel URL names the master: redis+sentinel://host:26379/mymaster/0")
        return value

    @model_validator(mode="after")
    def _redis_tls_files(self) -> Settings:
        files = (self.redis_ca_cert, self.redis_client_cert, self.redis_client_key)
        if any(files) and not (self.redis_url or "").startswith(("rediss://", "rediss+")):
            raise ValueError(
                "HUB_REDIS_CA_CERT, HUB_REDIS_CLIENT_CERT and HUB_REDIS_CLIENT_KEY need a TLS"
                " HUB_REDIS_URL (rediss:// or rediss+sentinel://)"
            )
        if bool(self.redis_client_cert) != bool(self.redis_client_key):
            raise ValueError("HUB_REDIS_CLIENT_CERT and HUB_REDIS_CLIENT_KEY go together")
        return self

    @field_validator("redis_prefix")
    @classmethod
    def _redis_prefix(cls, value: str) -> str:
        if ":" in value:
            raise ValueError(
                "must not contain ':', the separator between prefix and channel in Redis keys"
                " (two hubs under 'hub' and 'hub:t2' would share keys: channel 't2:orders' of"
                " one is channel 'orders' of the other); use e.g. 'hub_t2'"
            )
        return value

    @field_validator("jwt_secret")
    @classmethod
    def _jwt_secret(cls, value: str) -> str:
        # HS256 with a short key falls to an offline guess of the key from one token.
        if value and len(value.encode()) < 32:
            raise ValueError("must be at least 32 characters (256 bits); e.g. `openssl rand -hex 32`")
        return value

    @model_validator(mode="after")
    def _private_needs_a_key(self) -> Settings:
        if self.private_channels.strip() and not (self.jwt_secret or self.jwt_public_key):
            raise ValueError(
                "HUB_PRIVATE_CHANNELS needs HUB_JWT_SECRET or HUB_JWT_PUBLIC_KEY to check subscribers' tokens"
            )
        return self

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]


# Settings whose values are secrets: never logged, never shown.
SECRET_SETTINGS = frozenset({"publish_tokens", "jwt_secret"})


def split_list(value: str) -> list[str]:
    """A comma-separated setting's items, blanks dropped."""
    return [item.strip() for item in value.split(",") if item.strip()]


# HUB_* variables read by the client commands, not by the server.
CLIENT_VARIABLES = frozenset({"HUB_URL", "HUB_TOKEN"})


def env_var(name: str) -> str:
    """The environment variable of setting ``name``: ``HUB_MAX_PENDING_BYTES``."""
    return f"{Settings.model_config['env_prefix']}{name.upper()}"


def flag(name: str) -> str:
    """The ``ssehub serve`` flag of setting ``name``: ``--max-pending-bytes``."""
    return "--" + name.replace("_", "-")


def default_text(name: str) -> str:
    """Setting ``name``'s default as people read it: ``unset`` for None, ``5`` for 5.0."""
    value: Any = Settings.model_fields[name].get_default(call_default_factory=True)
    if value is None or value == "":
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """``HUB_*`` names that no setting reads: most likely typos, worth refusing."""
    known = {env_var(name) for name in Settings.model_fields} | CLIENT_VARIABLES
    return sorted(k for k in environ if k.startswith("HUB_") and k not in known)
