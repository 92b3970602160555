"""``traceguard serve``: the command-line door of the guard proxy.

::

    traceguard serve --config guard.yaml [--upstream URL] [--host 127.0.0.1 --port 8700]
                     [--workers N]

The flags override the configuration's ``serve`` section. The parser is built here without the
``[proxy]`` extra; running imports :mod:`traceguard.proxy` (Starlette, uvicorn, the openai
types) and names the extra when it is missing.
"""

from __future__ import annotations

import argparse
from typing import Any

from traceguard._version import install_hint

__all__ = ["add_parser", "run"]


def add_parser(commands: Any, **parser_options: Any) -> argparse.ArgumentParser:
    """Add ``serve`` to the ``traceguard`` subcommands."""
    serve: argparse.ArgumentParser = commands.add_parser(
        "serve",
        help="run the OpenAI-compatible guard proxy in front of a model server",
        description="Serve /v1/chat/completions and /v1/responses: every answer from the "
        "upstream is audited under the configuration's policy before the client sees it. "
        "Clients change only their base URL.",
        **parser_options,
    )
    serve.add_argument("--config", required=True, help="the guard configuration (YAML/TOML/JSON)")
    serve.add_argument(
        "--upstream", help="the model server's base URL, e.g. http://127.0.0.1:8000/v1"
    )
    serve.add_argument("--host", help="address to listen on (default: serve.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default: serve.port, 8700)")
    serve.add_argument("--workers", type=int, help="worker processes (default: serve.workers, 1)")
    return serve


def run(args: argparse.Namespace) -> int:
    """Run the proxy until a signal stops it; returns the exit code."""
    try:
        from traceguard.proxy import serve
    except ImportError as exc:
        from traceguard._exceptions import ConfigurationError

        raise ConfigurationError(
            f"traceguard serve needs the proxy extra: {install_hint('proxy')} ({exc})"
        ) from None
    serve(args.config, upstream=args.upstream, host=args.host, port=args.port, workers=args.workers)
    return 0
