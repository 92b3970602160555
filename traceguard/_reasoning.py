"""Separate a model's reasoning ("thinking") from its response, whatever the provider's format.

Every integration hands provider payloads to these pure functions and gets ``(thinking,
response)`` back: ``thinking`` is None when the model exposed no reasoning (an empty string when
it exposed an empty one), and ``response`` never contains the thinking.

Formats understood:

- ``<think>…</think>`` inside the text (DeepSeek-R1, QwQ, Qwen3 without a server-side parser),
  including several blocks, a missing opening tag (the R1 chat template pre-inserts it, so only
  ``</think>`` appears) and an unclosed block (the stream stopped while thinking).
- OpenAI-compatible chat messages: ``reasoning_content`` (DeepSeek, older vLLM), ``reasoning``
  (vLLM, OpenRouter), ``reasoning_details`` (OpenRouter), content part lists.
- OpenAI Responses API output items (``reasoning`` summaries and text, ``message`` output text).
- LangChain ``AIMessage`` / ``AIMessageChunk`` (``additional_kwargs`` and content blocks).
- Streams of any of those, incrementally, with :class:`ReasoningStream`.

Nothing here imports a provider SDK: payloads are read by duck typing (mappings, attributes and
pydantic ``model_extra``), so dicts and SDK objects both work.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ._think_tags import Segments, TagScanner, join_thinking, split_parts, split_think_tags

__all__ = [
    "ReasoningStream",
    "extract_chat_message",
    "extract_langchain_message",
    "extract_responses_output",
    "reasoning_fields",
    "split_think_tags",
]


_TAIL_CHARS = 32  # how much of the latest text a stream keeps for ``tail``

# Responses API stream events whose ``delta`` is reasoning, keyed to the index naming the part.
_RESPONSES_REASONING_EVENTS = {
    "response.reasoning_summary_text.delta": "summary_index",
    "response.reasoning_text.delta": "content_index",
}
_RESPONSES_TEXT_EVENTS = frozenset({"response.output_text.delta", "response.refusal.delta"})


# -- duck typing --------------------------------------------------------------------------------


def _get(obj: Any, key: str) -> Any:
    """``obj[key]`` for mappings, else the attribute or a pydantic extra field; None if absent."""
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(key)
    value = getattr(obj, key, None)
    if value is None:
        extra = getattr(obj, "model_extra", None)
        if isinstance(extra, Mapping):
            value = extra.get(key)
    return value


def _collect(node: Any, thinking: list[str], text: list[str]) -> None:
    """Walk content parts / output items, sending readable text to ``text`` or ``thinking``.

    Parts with no readable text (images, tool calls, encrypted or redacted reasoning) are skipped.
    """
    if node is None:
        return
    if isinstance(node, str):
        text.append(node)
        return
    if isinstance(node, (bytes, bytearray)):
        return
    if isinstance(node, Sequence):
        for item in node:
            _collect(item, thinking, text)
        return
    kind = _get(node, "type")
    if kind in ("text", "output_text"):
        _append_str(text, _get(node, "text"))
    elif kind == "refusal":
        _append_str(text, _get(node, "refusal"))
    elif kind in ("summary_text", "reasoning_text", "reasoning.text"):
        _append_str(thinking, _get(node, "text"))
    elif kind == "reasoning.summary":  # OpenRouter reasoning_details entry
        _append_str(thinking, _get(node, "summary"))
    elif kind == "thinking":  # Anthropic (str) or Mistral (list of text parts)
        value = _get(node, "thinking")
        if isinstance(value, str):
            thinking.append(value)
        else:
            _collect(value, thinking, thinking)
    elif kind == "reasoning":
        _collect_reasoning(node, thinking)
    elif kind == "message":
        _collect(_get(node, "content"), thinking, text)


def _collect_reasoning(node: Any, thinking: list[str]) -> None:
    """A reasoning object: LangChain's ``reasoning`` key, or Responses ``summary``/``content``."""
    if isinstance(node, str):
        thinking.append(node)
        return
    _append_str(thinking, _get(node, "reasoning"))
    for key in ("summary", "content"):
        parts = _get(node, key)
        if isinstance(parts, Sequence) and not isinstance(parts, str):
            _collect(parts, thinking, thinking)


def _append_str(target: list[str], value: Any) -> None:
    if isinstance(value, str):
        target.append(value)


# -- whole messages -----------------------------------------------------------------------------


def _finish(thinking: list[str], text: list[str]) -> tuple[str | None, str]:
    """Split tags out of the collected text and merge them after the structured thinking."""
    tag_parts, response = split_parts("".join(text))
    return _merge(thinking, tag_parts, response)


