"""From a chat conversation (any log format) to the traces to audit, one per assistant turn.

Every reader first turns its format into a list of :class:`~traceguard._chat.Message` (through
:mod:`traceguard._chat`, the parser the live integrations use too); :func:`conversation_items`
then audits each assistant turn against the messages before it, split by the shared rule
(:func:`~traceguard._chat.split_last_user`): the last user message is the query, every other
earlier message is history.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traceguard._chat import Message, ShapeError, split_last_user
from traceguard._exceptions import ImageAccessDenied, InputError
from traceguard._images import ImageRef
from traceguard._trace import Trace
from traceguard._urls import redact_url
from traceguard._verdict import ErrorInfo

__all__ = [
    "ImageResolver",
    "LogItem",
    "Message",
    "ShapeError",
    "Source",
    "conversation_items",
    "empty_trace_problem",
]


@dataclass(frozen=True)
class Source:
    """Where an output record comes from in the input."""

    path: str
    line: int
    """1-based line where the input record starts."""
    turn: int | None = None
    """Index of the audited assistant message in the conversation (None for one-turn formats)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping."""
        return {"path": self.path, "line": self.line, "turn": self.turn}


@dataclass(frozen=True)
class LogItem:
    """One future output line: a trace to audit, or a record that cannot be audited."""

    id: str
    source: Source
    trace: Trace | None = None
    problem: ErrorInfo | None = None
    """Why there is nothing to audit (set exactly when ``trace`` is None)."""
    expected_risk: float | None = None
    """The label carried by the input (0, 0.5 or 1), for ``traceguard eval``."""
    images: tuple[str, ...] = ()
    """The trace's images as shown in the output: resolved paths, URLs, or content hashes."""
    problem_status: str = "invalid_input"
    """The output status of a problem item: ``invalid_input``, or ``error`` for a failure the
    input itself records (a Batch API error line)."""

    @classmethod
    def invalid(
        cls, item_id: str, source: Source, message: str, kind: str = "InputError"
    ) -> LogItem:
        """An item that yields an ``invalid_input`` record."""
        return cls(id=item_id, source=source, problem=ErrorInfo(kind, message))


class ImageResolver:
    """Turns image references written in a log into :class:`ImageRef`, confined to a root folder.

    Relative paths are read relative to ``root``; any path (relative, absolute, ``file://``) that
    lands outside ``root`` is refused here, before the auditor sees it. URLs and data URIs are
    passed on untouched: whether a URL may be fetched is the auditor's :class:`ImageAccess`
    decision. The output shows a URL redacted (no credentials, query or fragment).
    """

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def resolve(self, value: Any) -> tuple[ImageRef, str]:
        """The image and how the output shows it; raises :class:`InputError` when unusable."""
        if not isinstance(value, str) or not value.strip():
            raise ShapeError(f"an image reference must be a non-empty string, not {value!r}")
        value = value.strip()
        if value.startswith("data:"):
            ref = ImageRef.parse(value)
            try:
                shown = ref.identity()
            except Exception as exc:  # a malformed data URI: the trace cannot be audited
                raise InputError(f"malformed data URI image: {exc}") from exc
            return ref, shown
        if not value.startswith("file://"):
            ref = ImageRef.parse(value)  # any other scheme://, in any case, is a URL
            if ref.kind == "url":
                return ref, redact_url(value)
        path_text = value[len("file://") :] if value.startswith("file://") else value
        try:
            path = (self.root / path_text).resolve()
        except (OSError, RuntimeError, ValueError) as exc:
            # A NUL byte (ValueError), a symlink loop, a name too long: one bad record.
            raise InputError(f"image path {value[:200]!r} cannot be resolved: {exc}") from None
        if not path.is_relative_to(self.root):
            raise ImageAccessDenied(f"image path {value!r} is outside the image root {self.root}")
        return ImageRef.from_path(path), str(path)


EMPTY_TRACE = "EmptyTrace"
"""The error type of an item with nothing to audit."""


def empty_trace_problem(what: str) -> ErrorInfo:
    """Why an item with nothing to audit gets no verdict: an empty trace is never graded."""
    return ErrorInfo(
        EMPTY_TRACE,
        f"{what} has nothing to audit (no query, thinking, response, tool call or image); "
        "an empty trace is invalid input, never safe",
    )


def conversation_items(
    messages: Sequence[Message],
    *,
    base_id: str,
    source_path: str,
    line: int,
    expected_risk: float | None = None,
    model: str | None = None,
) -> Iterator[LogItem]:
    """One item per assistant turn; a conversation without one yields one invalid item.

    Each assistant turn is audited against the messages before it: the last user message among
    them is the query, the others (system prompt, earlier exchanges, tool results) the history.
    An assistant turn with nothing to audit is an invalid item, never a trace.
    """
    assistant_turns = [i for i, m in enumerate(messages) if m.role == "assistant"]
    if not assistant_turns:
        yield LogItem.invalid(
            base_id,
            Source(source_path, line),
            "conversation has no assistant turn to audit",
        )
        return
    several = len(assistant_turns) > 1
    for index in assistant_turns:
        answer = messages[index]
        trace_id = f"{base_id}:{index}" if several else base_id
        source = Source(source_path, line, index)
        context = split_last_user(
            messages[:index],
            model=model,
            metadata={"integration": "offline", "source": source.to_dict()},
        )
        trace = context.trace(
            response=answer.text,
            thinking=answer.thinking,
            tool_calls=answer.tool_calls,
            trace_id=trace_id,
        )
        if trace.is_empty:
            problem = empty_trace_problem(f"assistant turn {index}")
            yield LogItem(id=trace_id, source=source, problem=problem)
            continue
        yield LogItem(
            id=trace_id,
            source=source,
            trace=trace,
            expected_risk=expected_risk,
            images=context.image_names,
        )


def parse_expected_risk(record: dict[str, Any], *keys: str) -> float | None:
    """The label a record carries under the first present key (0/0.5/1 or a level name)."""
    names = {"safe": 0.0, "potentially_harmful": 0.5, "harmful": 1.0, "unsafe": 1.0}
    for key in keys:
        if key not in record or record[key] is None:
            continue
        value = record[key]
        if isinstance(value, str):
            text = value.strip().lower().replace(" ", "_").replace("-", "_")
            if text in names:
                return names[text]
            try:
                value = float(text)
            except ValueError:
                raise ShapeError(f"{key}={record[key]!r} is not a risk level") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ShapeError(f"{key}={record[key]!r} is not a risk level")
        if float(value) not in (0.0, 0.5, 1.0):
            raise ShapeError(f"{key}={value!r} is not a risk level (0, 0.5 or 1)")
        return float(value)
    return None
