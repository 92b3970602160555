"""Callback handlers that audit every LLM / chat-model run and tool call, and stop the blocked.

The sync and async handlers share :class:`_RunRecorder` (per-run state, trace building, acting
on a decision) and the recording callbacks of :class:`_Recording`; they differ only in
``on_llm_end`` and ``on_tool_start``, which call the guard or await it.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, ParamSpec
from uuid import UUID

from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, GenerationChunk, LLMResult

from traceguard._chat import RequestContext
from traceguard._checkpoints import AsyncBackgroundAudit, BackgroundAudit, CheckpointClock
from traceguard._decision import Decision
from traceguard._exceptions import Blocked, ConfigurationError, Escalated
from traceguard._guard import Guard
from traceguard._reasoning import ReasoningStream, split_think_tags
from traceguard._trace import Stage, ToolCall, Trace

from ._langchain_messages import output_of, request_context, warn_hidden_reasoning
from ._langchain_tool_calls import (
    PendingToolCalls,
    ToolGate,
    gate_tool_call,
    run_metadata,
    sync_dispatch,
)

__all__ = ["AsyncTraceguardCallbackHandler", "OnRedact", "TraceguardCallbackHandler"]

logger = logging.getLogger("traceguard.integrations.langchain")

OnRedact = Literal["block", "allow"]

_P = ParamSpec("_P")


@dataclass
class _Run:
    """What is known about one run between its start and its end."""

    context: RequestContext
    stream: ReasoningStream = field(default_factory=ReasoningStream)
    streamed: bool = False
    clock: CheckpointClock | None = None
    """When the guard has a checkpoint schedule: which tokens make a checkpoint due."""
    audits: BackgroundAudit | AsyncBackgroundAudit[Any] | None = None


def _model_name(metadata: Mapping[str, Any] | None, kwargs: Mapping[str, Any]) -> str | None:
    if metadata and isinstance(metadata.get("ls_model_name"), str):
        return str(metadata["ls_model_name"])
    params = kwargs.get("invocation_params")
    if isinstance(params, Mapping):
        for key in ("model", "model_name"):
            if isinstance(params.get(key), str):
                return str(params[key])
    return None


class _RunRecorder:
    """Per-run state keyed by ``run_id`` (thread-safe), and the no-I/O steps of both handlers."""

    def __init__(self, guard: Guard, on_redact: OnRedact) -> None:
        if on_redact not in ("block", "allow"):
            raise ValueError("on_redact must be 'block' or 'allow'")
        self.guard = guard
        self.on_redact = on_redact
        self._runs: dict[UUID, _Run] = {}
        self.tool_calls = PendingToolCalls()
        """The reasoning behind the tool calls of audited turns, until their tools start."""
        self._lock = threading.Lock()

    @property
    def active_runs(self) -> int:
        with self._lock:
            return len(self._runs)

    def start_chat(
        self,
        messages: list[list[BaseMessage]],
        run_id: UUID,
        parent_run_id: UUID | None,
        tags: Sequence[str] | None,
        metadata: Mapping[str, Any] | None,
        kwargs: Mapping[str, Any],
    ) -> None:
        # LangChain starts one run per prompt, so ``messages`` holds a single list; join any
        # others rather than drop them, so nothing the model saw escapes the audit.
        flat = [message for prompt in messages for message in prompt]
        context = request_context(
            flat,
            model=_model_name(metadata, kwargs),
            metadata=run_metadata(run_id, parent_run_id, tags, metadata),
        )
        with self._lock:
            self._runs[run_id] = self._new_run(context)

    def _new_run(self, context: RequestContext) -> _Run:
        schedule = self.guard.checkpoints
        return _Run(context, clock=None if schedule is None else CheckpointClock(schedule))

    def start_llm(
        self,
        prompts: list[str],
        run_id: UUID,
        parent_run_id: UUID | None,
        tags: Sequence[str] | None,
        metadata: Mapping[str, Any] | None,
        kwargs: Mapping[str, Any],
    ) -> None:
        context = RequestContext(
            query="\n\n".join(prompts),
            model=_model_name(metadata, kwargs),
            metadata=run_metadata(run_id, parent_run_id, tags, metadata),
        )
        with self._lock:
            self._runs[run_id] = self._new_run(context)

    def token(self, token: Any, chunk: Any, run_id: UUID) -> _Run | None:
        with self._lock:
            run = self._runs.get(run_id)
        if run is None:
            return None
        run.streamed = True
        if isinstance(chunk, ChatGenerationChunk):
            run.stream.feed_langchain_chunk(chunk.message)
        elif isinstance(chunk, GenerationChunk):
            run.stream.feed_text(chunk.text)
        elif isinstance(token, str):
            run.stream.feed_text(token)
        return run

    def run(self, run_id: UUID) -> _Run | None:
        with self._lock:
            return self._runs.get(run_id)

    def checkpoint_traces(self, run: _Run, *, in_flight: bool) -> list[Trace]:
        """The run's partial output to audit now, if a checkpoint is due and none in flight."""
        if run.clock is None:
            return []
        streams = {0: run.stream}
        if not run.clock.due(streams) or in_flight:
            return []
        run.clock.taken(streams)
        thinking, response = run.stream.result()
        return [
            run.context.trace(
                thinking=thinking,
                response=response,
                stage=Stage.CHECKPOINT,
                metadata={"checkpoint": run.clock.count},
            )
        ]

    @staticmethod
    def heard(decisions: list[Decision] | None) -> None:
        """A finished checkpoint's decisions: raise to stop the run when one blocks (only a
        block acts mid-stream; the audit at the end sees all of it and decides the rest)."""
        for decision in decisions or ():
            if decision.blocked:
                raise Escalated(decision) if decision.escalated else Blocked(decision)

    def drop(self, run_id: UUID) -> None:
        with self._lock:
            self._runs.pop(run_id, None)

    def traces(self, response: LLMResult, run_id: UUID) -> list[Trace]:
        """One trace per generation of the run; the streamed text when the result has none."""
        with self._lock:
            run = self._runs.get(run_id)
        if run is None:
            # The handler missed the start (attached mid-run): still audit, without the query.
            logger.warning(
                "run %s ended without a recorded start; auditing its output only", run_id
            )
            run = _Run(RequestContext(metadata=run_metadata(run_id, None, None)))
        outputs: list[tuple[str | None, str, tuple[ToolCall, ...]]] = []
        for generation in (g for prompt in response.generations for g in prompt):
            if isinstance(generation, ChatGeneration):
                output = output_of(generation.message)
                warn_hidden_reasoning(generation.message, output[0], run.context.model)
                outputs.append(output)
            else:
                thinking, text = split_think_tags(generation.text)
                outputs.append((thinking, text, ()))
        if not outputs:
            outputs.append((run.stream.thinking, run.stream.response, ()))
        several = len(outputs) > 1
        return [
            run.context.trace(
                thinking=thinking,
                response=text,
                tool_calls=calls,
                trace_id=f"{run_id}:{index}" if several else str(run_id),
            )
            for index, (thinking, text, calls) in enumerate(outputs)
        ]

    def act(self, trace: Trace, decision: Decision) -> None:
        """Raise when the output must not go on; a callback has no other way to stop it."""
        if decision.blocked:
            # Raised even under ``Guard(raise_on_block=False)``: not raising would let it through.
            raise Escalated(decision) if decision.escalated else Blocked(decision)
        if not decision.redacted:
            return
        if decision.response == trace.response and trace.thinking is None:
            return  # nothing to remove: the caller sees exactly what redaction would show
        if self.on_redact == "block":
            raise Blocked(decision)
        logger.warning(
            "trace %s: policy says redact, which a callback cannot apply; passed unchanged "
            "(use guard_runnable to redact)",
            trace.id,
        )


