"""Minting the hub's JWTs (``ssehub token``), for services, tests and examples.

The claims the hub reads (:mod:`hub.http.auth`)::

    {"hub": {"subscribe": ["orders-*"], "publish": ["orders-*"], "admin": false},
     "exp": 1767225600, "sub": "...", "aud": "...", "iss": "..."}

Only HS256 is minted here (from ``HUB_JWT_SECRET``); RS256/ES256 tokens come
from whoever holds the private key, with any JWT library.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

import jwt

_TTL_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``1h``, ``7d`` as seconds; ``0`` for no expiry."""
    found = _TTL_RE.fullmatch(text.strip())
    if found is None:
        raise ValueError(f"not a duration: {text!r} (e.g. 90s, 15m, 1h, 7d; 0 for none)")
    return float(found.group(1)) * _UNITS[found.group(2)]


def mint(
    secret: str,
    *,
    subscribe: Sequence[str] = (),
    publish: Sequence[str] = (),
    admin: bool = False,
    ttl: float = 3600.0,
    subject: str | None = None,
    audience: str | None = None,
    issuer: str | None = None,
    now: float | None = None,
) -> str:
    """An HS256 JWT granting reading ``subscribe`` and publishing to ``publish``
    (channel globs), valid for ``ttl`` seconds (0: no ``exp``)."""
    now = time.time() if now is None else now
    hub: dict[str, Any] = {}
    if subscribe:
        hub["subscribe"] = list(subscribe)
    if publish:
        hub["publish"] = list(publish)
    if admin:
        hub["admin"] = True
    claims: dict[str, Any] = {"hub": hub, "iat": int(now)}
    if ttl > 0:
        claims["exp"] = int(now + ttl)
    if subject:
        claims["sub"] = subject
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm="HS256")
