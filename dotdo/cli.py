"""The ``dotdo`` command: ``serve``, ``call`` and ``alarms`` (``dotdo <command> --help`` for each)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from storage.database import Durability

DEFAULT_URL = "http://127.0.0.1:8787"


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
        return value

    return parse


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {value}")
    return value


def _env_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dotdo", description="Durable Objects for Python.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    serve = commands.add_parser(
        "serve",
        help="serve actor kinds over HTTP",
        description="Serve every DO subclass found in the given modules (default: the built-in "
        "examples Counter, Customer and Order). Stops cleanly on Ctrl-C or SIGTERM.",
    )
    serve.add_argument("modules", nargs="*", metavar="MODULE", help="dotted module name or path to a .py file")
    serve.add_argument("--data", type=Path, default=Path("dotdo-data"), help="data directory (default: ./dotdo-data)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8787, help="HTTP port; 0 picks a free one (default: 8787)")
    serve.add_argument(
        "--rpc-port",
        type=_port,
        default=None,
        help="port of the msgpack/TCP transport; 0 turns it off (default: the HTTP port + 1)",
    )
    serve.add_argument(
        "--token",
        default=os.environ.get("DOTDO_TOKEN") or None,
        help="shared secret transport clients must present (default: $DOTDO_TOKEN; none: no token)",
    )
    serve.add_argument(
        "--workers",
        type=_positive(int),
        default=None,
        metavar="N",
        help="worker processes, each owning a share of the actors (default: the number of cores)",
    )
    serve.add_argument(
        "--durability",
        choices=[d.value for d in Durability],
        default="normal",
        help="normal: commits survive a killed process; full: also power loss (default: normal)",
    )
    serve.add_argument("--max-body", type=_positive(int), default=1024 * 1024, metavar="BYTES", help="largest request body (default: 1048576)")
    serve.add_argument("--idle-timeout", type=_positive(float), default=120.0, metavar="SECONDS", help="passivate actors idle this long (default: 120)")
    serve.add_argument("--max-active", type=_positive(int), default=None, metavar="N", help="active actors kept at most (default: from the open-file limit)")
    serve.add_argument("--call-timeout", type=_positive(float), default=30.0, metavar="SECONDS", help="deadline of a call (default: 30)")
    serve.add_argument("--max-mailbox", type=_positive(int), default=1000, metavar="N", help="calls that may wait for one actor before 503 (default: 1000)")
    serve.add_argument("--shutdown-grace", type=_positive(float), default=10.0, metavar="SECONDS", help="time in-flight calls get on shutdown (default: 10)")
    serve.add_argument("--env", type=_env_pair, action="append", default=[], metavar="KEY=VALUE", help="a value actors read as self.env[KEY]; repeatable")
    serve.add_argument("--debug", action="store_true", help="include tracebacks in error responses")
    serve.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"], help="(default: warning)")

    call = commands.add_parser(
        "call",
        help="call an actor's method on a running server",
        description="Call NAMESPACE/ID.METHOD on a running server and print the JSON result. "
        "Each ARG is parsed as JSON, or taken as a string when it is not JSON "
        '(dotdo call Customer alice notify \'"hi"\' and ... notify hi are the same).',
    )
    call.add_argument("namespace")
    call.add_argument("id", help="a name, or a 64-hex id")
    call.add_argument("method")
    call.add_argument("args", nargs="*", metavar="ARG")
    call.add_argument("--kw", type=_env_pair, action="append", default=[], metavar="NAME=JSON", help="a keyword argument; repeatable")
    call.add_argument("--url", default=os.environ.get("DOTDO_URL", DEFAULT_URL), help=f"server URL (default: $DOTDO_URL or {DEFAULT_URL})")
    call.add_argument("--timeout", type=_positive(float), default=60.0, metavar="SECONDS", help="give up after this long (default: 60)")

    alarms = commands.add_parser(
        "alarms",
        help="list pending alarms and schedules of a running server",
        description="List every pending alarm and schedule of a running server, by actor, "
        "with the time it runs next (UTC).",
    )
    alarms.add_argument("--namespace", help="only actors of this namespace")
    alarms.add_argument("--limit", type=_positive(int), default=1000, metavar="N", help="list at most N (default: 1000)")
    alarms.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    alarms.add_argument("--url", default=os.environ.get("DOTDO_URL", DEFAULT_URL), help=f"server URL (default: $DOTDO_URL or {DEFAULT_URL})")
    alarms.add_argument("--timeout", type=_positive(float), default=30.0, metavar="SECONDS", help="give up after this long (default: 30)")
    return parser


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def cmd_serve(args: argparse.Namespace) -> int:
    from actors.examples import EXAMPLES
    from dotdo.loader import load_kinds
    from dotdo.server import ServeOptions, run
    from dotdo.workers import default_workers
    from runtime.supervisor import default_max_active
    from storage.errors import DotdoError

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        kinds = load_kinds(args.modules) if args.modules else list(EXAMPLES)
    except DotdoError as exc:
        print(f"dotdo serve: {exc}", file=sys.stderr)
        return 2
    options = ServeOptions(
        host=args.host,
        port=args.port,
        data_dir=args.data,
        durability=Durability(args.durability),
        max_body=args.max_body,
        idle_timeout=args.idle_timeout,
        max_active=args.max_active or default_max_active(),
        call_timeout=args.call_timeout,
        max_mailbox=args.max_mailbox,
        shutdown_grace=args.shutdown_grace,
        debug=args.debug,
        env=dict(args.env),
        rpc_port=args.rpc_port,
        token=args.token,
        workers=args.workers or default_workers(),
    )
    try:
        run(kinds, options)
    except (DotdoError, OSError) as exc:  # a port in use, an unusable data directory
        print(f"dotdo serve: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_call(args: argparse.Namespace) -> int:
    path = "/_rpc/{}/{}/{}".format(*(urllib.parse.quote(p, safe="") for p in (args.namespace, args.id, args.method)))
    body = {"args": [_json_or_text(a) for a in args.args], "kwargs": {k: _json_or_text(v) for k, v in args.kw}}
    request = urllib.request.Request(
        args.url.rstrip("/") + path,
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            payload = json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return _http_error(exc)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"dotdo call: cannot reach {args.url}: {reason}", file=sys.stderr)
        return 2
    print(json.dumps(payload.get("result"), indent=2, ensure_ascii=False))
    return 0


def cmd_alarms(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    after: str | None = None
    while len(rows) < args.limit:
        query = {"limit": str(min(1000, args.limit - len(rows)))}
        if args.namespace:
            query["namespace"] = args.namespace
        if after:
            query["after"] = after
        url = f"{args.url.rstrip('/')}/_admin/alarms?{urllib.parse.urlencode(query)}"
        try:
            with urllib.request.urlopen(url, timeout=args.timeout) as response:
                page = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return _http_error(exc)
        except (urllib.error.URLError, OSError) as exc:
            print(f"dotdo alarms: cannot reach {args.url}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
            return 2
        rows.extend(page["alarms"])
        after = page.get("after")
        if not after:
            break
    if args.json:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        return 0
    if not rows:
        print("no pending alarms or schedules")
        return 0
    table = [("NEXT (UTC)", "ACTOR", "WHAT", "RETRIES")]
    for row in rows:
        actor = f"{row['namespace']}/{row['name'] if row['name'] is not None else row['id']}"
        what = "alarm" if row["kind"] == "alarm" else f"schedule {row['item']}: {row['schedule']}"
        table.append((row["next"][:19].replace("T", " "), actor, what, str(row["retries"])))
    widths = [max(len(line[i]) for line in table) for i in range(3)]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)) + "  " + line[3])
    return 0


def _http_error(exc: urllib.error.HTTPError) -> int:
    try:
        error = json.loads(exc.read())
        print(f"error {exc.code} {error.get('error')}: {error.get('message')}", file=sys.stderr)
    except ValueError:
        print(f"error {exc.code}: {exc.reason}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    handlers = {"serve": cmd_serve, "call": cmd_call, "alarms": cmd_alarms}
    sys.exit(handlers[args.command](args))


if __name__ == "__main__":
    main()
