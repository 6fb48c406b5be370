"""The ``ssehub`` command: ``serve``, ``publish``, ``tail``."""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import shlex
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from hub.settings import SECRET_SETTINGS, Settings, default_text, env_var, flag, unknown_variables

DEFAULT_URL = os.environ.get("HUB_URL", "http://127.0.0.1:8000")

# The distribution's name: [project] name in pyproject.toml.
PACKAGE = "ssehub"


def _version() -> str:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssehub", description="Server-Sent Events fan-out hub")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve",
        help="run the hub (settings: HUB_* env vars; flags win)",
        description="Run the hub. Every setting is a flag and a HUB_* environment variable; a flag"
        " given wins over its variable. A HUB_* variable that no setting reads is refused.",
    )
    _add_setting_flags(serve)

    url_help = "the hub's URL (default: $HUB_URL, else http://127.0.0.1:8000)"
    token_help = "send Authorization: Bearer TOKEN (default: $HUB_TOKEN)"
    pub = sub.add_parser(
        "publish",
        help="publish one event, or one per line of stdin (--lines)",
        description="Publish one event: JSON data (or text with --text) from the argument, a file"
        " (@path) or stdin (-). With --lines, every line of stdin is an event of its own.",
        epilog="--lines: lines go in batches (one JSON array request, up to 500 lines or 50 ms"
        " after a batch's first line), each line as a JSON string: a subscriber's data is the line"
        " as a JSON string (JSON.parse gives the line back). With --text too, each line is a text"
        " event, the line exactly, one request per line. Empty lines are skipped (the hub refuses"
        " empty text). stdin is not read while a batch is being sent. When the hub answers"
        " 429/502/503/504 or cannot be reached, a batch is retried with backoff (honouring"
        " Retry-After) for up to --max-wait seconds; lines that still cannot be sent, or that the"
        " hub refuses, are counted on stderr and the exit status is 1.",
    )
    pub.add_argument("channel")
    pub.add_argument(
        "data",
        nargs="?",
        default="-",
        help="JSON text, @file, or - for stdin (default); not with --lines",
    )
    pub.add_argument("--event", help="event type")
    pub.add_argument(
        "--text",
        action="store_true",
        help="send the data as text, not JSON; one final line break of a file or stdin is dropped",
    )
    pub.add_argument(
        "--retry", type=int, metavar="MS", help="the reconnection delay subscribers are told (retry:)"
    )
    pub.add_argument(
        "--lines", action="store_true", help="each non-empty line of stdin is one event (see below)"
    )
    pub.add_argument(
        "--max-wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="with --lines: how long a batch is retried before its lines count as not sent (default: 60)",
    )
    pub.add_argument("--url", default=DEFAULT_URL, help=url_help)
    pub.add_argument("--token", default=os.environ.get("HUB_TOKEN"), help=token_help)

    tok = sub.add_parser(
        "token",
        help="mint a JWT (HS256) from $HUB_JWT_SECRET",
        description="Print a JWT signed with $HUB_JWT_SECRET (or --secret) granting reading and"
        " publishing the channels that the globs name. Glob options repeat or take commas.",
        epilog="Example: ssehub token --subscribe 'orders-*,user-42' --ttl 1h",
    )
    tok.add_argument("--subscribe", action="append", default=[], metavar="GLOBS", help="channels it may read")
    tok.add_argument(
        "--publish", action="append", default=[], metavar="GLOBS", help="channels it may publish to"
    )
    tok.add_argument(
        "--admin", action="store_true", help="it may read the admin endpoints (/channels, /metrics)"
    )
    tok.add_argument("--ttl", default="1h", help="lifetime: 90s, 15m, 1h, 7d; 0 for no exp (default: 1h)")
    tok.add_argument("--subject", help="the sub claim (who it is for: the rate limit's key)")
    tok.add_argument(
        "--audience", default=os.environ.get("HUB_JWT_AUDIENCE"), help="aud (default: $HUB_JWT_AUDIENCE)"
    )
    tok.add_argument(
        "--issuer", default=os.environ.get("HUB_JWT_ISSUER"), help="iss (default: $HUB_JWT_ISSUER)"
    )
    tok.add_argument(
        "--secret", default=os.environ.get("HUB_JWT_SECRET"), help="the key (default: $HUB_JWT_SECRET)"
    )

    tail = sub.add_parser("tail", help="print a stream's events as they arrive, reconnecting as browsers do")
    tail.add_argument("channels", nargs="+")
    tail.add_argument("--last-event-id", default="", help="resume after this id, or 'earliest'")
    tail.add_argument("--url", default=DEFAULT_URL, help=url_help)
    tail.add_argument("--token", default=os.environ.get("HUB_TOKEN"), help=token_help)
    shown = tail.add_mutually_exclusive_group()
    shown.add_argument("--raw", action="store_true", help="print the bytes of the wire")
    shown.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per event: id, event, channel, data (parsed when it is JSON, else the"
        " text), for jq",
    )
    tail.add_argument(
        "--count",
        type=int,
        default=0,
        metavar="N",
        help="exit after N events of the channels (the hub's own hub.* events are not counted)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        # Only the flags actually given: the others leave their variable or default alone.
        overrides = {
            name: getattr(args, name) for name in Settings.model_fields if getattr(args, name) is not None
        }
        unknown = unknown_variables(os.environ)
        if unknown:
            print(
                f"ssehub: unknown setting(s) {', '.join(unknown)}; see ssehub serve --help",
                file=sys.stderr,
            )
            return 2
        try:
            settings = Settings(**overrides)
        except ValidationError as exc:
            for line in _explain(exc, overrides, os.environ):
                print(line, file=sys.stderr)
            return 2
        from hub.server import serve

        return serve(settings)
    if args.command == "token":
        return _token(args)
    from hub import client

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    if args.command == "publish":
        if args.lines:
            if args.data != "-":
                print("ssehub publish: --lines reads stdin; give no data argument", file=sys.stderr)
                return 2
            return client.publish_lines_command(
                args.url, args.channel, args.event, args.text, args.token, args.retry, args.max_wait
            )
        return client.publish_command(
            args.url, args.channel, args.data, args.event, args.text, args.token, args.retry
        )
    return client.tail_command(
        args.url, args.channels, args.last_event_id, args.raw, args.count, args.token, args.json
    )


def _token(args: argparse.Namespace) -> int:
    from hub.tokens import mint, parse_ttl

    if not args.secret:
        print("ssehub token: no key: set HUB_JWT_SECRET or give --secret", file=sys.stderr)
        return 2
    try:
        ttl = parse_ttl(args.ttl)
    except ValueError as exc:
        print(f"ssehub token: --ttl: {exc}", file=sys.stderr)
        return 2
    globs = {
        name: [g.strip() for v in getattr(args, name) for g in v.split(",") if g.strip()]
        for name in ("subscribe", "publish")
    }
    if not (globs["subscribe"] or globs["publish"] or args.admin):
        print("ssehub token: grant something: --subscribe, --publish or --admin", file=sys.stderr)
        return 2
    print(
        mint(
            args.secret,
            subscribe=globs["subscribe"],
            publish=globs["publish"],
            admin=args.admin,
            ttl=ttl,
            subject=args.subject,
            audience=args.audience,
            issuer=args.issuer,
        )
    )
    return 0


def _add_setting_flags(serve: argparse.ArgumentParser) -> None:
    """A flag for every setting, its help generated from the field: the settings reference.

    A flag's value stays text here: pydantic converts and checks it against the field's
    annotation and bounds, exactly as it does the environment variable's, so both get
    the same rules and the same one-line error.
    """
    group = serve.add_argument_group(
        "settings", "each flag also has its HUB_* environment variable; the flag wins"
    )
    for name, field in Settings.model_fields.items():
        meaning = (field.description or "").replace("%", "%%")
        group.add_argument(
            flag(name),
            dest=name,
            metavar=_metavar(field.annotation),
            help=f"{meaning} [{env_var(name)}; default: {default_text(name).replace('%', '%%')}]",
        )


def _metavar(annotation: Any) -> str:
    """``INT``, ``NUMBER``, ``TEXT``, or a Literal's choices, from a field's annotation."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(kinds) == 1:
            return _metavar(kinds[0])
    if typing.get_origin(annotation) is typing.Literal:
        return "{" + ",".join(str(choice) for choice in typing.get_args(annotation)) + "}"
    names = {bool: "BOOL", int: "INT", float: "NUMBER", str: "TEXT"}
    if annotation in names:
        return names[annotation]
    raise TypeError(f"no flag for a setting of type {annotation!r}")


def _explain(exc: ValidationError, overrides: Mapping[str, str], environ: Mapping[str, str]) -> list[str]:
    """One line per bad value, naming what the user set: ``--port x`` or ``HUB_PORT=x``."""
    lines = []
    for err in exc.errors():
        name = str(err["loc"][0]) if err["loc"] else ""
        if name in overrides:
            where = f"{flag(name)} {_shown(overrides[name], name)}"
        elif name in Settings.model_fields:
            key = _environ_key(environ, env_var(name))
            where = f"{key}={_shown(environ[key], name)}" if key is not None else env_var(name)
        else:
            where = "bad setting"
        lines.append(f"ssehub: {where}: {_message(err)}")
    return lines


def _environ_key(environ: Mapping[str, str], var: str) -> str | None:
    """The variable as spelt in the environment (pydantic-settings ignores case)."""
    if var in environ:
        return var
    return next((k for k in environ if k.upper() == var), None)


def _message(err: ErrorDetails) -> str:
    ctx = err.get("ctx") or {}
    # A validator's ValueError: its own words, without pydantic's "Value error, ".
    msg = str(ctx["error"]) if err["type"] == "value_error" and "error" in ctx else err["msg"]
    return " ".join(msg.split())


def _shown(value: str, name: str = "") -> str:
    """A value as the user would type it in a shell, always on one line; a secret never."""
    if name in SECRET_SETTINGS:
        return "(hidden)"
    return shlex.quote(value) if value.isprintable() else repr(value)


if __name__ == "__main__":
    sys.exit(main())
