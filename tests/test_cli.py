"""The ``ssehub`` command: against a running hub, and ``serve``'s settings."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tomllib
import typing
import uuid

import httpx
import pytest

import hub.server
from hub.cli import main
from hub.settings import Settings, default_text
from tests.support.procs import ROOT, HubProcess, wait_until

# Tests that start processes are marked one by one; the settings tests below run in-process.
integration = pytest.mark.integration


def ssehub(
    *args: str, env: dict[str, str] | None = None, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hub", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


@integration
def test_publish_then_tail_replays_and_follows(hub_server: HubProcess) -> None:
    channel = "cli-" + uuid.uuid4().hex[:8]
    first = ssehub("publish", channel, '{"hello": "world"}', "--url", hub_server.url)
    assert first.returncode == 0, first.stderr
    assert channel in first.stdout
    ssehub("publish", channel, "second line", "--text", "--event", "note", "--url", hub_server.url)
    tail = ssehub("tail", channel, "--last-event-id", "earliest", "--count", "2", "--url", hub_server.url)
    assert tail.returncode == 0, tail.stderr
    lines = tail.stdout.splitlines()
    assert lines[0].endswith('{"hello":"world"}')
    assert lines[1].endswith("[note] second line")


@integration
def test_tail_prints_events_as_they_arrive(hub_server: HubProcess) -> None:
    channel = "cli-" + uuid.uuid4().hex[:8]
    proc = subprocess.Popen(
        [sys.executable, "-m", "hub", "tail", channel, "--raw", "--count", "1", "--url", hub_server.url],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        wait_until(
            lambda: any(
                c["channel"] == channel and c["subscribers"] == 1
                for c in httpx.get(f"{hub_server.url}/channels?prefix={channel}").json()["channels"]
            ),
            what="tail to subscribe",
        )
        assert ssehub("publish", channel, "[1, 2]", "--url", hub_server.url).returncode == 0
        out, _ = proc.communicate(timeout=10)
        assert "retry: 3000\n" in out
        assert "data: [1,2]\n\n" in out
        assert proc.returncode == 0
    finally:
        proc.kill()


@integration
def test_publish_reports_a_refused_event(hub_server: HubProcess) -> None:
    result = ssehub("publish", "bad name", "1", "--url", hub_server.url)
    assert result.returncode == 1
    assert "bad_channel" in result.stdout


@integration
def test_serve_refuses_a_bad_setting_with_a_clear_message() -> None:
    result = ssehub("serve", env={"HUB_HEARTBEAT_SECONDS": "soon"})
    assert result.returncode == 2
    assert "HUB_HEARTBEAT_SECONDS" in result.stderr


@integration
def test_serve_refuses_a_misspelt_setting() -> None:
    result = ssehub("serve", env={"HUB_HEARTBEAT_SECOND": "5"})
    assert result.returncode == 2
    assert "HUB_HEARTBEAT_SECOND" in result.stderr


@integration
def test_serve_refuses_workers_with_the_memory_broker() -> None:
    result = ssehub("serve", "--workers", "2", "--port", "0", env={"HUB_REDIS_URL": ""})
    assert result.returncode == 2
    assert "--redis-url" in result.stderr


# -- serve's settings ------------------------------------------------------------------------


def squashed(text: str) -> str:
    """Without whitespace: help text is wrapped at the terminal's width (and after hyphens)."""
    return "".join(text.split())


@integration
def test_serve_help_lists_every_setting_with_its_flag_variable_default_and_meaning() -> None:
    result = ssehub("serve", "--help")
    assert result.returncode == 0, result.stderr
    out = squashed(result.stdout)
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        variable = "HUB_" + name.upper()
        assert field.description
        entry = squashed(f"{field.description} [{variable}; default: {default_text(name)}]")
        # The flag, its value's metavar, then its meaning, variable and default, together.
        assert re.search(re.escape(flag) + r"(BOOL|INT|NUMBER|TEXT|\{[a-z,]+\})" + re.escape(entry), out), (
            name
        )
    assert "--log-level{critical,error,warning,info,debug,trace}" in out
    assert "--max-pending-bytesINTbytesasubscribermayfallbehind" in out
    assert "[HUB_REDIS_URL;default:unset]" in out
    assert "[HUB_REDIS_TIMEOUT;default:5]" in out


