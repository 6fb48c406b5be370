"""The shipped nginx.conf: what it must say for SSE, and that nginx accepts it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hub.settings import Settings
from tests.support.nginx import NGINX_CONF, Directive, Nginx, parse_config, render_config

TEXT = NGINX_CONF.read_text()
ROOT = parse_config(TEXT)
HTTP = ROOT.one("http")
SERVER = HTTP.one("server")


def location(pattern: str) -> Directive:
    found = [d for d in SERVER.find("location") if d.args[-1] == pattern]
    assert len(found) == 1, f"no location {pattern!r}"
    return found[0]


STREAMS = location("^/(channels/[^/]+/)?stream$")
PUBLISH = location("^/channels/[^/]+/events$")


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m|h)?", value)
    assert match, value
    return int(match.group(1)) * {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[match.group(2)]


def size(value: str) -> int:
    match = re.fullmatch(r"(\d+)([kmg]?)", value.lower())
    assert match, value
    return int(match.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[match.group(2)]


def headers_sent(block: Directive) -> dict[str, str]:
    return {d.args[0].lower(): d.args[1] for d in block.find("proxy_set_header")}


def test_the_stream_location_matches_both_stream_endpoints_and_nothing_else() -> None:
    pattern = re.compile(STREAMS.args[-1])
    assert pattern.search("/channels/news/stream")
    assert pattern.search("/stream")
    assert not pattern.search("/channels/news/events")
    assert not pattern.search("/channels/a/b/stream")


def test_streams_are_proxied_unbuffered_uncached_and_uncompressed() -> None:
    assert STREAMS.value("proxy_pass") == ["http://ssehub"]
    assert STREAMS.value("proxy_buffering") == ["off"]
    assert STREAMS.value("proxy_cache") == ["off"]
    assert STREAMS.value("gzip") == ["off"]


def test_the_read_timeout_is_well_above_the_default_heartbeat() -> None:
    timeout = seconds(STREAMS.value("proxy_read_timeout")[0])
    assert timeout >= 4 * Settings().heartbeat_seconds


def test_streams_set_no_headers_of_their_own_so_they_inherit_the_http_ones() -> None:
    # One proxy_set_header in a block discards every inherited one.
    assert STREAMS.find("proxy_set_header") == []
    assert PUBLISH.find("proxy_set_header") == []


def test_upstream_connections_are_http11_without_a_connection_header() -> None:
    assert HTTP.value("proxy_http_version") == ["1.1"]
    assert headers_sent(HTTP)["connection"] == ""


def test_client_address_and_request_id_are_passed_on() -> None:
    sent = headers_sent(HTTP)
    assert sent["x-forwarded-for"] == "$proxy_add_x_forwarded_for"
    request_id = HTTP.one("map")
    assert request_id.args == ["$http_x_request_id", sent["x-request-id"]]
    assert [d.args for d in request_id.block or []] == [["$http_x_request_id"], ["$request_id"]]


def test_the_publish_body_limit_matches_the_hubs_and_answers_in_its_json_shape() -> None:
    limit = size(PUBLISH.value("client_max_body_size")[0])
    assert limit == Settings().max_body_bytes
    assert PUBLISH.value("error_page") == ["413", "=", "@body_too_large"]
    body = location("@body_too_large").value("return")
    assert body[0] == "413"
    assert f"limit of {limit} bytes" in body[1]


def test_there_is_an_http2_tls_listener_with_a_certificate_marked_to_change() -> None:
    listens = [d.args for d in SERVER.find("listen")]
    assert any("ssl" in args and "http2" in args for args in listens)
    for name in ("ssl_certificate", "ssl_certificate_key"):
        line = SERVER.one(name).line
        assert "CHANGE" in "".join(TEXT.splitlines()[line - 4 : line - 1])


def test_the_upstream_nodes_are_marked_to_change_and_balanced_by_open_connections() -> None:
    upstream = HTTP.one("upstream")
    servers = upstream.find("server")
    assert len(servers) >= 2
    assert "CHANGE: your hub nodes" in TEXT
    assert upstream.find("least_conn")
    assert upstream.find("zone")


def test_worker_limits_are_sized_for_tens_of_thousands_of_streams() -> None:
    connections = int(ROOT.one("events").value("worker_connections")[0])
    # Each stream holds two connections: client and upstream.
    assert connections // 2 >= 10_000
    assert int(ROOT.value("worker_rlimit_nofile")[0]) >= connections


SSE_SPECIFIC = [
    (ROOT, "worker_rlimit_nofile"),
    (ROOT.one("events"), "worker_connections"),
    (HTTP.one("upstream"), "least_conn"),
    (HTTP.one("upstream"), "keepalive"),
    (HTTP, "proxy_http_version"),
    (HTTP, "proxy_connect_timeout"),
    (SERVER, "http2_max_concurrent_streams"),
    (STREAMS, "proxy_buffering"),
    (STREAMS, "proxy_cache"),
    (STREAMS, "proxy_read_timeout"),
    (STREAMS, "gzip"),
    (STREAMS, "proxy_next_upstream"),
    (PUBLISH, "client_max_body_size"),
]


def comment_above(line: int) -> bool:
    return TEXT.splitlines()[line - 2].strip().startswith("#")


@pytest.mark.parametrize(("block", "name"), SSE_SPECIFIC, ids=[name for _, name in SSE_SPECIFIC])
def test_every_sse_specific_directive_has_a_comment_right_above_it(block: Directive, name: str) -> None:
    assert comment_above(block.one(name).line), f"{name} at line {block.one(name).line}"


@pytest.mark.parametrize("header", ["Connection", "X-Forwarded-For", "X-Request-ID"])
def test_every_sse_specific_header_has_a_comment_right_above_it(header: str) -> None:
    (line,) = [d.line for d in HTTP.find("proxy_set_header") if d.args[0] == header]
    assert comment_above(line), f"proxy_set_header {header} at line {line}"


def test_every_listener_has_a_comment_right_above_it() -> None:
    lines = [d.line for d in SERVER.find("listen")]
    assert lines
    assert all(comment_above(line) for line in lines), lines


def test_rendering_changes_only_ports_nodes_and_paths(tmp_path: Path) -> None:
    rendered = render_config(
        TEXT,
        workdir=tmp_path,
        upstreams=["127.0.0.1:1001", "127.0.0.1:1002", "127.0.0.1:1003"],
        http_port=2001,
        https_port=2002,
        cert=tmp_path / "c.pem",
        key=tmp_path / "k.pem",
    )
    tree = parse_config(rendered)
    http = tree.one("http")
    assert [d.args[0] for d in http.one("upstream").find("server")] == [
        "127.0.0.1:1001",
        "127.0.0.1:1002",
        "127.0.0.1:1003",
    ]
    assert [d.args for d in http.one("server").find("listen")] == [
        ["127.0.0.1:2001", "backlog=4096"],
        ["127.0.0.1:2002", "ssl", "http2", "backlog=4096"],
    ]
    # Everything else is the shipped file's, word for word.
    assert unchanged(tree) == unchanged(ROOT)


def unchanged(tree: Directive) -> list[tuple[str, ...]]:
    """The directives, minus those the rendering may change."""
    changed = {"server", "listen", "pid", "error_log", "access_log", "ssl_certificate", "ssl_certificate_key"}
    out: list[tuple[str, ...]] = []
    for d in tree.block or []:
        if (d.name in changed and d.block is None) or d.name.endswith("_temp_path"):
            continue
        out.append((d.name, *d.args))
        out.extend(unchanged(d))
    return out


def test_nginx_accepts_the_shipped_config() -> None:
    nginx = Nginx(["127.0.0.1:1", "127.0.0.1:2"])
    result = nginx.check()
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
