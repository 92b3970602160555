"""From a chat conversation (any log format) to the traces to audit, one per assistant turn.

Every reader first turns its format into a list of :class:`Message`; :func:`conversation_items`
then applies the one rule all formats share: each assistant turn is audited together with the
user turn before it, and every earlier turn becomes the trace's history.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from traceguard._exceptions import ImageAccessDenied, InputError
from traceguard._images import ImageRef
from traceguard._trace import ToolCall, Trace, Turn
from traceguard._verdict import ErrorInfo

__all__ = ["ImageResolver", "LogItem", "Message", "ShapeError", "Source", "conversation_items"]

_ROLES = frozenset({"system", "user", "assistant", "tool"})


class ShapeError(InputError):
    """A record that is valid JSON but not a conversation of the expected format."""


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


@dataclass(frozen=True)
class Message:
    """One message of a conversation, normalised across log formats."""

    role: str
    text: str = ""
    images: tuple[ImageRef, ...] = ()
    thinking: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    image_names: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if self.role not in _ROLES:
            raise ShapeError(f"unknown message role {self.role!r}")


class ImageResolver:
    """Turns image references written in a log into :class:`ImageRef`, confined to a root folder.

    Relative paths are read relative to ``root``; any path (relative, absolute, ``file://``) that
    lands outside ``root`` is refused here, before the auditor sees it. URLs and data URIs are
    passed on untouched: whether a URL may be fetched is the auditor's :class:`ImageAccess`
    decision.
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
        if value.startswith(("http://", "https://")):
            return ImageRef.parse(value), value
        path_text = value[len("file://") :] if value.startswith("file://") else value
        try:
            path = (self.root / path_text).resolve()
        except (OSError, RuntimeError, ValueError) as exc:
            # A NUL byte (ValueError), a symlink loop, a name too long: one bad record.
            raise InputError(f"image path {value[:200]!r} cannot be resolved: {exc}") from None
        if not path.is_relative_to(self.root):
            raise ImageAccessDenied(f"image path {value!r} is outside the image root {self.root}")
        return ImageRef.from_path(path), str(path)


def _history_turn(message: Message) -> Turn:
    text = message.text
    if message.tool_calls:
        text = "\n".join([text, *(call.render() for call in message.tool_calls)]).strip()
    return Turn(role=message.role, content=text, images=message.images)


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

    The query is the last user message before the assistant turn. Everything else before the
    assistant turn (system prompt, earlier exchanges, tool results) is history, in order.
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
        user_index = next((i for i in range(index - 1, -1, -1) if messages[i].role == "user"), None)
        query = messages[user_index] if user_index is not None else Message(role="user")
        history = tuple(_history_turn(m) for i, m in enumerate(messages[:index]) if i != user_index)
        trace_id = f"{base_id}:{index}" if several else base_id
        trace = Trace(
            query=query.text,
            response=answer.text,
            thinking=answer.thinking,
            images=query.images,
            tool_calls=answer.tool_calls,
            history=history,
            id=trace_id,
            model=model,
            metadata={"source": source_path, "line": line, "turn": index},
        )
        yield LogItem(
            id=trace_id,
            source=Source(source_path, line, index),
            trace=trace,
            expected_risk=expected_risk,
            images=query.image_names,
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
