"""Exports of reviewed items: JSON Lines and CSV, shared by the web app and the CLI.

CSV cells are neutralised against formula injection: audited text starting with ``=``, ``+``,
``-`` or ``@`` (or a tab or carriage return, which some spreadsheets skip first) would otherwise
run as a formula in whoever opens the file.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from typing import Any

from traceguard.review._model import Escalation

__all__ = ["CSV_COLUMNS", "csv_cell", "csv_chunks", "jsonl_lines"]

CSV_COLUMNS = (
    "escalation_id",
    "created_at",
    "state",
    "reviewer",
    "note",
    "resolved_at",
    "reason",
    "risk",
    "label",
    "categories",
    "auditor",
    "analysis",
    "integration",
    "model",
    "trace_id",
    "thread_id",
    "session_id",
    "run_id",
    "source",
    "query",
    "thinking",
    "response",
)


def csv_cell(value: Any) -> str:
    """One CSV cell that no spreadsheet will execute."""
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        value = "; ".join(str(v) for v in value)
    elif isinstance(value, dict):
        value = json.dumps(value, ensure_ascii=False)
    text = str(value)
    if text and text[0] in "=+-@\t\r":
        text = "'" + text
    return text


def jsonl_lines(items: Iterable[Escalation]) -> Iterator[bytes]:
    """One ASCII JSON line per item (``Escalation.to_dict()``)."""
    for item in items:
        yield (json.dumps(item.to_dict(), ensure_ascii=True) + "\n").encode()


def csv_chunks(items: Iterable[Escalation]) -> Iterator[bytes]:
    """The CSV file, header first, one chunk per row (UTF-8)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for item in items:
        record = item.to_dict()
        record["source"] = str(item.source) if item.source else None
        writer.writerow([csv_cell(record.get(column)) for column in CSV_COLUMNS])
        yield buffer.getvalue().encode("utf-8", "backslashreplace")
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue().encode("utf-8", "backslashreplace")