@integration
def test_version_prints_the_package_version() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    result = ssehub("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"ssehub {project['version']}\n"
    assert project["name"] == "ssehub"


@integration
def test_serve_names_a_bad_environment_value_in_one_line() -> None:
    result = ssehub("serve", env={"HUB_HISTORY_SIZE": "abc"})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "ssehub: HUB_HISTORY_SIZE=abc: Input should be a valid integer, unable to parse string as an integer"
    ]


@integration
def test_serve_names_a_bad_flag_value_in_one_line() -> None:
    result = ssehub("serve", "--history-size", "abc", env={"HUB_HISTORY_SIZE": "5"})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "ssehub: --history-size abc: Input should be a valid integer, unable to parse string as an integer"
    ]


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No HUB_* variable but the test's own."""
    for key in list(os.environ):
        if key.upper().startswith("HUB_"):
            monkeypatch.delenv(key)
    return monkeypatch


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """The settings ``ssehub serve`` would run the hub with; nothing is started."""
    got: list[Settings] = []

    def serve(settings: Settings) -> int:
        got.append(settings)
        return 0

    monkeypatch.setattr(hub.server, "serve", serve)
    return got


def test_flags_given_win_over_the_environment(environ: pytest.MonkeyPatch, served: list[Settings]) -> None:
    environ.setenv("HUB_PORT", "9001")
    environ.setenv("HUB_HISTORY_SIZE", "5")
    environ.setenv("HUB_LOG_LEVEL", "debug")
    environ.setenv("HUB_STALL_SECONDS", "soon")  # bad, but the flag replaces it
    assert main(["serve", "--port", "9002", "--log-level", "warning", "--stall-seconds", "2.5"]) == 0
    [settings] = served
    assert (settings.port, settings.log_level, settings.stall_seconds) == (9002, "warning", 2.5)
    assert settings.history_size == 5  # no flag: the variable's value
    assert settings.heartbeat_seconds == 15.0  # neither: the default


def another_value(name: str) -> tuple[str, object]:
    """A valid value for setting ``name`` other than its default: as typed, and as parsed."""
    field = Settings.model_fields[name]
    default = field.default
    if typing.get_origin(field.annotation) is typing.Literal:
        choice = next(c for c in typing.get_args(field.annotation) if c != default)
        return choice, choice
    if name == "redis_url":
        return "redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"
    if name == "jwt_secret":
        return "k" * 32, "k" * 32
    if isinstance(default, bool):
        return str(not default).lower(), not default
    if isinstance(default, str) or (default is None and name != "redis_url"):
        return "x", "x"
    assert isinstance(default, int | float), name
    return str(default + 1), default + 1


@pytest.mark.parametrize("name", list(Settings.model_fields))
def test_every_setting_has_a_flag_that_sets_it(
    environ: pytest.MonkeyPatch, served: list[Settings], name: str
) -> None:
    typed, parsed = another_value(name)
    assert parsed != Settings.model_fields[name].default
    if name == "private_channels":
        environ.setenv("HUB_JWT_SECRET", "k" * 32)  # private channels need a key to check tokens with
    if name.startswith("redis_c"):
        # TLS files need a TLS URL, and a client certificate comes with its key.
        environ.setenv("HUB_REDIS_URL", "rediss://127.0.0.1:6380/0")
        other = {"redis_client_cert": "HUB_REDIS_CLIENT_KEY", "redis_client_key": "HUB_REDIS_CLIENT_CERT"}
        if name in other:
            environ.setenv(other[name], "other.pem")
    assert main(["serve", "--" + name.replace("_", "-"), typed]) == 0
    assert getattr(served[0], name) == parsed


