"""One log line per stream, when it ends: who, what it was sent, how it ended.

The counts come from the subscriber (kept by the hub per flush, not per
delivery); the request id from the client's ``X-Request-ID`` (or a proxy's),
else one made up here, so that every line can be told apart. With
``HUB_LOG_FORMAT=json`` the fields are keys of the line's object.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from typing import Any

from hub.core.subscriber import Subscriber
from hub.http.types import Scope

log = logging.getLogger("hub.http.stream")

# How a stream ended, by the subscriber's reason.
HOW = {
    "": "client gone",
    "gone": "connection lost",
    "slow": "slow cut",
    "shutdown": "shutdown",
    "expired": "expired",
    "refused": "refused",
}

_made = itertools.count(1)
_PREFIX = f"{os.getpid():x}"


def request_id(scope: Scope) -> str:
    """The request's ``X-Request-ID`` (at most 128 characters), else a new one."""
    for key, value in scope["headers"]:
        if key.lower() == b"x-request-id" and value:
            return str(value[:128].decode("latin-1"))
    return f"{_PREFIX}-{next(_made)}"


def stream_ended(scope: Scope, sub: Subscriber, address: str | None = None, rid: str | None = None) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
    client = scope.get("client")
    peer = address or (f"{client[0]}:{client[1]}" if client else "local")
    fields: dict[str, Any] = {
        "channels": sub.channels,
        "duration_s": round(time.monotonic() - sub.opened, 3),
        "events": sub.sent_events,
        "bytes": sub.sent_bytes,
        "end": HOW.get(sub.reason, sub.reason),
        "remote": peer,
        "request_id": rid or request_id(scope),
    }
    log.info(
        "stream of %s ended (%s) after %.1fs: %d events, %d bytes; %s, request %s",
        ",".join(sub.channels),
        fields["end"],
        fields["duration_s"],
        sub.sent_events,
        sub.sent_bytes,
        peer,
        fields["request_id"],
        extra={"fields": fields},
    )


def stream_refused(scope: Scope, channels: list[str], why: str, address: str | None = None) -> None:
    """The line of a stream that never started: refused at connect (``why``: full,
    draining, too many from one address, unauthorized, forbidden)."""
    if not log.isEnabledFor(logging.INFO):
        return
    client = scope.get("client")
    peer = address or (f"{client[0]}:{client[1]}" if client else "local")
    fields: dict[str, Any] = {
        "channels": channels,
        "duration_s": 0.0,
        "events": 0,
        "bytes": 0,
        "end": "refused",
        "why": why,
        "remote": peer,
        "request_id": request_id(scope),
    }
    log.info(
        "stream of %s ended (refused: %s); %s, request %s",
        ",".join(channels),
        why,
        peer,
        fields["request_id"],
        extra={"fields": fields},
    )