def _refuse_sync_run(callback: Callable[_P, None]) -> Callable[_P, None]:
    """The async handler's form of a recording callback: the same step, refused in a sync run.

    For a sync run LangChain awaits an async handler's coroutines in a throwaway event loop and
    only logs what they raise, whatever ``raise_error`` says: the audit at the run's end could
    not stop it. These callbacks do no I/O, so they stay plain methods, which LangChain calls
    directly in both kinds of run; raised here, the refusal stops a sync run before the model
    is called.
    """

    @functools.wraps(callback)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> None:
        if sync_dispatch():
            raise ConfigurationError(
                "AsyncTraceguardCallbackHandler is attached to a sync run (invoke, batch, "
                "stream, or a call from a worker thread): LangChain would ignore its block, so "
                "the run is refused. Use TraceguardCallbackHandler for sync calls."
            )
        callback(*args, **kwargs)

    return run


class _HandlerBase:
    """Options and state shared by both handlers."""

    raise_error: bool = True
    """LangChain logs and swallows a handler's exception unless this is set."""
    run_inline: bool = True
    """Run in order, before handlers that are gathered concurrently."""

    def __init__(self, guard: Guard, *, on_redact: OnRedact = "block") -> None:
        super().__init__()
        self._recorder = _RunRecorder(guard, on_redact)

    @property
    def guard(self) -> Guard:
        """The guard auditing the runs."""
        return self._recorder.guard

    @property
    def active_runs(self) -> int:
        """Runs started and not yet ended or failed (0 when idle: state never leaks)."""
        return self._recorder.active_runs


