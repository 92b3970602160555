"""Structured JSON logs that never carry audited text or secrets.

One line per request from ``traceguard.proxy.access`` with the proxy's own fields (request id,
client name, endpoint, status, action, durations, byte counts); never a header value, a query
string, a body or an output. Records from any other logger keep their format string and only
the arguments that cannot hold text (numbers, booleans); a string argument shows as its length
and an exception as its type (uvicorn's start-up and shutdown lines are kept whole). Library
warnings may otherwise carry an auditor's error message, which can echo the audited output.
"""

from __future__ import annotations

import enum
import json
import logging
import sys
import time
from typing import Any

__all__ = ["JsonFormatter", "access_log", "configure_logging"]

access_log = logging.getLogger("traceguard.proxy.access")

_OWN = "traceguard.proxy"


def _safe_arg(value: Any) -> Any:
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, BaseException):
        return f"<{type(value).__name__}>"
    if isinstance(value, str):
        return f"<text, {len(value)} chars>"
    return f"<{type(value).__name__}>"


class JsonFormatter(logging.Formatter):
    """One JSON object per line (see the module documentation)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        own = record.name == _OWN or record.name.startswith(_OWN + ".")
        # uvicorn's own lines (bind address, worker pids) carry no request content: the access
        # log, which would, is disabled.
        if own or (record.name.startswith("uvicorn") and not record.exc_info):
            entry["msg"] = record.getMessage()
        else:
            entry["msg"] = str(record.msg)
            args = record.args if isinstance(record.args, tuple) else ()
            if args:
                entry["args"] = [_safe_arg(arg) for arg in args]
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            entry["exception"] = record.exc_info[0].__name__
            tb = record.exc_info[2]
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            if tb is not None:
                entry["where"] = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"
        return json.dumps(entry, default=str)


def configure_logging(level: str) -> None:
    """Send every log record to stderr as JSON lines (the ``serve`` command's logging)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # The access log would print paths with their query strings (where tokens travel).
    logging.getLogger("uvicorn.access").disabled = True
