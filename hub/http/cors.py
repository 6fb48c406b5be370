"""CORS headers for the raw ASGI endpoints (streams and publishes).

FastAPI's ``CORSMiddleware`` covers the other routes and answers every
preflight (``OPTIONS``); the raw endpoints, which bypass it, add the same
``Access-Control-Allow-Origin`` through here.
"""

from __future__ import annotations


def cors_headers(origins: list[str], origin: str | None) -> list[tuple[bytes, bytes]]:
    """The response headers for a request from ``origin`` under ``HUB_CORS_ORIGINS``."""
    if "*" in origins:
        return [(b"access-control-allow-origin", b"*")]
    if origin and origin in origins:
        return [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
    return []
