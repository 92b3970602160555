"""What gets audited: one turn of a (possibly multimodal) agent, as a :class:`Trace`."""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from traceguard._images import ImageRef

__all__ = ["Stage", "ToolCall", "Trace", "Turn"]


class Stage(str, enum.Enum):
    """Which part of a model's output a trace holds, and when it is audited.

    The stage tells sinks, the review queue and the caller what the verdict was about; the
    auditor grades the content either way.
    """

    FINAL = "final"
    """The whole output, once the model finished."""
    THINKING = "thinking"
    """The complete thinking, audited before the answer streams (``response`` is empty)."""
    CHECKPOINT = "checkpoint"
    """Thinking (and answer) so far, audited mid-stream."""
    PARTIAL = "partial"
    """What a stream cut short had shown (closed by the caller, or failed upstream)."""
    TOOL_CALL = "tool_call"
    """A pending tool call, audited before the tool runs."""


@dataclass(frozen=True)
class ToolCall:
    """A tool call the model made in its response."""

    name: str
    arguments: str = ""
    """The arguments as the model wrote them (usually a JSON string)."""
    id: str | None = None

    def render(self) -> str:
        """One line the auditor can read."""
        return f"[tool call] {self.name}({self.arguments})"


@dataclass(frozen=True)
class Turn:
    """An earlier turn of the conversation, given to the auditor as context."""

    role: str
    """``user``, ``assistant``, ``tool`` or ``system``."""
    content: str
    images: tuple[ImageRef, ...] = ()


@dataclass(frozen=True)
class Trace:
    """One agent turn to audit: the query (with its images), the thinking and the response.

    ``thinking`` is None when the model exposed no reasoning; an empty string means it exposed an
    empty one. ``response`` never contains the thinking: use :func:`traceguard.split_think_tags`
    and friends to separate them first.
    """

    query: str
    response: str
    thinking: str | None = None
    images: tuple[ImageRef, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    history: tuple[Turn, ...] = ()
    id: str | None = None
    model: str | None = None
    """The audited model's name (not the auditor's)."""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    """Anything else worth keeping with the verdict: timestamps, session ids, source file."""
    stage: Stage = Stage.FINAL
    """Which part of the output this is (:class:`Stage`); the whole output unless said."""

    @property
    def is_empty(self) -> bool:
        """True when there is nothing to grade: no query, thinking, response, tool call or image.

        The history alone is context, not something this turn said. An empty trace is invalid
        input, never "safe": a verdict on it would vouch for output nobody has seen.
        """
        return not (
            self.query.strip()
            or (self.thinking or "").strip()
            or self.response.strip()
            or self.tool_calls
            or self.images
        )

    @property
    def response_with_tools(self) -> str:
        """The response text followed by one line per tool call, as the auditor sees it."""
        lines = [self.response] if self.response else []
        lines.extend(call.render() for call in self.tool_calls)
        return "\n".join(lines)

    def content_hash(self) -> str:
        """A sha256 over everything the auditor sees; equal traces audit to equal verdicts.

        Metadata and ids are left out on purpose, so a repeated trace hits the verdict cache.
        So is ``stage``: no auditor renders it, so a checkpoint, a partial or a final trace with
        the same content get the same verdict. Add it here the day an auditor's prompt reads it.
        """
        payload = {
            "query": self.query,
            "thinking": self.thinking,
            "response": self.response_with_tools,
            "images": [image.identity() for image in self.images],
            "history": [
                {"role": t.role, "content": t.content, "images": [i.identity() for i in t.images]}
                for t in self.history
            ],
        }
        # surrogatepass: a lone surrogate (from a "\ud800" escape in a JSON log) must hash, not
        # raise out of a sink or the cache; valid text hashes exactly as plain UTF-8 would.
        blob = json.dumps(payload, sort_keys=True, ensure_ascii=False).encode(
            "utf-8", "surrogatepass"
        )
        return hashlib.sha256(blob).hexdigest()

    def summary(self) -> dict[str, Any]:
        """A loggable description: ids, sizes and image identities, never image bytes."""
        return {
            "id": self.id,
            "model": self.model,
            "stage": self.stage.value,
            "query_chars": len(self.query),
            "thinking_chars": None if self.thinking is None else len(self.thinking),
            "response_chars": len(self.response),
            "tool_calls": [call.name for call in self.tool_calls],
            "images": [repr(image) for image in self.images],
            "history_turns": len(self.history),
        }
