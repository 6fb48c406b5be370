"""The composite cursor of a multi-channel stream.

A multi-channel stream sends, as each event's ``id:``, one cursor that resumes
every channel of the stream exactly. It is positional over the stream's
channel list (channel names never appear) and short, and made only of
characters that keep a browser's ``Last-Event-ID`` CORS-safe (no ``:``):

    <base ms, base36> ( "_" <entry> )*      one entry per channel, in order
    entry = ""                               nothing seen yet (id 0-0)
          | <ms - base, base36> [ "-" <seq, base36> ]

For example ``lq3v9k2o_0_1c-2`` is two channels at ``(base, 0)`` and
``(base + 48, 2)``.
"""

from __future__ import annotations

from collections.abc import Sequence

from hub.core.ids import ZERO, Key

_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def _b36(n: int) -> str:
    if n == 0:
        return "0"
    out = []
    while n:
        n, r = divmod(n, 36)
        out.append(_DIGITS[r])
    return "".join(reversed(out))


def _int36(text: str) -> int:
    if not text or len(text) > 14 or not text.isascii() or not text.isalnum() or text != text.lower():
        raise ValueError(text)
    return int(text, 36)


def encode_cursor(positions: Sequence[Key]) -> str:
    known = [p[0] for p in positions if p != ZERO]
    base = min(known) if known else 0
    parts = [_b36(base)]
    for p in positions:
        if p == ZERO:
            parts.append("")
        elif p[1]:
            parts.append(f"{_b36(p[0] - base)}-{_b36(p[1])}")
        else:
            parts.append(_b36(p[0] - base))
    return "_".join(parts)


def decode_cursor(text: str, channels: int) -> list[Key] | None:
    """The positions in ``text``, or None when it does not fit ``channels`` channels."""
    parts = text.split("_")
    if len(parts) != channels + 1:
        return None
    try:
        base = _int36(parts[0])
        positions: list[Key] = []
        for entry in parts[1:]:
            if not entry:
                positions.append(ZERO)
                continue
            ms, sep, seq = entry.partition("-")
            positions.append((base + _int36(ms), _int36(seq) if sep else 0))
    except ValueError:
        return None
    return positions