def _merge(
    explicit: list[str], tag_parts: list[str] | None, response: str
) -> tuple[str | None, str]:
    """Structured reasoning first, then tagged; the response is trimmed when reasoning exists
    (providers put blank lines between the two)."""
    thinking = join_thinking([*explicit, *(tag_parts or [])])
    return thinking, (response if thinking is None else response.strip())


def reasoning_fields(message: Mapping[str, Any] | Any) -> list[str]:
    """The reasoning an OpenAI-style chat message or stream delta carries in fields of its own.

    The first present of ``reasoning_content``, ``reasoning`` (string) and ``reasoning_details``
    (OpenRouter; encrypted entries ignored), as raw pieces (a delta's pieces concatenate); empty
    when there is none. ``<think>`` tags and thinking parts in ``content`` are not read here.
    """
    thinking: list[str] = []
    for key in ("reasoning_content", "reasoning"):
        value = _get(message, key)
        if isinstance(value, str):
            return [value]
    details = _get(message, "reasoning_details")
    if isinstance(details, Sequence) and not isinstance(details, str):
        _collect(details, thinking, [])
    return thinking


def extract_chat_message(message: Mapping[str, Any] | Any) -> tuple[str | None, str]:
    """``(thinking, response)`` of an OpenAI-style chat completion message (dict or SDK object).

    Reasoning is read from the first present of ``reasoning_content``, ``reasoning`` (string)
    and ``reasoning_details`` (OpenRouter; encrypted entries ignored), then from thinking parts
    and ``<think>`` tags in ``content``, which are always removed from the response.
    """
    thinking = reasoning_fields(message)
    text: list[str] = []
    _collect(_get(message, "content"), thinking, text)
    if not "".join(text).strip():
        _append_str(text, _get(message, "refusal"))
    return _finish(thinking, text)


def extract_responses_output(output: Sequence[Mapping[str, Any] | Any]) -> tuple[str | None, str]:
    """``(thinking, response)`` of an OpenAI Responses API ``output`` list.

    ``reasoning`` items give their ``summary_text`` and ``reasoning_text`` parts; ``message``
    items give their ``output_text`` (and refusal) parts; ``<think>`` tags inside the text are
    split out too. Other items (tool calls, encrypted reasoning) carry no readable text.
    """
    thinking: list[str] = []
    text: list[str] = []
    for item in output:
        if isinstance(item, str):
            continue  # bare strings are not output items; never let them pose as a response
        _collect(item, thinking, text)
    return _finish(thinking, text)


def extract_langchain_message(message: Any) -> tuple[str | None, str]:
    """``(thinking, response)`` of a LangChain ``AIMessage`` / ``AIMessageChunk``.

    Reads ``additional_kwargs["reasoning_content"]`` / ``["reasoning"]`` (string, or a Responses
    reasoning dict with ``summary``), content blocks of type ``reasoning`` and ``thinking``, text
    blocks, and ``<think>`` tags in the text. ``content_blocks`` (langchain-core 1.x) is consulted
    only when those hold no reasoning, so older cores work and nothing is counted twice.
    """
    thinking: list[str] = []
    kwargs = _get(message, "additional_kwargs")
    if isinstance(kwargs, Mapping):
        for key in ("reasoning_content", "reasoning"):
            value = kwargs.get(key)
            if value is not None:
                _collect_reasoning(value, thinking)
                break
    text: list[str] = []
    _collect(_get(message, "content"), thinking, text)
    if not thinking:
        for block in _content_blocks(message):
            if _get(block, "type") == "reasoning":
                _collect_reasoning(block, thinking)
    return _finish(thinking, text)


def _content_blocks(message: Any) -> Sequence[Any]:
    try:
        blocks = getattr(message, "content_blocks", None)
    except Exception:  # a best-effort view: .content was already read
        return ()
    return blocks if isinstance(blocks, Sequence) and not isinstance(blocks, str) else ()


# -- streams ------------------------------------------------------------------------------------


