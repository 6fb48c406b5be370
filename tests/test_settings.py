from __future__ import annotations

import logging
import resource
from pathlib import Path

import pytest
from pydantic import ValidationError

from hub.server import raise_nofile_limit
from hub.settings import Settings, default_text, env_var, flag, unknown_variables

README = Path(__file__).resolve().parents[1] / "README.md"


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


def test_every_setting_is_described() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description, name
        assert "|" not in field.description, name  # it is a cell of the README's table


def test_names_and_defaults_as_people_read_them() -> None:
    assert (env_var("max_pending_bytes"), flag("max_pending_bytes")) == (
        "HUB_MAX_PENDING_BYTES",
        "--max-pending-bytes",
    )
    assert default_text("redis_url") == "unset"
    assert default_text("redis_timeout") == "5"
    assert default_text("max_body_bytes") == "1048576"
    assert default_text("cors_origins") == "*"
    assert default_text("log_level") == "info"


def readme_settings_table() -> list[list[str]]:
    """The rows of the first table under README.md's "## Settings", one list of cells each."""
    section = README.read_text(encoding="utf-8").split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        assert line.endswith("|"), line
        table.append([cell.strip() for cell in line[1:-1].split("|")])
    header, rule, *rows = table
    assert header == ["variable", "flag", "default", "meaning"]
    assert all(set(cell) <= {"-", ":"} for cell in rule)
    return rows


def test_readme_settings_table_is_exactly_the_settings() -> None:
    """Every setting, in order, with its variable, flag, default and meaning; nothing else."""
    rows = readme_settings_table()
    assert all(len(row) == 4 for row in rows), rows
    variable, flag_, default, meaning = (list(column) for column in zip(*rows, strict=True))
    names = list(Settings.model_fields)
    assert variable == [f"`HUB_{name.upper()}`" for name in names]
    assert flag_ == [f"`--{name.replace('_', '-')}`" for name in names]
    # A default is code (`1048576`), but for "unset".
    assert default == [
        "unset" if default_text(name) == "unset" else f"`{default_text(name)}`" for name in names
    ]
    # The meaning is the field's description; the README may set parts of it as code.
    assert [cell.replace("`", "") for cell in meaning] == [
        Settings.model_fields[name].description for name in names
    ]
