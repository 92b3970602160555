"""A chat model that audits another one's output and returns it allowed, redacted or not at all."""

from __future__ import annotations

import functools
import logging
import operator
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.tools import BaseTool
from pydantic import ConfigDict, field_validator

from traceguard._chat import RequestContext
from traceguard._checkpoints import AsyncBackgroundAudit, BackgroundAudit, CheckpointClock
from traceguard._decision import Decision
from traceguard._guard import Guard
from traceguard._reasoning import ReasoningStream
from traceguard._streaming import blocked_error
from traceguard._trace import Stage, Trace

from ._langchain_messages import (
    METADATA_KEY,
    as_chunk,
    decision_metadata,
    model_name,
    output_of,
    redact_message,
    request_context,
    warn_hidden_reasoning,
    with_decision,
)

__all__ = ["GuardedChatModel", "StreamMode", "guard_runnable"]

logger = logging.getLogger("traceguard.integrations.langchain")

StreamMode = Literal["buffer", "passthrough"]


def _as_ai_message(message: Any) -> AIMessage:
    if isinstance(message, AIMessage):
        return message
    if isinstance(message, BaseMessage):
        return AIMessage(content=message.content, id=message.id)
    raise TypeError(f"the guarded runnable returned {type(message).__name__}, not a message")


