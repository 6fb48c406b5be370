"""Who may publish, which channels a stream may read, who sees the admin endpoints.

Everything here runs once per request, when :meth:`hub.http.routes.Router.admit`
takes it (a stream: at connect time), never per delivery.

* **Publishing** needs a credential once one is configured: one of
  ``HUB_PUBLISH_TOKENS`` (compared in constant time) or a JWT whose
  ``hub.publish`` globs cover the channel. With none configured, only a
  local client that did not come through a proxy may publish, unless
  ``HUB_PUBLISH_OPEN``; either way a browser page from an origin that is not
  listed exactly in ``HUB_CORS_ORIGINS`` may not (a "simple" cross-site POST
  needs no preflight, so CORS alone does not stop it).
* **Private channels** (``HUB_PRIVATE_CHANNELS`` globs) need a JWT whose
  ``hub.subscribe`` globs cover every private channel of the stream, from
  ``Authorization: Bearer``, ``?access_token=`` or the ``HUB_JWT_COOKIE``
  cookie. The stream ends at the token's ``exp`` (``hub.expired``).
* **Admin endpoints** (everything but streams, publishes and the health
  probes) follow the publishing rule: a publish token, or a JWT with
  ``hub.admin: true``; with no credential configured, local clients only.

JWT algorithms come from configuration, never from the token: ``HS256`` for
``HUB_JWT_SECRET``, ``RS256``/``ES256`` from the type of ``HUB_JWT_PUBLIC_KEY``.
A token's header only picks among those pairs, so ``alg: none`` and HS/RS
confusion (the public key used as an HMAC secret) are refused.
"""

from __future__ import annotations

import fnmatch
import hmac
import ipaddress
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from hub.http.types import Scope
from hub.settings import Settings, split_list

Headers = list[tuple[bytes, bytes]]

# Seconds of clock difference allowed on exp and nbf.
LEEWAY_SECONDS = 5.0
# Verified tokens kept (a reconnect storm or a busy publisher verifies each once).
TOKEN_CACHE = 4096
# Longer tokens are refused unread; shorter ones are cached.
MAX_TOKEN_CHARS = 8192
CACHED_TOKEN_CHARS = 2048
# Limits on a token's claims: each list and each glob.
MAX_GLOBS = 256
MAX_GLOB_CHARS = 256
# Rate-limit buckets kept; past it the least recently used go (a full bucket is a fresh one).
MAX_BUCKETS = 100_000
REALM = 'Bearer realm="ssehub"'


@dataclass(frozen=True, slots=True)
class Refusal:
    """An answer that ends a request before its endpoint: a JSON error."""

    status: int
    error: str
    detail: str
    headers: tuple[tuple[bytes, bytes], ...] = ()


def unauthorized(detail: str, token_given: bool) -> Refusal:
    # RFC 6750: error="invalid_token" only when a token was sent.
    challenge = f'{REALM}, error="invalid_token"' if token_given else REALM
    return Refusal(401, "unauthorized", detail, ((b"www-authenticate", challenge.encode()),))


def forbidden(detail: str) -> Refusal:
    return Refusal(403, "forbidden", detail)


def glob_union(patterns: Iterable[str]) -> re.Pattern[str] | None:
    """One regex matching a channel name that any of the shell-style ``patterns`` match."""
    parts = [fnmatch.translate(p) for p in patterns]
    return re.compile("|".join(parts)) if parts else None


class InvalidToken(Exception):
    """A token that is missing its parts, badly signed, expired or otherwise unusable."""


class Grant:
    """What a verified JWT allows."""

    __slots__ = ("admin", "expires", "publish", "subject", "subscribe")

    def __init__(self, claims: dict[str, Any]) -> None:
        hub = claims.get("hub", {})
        if not isinstance(hub, dict):
            raise InvalidToken("the hub claim must be an object")
        self.subscribe = glob_union(_globs(hub, "subscribe"))
        self.publish = glob_union(_globs(hub, "publish"))
        admin = hub.get("admin", False)
        if not isinstance(admin, bool):
            raise InvalidToken("hub.admin must be true or false")
        self.admin = admin
        exp = claims.get("exp")
        self.expires: float | None = float(exp) if isinstance(exp, int | float) else None
        sub = claims.get("sub")
        self.subject = sub[:200] if isinstance(sub, str) else None

    def may_publish(self, channel: str) -> bool:
        return self.publish is not None and self.publish.match(channel) is not None

    def uncovered(self, channels: Iterable[str]) -> list[str]:
        """The ``channels`` this token does not let its holder read."""
        if self.subscribe is None:
            return list(channels)
        match = self.subscribe.match
        return [c for c in channels if match(c) is None]


