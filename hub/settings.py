"""All configuration, in one place: ``HUB_*`` environment variables, flags win.

``Settings()`` reads the environment; the CLI passes its flags as keyword
arguments, which take precedence. A bad value raises
:class:`pydantic.ValidationError`, which the CLI turns into a clear message.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HUB_", extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    redis_url: str | None = Field(None, description="unset: the embedded in-memory broker")
    # No ":": it separates the prefix from the channel in every key (see _redis_prefix).
    redis_prefix: str = Field("hub", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    redis_pool_size: int = Field(32, ge=1, le=10_000, description="command connections per process")
    redis_timeout: float = Field(5.0, gt=0, le=300, description="seconds to wait for a connection or reply")
    workers: int = Field(1, ge=1, le=256)
    log_level: str = Field("info", pattern=r"^(critical|error|warning|info|debug|trace)$")

    heartbeat_seconds: float = Field(15.0, gt=0, le=3600)
    retry_ms: int = Field(3000, ge=0, le=86_400_000)
    history_size: int = Field(1000, ge=1, le=1_000_000)
    max_event_bytes: int = Field(65536, ge=1, le=64 << 20)
    max_body_bytes: int = Field(1 << 20, ge=1, le=256 << 20)
    max_channels_per_stream: int = Field(32, ge=1, le=1024)
    max_pending_bytes: int = Field(1 << 20, ge=1024, le=1 << 30)
    stall_seconds: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="a stream whose socket takes nothing this long while its replay waits is cut as slow",
    )
    max_connections: int = Field(10_000, ge=1, le=10_000_000)
    shutdown_seconds: float = Field(10.0, ge=0, le=3600)
    max_header_bytes: int = Field(
        65536, ge=1024, le=16 << 20, description="request line and headers; past it 414 or 431"
    )
    header_timeout: float = Field(
        10.0, gt=0, le=3600, description="seconds a client has to send a whole request head"
    )
    cors_origins: str = Field("*", description="comma-separated origins for CORS, '*' for any, '' for none")

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        assert value is not None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

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

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]


# HUB_* variables read by the client commands, not by the server.
CLIENT_VARIABLES = frozenset({"HUB_URL", "HUB_TOKEN"})


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """``HUB_*`` names that no setting reads: most likely typos, worth refusing."""
    known = {f"HUB_{name.upper()}" for name in Settings.model_fields} | CLIENT_VARIABLES
    return sorted(k for k in environ if k.startswith("HUB_") and k not in known)
