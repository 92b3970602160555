"""``traceguard review``: serve the review app, purge old items, export resolved ones.

::

    traceguard review --queue reviews.sqlite [--host 127.0.0.1 --port 8765] [--max-age 30d]
    traceguard review purge --queue reviews.sqlite --max-age 30d [--include-pending]
    traceguard review export --queue reviews.sqlite --format csv --out reviewed.csv

The parser is built here and wired into ``traceguard.cli``; serving imports the ``[review]``
extra (Starlette, uvicorn) only when it runs.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import threading
from pathlib import Path
from typing import Any

from traceguard._exceptions import ConfigurationError
from traceguard._version import install_hint
from traceguard.review._auth import MIN_TOKEN_CHARS, generate_token
from traceguard.review._export import csv_chunks, jsonl_lines
from traceguard.review._model import EscalationFilter, parse_age
from traceguard.review._store import EscalationStore

__all__ = ["TOKEN_ENV", "add_parser", "run"]

TOKEN_ENV = "TRACEGUARD_REVIEW_TOKEN"
_PURGE_EVERY_S = 3600.0


def _age(value: str) -> str:
    try:
        parse_age(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _queue_option(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument("--queue", required=required, help="the review queue file (SQLite)")


def add_parser(commands: Any, **parser_options: Any) -> argparse.ArgumentParser:
    """Add ``review`` (with ``purge`` and ``export``) to the ``traceguard`` subcommands."""
    review: argparse.ArgumentParser = commands.add_parser(
        "review",
        help="serve the human review app on a review queue (also: purge, export)",
        description="Serve the review app: reviewers log in with the token (from "
        f"${TOKEN_ENV}, or generated and printed once), list and filter escalations, and "
        "approve or reject them; a guard waiting with on_escalate='wait' gets the decision.",
        **parser_options,
    )
    # Not required here: "review purge --queue X" gives it to the subcommand instead.
    _queue_option(review, required=False)
    review.add_argument("--host", default="127.0.0.1", help="address to listen on")
    review.add_argument("--port", type=int, default=8765, help="port to listen on")
    review.add_argument(
        "--max-age",
        type=_age,
        help="retention: purge resolved items older than this (e.g. 30d, 12h) at start and "
        "hourly (default: keep everything)",
    )
    review.add_argument(
        "--allowed-host",
        action="append",
        default=None,
        metavar="NAME",
        help="a Host header the app answers to (repeatable; default: the loopback names, or "
        "any name when --host is not a loopback address)",
    )
    review.add_argument(
        "--secure-cookies",
        action="store_true",
        help="mark the login cookie Secure (behind an HTTPS proxy)",
    )
    actions = review.add_subparsers(dest="review_command", parser_class=type(review))
    purge = actions.add_parser("purge", help="delete items older than --max-age", **parser_options)
    _queue_option(purge)
    purge.add_argument("--max-age", type=_age, required=True, help="e.g. 30d, 12h, 90m, 2w")
    purge.add_argument(
        "--include-pending",
        action="store_true",
        help="also delete pending items (an agent may still be waiting on them)",
    )
    export = actions.add_parser("export", help="export resolved items", **parser_options)
    _queue_option(export)
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument("--out", help="file to write (default: standard output)")
    export.add_argument(
        "--state",
        choices=("resolved", "approved", "rejected"),
        default="resolved",
        help="which resolved items",
    )
    return review


def run(args: argparse.Namespace) -> int:
    """Run ``traceguard review`` with parsed ``args``; returns the exit code."""
    command = getattr(args, "review_command", None)
    if command == "purge":
        return _purge(args)
    if command == "export":
        return _export(args)
    return _serve(args)


def _open(path: str | None) -> EscalationStore:
    if not path:
        raise ConfigurationError("traceguard review needs --queue (the review queue file)")
    return EscalationStore(Path(path), create=False)


def _purge(args: argparse.Namespace) -> int:
    with _open(args.queue) as store:
        removed = store.purge(args.max_age, include_pending=args.include_pending)
    kind = "item(s)" if args.include_pending else "resolved item(s)"
    print(f"purged {removed} {kind} older than {args.max_age} from {args.queue}")
    return 0


def _export(args: argparse.Namespace) -> int:
    where = EscalationFilter(state=args.state)
    with _open(args.queue) as store:
        chunks = (
            jsonl_lines(store.items(where))
            if args.format == "jsonl"
            else csv_chunks(store.items(where))
        )
        if args.out:
            with open(args.out, "wb") as handle:
                for chunk in chunks:
                    handle.write(chunk)
        else:
            for chunk in chunks:
                sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from traceguard.review.app import create_app
    except ImportError:
        raise ConfigurationError(
            f"traceguard review needs the review extra: {install_hint('review')}"
        ) from None
    token = os.environ.get(TOKEN_ENV, "").strip()
    generated = not token
    if generated:
        token = generate_token()
    elif len(token) < MIN_TOKEN_CHARS:
        raise ConfigurationError(f"${TOKEN_ENV} must be at least {MIN_TOKEN_CHARS} characters")
    loopback = _is_loopback(args.host)
    allowed = args.allowed_host
    if not loopback:
        print(
            "\n"
            f"WARNING: traceguard review listens on {args.host}, reachable from other machines.\n"
            "WARNING: the queue holds audited text; anyone who can reach this port and learns\n"
            "WARNING: the token can read it. Serve it over HTTPS (a reverse proxy, with\n"
            "WARNING: --secure-cookies) or bind 127.0.0.1 and tunnel in.\n",
            file=sys.stderr,
        )
        if allowed is None:
            allowed = ["*"]
    store = _open(args.queue)
    stop = threading.Event()
    if args.max_age:
        removed = store.purge(args.max_age)
        print(f"purged {removed} resolved item(s) older than {args.max_age}", file=sys.stderr)
        threading.Thread(
            target=_purge_hourly, args=(store, args.max_age, stop), daemon=True
        ).start()
    app = create_app(store, token=token, allowed_hosts=allowed, secure_cookies=args.secure_cookies)
    shown_host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"traceguard review: {args.queue} at http://{shown_host}:{args.port}/", file=sys.stderr)
    if generated:
        print(
            f"traceguard review: login token (shown once; set ${TOKEN_ENV} to choose one): {token}",
            file=sys.stderr,
        )
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="info", server_header=False)
    finally:
        stop.set()
        store.close()
    return 0


def _purge_hourly(store: EscalationStore, max_age: str, stop: threading.Event) -> None:
    while not stop.wait(_PURGE_EVERY_S):
        try:
            store.purge(max_age)
        except Exception as exc:  # retention must not take the app down; say so and go on
            print(f"traceguard review: purge failed: {exc}", file=sys.stderr)
