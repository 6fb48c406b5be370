"""The ``ssehub`` command: ``serve``, ``publish``, ``tail``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from hub.settings import Settings, unknown_variables

log = logging.getLogger("hub.cli")

DEFAULT_URL = os.environ.get("HUB_URL", "http://127.0.0.1:8000")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssehub", description="Server-Sent Events fan-out hub")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the hub (settings: HUB_* env vars; flags win)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--redis-url", help="redis://host:port/db; unset: the in-memory broker")
    serve.add_argument("--workers", type=int)
    serve.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug", "trace"])

    pub = sub.add_parser("publish", help="publish one event")
    pub.add_argument("channel")
    pub.add_argument("data", nargs="?", default="-", help="JSON text, @file, or - for stdin (default)")
    pub.add_argument("--event", help="event type")
    pub.add_argument("--text", action="store_true", help="send the data as text, not JSON")
    pub.add_argument("--url", default=DEFAULT_URL)
    pub.add_argument("--token", default=os.environ.get("HUB_TOKEN"))

    tail = sub.add_parser("tail", help="print a stream's events as they arrive, reconnecting as browsers do")
    tail.add_argument("channels", nargs="+")
    tail.add_argument("--last-event-id", default="")
    tail.add_argument("--url", default=DEFAULT_URL)
    tail.add_argument("--token", default=os.environ.get("HUB_TOKEN"))
    tail.add_argument("--raw", action="store_true", help="print the bytes of the wire")
    tail.add_argument("--count", type=int, default=0, help="exit after this many events")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        overrides = {
            k: v
            for k, v in {
                "host": args.host,
                "port": args.port,
                "redis_url": args.redis_url,
                "workers": args.workers,
                "log_level": args.log_level,
            }.items()
            if v is not None
        }
        unknown = unknown_variables(os.environ)
        if unknown:
            print(f"ssehub: unknown setting(s) {', '.join(unknown)}; see README, Settings", file=sys.stderr)
            return 2
        try:
            settings = Settings(**overrides)
        except ValidationError as exc:
            print(f"ssehub: bad setting:\n{_explain(exc)}", file=sys.stderr)
            return 2
        from hub.server import serve

        return serve(settings)
    from hub import client

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    if args.command == "publish":
        return client.publish_command(args.url, args.channel, args.data, args.event, args.text, args.token)
    return client.tail_command(args.url, args.channels, args.last_event_id, args.raw, args.count, args.token)


def _explain(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        name = ".".join(str(p) for p in err["loc"])
        lines.append(
            f"  HUB_{name.upper()} (--{name.replace('_', '-')}): {err['msg']} (got {err.get('input')!r})"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
