"""Idempotency records of the memory broker: a retried publish is stored once.

A publish with an ``Idempotency-Key`` leaves a record: the key (per channel),
a fingerprint of its payloads and its ids, for ``seconds``. A later publish
with the same key and payloads gets those ids and stores nothing; with other
payloads it is refused (:func:`hub.inputs.idempotency_conflict`). The Redis
broker keeps the same records in Redis, inside the publish script.

Every record lives equally long, so the records are in the order they expire:
each lookup drops the expired ones from the front, one comparison when there
are none. At most ``max_records`` are kept; past it the oldest go first (and
that is logged at most once a minute).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from hub.core.event import Payload
from hub.core.throttle import Throttle
from hub.inputs import idempotency_conflict

log = logging.getLogger(__name__)

MAX_RECORDS = 1_000_000


def fingerprint(payloads: Sequence[Payload]) -> bytes:
    """What tells two publishes apart: every field of every payload, unambiguously."""
    digest = hashlib.blake2b(digest_size=16)
    for p in payloads:
        for part in (p.kind, p.data, p.event or "", "" if p.retry is None else str(p.retry)):
            raw = part.encode("utf-8", "surrogatepass")
            digest.update(b"%d:" % len(raw))
            digest.update(raw)
    return digest.digest()


class Records:
    def __init__(
        self,
        seconds: float = 300.0,
        max_records: int = MAX_RECORDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.seconds = seconds
        self.max_records = max_records
        self._clock = clock
        # (channel, key) -> (expires at, fingerprint, ids), oldest first.
        self._records: OrderedDict[tuple[str, str], tuple[float, bytes, list[str]]] = OrderedDict()
        self.dropped = 0
        self._full = Throttle(log)

    def __len__(self) -> int:
        return len(self._records)

    def earlier(self, channel: str, key: str, print_: bytes) -> list[str] | None:
        """The ids of the earlier publish with ``key`` on ``channel``, if it is still
        remembered; :class:`hub.inputs.InputError` if it had other payloads."""
        self._expire()
        record = self._records.get((channel, key))
        if record is None:
            return None
        if record[1] != print_:
            raise idempotency_conflict()
        return list(record[2])

    def remember(self, channel: str, key: str, print_: bytes, ids: list[str]) -> None:
        self._records[(channel, key)] = (self._clock() + self.seconds, print_, list(ids))
        while len(self._records) > self.max_records:
            self._records.popitem(last=False)
            self.dropped += 1
            self._full.hit(
                "more than %d idempotency records: the oldest were forgotten before their time (%d so far)",
                self.max_records,
                self.dropped,
            )

    def _expire(self) -> None:
        records = self._records
        now = self._clock()
        while records:
            first = next(iter(records.values()))
            if first[0] > now:
                return
            records.popitem(last=False)

    def close(self) -> None:
        self._full.flush()
