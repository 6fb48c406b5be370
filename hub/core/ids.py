"""Event ids: ``<ms>-<seq>``, strictly increasing per channel.

The form is the one Redis streams use, so the Redis broker can keep the ids it
gets from ``XADD`` and the memory broker hands out ids that look the same.
An id is carried as a string on the wire and as an ``(ms, seq)`` tuple (a
``Key``) wherever ids are compared.
"""

from __future__ import annotations

import re
import time

Key = tuple[int, int]

ZERO: Key = (0, 0)

_ID_RE = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
_U64 = 2**64 - 1


def parse_id(value: str) -> Key | None:
    """``"1700000000000-3"`` -> ``(1700000000000, 3)``; None when malformed."""
    match = _ID_RE.fullmatch(value)
    if match is None:
        return None
    ms, seq = int(match.group(1)), int(match.group(2))
    if ms > _U64 or seq > _U64:
        return None
    return ms, seq


def format_id(key: Key) -> str:
    return f"{key[0]}-{key[1]}"


class IdClock:
    """Hands out ids for one channel the way Redis ``XADD *`` does.

    The millisecond part follows the wall clock but never goes back (a clock
    step backwards keeps the last millisecond and counts on in ``seq``).
    """

    __slots__ = ("last",)

    def __init__(self, last: Key = ZERO) -> None:
        self.last = last

    def next(self, now_ms: int | None = None) -> Key:
        ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        last_ms, last_seq = self.last
        key = (last_ms, last_seq + 1) if ms <= last_ms else (ms, 0)
        self.last = key
        return key
