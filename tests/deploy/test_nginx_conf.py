"""The shipped nginx.conf: what it must say for SSE, and that nginx accepts it."""

from __future__ import annotations

import ipaddress
import json
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
    (request_id,) = [m for m in HTTP.find("map") if m.args[0] == "$http_x_request_id"]
    assert request_id.args == ["$http_x_request_id", sent["x-request-id"]]
    assert [d.args for d in request_id.block or []] == [["$http_x_request_id"], ["$request_id"]]


def test_the_publish_body_limit_matches_the_hubs_and_answers_in_its_json_shape() -> None:
    limit = size(PUBLISH.value("client_max_body_size")[0])
    assert limit == Settings().max_body_bytes
    assert ["413", "=", "@body_too_large"] in [d.args for d in PUBLISH.find("error_page")]
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


# -- safe defaults: logs, timeouts, limits, who may reach what ------------------------------

ADMIN = location("/")
HEALTH = [location("/healthz"), location("/readyz")]
# Loopback and the private ranges (RFC 1918, RFC 4193), exactly.
INTERNAL = {"127.0.0.0/8", "::1", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"}


def every(tree: Directive, name: str) -> list[Directive]:
    """Every ``name`` directive anywhere under ``tree``."""
    found = []
    for d in tree.block or []:
        if d.name == name:
            found.append(d)
        found.extend(every(d, name))
    return found


def comment_block_above(line: int) -> str:
    """The run of comment lines right above ``line``."""
    lines = TEXT.splitlines()[: line - 1]
    block: list[str] = []
    while lines and lines[-1].strip().startswith("#"):
        block.insert(0, lines.pop().strip())
    return " ".join(block)


def returned(name: str) -> tuple[str, str]:
    """The status and body of a named location's ``return`` (nginx's \\n unescaped)."""
    status, body = location(name).value("return")
    return status, body.replace("\\n", "\n")


def test_the_access_log_never_prints_a_query_string() -> None:
    # ?access_token= carries a subscriber's JWT: $request (the whole request
    # line), $request_uri, $args and $arg_* would all write it to disk.
    (log_format,) = every(ROOT, "log_format")
    assert log_format.args[0] == "ssehub"
    fields = "".join(log_format.args[1:])
    variables = set(re.findall(r"\$(\w+)", fields))
    assert not variables & {"request", "request_uri", "args", "query_string", "is_args"}, variables
    assert not [v for v in variables if v.startswith("arg_")], variables
    assert '"$request_method $uri $server_protocol"' in fields
    logs = every(ROOT, "access_log")
    assert logs
    assert all(d.args[1:2] == ["ssehub"] or d.args == ["off"] for d in logs), [d.args for d in logs]


def test_request_heads_and_bodies_that_trickle_in_are_cut_within_seconds() -> None:
    assert seconds(HTTP.value("client_header_timeout")[0]) <= 10
    assert seconds(HTTP.value("client_body_timeout")[0]) <= 30


def test_open_streams_are_limited_per_client_address_with_a_429() -> None:
    zone = HTTP.one("limit_conn_zone")
    assert zone.args[0] == "$binary_remote_addr"
    name = zone.args[1].removeprefix("zone=").split(":")[0]
    limit = STREAMS.value("limit_conn")
    assert limit[0] == name
    # Above what tests/integration/test_nginx_http2.py opens from one address
    # (40), and what a page behind a NAT with others may need.
    assert 64 <= int(limit[1]) <= 10_000
    assert HTTP.value("limit_conn_status") == ["429"]
    # Only streams are counted: a publish or a probe never competes with them.
    assert [d for d in every(SERVER, "limit_conn") if d is not STREAMS.one("limit_conn")] == []


def test_a_refused_stream_gets_json_or_for_an_event_source_a_200_with_retry() -> None:
    assert STREAMS.value("error_page") == ["429", "=", "$ssehub_streams_refused"]
    (refused,) = [m for m in HTTP.find("map") if m.args[1] == "$ssehub_streams_refused"]
    assert refused.args[0] == "$http_accept"
    targets = {d.name: d.args[0] for d in refused.block or []}
    assert targets == {"default": "@too_many_streams", "~text/event-stream": "@come_back_later"}
    status, body = returned("@too_many_streams")
    assert (status, json.loads(body)["error"]) == ("429", "too_many_streams")
    come_back = location("@come_back_later")
    assert come_back.value("default_type")[0].startswith("text/event-stream")
    status, body = returned("@come_back_later")
    assert status == "200"
    assert re.match(r"retry: \d+\n", body)


def test_publishes_are_rate_limited_per_client_address_with_the_hubs_429() -> None:
    zone = HTTP.one("limit_req_zone")
    assert zone.args[0] == "$binary_remote_addr"
    name = zone.args[1].removeprefix("zone=").split(":")[0]
    rate = re.fullmatch(r"rate=(\d+)r/s", zone.args[2])
    assert rate, zone.args
    limit = dict(arg.partition("=")[::2] for arg in PUBLISH.value("limit_req"))
    assert limit["zone"] == name
    assert "nodelay" in limit  # a burst is served at once, not queued behind a delay
    assert int(limit["burst"]) >= int(rate.group(1))
    assert HTTP.value("limit_req_status") == ["429"]
    assert ["429", "=", "@rate_limited"] in [d.args for d in PUBLISH.find("error_page")]
    rate_limited = location("@rate_limited")
    status, body = returned("@rate_limited")
    assert (status, json.loads(body)["error"]) == ("429", "rate_limited")
    assert ["Retry-After", "1", "always"] in [d.args for d in rate_limited.find("add_header")]


@pytest.mark.parametrize("block", [PUBLISH, ADMIN], ids=["publish", "admin"])
def test_publishes_and_admin_endpoints_are_only_for_loopback_and_private_networks(block: Directive) -> None:
    rules = [d for d in block.block or [] if d.name in ("allow", "deny")]
    # nginx takes the first rule that matches: every allow, then deny all.
    assert (rules[-1].name, rules[-1].args) == ("deny", ["all"])
    allowed = [d.args[0] for d in rules[:-1]]
    assert all(d.name == "allow" for d in rules[:-1])
    assert set(allowed) == INTERNAL
    for network in allowed:
        net = ipaddress.ip_network(network)
        assert net.is_private or net.is_loopback, network
    assert ["403", "=", "@forbidden"] in [d.args for d in block.find("error_page")]
    status, body = returned("@forbidden")
    assert (status, json.loads(body)["error"]) == ("403", "forbidden")


def test_streams_and_health_probes_are_open_to_every_address() -> None:
    # Nothing at the http or server level that locations would inherit.
    for block in (HTTP, SERVER, STREAMS, *HEALTH):
        assert block.find("allow") == [], block.args
        assert block.find("deny") == [], block.args
    for probe in HEALTH:
        assert probe.args[0] == "="
        assert probe.value("proxy_pass") == ["http://ssehub"]


def test_every_proxied_location_is_a_stream_a_publish_a_probe_or_internal() -> None:
    proxied = [d for d in SERVER.find("location") if d.find("proxy_pass")]
    open_to_all = [STREAMS, *HEALTH]
    for block in proxied:
        assert block in open_to_all or ["all"] in [d.args for d in block.find("deny")], block.args


SAFETY = [
    (HTTP, "client_header_timeout"),
    (HTTP, "limit_conn_zone"),
    (HTTP, "limit_req_zone"),
    (HTTP, "limit_conn_status"),
    (STREAMS, "limit_conn"),
    (PUBLISH, "limit_req"),
]


@pytest.mark.parametrize(("block", "name"), SAFETY, ids=[name for _, name in SAFETY])
def test_every_limit_has_a_comment_right_above_it(block: Directive, name: str) -> None:
    assert comment_above(block.one(name).line), f"{name} at line {block.one(name).line}"


@pytest.mark.parametrize(
    ("block", "name"),
    [(HTTP, "limit_req_zone"), (STREAMS, "limit_conn"), (PUBLISH, "limit_req")],
    ids=["limit_req_zone", "limit_conn", "limit_req"],
)
def test_every_limit_says_why_and_is_marked_to_tune(block: Directive, name: str) -> None:
    assert "CHANGE" in comment_block_above(block.one(name).line)


@pytest.mark.parametrize("block", [PUBLISH, ADMIN], ids=["publish", "admin"])
def test_the_allow_lists_are_commented_and_marked_to_change(block: Directive) -> None:
    first = block.find("allow")[0].line
    comment = comment_block_above(first)
    assert "CHANGE" in comment
    if block is PUBLISH:
        assert "HUB_PUBLISH_TOKENS" in comment
