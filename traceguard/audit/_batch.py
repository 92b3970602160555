"""OpenAI Batch API files: the request file joined with its output file by ``custom_id``.

The output file is indexed once as ``custom_id -> byte offset`` (a few dozen bytes per request,
never the responses themselves); each request then reads its own output line with one seek.
The Batch API writes outputs in any order, so a sequential merge would not do.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from traceguard._exceptions import ConfigurationError
from traceguard.audit._messages import ShapeError

__all__ = ["BatchOutputIndex", "default_output_path", "is_output_file_name"]

_OUTPUT_SUFFIXES = (".output.jsonl", "_output.jsonl", "-output.jsonl")


def is_output_file_name(path: Path) -> bool:
    """True for names the Batch API convention gives output files (``x.output.jsonl``)."""
    return path.name.endswith(_OUTPUT_SUFFIXES)


def default_output_path(requests: Path) -> Path:
    """Find the output file of ``requests.jsonl`` by convention, or explain what was tried."""
    stem = requests.name.removesuffix(".jsonl")
    tried = [requests.with_name(stem + suffix) for suffix in _OUTPUT_SUFFIXES]
    for candidate in tried:
        if candidate.is_file():
            return candidate
    names = ", ".join(p.name for p in tried)
    raise ConfigurationError(
        f"no Batch API output file for {requests} (looked for {names}); pass --batch-output"
    )


class BatchOutputIndex:
    """Random access to a Batch API output file by ``custom_id``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offsets: dict[str, int] = {}
        self.malformed_lines: list[int] = []
        self._fh: IO[bytes] = path.open("rb")
        offset = 0
        for number, raw in enumerate(self._fh, start=1):
            start, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            custom_id = _custom_id_of(raw)
            if custom_id is None:
                self.malformed_lines.append(number)
            # The first answer wins: the Batch API writes one line per request.
            elif custom_id not in self._offsets:
                self._offsets[custom_id] = start

    def __len__(self) -> int:
        return len(self._offsets)

    def lookup(self, custom_id: str) -> Mapping[str, Any] | None:
        """The output line for ``custom_id``, or None when the output file has none."""
        offset = self._offsets.get(custom_id)
        if offset is None:
            return None
        self._fh.seek(offset)
        value = json.loads(self._fh.readline().decode("utf-8-sig"))
        if not isinstance(value, Mapping):
            raise ShapeError("the output line is not a JSON object")
        return value

    def close(self) -> None:
        """Close the output file."""
        self._fh.close()


def _custom_id_of(raw: bytes) -> str | None:
    try:
        value = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    custom_id = value.get("custom_id") if isinstance(value, dict) else None
    return custom_id if isinstance(custom_id, str) else None


def output_message(output: Mapping[str, Any]) -> tuple[list[Any] | None, str | None]:
    """The choices of a successful output line, or the error the line records.

    Returns ``(choices, None)`` on success and ``(None, message)`` when the request failed:
    a top-level ``error``, a non-2xx ``status_code``, or a body without choices.
    """
    error = output.get("error")
    response = output.get("response")
    if error:
        return None, _error_text(error)
    if not isinstance(response, Mapping):
        return None, "the output line has neither a response nor an error"
    status = response.get("status_code")
    body = response.get("body")
    if isinstance(status, int) and not 200 <= status < 300:
        detail = body.get("error") if isinstance(body, Mapping) else None
        return None, f"HTTP {status}: {_error_text(detail) if detail else 'request failed'}"
    if not isinstance(body, Mapping) or not isinstance(body.get("choices"), list):
        return None, "the response body has no choices"
    return list(body["choices"]), None


def _error_text(error: Any) -> str:
    if isinstance(error, Mapping):
        code = error.get("code")
        message = error.get("message") or "unknown error"
        return f"{code}: {message}" if code else str(message)
    return str(error)