def _globs(hub: dict[str, Any], name: str) -> list[str]:
    value = hub.get(name, [])
    if isinstance(value, str):
        value = [value]
    if (
        not isinstance(value, list)
        or len(value) > MAX_GLOBS
        or not all(isinstance(g, str) and 0 < len(g) <= MAX_GLOB_CHARS for g in value)
    ):
        raise InvalidToken(f"hub.{name} must be a list of at most {MAX_GLOBS} channel globs")
    return value


def algorithm_of_key(pem: str) -> tuple[str, Any]:
    """The one algorithm a public key verifies, and the loaded key."""
    text = pem if pem.lstrip().startswith("-----BEGIN") else Path(pem).read_text()
    key = load_pem_public_key(text.encode())
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise ValueError(f"the RSA key has {key.key_size} bits; at least 2048 are needed")
        return "RS256", key
    if isinstance(key, ec.EllipticCurvePublicKey):
        by_curve = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
        if key.curve.name not in by_curve:
            raise ValueError(f"the EC key's curve {key.curve.name} is not P-256, P-384 or P-521")
        return by_curve[key.curve.name], key
    raise ValueError("the public key is neither RSA nor EC")


class JwtVerifier:
    """Verifies JWTs against the configured keys, each with its one algorithm."""

    def __init__(self, secret: str, public_key: str, audience: str, issuer: str) -> None:
        self.keys: dict[str, Any] = {}
        if secret:
            self.keys["HS256"] = secret
        if public_key:
            alg, key = algorithm_of_key(public_key)
            self.keys[alg] = key
        self.audience = audience or None
        self.issuer = issuer or None
        self._cache: OrderedDict[str, Grant] = OrderedDict()

    def verify(self, token: str) -> Grant:
        grant = self._cache.get(token)
        if grant is not None:
            if grant.expires is not None and grant.expires + LEEWAY_SECONDS < time.time():
                del self._cache[token]
                raise InvalidToken("the token expired")
            self._cache.move_to_end(token)
            return grant
        grant = self._decode(token)
        if len(token) <= CACHED_TOKEN_CHARS:
            self._cache[token] = grant
            if len(self._cache) > TOKEN_CACHE:
                self._cache.popitem(last=False)
        return grant

    def _decode(self, token: str) -> Grant:
        if len(token) > MAX_TOKEN_CHARS:
            raise InvalidToken(f"the token is over {MAX_TOKEN_CHARS} characters")
        try:
            alg = jwt.get_unverified_header(token).get("alg")
            key = self.keys.get(alg) if isinstance(alg, str) else None
            if key is None:
                accepted = ", ".join(sorted(self.keys))
                raise InvalidToken(f"algorithm {str(alg)[:20]!r} is not accepted here (only {accepted})")
            claims = jwt.decode(
                token,
                key,
                algorithms=[str(alg)],
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_SECONDS,
                options={"verify_aud": self.audience is not None, "verify_iss": self.issuer is not None},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("the token expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("the token is not valid yet (nbf)") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("the token's signature does not verify") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("the token is not for this audience (aud)") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("the token is not from the expected issuer (iss)") from None
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"the token is malformed: {str(exc)[:200]}") from None
        return Grant(claims)


class RateLimiter:
    """Token buckets, one per key: ``rate`` events/s, up to ``burst`` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst or max(1, math.ceil(rate)))
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.refused = 0

    def take(self, key: str, n: int, now: float | None = None) -> float:
        """0 when ``n`` events may go now (they are counted), else the seconds to wait.

        A batch bigger than the burst goes when the bucket is full, and leaves
        it owing: the average rate holds either way.
        """
        now = time.monotonic() if now is None else now
        tokens, stamp = self.buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - stamp) * self.rate)
        need = min(float(n), self.burst)
        if tokens >= need:
            tokens -= n
            wait = 0.0
        else:
            wait = (need - tokens) / self.rate
            self.refused += 1
        self.buckets[key] = (tokens, now)
        if len(self.buckets) > MAX_BUCKETS:
            self.buckets.popitem(last=False)
        return wait


def header_map(scope: Scope) -> dict[bytes, bytes]:
    """The request's headers by lower-case name, the first of each: made once per request,
    as the guard and then the endpoint read them (a publish's hot path)."""
    found: dict[bytes, bytes] | None = scope.get("hub.headers")
    if found is None:
        # Reversed: of a repeated header the first is written last, and stays.
        found = scope["hub.headers"] = {key.lower(): value for key, value in reversed(scope["headers"])}
    return found


def header(scope: Scope, name: bytes) -> str | None:
    """The first ``name`` header (lower-case), as text."""
    value = header_map(scope).get(name)
    return None if value is None else value.decode("latin-1")


def bearer(scope: Scope) -> str | None:
    """The token of ``Authorization: Bearer <token>``; "" when the header is there without one."""
    value = header(scope, b"authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def query_token(scope: Scope) -> str | None:
    raw: bytes = scope["query_string"]
    if b"access_token" not in raw:
        return None
    for key, value in parse_qsl(raw.decode("latin-1"), keep_blank_values=True):
        if key == "access_token":
            return value
    return None


def cookie_token(scope: Scope, name: str) -> str | None:
    value = header(scope, b"cookie")
    if value is None or name not in value:
        return None
    try:
        morsel = SimpleCookie(value).get(name)
    except CookieError:
        return None
    return morsel.value if morsel is not None else None


# Host names that only ever mean this machine: a page served from one of them is the hub's
# own (its dashboard). Any other name could be an attacker's, rebound to 127.0.0.1 (DNS
# rebinding), where Origin and Host would agree too.
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})


def _own_local_page(scope: Scope, origin: str) -> bool:
    """``origin`` is the hub itself, reached by a loopback name: its own /ui page."""
    host = header(scope, b"host")
    if host is None or origin != f"{scope.get('scheme', 'http')}://{host}":
        return False
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return name.lower() in _LOCAL_HOSTS


class Auth:
    """The security rules of one app, built from its settings."""

    def __init__(self, settings: Settings) -> None:
        self.tokens = [t.encode() for t in split_list(settings.publish_tokens)]
        self.jwt = (
            JwtVerifier(
                settings.jwt_secret, settings.jwt_public_key, settings.jwt_audience, settings.jwt_issuer
            )
            if settings.jwt_secret or settings.jwt_public_key
            else None
        )
        # Publishing (and the admin endpoints) need a credential once there is one to give.
        self.credentials = bool(self.tokens) or self.jwt is not None
        self.open = settings.publish_open
        self.private = glob_union(split_list(settings.private_channels))
        self.cookie = settings.jwt_cookie or None
        # Origins allowed to publish without a credential: exact ones only ("*" is for reading).
        self.publish_origins = frozenset(o for o in settings.cors_origin_list if o != "*")
        self.proxies = [ipaddress.ip_network(p, strict=False) for p in split_list(settings.trusted_proxies)]
        self.limiter = (
            RateLimiter(settings.publish_rate, settings.publish_burst) if settings.publish_rate > 0 else None
        )
        self._loopback: dict[str, bool] = {}

    # -- who is asking --------------------------------------------------------

    def _is_loopback(self, host: str) -> bool:
        known = self._loopback.get(host)
        if known is None:
            try:
                known = ipaddress.ip_address(host).is_loopback
            except ValueError:
                known = False
            if len(self._loopback) > 1024:
                self._loopback.clear()
            self._loopback[host] = known
        return known

    def _trusted(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in net for net in self.proxies)

    def client_address(self, scope: Scope) -> str:
        """The client's address: the peer's, or from ``X-Forwarded-For`` when the
        peer is a trusted proxy (the right-most hop that is not one)."""
        client = scope.get("client")
        peer = str(client[0]) if client else "local"
        if not self.proxies or not self._trusted(peer):
            return peer
        forwarded = [
            hop.strip()
            for key, value in scope["headers"]
            if key.lower() == b"x-forwarded-for"
            for hop in value.decode("latin-1").split(",")
            if hop.strip()
        ]
        for hop in reversed(forwarded):
            if not self._trusted(hop):
                return str(hop[:64])
        return str(forwarded[0][:64]) if forwarded else peer

    def is_local(self, scope: Scope) -> bool:
        """A loopback (or Unix socket) peer that sent no proxy header: not from the network."""
        client = scope.get("client")
        if client and not self._is_loopback(str(client[0])):
            return False
        headers = header_map(scope)
        return not (b"x-forwarded-for" in headers or b"forwarded" in headers or b"x-real-ip" in headers)

    # -- the rules ------------------------------------------------------------

    def _static(self, token: str) -> int:
        """Which publish token ``token`` is (-1: none); every one is compared, in constant time each."""
        given = token.encode()
        found = -1
        for index, known in enumerate(self.tokens):
            if hmac.compare_digest(given, known):
                found = index
        return found

    def _grant(self, token: str) -> Grant | Refusal:
        if self.jwt is None:
            return unauthorized("the token is not one of this hub's publish tokens", True)
        try:
            return self.jwt.verify(token)
        except InvalidToken as exc:
            return unauthorized(str(exc), True)

    def publish(self, scope: Scope, channel: str) -> Refusal | str:
        """The refusal of a publish to ``channel``, or who publishes (the rate limit's key)."""
        if not self.credentials:
            return self._uncredentialed(scope, "publish")
        token = bearer(scope)
        if not token:
            return unauthorized(
                "publishing needs Authorization: Bearer with a publish token or JWT", token == ""
            )
        index = self._static(token)
        if index >= 0:
            return f"token:{index}"
        grant = self._grant(token)
        if isinstance(grant, Refusal):
            return grant
        if not grant.may_publish(channel):
            return forbidden(f"the token does not grant publishing to {channel!r}")
        return "jwt:" + (grant.subject or token[-16:])

    def _uncredentialed(self, scope: Scope, what: str) -> Refusal | str:
        origin = header(scope, b"origin")
        if origin is not None and origin not in self.publish_origins and not _own_local_page(scope, origin):
            return forbidden(
                f"{what} from origin {origin[:100]!r} refused: with no publish credential configured"
                " only origins listed exactly in HUB_CORS_ORIGINS may"
            )
        if self.open:
            return "addr:" + self.client_address(scope)
        if not self.is_local(scope):
            return forbidden(
                f"{what} is open only to local clients until a credential is configured"
                " (HUB_PUBLISH_TOKENS or a JWT key), or HUB_PUBLISH_OPEN=true"
            )
        return "local"

    def stream(self, scope: Scope, channels: list[str]) -> Refusal | float | None:
        """The refusal of a stream of ``channels``, else when it must end (None: never)."""
        if self.private is None:
            return None
        match = self.private.match
        private = [c for c in channels if match(c) is not None]
        if not private:
            return None
        token = self._any_token(scope)
        if not token:
            where = "Authorization: Bearer, ?access_token=" + (
                f" or the {self.cookie} cookie" if self.cookie else ""
            )
            return unauthorized(f"{', '.join(private[:5])} private: send a JWT ({where})", token == "")
        grant = self._grant(token)
        if isinstance(grant, Refusal):
            return grant
        uncovered = grant.uncovered(private)
        if uncovered:
            return forbidden(f"the token does not grant reading {', '.join(uncovered[:5])}")
        # The stream ends when its token stops being accepted (exp, plus the leeway): a
        # client that reconnects with the same token then is refused, not ended at once.
        return grant.expires + LEEWAY_SECONDS if grant.expires is not None else None

    def _any_token(self, scope: Scope) -> str | None:
        """A reader's token: ``Authorization: Bearer``, else ``?access_token=`` (what
        ``EventSource`` can send), else the ``HUB_JWT_COOKIE`` cookie; "" for an empty one."""
        token = bearer(scope)
        if token is None:
            token = query_token(scope)
        if token is None and self.cookie is not None:
            token = cookie_token(scope, self.cookie)
        return token

    def admin(self, scope: Scope) -> Refusal | None:
        """The refusal of an admin endpoint (channel list, metrics, docs, dashboard)."""
        if not self.credentials:
            refusal = self._uncredentialed(scope, "the admin endpoints")
            return refusal if isinstance(refusal, Refusal) else None
        token = self._any_token(scope)
        if not token:
            return unauthorized("this endpoint needs a publish token or an admin JWT", token == "")
        if self._static(token) >= 0:
            return None
        grant = self._grant(token)
        if isinstance(grant, Refusal):
            return grant
        return None if grant.admin else forbidden("the token does not grant the admin endpoints")


_SECRET_IN_TEXT = re.compile(r"(access_token=)[^&\s\"']+")


class RedactTokens(logging.Filter):
    """Replaces ``access_token=...`` (a query-string JWT) in every log line with
    ``access_token=REDACTED``: access logs print request paths with their query."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "access_token=" in text:
            record.msg = _SECRET_IN_TEXT.sub(r"\1REDACTED", text)
            record.args = None
        return True


def install_redaction() -> None:
    """On the root logger's handlers (the hub's own lines) and on uvicorn's loggers,
    whose access logger does not propagate to the root."""
    redact = RedactTokens()
    targets: list[logging.Filterer] = [*logging.getLogger().handlers]
    targets += [logging.getLogger(name) for name in ("uvicorn.access", "uvicorn.error")]
    for target in targets:
        if not any(isinstance(f, RedactTokens) for f in target.filters):
            target.addFilter(redact)
