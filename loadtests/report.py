"""Turn results.json into results.md, PNG plots and the printed ratio summary."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

HUB = "hub"
# The ratio columns, numerator/denominator: the hub against each peer, and what the
# Redis hop costs the hub (hub-redis/hub).
RATIOS = (("hub", "nchan"), ("hub", "naive"), ("hub", "naive-pool"), ("hub-redis", "hub"))


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}"


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


# Ratios of these are meaningless (fractions, or growth figures near zero), or have no
# peer to compare with (many: only the hub runs it).
NO_RATIO = ("delivered fraction", "delivered_fraction", "RSS growth", "many ", "refused")


def _no_ratio(label: str) -> bool:
    return any(key in label for key in NO_RATIO)


def metric_rows(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, {system: value}) for every headline metric."""
    systems: dict[str, Any] = results["systems"]
    rows: list[tuple[str, dict[str, Any]]] = []

    def add(label: str, scenario: str, key: str, match: tuple[str, Any] | None = None, per: int = 1) -> None:
        """One row; ``per`` divides the figure (1024: KB -> MB, 1 << 20: bytes -> MB)."""
        vals: dict[str, Any] = {}
        for name, res in systems.items():
            data = res.get(scenario)
            if isinstance(data, list):
                data = next((d for d in data if match and d.get(match[0]) == match[1]), None)
            if isinstance(data, dict) and key in data:
                value = data[key]
                vals[name] = round(value / per, 1) if per != 1 and value is not None else value
        if vals:
            rows.append((label, vals))

    for n in _sizes(systems, "connections", "streams"):
        add(f"connections {n:,}: time to open all (s)", "connections", "time_to_open_all_s", ("streams", n))
        add(f"connections {n:,}: held", "connections", "held_after_settle", ("streams", n))
        add(f"connections {n:,}: RSS per stream (KB)", "connections", "rss_per_stream_kb", ("streams", n))
    for n in _sizes(systems, "fanout", "subscribers"):
        add(f"fanout {n:,}: deliveries/s", "fanout", "deliveries_per_s", ("subscribers", n))
        add(f"fanout {n:,}: delivered fraction", "fanout", "delivered_fraction", ("subscribers", n))
        add(f"fanout {n:,}: p50 ms", "fanout", "p50_ms", ("subscribers", n))
        add(f"fanout {n:,}: p99 ms", "fanout", "p99_ms", ("subscribers", n))
        add(f"fanout {n:,}: max ms", "fanout", "max_ms", ("subscribers", n))
        at = ("subscribers", n)
        add(f"fanout {n:,}: server CPU us per delivery", "fanout", "server_us_per_delivery", at)
    for key in ("p50_ms", "p99_ms", "max_ms", "delivered_fraction"):
        add(f"latency (fixed rate): {key}", "latency", key)
    for key in ("deliveries_per_s", "delivered_fraction", "p50_ms", "p99_ms"):
        add(f"channels: {key}", "channels", key)
    add("channels: server CPU us per delivery", "channels", "server_us_per_delivery")
    add("waves: RSS growth last vs first", "waves", "last_vs_first_after_growth")
    for n in _sizes(systems, "publish", "connections"):
        add(f"publish {n} connections: publishes/s", "publish", "publishes_per_s", ("connections", n))
        add(f"publish {n} connections: refused", "publish", "refused", ("connections", n))
        at = ("connections", n)
        add(f"publish {n} connections: server CPU us per publish", "publish", "server_us_per_publish", at)
    for n in _sizes(systems, "many", "channels"):
        m = f"many {n:,} channels"
        add(f"{m}: time to publish all (s)", "many", "time_to_publish_all_s")
        add(f"{m}: publishes/s", "many", "publishes_per_s")
        add(f"{m}: RSS before (MB)", "many", "rss_before_kb", per=1024)
        add(f"{m}: peak RSS (MB)", "many", "peak_rss_kb", per=1024)
        add(f"{m}: RSS after publishing (MB)", "many", "rss_after_publish_kb", per=1024)
        add(f"{m}: history bytes after publishing (MB)", "many", "history_bytes_after_publish", per=1 << 20)
        add(f"{m}: forgotten after publishing", "many", "forgotten_after_publish")
        add(f"{m}: forgotten", "many", "forgotten")
        add(f"{m}: time to forget all (s)", "many", "time_to_forget_all_s")
        add(f"{m}: RSS settled (MB)", "many", "rss_settled_kb", per=1024)
        add(f"{m}: RSS settled after (s)", "many", "settle_s")
    return rows