class _Recording(_HandlerBase):
    """The callbacks that only record, written once for both handlers.

    ``self`` is typed as :class:`_HandlerBase` so that the async handler, which cannot inherit
    these methods from ``AsyncCallbackHandler``'s side, can take them through
    :func:`_refuse_sync_run`.
    """

    def on_chat_model_start(
        self: _HandlerBase,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Record the query, images and history of a chat-model run."""
        self._recorder.start_chat(messages, run_id, parent_run_id, tags, metadata, kwargs)

    def on_llm_start(
        self: _HandlerBase,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Record the prompt of a (non-chat) LLM run."""
        self._recorder.start_llm(prompts, run_id, parent_run_id, tags, metadata, kwargs)

    def on_llm_new_token(
        self: _HandlerBase,
        token: str | list[str | dict[str, Any]],
        *,
        chunk: GenerationChunk | ChatGenerationChunk | None = None,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Accumulate a streamed token or reasoning delta."""
        self._recorder.token(token, chunk, run_id)

    def on_llm_error(
        self: _HandlerBase,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Forget a failed run: there is no output to audit."""
        self._recorder.drop(run_id)


class TraceguardCallbackHandler(_Recording, BaseCallbackHandler):
    """Audits the output of every LLM and chat-model run, and raises to stop a blocked one.

    Attach it with ``config={"callbacks": [handler]}`` (or ``model.with_config(...)``, or an
    agent's config): every model call of a chain or tool-calling loop is then audited once, at
    its end, with the earlier messages as history. A block raises
    :class:`~traceguard.Blocked` (:class:`~traceguard.Escalated` for an escalation held as a block)
    out of ``invoke``, ``batch``, ``stream`` and their async twins; verdicts go to the guard's
    sinks.

    Callbacks can stop a run but never change its output. A *redact* decision therefore raises
    ``Blocked`` too (``on_redact="block"``, the default) unless redaction would change nothing;
    ``on_redact="allow"`` lets it through with a warning. Use
    :func:`~traceguard.integrations.langchain.guard_runnable` to deliver redacted output.

    **Tool calls** are audited in ``on_tool_start``, before the tool body runs, with the
    reasoning of the model turn that asked for them (when this handler audited that turn; the
    call's ``tool_call_id`` links them) and the policy's ``tools`` rules. A held-back call raises
    ``Blocked`` (``Escalated``), which keeps the tool from running and stops the run: a callback
    cannot hand the model the policy's tool message instead (``TraceguardMiddleware`` does).
    An agent whose ``ToolNode`` handles every tool error (``handle_tool_errors=True``) turns
    that exception into an error message for the model instead of stopping.

    In async code prefer :class:`AsyncTraceguardCallbackHandler`: this handler audits on the
    calling thread, which there is the event loop.
    """

    def on_llm_new_token(
        self,
        token: str | list[str | dict[str, Any]],
        *,
        chunk: GenerationChunk | ChatGenerationChunk | None = None,
        run_id: UUID,
        **kwargs: Any,
    ) -> None:
        """Accumulate a streamed token; with checkpoints, audit the partial output in the
        background and raise :class:`~traceguard.Blocked` at the first token after one blocks."""
        recorder = self._recorder
        run = recorder.token(token, chunk, run_id)
        if run is None or run.clock is None:
            return
        if not isinstance(run.audits, BackgroundAudit):
            run.audits = BackgroundAudit(self._check_checkpoint)
        recorder.heard(run.audits.done())
        traces = recorder.checkpoint_traces(run, in_flight=run.audits.pending)
        if traces:
            run.audits.start(traces)

    def _check_checkpoint(self, traces: list[Trace]) -> list[Decision]:
        return self.guard.checkpoint_guard.check_batch(traces, wait_for_review=False)

    # parent_run_id, tags and the rest arrive in ``kwargs``; the end of a run needs none of them.
    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        """Audit the run's output; raise :class:`~traceguard.Blocked` to stop it."""
        try:
            run = self._recorder.run(run_id)
            if run is not None and isinstance(run.audits, BackgroundAudit):
                self._recorder.heard(run.audits.wait())
            for trace in self._recorder.traces(response, run_id):
                self._recorder.act(trace, self.guard.check(trace))
                self._recorder.tool_calls.remember(trace)
        finally:
            self._recorder.drop(run_id)

    def on_tool_start(
        self,
        serialized: dict[str, Any],
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Audit the pending tool call before the tool runs; raise to keep it from running."""
        gate_tool_call(
            self.guard,
            self._recorder.tool_calls,
            serialized,
            input_str,
            run_id=run_id,
            parent_run_id=parent_run_id,
            tags=tags,
            metadata=metadata,
            inputs=inputs,
            **kwargs,
        )


class AsyncTraceguardCallbackHandler(_HandlerBase, AsyncCallbackHandler):
    """The async twin of :class:`TraceguardCallbackHandler`, auditing with ``guard.acheck``.

    For ``ainvoke`` / ``abatch`` / ``astream`` / ``astream_events`` only. LangChain runs an async
    handler attached to a *sync* call in a throwaway event loop and swallows its exceptions
    whatever ``raise_error`` says, so it could not stop that run: such a run (``invoke``,
    ``batch``, ``stream``, a call from a worker thread, or a sync call inside a coroutine) is
    refused with :class:`~traceguard.ConfigurationError` before the model is called. Use
    :class:`TraceguardCallbackHandler` for sync calls.
    """

    # Plain methods, not coroutines (see _refuse_sync_run); LangChain calls them inline. A sync
    # run is refused at its start, so the token callback below never sees one.
    on_chat_model_start = _refuse_sync_run(_Recording.on_chat_model_start)  # type: ignore[assignment]
    on_llm_start = _refuse_sync_run(_Recording.on_llm_start)  # type: ignore[assignment]
    on_llm_error = _refuse_sync_run(_Recording.on_llm_error)  # type: ignore[assignment]

    async def on_llm_new_token(
        self,
        token: str | list[str | dict[str, Any]],
        *,
        chunk: GenerationChunk | ChatGenerationChunk | None = None,
        run_id: UUID,
        **kwargs: Any,
    ) -> None:
        """The async twin of :meth:`TraceguardCallbackHandler.on_llm_new_token` (the
        checkpoint audit runs as a task of the event loop)."""
        recorder = self._recorder
        run = recorder.token(token, chunk, run_id)
        if run is None or run.clock is None:
            return
        if not isinstance(run.audits, AsyncBackgroundAudit):
            run.audits = AsyncBackgroundAudit(self._check_checkpoint)
        recorder.heard(run.audits.done())
        traces = recorder.checkpoint_traces(run, in_flight=run.audits.pending)
        if traces:
            run.audits.start(traces)

    async def _check_checkpoint(self, traces: list[Trace]) -> list[Decision]:
        return await self.guard.checkpoint_guard.acheck_batch(traces, wait_for_review=False)

    async def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        """Audit the run's output; raise :class:`~traceguard.Blocked` to stop it."""
        try:
            run = self._recorder.run(run_id)
            if run is not None and isinstance(run.audits, AsyncBackgroundAudit):
                self._recorder.heard(await run.audits.wait())
            for trace in self._recorder.traces(response, run_id):
                self._recorder.act(trace, await self.guard.acheck(trace))
                self._recorder.tool_calls.remember(trace)
        finally:
            self._recorder.drop(run_id)

    # A coroutine function where LangChain awaits it, a plain one in a sync run (a sync tool of an
    # async agent runs in a worker thread), where an awaited block would only be logged.
    on_tool_start = ToolGate()
