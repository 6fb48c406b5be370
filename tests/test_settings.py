from __future__ import annotations

import logging
import resource

import pytest
from pydantic import ValidationError

from hub.server import raise_nofile_limit
from hub.settings import Settings, unknown_variables


def test_env_is_read_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUB_PORT", "9001")
    monkeypatch.setenv("HUB_HISTORY_SIZE", "5")
    assert Settings().port == 9001
    assert Settings(port=9002).port == 9002
    assert Settings().history_size == 5


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HUB_HEARTBEAT_SECONDS", "0"),
        ("HUB_RETRY_MS", "-1"),
        ("HUB_HISTORY_SIZE", "many"),
        ("HUB_REDIS_URL", "http://localhost"),
        ("HUB_LOG_LEVEL", "loud"),
        ("HUB_MAX_CONNECTIONS", "0"),
    ],
)
def test_bad_values_are_refused_by_name(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as info:
        Settings()
    assert name.removeprefix("HUB_").lower() in str(info.value)


def test_unknown_hub_variables_are_found() -> None:
    env = {"HUB_HEARTBEAT_SECOND": "5", "HUB_PORT": "1", "HUB_URL": "x", "PATH": "/bin"}
    assert unknown_variables(env) == ["HUB_HEARTBEAT_SECOND"]


def test_empty_redis_url_means_the_memory_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUB_REDIS_URL", "")
    assert Settings().redis_url is None


def test_nofile_limit_is_raised_to_the_hard_limit_and_a_shortfall_warned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
        with caplog.at_level(logging.WARNING, logger="hub.server"):
            got = raise_nofile_limit(10)
        assert got == hard or hard == resource.RLIM_INFINITY
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard
        assert not caplog.records
        with caplog.at_level(logging.WARNING, logger="hub.server"):
            raise_nofile_limit(hard + 1)
        assert "HUB_MAX_CONNECTIONS" in caplog.text
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