class GuardedChatModel(BaseChatModel):
    """Wraps a chat model (any ``Runnable`` that returns a message) and audits every answer.

    The answer is returned unchanged on allow; on redact the copy the policy allows (thinking
    removed from ``additional_kwargs``, content blocks and ``<think>`` tags, or the response
    replaced by the refusal, with its tool calls dropped); on block
    :class:`~traceguard.Blocked` (:class:`~traceguard.Escalated`) is raised. Being a
    ``BaseChatModel`` it composes in chains (``prompt | guarded``), takes ``bind_tools`` (the
    bound model stays guarded) and can be handed to ``langchain.agents.create_agent``.

    Streams: ``stream_mode="buffer"`` (default) reads the inner stream to the end, audits, and
    only then yields (the original chunks on allow, one redacted chunk on redact): nothing
    unaudited is released. ``"passthrough"`` yields chunks as they arrive and audits at the end,
    raising ``Blocked`` then; what was streamed is out, and a redaction cannot be applied to it
    (it is logged). The inner model also streams when LangChain streams ``invoke`` internally
    (``astream_events``, LangGraph ``stream_mode="messages"``), so the same rules hold there.

    With checkpoints on the guard (``Guard(..., checkpoints=AuditSchedule(...))``) the thinking
    is audited while it streams, in the background and one audit at a time; a blocking
    checkpoint closes the inner stream and raises ``Blocked`` (README, "Mid-stream audit").
    """

    model: Runnable[LanguageModelInput, BaseMessage]
    """The guarded model (a chat model, or a binding of one)."""
    guard: Guard
    stream_mode: StreamMode = "buffer"

    model_config = ConfigDict(arbitrary_types_allowed=True)

    @field_validator("stream_mode")
    @classmethod
    def _known_mode(cls, value: str) -> str:
        if value not in ("buffer", "passthrough"):
            raise ValueError("stream_mode must be 'buffer' or 'passthrough'")
        return value

    @property
    def _llm_type(self) -> str:
        return "traceguard-guarded"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"guarded_model": model_name(self.model), "stream_mode": self.stream_mode}

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> GuardedChatModel:
        """Bind tools to the inner model; the result is guarded the same way."""
        bind = getattr(self.model, "bind_tools", None)
        if bind is None:
            raise NotImplementedError(f"{type(self.model).__name__} does not support bind_tools")
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return self.model_copy(update={"model": bind(tools, **kwargs)})

    # -- the shared, I/O-free steps ------------------------------------------------------------

    def _trace(self, messages: list[BaseMessage], output: BaseMessage, run_id: Any) -> Trace:
        context = self._context(messages, run_id)
        thinking, response, calls = output_of(output)
        warn_hidden_reasoning(output, thinking, context.model)
        return context.trace(
            thinking=thinking,
            response=response,
            tool_calls=calls,
            trace_id=None if run_id is None else str(run_id),
        )

    def _context(self, messages: list[BaseMessage], run_id: Any) -> RequestContext:
        return request_context(
            messages,
            model=model_name(self.model),
            metadata={
                "integration": "langchain",
                "run_id": None if run_id is None else str(run_id),
            },
        )

    def _check_checkpoint(self, traces: list[Trace]) -> list[Decision]:
        return self.guard.checkpoint_guard.check_batch(traces, wait_for_review=False)

    async def _acheck_checkpoint(self, traces: list[Trace]) -> list[Decision]:
        return await self.guard.checkpoint_guard.acheck_batch(traces, wait_for_review=False)

    def _apply(self, message: AIMessage, decision: Decision) -> AIMessage:
        """The message ``decision`` lets through, carrying the decision in its
        ``response_metadata["traceguard"]``."""
        if decision.blocked:
            # Also under Guard(raise_on_block=False): returning the output would let it through.
            raise blocked_error(decision)
        summary = decision_metadata(decision)
        if not decision.redacted:
            annotated: AIMessage = with_decision(message, summary)
            return annotated
        # The answer replaced (the refuse strategy, or drop_thinking on an answer without
        # thinking) drops the tool calls too: a refusal must not run what it refused.
        _, text, _ = output_of(message)
        refuse = self.guard.policy.redaction.strategy == "refuse" or decision.response != text
        redacted: AIMessage = with_decision(
            redact_message(message, decision.response or "", refuse=refuse), summary
        )
        return redacted

    def _passthrough_done(self, message: AIMessage, decision: Decision) -> None:
        self._apply(message, decision)  # raises on block
        if decision.redacted:
            logger.warning(
                "trace %s: policy says redact but the stream was passed through unaudited; "
                "use stream_mode='buffer' to redact streams",
                decision.trace_id,
            )

    @staticmethod
    def _config() -> RunnableConfig:
        # The inner model runs without the caller's callbacks, including those inherited from an
        # enclosing chain: a streaming handler (astream_events, LangGraph "messages") would
        # otherwise receive its tokens before the audit. Callers see this run's audited output.
        return {"callbacks": []}

    def _answer(self, message: AIMessage, decision: Decision) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._apply(message, decision))])

    # -- sync ----------------------------------------------------------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        message = _as_ai_message(self.model.invoke(messages, self._config(), stop=stop, **kwargs))
        decision = self.guard.check(self._trace(messages, message, _run_id(run_manager)))
        return self._answer(message, decision)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        buffer = _StreamBuffer(self, messages, _run_id(run_manager))
        audits = BackgroundAudit(self._check_checkpoint)
        inner = iter(self.model.stream(messages, self._config(), stop=stop, **kwargs))
        try:
            for chunk in inner:
                released = buffer.take(chunk)
                buffer.heard(audits.done())  # raises Blocked: the finally closes the inner stream
                traces = buffer.checkpoint_traces(in_flight=audits.pending)
                if traces:
                    audits.start(traces)
                yield from released
            buffer.heard(audits.wait())
        finally:
            close = getattr(inner, "close", None)
            if close is not None:
                close()  # a blocked stream stops the model it reads (and its HTTP request)
        trace = buffer.end()
        yield from buffer.release(self.guard.check(trace))

    # -- async ---------------------------------------------------------------------------------

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        raw = await self.model.ainvoke(messages, self._config(), stop=stop, **kwargs)
        message = _as_ai_message(raw)
        decision = await self.guard.acheck(self._trace(messages, message, _run_id(run_manager)))
        return self._answer(message, decision)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        buffer = _StreamBuffer(self, messages, _run_id(run_manager))
        audits: AsyncBackgroundAudit[Any] = AsyncBackgroundAudit(self._acheck_checkpoint)
        inner = self.model.astream(messages, self._config(), stop=stop, **kwargs).__aiter__()
        try:
            while True:
                chunk, decided = await audits.pull(inner)
                if decided is not None:  # heard even while the inner model is silent
                    buffer.heard(decided)
                elif chunk is None:
                    break
                else:
                    released = buffer.take(chunk)
                    buffer.heard(audits.done())
                    for out in released:
                        yield out
                traces = buffer.checkpoint_traces(in_flight=audits.pending)
                if traces:
                    audits.start(traces)
            buffer.heard(await audits.wait())
        finally:
            await audits.cancel()
            close = getattr(inner, "aclose", None)
            if close is not None:
                await close()
        trace = buffer.end()
        for out in buffer.release(await self.guard.acheck(trace)):
            yield out


