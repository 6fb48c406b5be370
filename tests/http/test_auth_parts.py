"""The parts of hub.http.auth on their own: rate buckets, client addresses, log redaction."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.http.auth import MAX_BUCKETS, Auth, RateLimiter, RedactTokens, glob_union
from hub.settings import Settings


def scope(client: str | None, headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    return {"client": (client, 1234) if client else None, "headers": headers or [], "query_string": b""}


def test_a_bucket_lets_the_burst_through_then_the_rate() -> None:
    limiter = RateLimiter(rate=10, burst=5)
    assert [limiter.take("a", 1, now=0.0) for _ in range(5)] == [0.0] * 5
    wait = limiter.take("a", 1, now=0.0)
    assert wait == pytest.approx(0.1)
    assert limiter.take("a", 1, now=0.1) == 0.0  # one token back after 1/rate
    assert limiter.take("b", 5, now=0.1) == 0.0  # another key, its own bucket
    assert limiter.refused == 1


def test_a_batch_bigger_than_the_burst_goes_when_full_and_leaves_a_debt() -> None:
    limiter = RateLimiter(rate=10, burst=5)
    assert limiter.take("a", 50, now=0.0) == 0.0
    # 45 owed: 4.6 s until one token is back.
    assert limiter.take("a", 1, now=1.0) == pytest.approx(3.6)
    assert limiter.take("a", 1, now=4.6) == 0.0


def test_buckets_are_bounded() -> None:
    limiter = RateLimiter(rate=1, burst=1)
    for i in range(MAX_BUCKETS + 10):
        limiter.take(f"k{i}", 1, now=0.0)
    assert len(limiter.buckets) == MAX_BUCKETS


@given(st.lists(st.tuples(st.integers(1, 20), st.floats(0, 2)), max_size=60))
def test_a_bucket_never_lets_more_than_burst_plus_rate_times_time(takes: list[tuple[int, float]]) -> None:
    rate, burst = 10.0, 5
    limiter = RateLimiter(rate, burst)
    now = 0.0
    let_through = 0
    for n, step in takes:
        now += step
        if limiter.take("k", n, now=now) == 0.0:
            let_through += n
            # What went through is paid for, but for one batch at most (the debt rule).
            assert let_through <= burst + rate * now + n


def test_the_client_address_comes_from_x_forwarded_for_only_through_trusted_proxies() -> None:
    auth = Auth(Settings(trusted_proxies="127.0.0.1, 10.0.0.0/8"))
    xff = [(b"x-forwarded-for", b"198.51.100.1, 203.0.113.5, 10.1.2.3")]
    # Right to left, the first hop that is not a trusted proxy: 203.0.113.5.
    assert auth.client_address(scope("127.0.0.1", xff)) == "203.0.113.5"
    # An untrusted peer's header is the peer's word only.
    assert auth.client_address(scope("192.0.2.50", xff)) == "192.0.2.50"
    assert auth.client_address(scope("127.0.0.1")) == "127.0.0.1"
    plain = Auth(Settings())
    assert plain.client_address(scope("127.0.0.1", xff)) == "127.0.0.1"


def test_local_means_loopback_or_a_unix_socket_with_no_proxy_header() -> None:
    auth = Auth(Settings())
    assert auth.is_local(scope("127.0.0.1"))
    assert auth.is_local(scope("::1"))
    assert auth.is_local(scope(None))
    assert not auth.is_local(scope("10.0.0.1"))
    assert not auth.is_local(scope("127.0.0.1", [(b"X-Forwarded-For", b"1.2.3.4")]))
    assert not auth.is_local(scope("127.0.0.1", [(b"forwarded", b"for=1.2.3.4")]))


def test_globs_match_whole_names() -> None:
    union = glob_union(["orders-*", "user-42"])
    assert union is not None
    assert union.match("orders-1")
    assert union.match("user-42")
    assert not union.match("user-420")
    assert not union.match("x-orders-1")
    assert glob_union([]) is None


def test_query_string_tokens_are_redacted_from_log_lines() -> None:
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", "/channels/u/stream?access_token=eyJ.secret.sig&x=1", "1.1", 200),
        None,
    )
    assert RedactTokens().filter(record)
    line = record.getMessage()
    assert "eyJ.secret.sig" not in line
    assert "access_token=REDACTED&x=1" in line
