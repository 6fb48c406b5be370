"""Idempotency-Key on POST /channels/{c}/events with the memory broker, in-process."""

from __future__ import annotations

import pytest

from hub.http.app import HubApp
from tests.http.conftest import http

pytestmark = pytest.mark.anyio


async def test_a_publish_sent_again_with_its_key_gets_the_same_ids_and_is_kept_once(app: HubApp) -> None:
    async with http(app) as client:
        url = "/channels/c/events"
        body = [{"data": 1}, {"data": "two", "event": "t"}]
        first = await client.post(url, json=body, headers={"Idempotency-Key": "batch-1"})
        again = await client.post(url, json=body, headers={"Idempotency-Key": "batch-1"})
        assert first.status_code == again.status_code == 202
        assert again.json() == first.json()
        text = await client.post(
            url, content="hi", headers={"Content-Type": "text/plain", "Idempotency-Key": "t"}
        )
        assert text.status_code == 202
        conflict = await client.post(url, json={"data": 2}, headers={"Idempotency-Key": "batch-1"})
        assert conflict.status_code == 422
        assert conflict.json()["error"] == "idempotency_conflict"
        bad = await client.post(url, json={"data": 2}, headers={"Idempotency-Key": "x" * 256})
        assert (bad.status_code, bad.json()["error"]) == (400, "bad_request")
        assert app.hub is not None
        history = await app.hub.broker.history("c", None)
        assert [e.id for e in history.events] == [*first.json()["ids"], text.json()["id"]]