def _run_id(run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None) -> Any:
    return run_manager.run_id if run_manager else None


class _StreamBuffer:
    """The I/O-free side of a guarded stream: which chunks go out when, and what is audited.

    Driven by ``_stream`` / ``_astream``: :meth:`take` each inner chunk and release what it
    returns, then audit the trace from :meth:`end` and release :meth:`release` of the decision.
    """

    def __init__(self, model: GuardedChatModel, messages: list[BaseMessage], run_id: Any) -> None:
        self._model = model
        self._messages = messages
        self._run_id = run_id
        self._passthrough = model.stream_mode == "passthrough"
        self._chunks: list[AIMessageChunk] = []
        self._message: AIMessage | None = None
        schedule = model.guard.checkpoints
        self._clock = None if schedule is None else CheckpointClock(schedule)
        self._reasoning = ReasoningStream()

    def take(self, chunk: Any) -> list[ChatGenerationChunk]:
        """Keep ``chunk``; return what to release now (it, in passthrough mode)."""
        if not isinstance(chunk, AIMessageChunk):
            raise TypeError(f"the guarded runnable streamed {type(chunk).__name__}")
        self._chunks.append(chunk)
        if self._clock is not None:
            self._reasoning.feed_langchain_chunk(chunk)
        return [ChatGenerationChunk(message=chunk)] if self._passthrough else []

    def checkpoint_traces(self, *, in_flight: bool) -> list[Trace]:
        """The partial output to audit now, if a checkpoint is due and none is in flight."""
        if self._clock is None:
            return []
        streams = {0: self._reasoning}
        if not self._clock.due(streams) or in_flight:
            return []
        self._clock.taken(streams)
        thinking, response = self._reasoning.result()
        context = self._model._context(self._messages, self._run_id)
        return [
            context.trace(
                thinking=thinking,
                response=response,
                stage=Stage.CHECKPOINT,
                metadata={"checkpoint": self._clock.count},
            )
        ]

    def heard(self, decisions: list[Decision] | None) -> None:
        """A finished checkpoint's decisions: raise when one blocks (only a block acts now;
        the final audit sees all of it and decides the rest)."""
        for decision in decisions or ():
            if decision.blocked:
                raise blocked_error(decision)

    def end(self) -> Trace:
        """The trace of the whole streamed answer."""
        self._message = _merged(self._chunks)
        return self._model._trace(self._messages, self._message, self._run_id)

    def release(self, decision: Decision) -> list[ChatGenerationChunk]:
        """What is left to release under ``decision`` (or raise when it is blocked)."""
        if self._message is None:
            raise RuntimeError("release() before end()")
        if self._passthrough:
            self._model._passthrough_done(self._message, decision)
            return []
        final = self._model._apply(self._message, decision)
        if not decision.redacted and self._chunks:
            # The original chunks, the last one carrying the decision (merged, the message
            # has it in its response_metadata as invoke's does).
            *head, last = self._chunks
            summary = final.response_metadata[METADATA_KEY]
            chunks = [*head, with_decision(last, summary)]
            return [ChatGenerationChunk(message=chunk) for chunk in chunks]
        return [ChatGenerationChunk(message=as_chunk(final))]  # one redacted chunk


def _merged(chunks: list[AIMessageChunk]) -> AIMessage:
    """The whole streamed message (an ``AIMessageChunk`` is an ``AIMessage``)."""
    if not chunks:
        return AIMessage(content="")
    merged: AIMessageChunk = functools.reduce(operator.add, chunks)
    return merged


def guard_runnable(
    model: Runnable[LanguageModelInput, BaseMessage],
    guard: Guard,
    *,
    stream_mode: StreamMode = "buffer",
) -> GuardedChatModel:
    """Wrap ``model`` so that every answer is audited and returned allowed, redacted or blocked.

    See :class:`GuardedChatModel` for what each decision does to ``invoke`` / ``batch`` /
    ``stream`` and their async twins, and for the two stream modes.
    """
    return GuardedChatModel(model=model, guard=guard, stream_mode=stream_mode)