class ReasoningStream:
    """Accumulates a streamed answer into thinking and response, chunk by chunk.

    Feed content deltas with :meth:`feed_text` (``<think>`` tags may be split across chunks at
    any character) and explicit reasoning deltas with :meth:`feed_reasoning`, or use the
    provider-shaped helpers. At any point :attr:`thinking` and :attr:`response` are what the
    non-streaming extractors would return for everything fed so far. Feeding costs
    O(len(piece)); reading the properties joins the pieces once per change.
    """

    def __init__(self) -> None:
        self._segments = Segments()
        self._scanner = TagScanner(self._segments)
        self._reasoning: list[list[str]] = []
        self._reasoning_key: object = None
        self._reasoning_open = False
        self._cache: tuple[str | None, str] | None = None
        self._fed = 0
        self._tail = ""

    # -- feeding --------------------------------------------------------------------------

    def feed_text(self, piece: str) -> None:
        """A content (response) delta; may carry ``<think>`` tags or parts of them."""
        if not piece:
            return
        self._cache = None
        self._count(piece)
        self._scanner.feed(piece)
        if piece.strip():
            self._reasoning_open = False

    def feed_reasoning(self, piece: str) -> None:
        """An explicit reasoning delta (``reasoning_content``, summary text, thinking delta)."""
        self._feed_reasoning(piece, None)

    def feed_chat_delta(self, delta: Mapping[str, Any] | Any) -> None:
        """An OpenAI-style chat ``choices[i].delta`` (dict or SDK object).

        Reasoning is fed before content, since one chunk can carry the end of the reasoning and
        the start of the answer.
        """
        for part in reasoning_fields(delta):
            self.feed_reasoning(part)
        self._feed_content(_get(delta, "content"))

    def feed_responses_event(self, event: Mapping[str, Any] | Any) -> None:
        """An OpenAI Responses API stream event; events without text are ignored."""
        kind = _get(event, "type")
        delta = _get(event, "delta")
        if not isinstance(kind, str) or not isinstance(delta, str):
            return
        if kind in _RESPONSES_REASONING_EVENTS:
            # A new summary or content part starts a new paragraph, as in the final output.
            key = (kind, _get(event, "item_id"), _get(event, _RESPONSES_REASONING_EVENTS[kind]))
            self._feed_reasoning(delta, key)
        elif kind in _RESPONSES_TEXT_EVENTS:
            self.feed_text(delta)

    def feed_langchain_chunk(self, chunk: Any) -> None:
        """A LangChain ``AIMessageChunk`` from ``stream()`` / ``astream()``."""
        kwargs = _get(chunk, "additional_kwargs")
        if isinstance(kwargs, Mapping):
            for key in ("reasoning_content", "reasoning"):
                value = kwargs.get(key)
                if value is not None:
                    parts: list[str] = []
                    _collect_reasoning(value, parts)
                    for part in parts:
                        self.feed_reasoning(part)
                    break
        self._feed_content(_get(chunk, "content"))

    def _feed_content(self, content: Any) -> None:
        if isinstance(content, str):
            self.feed_text(content)
            return
        blocks = content if isinstance(content, Sequence) else ()
        for block in blocks:
            thinking: list[str] = []
            text: list[str] = []
            _collect(block, thinking, text)
            for part in thinking:
                self.feed_reasoning(part)
            for part in text:
                self.feed_text(part)

    def _feed_reasoning(self, piece: str, key: object) -> None:
        self._cache = None
        self._count(piece)
        if not self._reasoning or (key != self._reasoning_key and "".join(self._reasoning[-1])):
            self._reasoning.append([])
        self._reasoning_key = key
        self._reasoning[-1].append(piece)
        self._reasoning_open = True

    def _count(self, piece: str) -> None:
        self._fed += len(piece)
        self._tail = (self._tail + piece)[-_TAIL_CHARS:]

    # -- reading --------------------------------------------------------------------------

    @property
    def fed_chars(self) -> int:
        """Characters fed so far, thinking and response alike: how far the output has grown.

        Counted as pieces arrive (O(1) to read), for checkpoint schedules.
        """
        return self._fed

    @property
    def tail(self) -> str:
        """The last few characters fed (at most 32), for spotting sentence ends cheaply."""
        return self._tail

    @property
    def thinking_open(self) -> bool:
        """True while the model is visibly reasoning: inside a ``<think>`` block, or after an
        explicit reasoning delta with no response text since.

        Reasoning that only a later lone ``</think>`` reveals (an R1-style template that
        pre-inserts the opening tag) reads as response until then.
        """
        return self._segments.inside or self._reasoning_open

    def result(self) -> tuple[str | None, str]:
        """``(thinking, response)`` for everything fed so far."""
        if self._cache is None:
            tag_parts, response = self._segments.result(self._scanner.pending)
            explicit = ["".join(part) for part in self._reasoning]
            self._cache = _merge(explicit, tag_parts, response)
        return self._cache

    @property
    def thinking(self) -> str | None:
        """The reasoning so far; None while none was exposed."""
        return self.result()[0]

    @property
    def response(self) -> str:
        """The response so far, never containing the thinking."""
        return self.result()[1]

    @property
    def thinking_done(self) -> bool:
        """True once the thinking is known to be complete.

        That is: a ``</think>`` was seen and no block is open, or explicit reasoning was followed
        by response content. Streams that expose no reasoning never turn it on. It turns back off
        if the model opens another reasoning block, so integrations audit the final result too.
        """
        if self._segments.inside or self._reasoning_open:
            return False
        return bool(self._reasoning) or self._segments.closed_any