@pytest.mark.parametrize(
    ("argv", "env", "line"),
    [
        (["--port", "-1"], {}, "ssehub: --port -1: Input should be greater than or equal to 0"),
        (
            ["--log-level", "loud"],
            {"HUB_LOG_LEVEL": "debug"},
            "ssehub: --log-level loud: Input should be 'critical', 'error', 'warning', 'info', 'debug'"
            " or 'trace'",
        ),
        (
            [],
            {"HUB_REDIS_URL": "http://localhost"},
            "ssehub: HUB_REDIS_URL=http://localhost: must start with redis://, rediss://, unix://,"
            " redis+sentinel://, rediss+sentinel://, redis+cluster:// or rediss+cluster://",
        ),
        (
            ["--redis-url", "http://localhost"],
            {"HUB_REDIS_URL": "redis://localhost"},
            "ssehub: --redis-url http://localhost: must start with redis://, rediss://, unix://,"
            " redis+sentinel://, rediss+sentinel://, redis+cluster:// or rediss+cluster://",
        ),
        (
            ["--host", "::", "--max-pending-bytes", "1 MiB"],
            {},
            "ssehub: --max-pending-bytes '1 MiB': Input should be a valid integer, unable to parse string as"
            " an integer",
        ),
        (
            [],
            {"HUB_MAX_CONNECTIONS": "0"},
            "ssehub: HUB_MAX_CONNECTIONS=0: Input should be greater than or equal to 1",
        ),
    ],
)
def test_a_bad_value_is_named_as_the_user_set_it(
    environ: pytest.MonkeyPatch,
    served: list[Settings],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    env: dict[str, str],
    line: str,
) -> None:
    for key, value in env.items():
        environ.setenv(key, value)
    assert main(["serve", *argv]) == 2
    assert capsys.readouterr().err.splitlines() == [line]
    assert not served


def test_each_bad_value_gets_its_own_line(
    environ: pytest.MonkeyPatch, served: list[Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    environ.setenv("HUB_RETRY_MS", "-5")
    assert main(["serve", "--workers", "0"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "ssehub: --workers 0: Input should be greater than or equal to 1",
        "ssehub: HUB_RETRY_MS=-5: Input should be greater than or equal to 0",
    ]
    assert not served


def test_a_misspelt_variable_is_refused_even_with_good_flags(
    environ: pytest.MonkeyPatch, served: list[Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    environ.setenv("HUB_HISTORY_SIZ", "5")
    assert main(["serve", "--history-size", "5"]) == 2
    assert "HUB_HISTORY_SIZ" in capsys.readouterr().err
    assert not served


# -- "hub started" only once the socket is bound ---------------------------------------------


def serve_on_a_port_in_use() -> subprocess.CompletedProcess[str]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        return ssehub("serve", "--host", "127.0.0.1", "--port", port, env={"HUB_LOG_LEVEL": "info"})


@integration
def test_serve_logs_started_after_the_socket_is_bound() -> None:
    hub = HubProcess({"HUB_LOG_LEVEL": "info"})
    hub.start()
    try:
        log = hub.log()
        running = log.index("Uvicorn running on")
        assert log.index(f"hub started with the memory broker, listening on 127.0.0.1:{hub.port}") > running
    finally:
        hub.stop()


@integration
def test_serve_on_a_port_in_use_never_says_listening() -> None:
    result = serve_on_a_port_in_use()
    assert result.returncode != 0
    assert "address already in use" in result.stderr
    assert "listening on" not in result.stderr


@integration
def test_serve_on_a_port_in_use_never_says_started() -> None:
    result = serve_on_a_port_in_use()
    assert result.returncode != 0
    assert "hub started" not in result.stderr


@pytest.mark.integration
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signalled_stop_that_drains_exits_0_so_make_run_ends_quietly(sig: signal.Signals) -> None:
    hub = HubProcess()
    hub.start()
    assert hub.proc is not None
    hub.proc.send_signal(sig)
    assert hub.proc.wait(20) == 0, hub.log()
    assert "hub stopped" in hub.log()
    hub.stop()