def _sizes(systems: dict[str, Any], scenario: str, key: str) -> list[int]:
    """The sizes a scenario ran at: a list of results, or one result (a dict)."""
    runs = [d for res in systems.values() for d in _as_list(res.get(scenario))]
    return sorted({d[key] for d in runs if key in d})


def _as_list(data: Any) -> list[dict[str, Any]]:
    if isinstance(data, dict):
        return [data]
    return [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []


def markdown(results: dict[str, Any]) -> str:
    """The results.md text."""
    systems = list(results["systems"])
    ratios = [(a, b) for a, b in RATIOS if a in systems and b in systems]
    head = ["metric", *systems, *(f"{a}/{b}" for a, b in ratios)]
    lines = [f"# ssehub benchmark {results['started']}", "", _machine_md(results), ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, vals in metric_rows(results):
        cells = [label, *(_fmt(vals.get(s)) for s in systems)]
        cells += ["" if _no_ratio(label) else _ratio(vals.get(a), vals.get(b)) for a, b in ratios]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Lower is better for the ms and the server CPU rows (and so for their ratios)."]
    lines += ["", _ceiling_md(results), "", _errors_md(results)]
    return "\n".join(lines) + "\n"


def _machine_md(results: dict[str, Any]) -> str:
    m = results["machine"]
    return (
        f"Machine: {m['nproc']} cores, {m['cpu_model']}, kernel {m['kernel']}, Python {m['python']}, "
        f"RLIMIT_NOFILE {m['nofile_limit']}.  {results['pinning']}"
    )


def _ceiling_md(results: dict[str, Any]) -> str:
    ceil = results.get("generator_ceiling") or []
    if not ceil:
        return ""
    rows = [f"- {c['events_per_write']} event(s) per server write, {c['subscribers']:,} streams: "
            f"{c['deliveries_per_s']:,} deliveries/s at {c['generator_cpu_busy']:.0%} of one core "
            f"(~{c['extrapolated_per_core_per_s']:,}/s per busy core)" for c in ceil]  # fmt: skip
    return "Generator ceiling (trivial flood server on core 0, one worker on core 1):\n" + "\n".join(rows)


def _errors_md(results: dict[str, Any]) -> str:
    errs = [f"- {name}: {e}" for name, res in results["systems"].items() for e in res.get("errors", [])]
    return "Problems seen:\n" + "\n".join(errs) if errs else ""


def summary_lines(results: dict[str, Any]) -> list[str]:
    """The ratios printed at the end of a run."""
    out = []
    for label, vals in metric_rows(results):
        hub = vals.get(HUB)
        if hub is None:
            continue
        pairs = [] if _no_ratio(label) else [(a, b) for a, b in RATIOS if a in vals and b in vals]
        ratios = ", ".join(f"{a}/{b} {_ratio(vals[a], vals[b])}" for a, b in pairs)
        out.append(f"{label}: hub {_fmt(hub)}" + (f" ({ratios})" if ratios else ""))
    return out


def plots(results: dict[str, Any], outdir: Path) -> list[Path]:
    """deliveries/s and p99 vs subscribers (fan-out), RSS per stream vs streams."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib missing: no plots (pip install '.[bench]')")
        return []
    specs = [
        ("fanout", "subscribers", "deliveries_per_s", "deliveries/s", "fanout_deliveries.png"),
        ("fanout", "subscribers", "p99_ms", "p99 latency (ms)", "fanout_p99.png"),
        ("connections", "streams", "rss_per_stream_kb", "server RSS per stream (KB)", "rss_per_stream.png"),
    ]
    written = []
    for scenario, xkey, ykey, ylabel, fname in specs:
        series = {
            name: sorted((d[xkey], d[ykey]) for d in res.get(scenario, []) if d.get(ykey) is not None)
            for name, res in results["systems"].items()
        }
        series = {name: pts for name, pts in series.items() if pts}
        if not series:
            continue  # scenario not run
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, pts in series.items():
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, marker="o", label=name)
        ax.set_xscale("log")
        ax.set_xlabel(xkey)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{scenario}: {ylabel}")
        ax.grid(True, alpha=0.3)
        ax.legend()
        path = outdir / fname
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def write_all(results: dict[str, Any], outdir: Path) -> None:
    """results.json, results.md and the plots."""
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (outdir / "results.md").write_text(markdown(results))
    plots(results, outdir)
