"""``deploy/grafana/ssehub.json``: a Grafana dashboard that loads as is, on series the hub serves."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "ssehub.json"
README = ROOT / "README.md"


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def readme_series() -> set[str]:
    section = README.read_text(encoding="utf-8").split("\n### Metrics\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(ssehub_[a-z0-9_]+)`", section, re.MULTILINE))


def test_it_is_a_whole_dashboard_with_its_data_source_chosen_on_load() -> None:
    d = dashboard()
    assert d["title"] == "ssehub"
    assert d["uid"] == "ssehub"
    assert isinstance(d["schemaVersion"], int)
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = d["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
        assert panel["targets"], panel["title"]
    # No two panels overlap on the grid (24 columns).
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, panel["title"]
        cells |= mine


def test_it_shows_what_the_issue_asks_for() -> None:
    exprs = " ".join(t["expr"] for p in dashboard()["panels"] for t in p["targets"])
    for needed in (
        "ssehub_streams",
        "ssehub_deliveries_total",
        "ssehub_publish_duration_seconds_bucket",
        "ssehub_delivery_delay_seconds_bucket",
        "ssehub_slow_cut_total",
        "ssehub_gaps_total",
        "ssehub_broker_ready",
    ):
        assert needed in exprs, needed


def test_every_series_it_queries_is_one_the_hub_serves() -> None:
    served = readme_series()
    for panel in dashboard()["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            assert expr.count("(") == expr.count(")"), expr
            for name in re.findall(r"\bssehub_[a-z0-9_]+", expr):
                base = re.sub(r"_(bucket|sum|count)$", "", name)
                assert name in served or base in served, (
                    f"{panel['title']}: {name} is not a series of the hub"
                )
