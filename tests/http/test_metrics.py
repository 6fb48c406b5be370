"""``GET /metrics``: every series, read at scrape time, named as Prometheus wants."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hub.core.hub import DELAY_SAMPLE, Hub
from hub.core.ids import parse_id
from hub.core.subscriber import Resume, Subscriber
from hub.http.app import HubApp, create_app
from hub.settings import Settings
from tests.core.helpers import RecordingSink
from tests.http.conftest import http

pytestmark = pytest.mark.anyio

README = Path(__file__).resolve().parents[2] / "README.md"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(app: HubApp) -> Samples:
    async with http(app) as client:
        r = await client.get("/metrics")
    assert r.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def hub_of(app: HubApp) -> Hub:
    assert app.hub is not None
    return app.hub


async def test_publishes_are_counted_by_status_with_their_events_and_latency(app: HubApp) -> None:
    async with http(app) as client:
        for n in range(3):
            assert (await client.post("/channels/c/events", json={"data": n})).status_code == 202
        batch = [{"data": 1}, {"data": 2}]
        assert (await client.post("/channels/c/events", json=batch)).status_code == 202
        assert (await client.post("/channels/c/events", json={"nope": 1})).status_code == 400
        big = {"data": "x" * (Settings().max_event_bytes + 1)}
        assert (await client.post("/channels/c/events", json=big)).status_code == 413
    m = await scrape(app)
    assert m[("ssehub_publishes_total", (("code", "202"),))] == 4
    assert m[("ssehub_publishes_total", (("code", "400"),))] == 1
    assert m[("ssehub_publishes_total", (("code", "413"),))] == 1
    assert m[("ssehub_events_published_total", ())] == 5
    assert m[("ssehub_publish_duration_seconds_count", ())] == 6
    assert m[("ssehub_publish_duration_seconds_bucket", (("le", "+Inf"),))] == 6
    assert 0 < m[("ssehub_publish_duration_seconds_sum", ())] < 6


async def test_bytes_replays_and_gaps_by_cause(app: HubApp) -> None:
    hub = hub_of(app)
    async with http(app) as client:
        ids = [(await client.post("/channels/r/events", json={"data": n})).json()["id"] for n in range(3)]
    resumed, malformed, too_old, live = (RecordingSink() for _ in range(4))
    await hub.attach(Subscriber(["r"], resumed), [Resume(after=parse_id(ids[0]))])
    await hub.attach(Subscriber(["r"], malformed), [Resume(after=None, requested="junk", malformed=True)])
    await hub.attach(Subscriber(["r"], too_old), [Resume(after=(1, 0), requested="1-0")])
    await hub.attach(Subscriber(["r"], live), [None])
    async with http(app) as client:
        await client.post("/channels/r/events", json={"data": "live"})
    hub.flush()
    m = await scrape(app)
    assert m[("ssehub_replays_total", ())] == 3
    assert m[("ssehub_replayed_events_total", ())] == 2 + 3 + 3
    assert m[("ssehub_gaps_total", (("cause", "malformed"),))] == 1
    assert m[("ssehub_gaps_total", (("cause", "too_old"),))] == 1
    assert m[("ssehub_gaps_total", (("cause", "broker"),))] == 0
    written = sum(len(s.data) for s in (resumed, malformed, too_old, live))
    assert m[("ssehub_sent_bytes_total", ())] == written
    assert m[("ssehub_streams", ())] == 4
    assert m[("ssehub_deliveries_total", ())] == 4


async def test_delay_is_sampled_once_in_n_events_at_the_flush(app: HubApp) -> None:
    hub = hub_of(app)
    await hub.attach(Subscriber(["d"], RecordingSink()), [None])
    async with http(app) as client:
        for n in range(DELAY_SAMPLE * 2):
            await client.post("/channels/d/events", json={"data": n})
            hub.flush()
    m = await scrape(app)
    assert m[("ssehub_delivery_delay_seconds_count", ())] == 2
    assert m[("ssehub_delivery_delay_seconds_sum", ())] < 1


async def test_channels_named_by_globs_are_broken_out_by_glob_never_by_name() -> None:
    app = create_app(Settings(metrics_channels="orders.*,chat"))
    await app.start()
    try:
        await hub_of(app).attach(Subscriber(["orders.eu"], RecordingSink()), [None])
        await hub_of(app).attach(Subscriber(["orders.us"], RecordingSink()), [None])
        async with http(app) as client:
            for channel in ("orders.eu", "orders.us", "orders.us", "chat", "other"):
                await client.post(f"/channels/{channel}/events", json={"data": 1})
        m = await scrape(app)
    finally:
        await app.stop()
    assert m[("ssehub_glob_events_published_total", (("glob", "orders.*"),))] == 3
    assert m[("ssehub_glob_events_published_total", (("glob", "chat"),))] == 1
    assert m[("ssehub_glob_streams", (("glob", "orders.*"),))] == 2
    assert m[("ssehub_glob_streams", (("glob", "chat"),))] == 0
    assert not [key for key in m if any(label == "channel" for label, _ in key[1])]


async def test_every_series_is_named_by_the_conventions_and_explained(app: HubApp) -> None:
    async with http(app) as client:
        await client.post("/channels/c/events", json={"data": 1})
        text = (await client.get("/metrics")).text
    families = list(text_string_to_metric_families(text))
    names = {f.name for f in families}
    # The process's own figures (the default collectors) are there too.
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "python_info"} <= names
    for family in families:
        assert family.documentation, family.name
        assert re.fullmatch(r"[a-z][a-z0-9_]*", family.name), family.name
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), family.name
        if family.name.startswith("ssehub_"):
            assert not family.name.endswith(("_ms", "_milliseconds", "_kb")), family.name  # base units
            assert all("channel" not in s.labels for s in family.samples), family.name


async def test_the_readme_lists_every_series_of_the_hub(app: HubApp) -> None:
    async with http(app) as client:
        text = (await client.get("/metrics")).text
    served = {f.name for f in text_string_to_metric_families(text) if f.name.startswith("ssehub_")}
    # Series only some setups have: the Redis broker's, the connection guard's (under ssehub serve),
    # the globs', the workers'.
    served |= {
        "ssehub_broker_invalid_messages",
        "ssehub_redis_messages",
        "ssehub_redis_reconnects",
        "ssehub_redis_outage_seconds",
        "ssehub_connections",
        "ssehub_header_timeouts",
        "ssehub_headers_too_large",
        "ssehub_connections_evicted",
        "ssehub_connections_refused",
        "ssehub_invalid_requests",
        "ssehub_glob_events_published",
        "ssehub_glob_streams",
        "ssehub_workers",
    }
    section = README.read_text(encoding="utf-8").split("\n### Metrics\n", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `(ssehub_[a-z0-9_]+)", section, re.MULTILINE))
    with_suffix = {name.removesuffix("_total") for name in listed}
    assert served - with_suffix == set(), "series the README's Metrics table does not list"
    assert with_suffix - served == set(), "the README lists series the hub does not serve"
