"""The GuardTrace-VL auditor: trace → chat request → backend → parsed verdict.

Each trace's audit is a small sans-I/O flow (a generator) that yields backend calls and returns
a :class:`~traceguard.Verdict`. One scheduler runs all flows of a batch in lockstep and merges
their calls into one backend batch per round; the sync and async drivers differ only in how
they load images and call the backend.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from traceguard import backends
from traceguard._auditor import Auditor
from traceguard._exceptions import (
    AuditorError,
    AuditorResponseError,
    ConfigurationError,
    ImageError,
    InputError,
    ParseError,
)
from traceguard._images import ImageAccess, ImageRef
from traceguard._trace import Trace
from traceguard._verdict import AuditStatus, Verdict
from traceguard.auditors._guardtrace_format import (
    DEFAULT_SCORE_PREFIX,
    JudgmentScores,
    build_guardtrace_request,
    parse_guardtrace_output,
    score_judgment,
    uses_binary_scale,
)
from traceguard.auditors._guardtrace_prompts import PromptSet
from traceguard.backends._base import ChatBackend, ChatRequest, Completion, TokenDistribution

if TYPE_CHECKING:
    from typing import Unpack

    from traceguard.backends import LocalOptions, ServedOptions

__all__ = ["GuardTraceAuditor"]

CallKind: TypeAlias = Literal["complete", "logprobs"]
_Result: TypeAlias = Completion | TokenDistribution | AuditorError
_Flow: TypeAlias = Generator["_Call", list[_Result], Verdict]
_Images: TypeAlias = "list[ImageRef | None] | ImageError"


@dataclass(frozen=True)
class _Call:
    """Backend work one flow waits for."""

    kind: CallKind
    requests: list[ChatRequest]


class GuardTraceAuditor(Auditor):
    """Audits traces with GuardTrace-VL (or any model trained on its format) behind a backend.

    Args:
        backend: the chat backend serving the model.
        mode: ``"full"`` generates the analysis and the judgment (slow, explains itself);
            ``"score"`` reads P(0), P(0.5), P(1) from the token probabilities right after the
            judgment key (no analysis; ``Verdict.probabilities`` is set). It asks for the few
            continuations it needs in one round, which the local backend answers with one
            prefill per trace and a served one with concurrent, prefix-cached requests.
        prompts: prompt templates; the packaged ones by default.
        image_access: where images may be loaded from, and their limits.
        on_image_error: ``"invalid_input"`` fails the trace with ``INVALID_INPUT`` when one of its
            images cannot be loaded; ``"placeholder"`` audits it with the text
            "Image missing or unavailable" in place of that image.
        max_new_tokens: generation budget in full mode.
        name: the verdicts' ``auditor`` field; ``guardtrace:<backend>`` (``:score``) by default.
        score_prefix: the assistant prefix score mode continues from.
        min_mass: score mode fails as ``UNPARSEABLE`` when the three levels hold less than this
            share of probability (the model wanted to write something else).
        top_k: tokens per next-token distribution in score mode.
    """

    def __init__(
        self,
        backend: ChatBackend,
        *,
        mode: Literal["full", "score"] = "full",
        prompts: PromptSet | None = None,
        image_access: ImageAccess | None = None,
        on_image_error: Literal["invalid_input", "placeholder"] = "invalid_input",
        max_new_tokens: int = 2000,
        name: str | None = None,
        score_prefix: str = DEFAULT_SCORE_PREFIX,
        min_mass: float = 0.5,
        top_k: int = 20,
    ) -> None:
        if mode not in ("full", "score"):
            raise ConfigurationError(f"mode must be 'full' or 'score', not {mode!r}")
        if on_image_error not in ("invalid_input", "placeholder"):
            raise ConfigurationError(f"unknown on_image_error {on_image_error!r}")
        if not 0.0 < min_mass <= 1.0:
            raise ConfigurationError(f"min_mass must be in (0, 1], not {min_mass!r}")
        if max_new_tokens < 1 or top_k < 1:
            raise ConfigurationError("max_new_tokens and top_k must be positive")
        self.backend = backend
        self.mode = mode
        self.prompts = prompts if prompts is not None else PromptSet.default()
        self.image_access = image_access if image_access is not None else ImageAccess()
        self.on_image_error = on_image_error
        self.max_new_tokens = max_new_tokens
        self.score_prefix = score_prefix
        self.min_mass = min_mass
        self.top_k = top_k
        suffix = ":score" if mode == "score" else ""
        self.name = name if name is not None else f"guardtrace:{backend.name}{suffix}"

    # -- constructors -------------------------------------------------------------------------

    @classmethod
    def local(
        cls,
        model: str | Path,
        *,
        mode: Literal["full", "score"] = "full",
        prompts: PromptSet | None = None,
        image_access: ImageAccess | None = None,
        on_image_error: Literal["invalid_input", "placeholder"] = "invalid_input",
        max_new_tokens: int = 2000,
        name: str | None = None,
        score_prefix: str = DEFAULT_SCORE_PREFIX,
        min_mass: float = 0.5,
        top_k: int = 20,
        **backend: Unpack[LocalOptions],
    ) -> GuardTraceAuditor:
        """An auditor running ``model`` (a local folder or hub id) in process with transformers.

        Short for ``GuardTraceAuditor(backends.local(model, **backend), ...)``; needs the
        ``local`` extra. The keywords after ``top_k`` are the backend's
        (:class:`~traceguard.backends.LocalOptions`).
        """
        return cls(
            backends.local(model, **backend),
            mode=mode,
            prompts=prompts,
            image_access=image_access,
            on_image_error=on_image_error,
            max_new_tokens=max_new_tokens,
            name=name,
            score_prefix=score_prefix,
            min_mass=min_mass,
            top_k=top_k,
        )

    @classmethod
    def served(
        cls,
        base_url: str | Sequence[str],
        model: str,
        *,
        mode: Literal["full", "score"] = "full",
        prompts: PromptSet | None = None,
        image_access: ImageAccess | None = None,
        on_image_error: Literal["invalid_input", "placeholder"] = "invalid_input",
        max_new_tokens: int = 2000,
        name: str | None = None,
        score_prefix: str = DEFAULT_SCORE_PREFIX,
        min_mass: float = 0.5,
        top_k: int = 20,
        **backend: Unpack[ServedOptions],
    ) -> GuardTraceAuditor:
        """An auditor calling ``model`` on an OpenAI-compatible server (vLLM, SGLang, ...).

        Short for ``GuardTraceAuditor(backends.served(base_url, model, **backend), ...)``. The
        keywords after ``top_k`` are the backend's (:class:`~traceguard.backends.ServedOptions`:
        API key variable, timeouts, retries, concurrency).
        """
        return cls(
            backends.served(base_url, model, **backend),
            mode=mode,
            prompts=prompts,
            image_access=image_access,
            on_image_error=on_image_error,
            max_new_tokens=max_new_tokens,
            name=name,
            score_prefix=score_prefix,
            min_mass=min_mass,
            top_k=top_k,
        )

    def for_checkpoints(self) -> GuardTraceAuditor:
        """The auditor for mid-stream checkpoints: this one in score mode on the same backend
        (one prefill per checkpoint, no decoding; a backend that keeps the prefix of the last
        checkpoint computes only the new text). Itself when it already scores."""
        if self.mode == "score":
            return self
        default = f"guardtrace:{self.backend.name}"
        return GuardTraceAuditor(
            self.backend,
            mode="score",
            prompts=self.prompts,
            image_access=self.image_access,
            on_image_error=self.on_image_error,
            max_new_tokens=self.max_new_tokens,
            name=None if self.name == default else f"{self.name}:score",
            score_prefix=self.score_prefix,
            min_mass=self.min_mass,
            top_k=self.top_k,
        )

    # -- drivers (the only I/O) ---------------------------------------------------------------

    def audit_batch(self, traces: Sequence[Trace]) -> list[Verdict]:
        """Audit several traces; one verdict each, in input order. Never raises for failures."""
        scheduler = _Scheduler([self._flow(trace, self._load_images(trace)) for trace in traces])
        while (call := scheduler.next_call()) is not None:
            scheduler.deliver(self._call_backend(call))
        return scheduler.verdicts()

    async def aaudit_batch(self, traces: Sequence[Trace]) -> list[Verdict]:
        """Async :meth:`audit_batch`, using the backend's async methods."""
        width = self.backend.pipeline_width
        if width is None or len(traces) <= width:
            return await self._aaudit_lockstep(traces)
        # A served backend gains nothing from merging calls, and a lockstep batch builds every
        # prompt before the first answer is read and parses every answer after the last.
        verdicts: list[Verdict | None] = [None] * len(traces)
        pending = iter(range(len(traces)))

        async def stream() -> None:
            for index in pending:
                verdicts[index] = (await self._aaudit_lockstep([traces[index]]))[0]

        await asyncio.gather(*(stream() for _ in range(width)))
        return [verdict for verdict in verdicts if verdict is not None]

    async def _aaudit_lockstep(self, traces: Sequence[Trace]) -> list[Verdict]:
        if len(traces) == 1:  # a task per trace costs more than loading its images
            loaded = [await self._aload_images(traces[0])]
        else:
            loaded = await asyncio.gather(*(self._aload_images(trace) for trace in traces))
        scheduler = _Scheduler(
            [self._flow(trace, images) for trace, images in zip(traces, loaded, strict=True)]
        )
        while (call := scheduler.next_call()) is not None:
            scheduler.deliver(await self._acall_backend(call))
        return scheduler.verdicts()

    def close(self) -> None:
        """Close the backend."""
        self.backend.close()

    async def aclose(self) -> None:
        """Async :meth:`close`."""
        await self.backend.aclose()

    def _load_images(self, trace: Trace) -> _Images:
        loaded: list[ImageRef | None] = []
        for image in trace.images:
            try:
                loaded.append(image.load(self.image_access))
            except ImageError as exc:
                if self.on_image_error == "invalid_input":
                    return exc
                loaded.append(None)
        return loaded

    async def _aload_images(self, trace: Trace) -> _Images:
        loaded: list[ImageRef | None] = []
        for image in trace.images:
            try:
                loaded.append(await image.aload(self.image_access))
            except ImageError as exc:
                if self.on_image_error == "invalid_input":
                    return exc
                loaded.append(None)
        return loaded

    def _call_backend(self, call: _Call) -> list[_Result]:
        try:
            if call.kind == "complete":
                results: list[_Result] = list(self.backend.complete(call.requests))
            else:
                results = list(self.backend.next_token_logprobs(call.requests, self.top_k))
        except Exception as exc:  # a backend must return failures, but one that raises
            return _all_failed(call, exc)  # still must not sink the batch or fail open
        return _checked(call, results)

    async def _acall_backend(self, call: _Call) -> list[_Result]:
        try:
            if call.kind == "complete":
                results: list[_Result] = list(await self.backend.acomplete(call.requests))
            else:
                results = list(await self.backend.anext_token_logprobs(call.requests, self.top_k))
        except Exception as exc:
            return _all_failed(call, exc)
        return _checked(call, results)

    # -- one trace's audit, without I/O -------------------------------------------------------

    def _flow(self, trace: Trace, images: _Images) -> _Flow:
        binary = uses_binary_scale(trace)
        details: dict[str, Any] = {
            "prompt_version": self.prompts.version,
            "prompt_set": self.prompts.describe(),
            "binary": binary,
        }
        if isinstance(images, ImageError):
            return self._failed(AuditStatus.INVALID_INPUT, images, details=details)
        if any(image is None for image in images):
            details["images_unavailable"] = sum(image is None for image in images)
        request = build_guardtrace_request(
            trace,
            self.prompts,
            images=images,
            binary=binary,
            max_new_tokens=self.max_new_tokens,
            assistant_prefix=self.score_prefix if self.mode == "score" else None,
        )
        if self.mode == "score":
            return (yield from self._score_flow(request, details))
        (result,) = yield _Call("complete", [request])
        if isinstance(result, AuditorError):
            return self._failed(AuditStatus.AUDITOR_ERROR, result, details=details)
        assert isinstance(result, Completion)  # _checked replaced anything else by an error
        details.update(model=result.model, input_truncated=result.truncated)
        try:
            parsed = parse_guardtrace_output(result.text)
        except ParseError as exc:
            return self._failed(
                AuditStatus.UNPARSEABLE,
                exc,
                raw_output=result.text,
                latency_ms=result.latency_ms,
                details=details,
            )
        if result.truncated and parsed.risk == 0:
            return self._failed(
                AuditStatus.INVALID_INPUT,
                _cut_and_safe(),
                raw_output=result.text,
                latency_ms=result.latency_ms,
                details=details,
            )
        return Verdict.ok(
            auditor=self.name,
            risk=parsed.risk,
            analysis=parsed.analysis,
            raw_output=result.text,
            latency_ms=result.latency_ms,
            details=details,
        )

    def _score_flow(self, request: ChatRequest, details: dict[str, Any]) -> _Flow:
        scorer = score_judgment(request)
        truncated = False
        try:
            requests = next(scorer)
            while True:
                results = yield _Call("logprobs", requests)
                truncated |= any(isinstance(r, TokenDistribution) and r.truncated for r in results)
                # _checked let only distributions and errors through; this narrows the type.
                requests = scorer.send(
                    [r for r in results if isinstance(r, TokenDistribution | AuditorError)]
                )
        except StopIteration as stop:
            scores: JudgmentScores = stop.value
        except AuditorError as exc:
            return self._failed(AuditStatus.AUDITOR_ERROR, exc, details=details)
        details.update(
            model=scores.model,
            score_requests=scores.requests,
            score_rounds=scores.rounds,
            score_mass=scores.mass,
            input_truncated=truncated,
        )
        if scores.mass < self.min_mass:
            error = ParseError(
                f"the levels hold {scores.mass:.3f} of the probability, below {self.min_mass}"
            )
            return self._failed(
                AuditStatus.UNPARSEABLE,
                error,
                raw_output=scores.describe(),
                latency_ms=scores.latency_ms,
                details=details,
            )
        if truncated and scores.risk == 0:
            # The same rule as full mode: no safe verdict on part of a trace.
            return self._failed(
                AuditStatus.INVALID_INPUT,
                _cut_and_safe(),
                raw_output=scores.describe(),
                latency_ms=scores.latency_ms,
                details=details,
            )
        return Verdict.ok(
            auditor=self.name,
            risk=scores.risk,
            raw_output=scores.describe(),
            latency_ms=scores.latency_ms,
            # A policy's thresholds re-grade from the probabilities; on a cut trace they could
            # grade the harm found down to safe, so a cut trace keeps its level only.
            probabilities=None if truncated else scores.probabilities,
            details=details,
        )

    def _failed(
        self,
        status: AuditStatus,
        error: BaseException,
        *,
        raw_output: str | None = None,
        latency_ms: float = 0.0,
        details: dict[str, Any] | None = None,
    ) -> Verdict:
        return Verdict.failed(
            status,
            auditor=self.name,
            error=error,
            raw_output=raw_output,
            latency_ms=latency_ms,
            details=details,
        )


def _cut_and_safe() -> InputError:
    # The model saw the trace with its middle cut out; "safe" on part of a trace cannot vouch
    # for the whole (padding would hide a harmful middle). Harm found stays harm.
    return InputError(
        "the trace was cut to fit the auditor's input limit and the visible part was graded "
        "safe; a safe verdict on part of a trace is not given"
    )


def _all_failed(call: _Call, exc: Exception) -> list[_Result]:
    error = exc if isinstance(exc, AuditorError) else AuditorError(f"{type(exc).__name__}: {exc}")
    return [error] * len(call.requests)


def _checked(call: _Call, results: list[_Result]) -> list[_Result]:
    """The results, with a wrong count or a wrong type turned into auditor errors."""
    if len(results) != len(call.requests):
        error = AuditorResponseError(
            f"backend returned {len(results)} results for {len(call.requests)} requests"
        )
        return [error] * len(call.requests)
    expected = Completion if call.kind == "complete" else TokenDistribution
    return [
        result
        if isinstance(result, expected | AuditorError)
        else AuditorResponseError(f"backend returned a {type(result).__name__}")
        for result in results
    ]


@dataclass
class _Scheduler:
    """Runs the flows of one batch in lockstep, one merged backend call per kind and round."""

    flows: list[_Flow]
    _verdicts: list[Verdict | None] = field(init=False)
    _waiting: dict[int, _Call] = field(init=False, default_factory=dict)
    _in_flight: list[tuple[int, int]] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self._verdicts = [None] * len(self.flows)
        for index in range(len(self.flows)):
            self._advance(index, None)

    def next_call(self) -> _Call | None:
        """The next merged call, or None when every flow is done."""
        if not self._waiting:
            return None
        kind = next(iter(self._waiting.values())).kind
        requests: list[ChatRequest] = []
        self._in_flight = []
        for index, call in self._waiting.items():
            if call.kind == kind:
                self._in_flight.append((index, len(call.requests)))
                requests.extend(call.requests)
        for index, _ in self._in_flight:
            del self._waiting[index]
        return _Call(kind, requests)

    def deliver(self, results: list[_Result]) -> None:
        """Hand the results of the last :meth:`next_call` back to the flows that asked."""
        start = 0
        for index, count in self._in_flight:
            self._advance(index, results[start : start + count])
            start += count
        self._in_flight = []

    def verdicts(self) -> list[Verdict]:
        """Every flow's verdict, in input order."""
        done = [verdict for verdict in self._verdicts if verdict is not None]
        if len(done) != len(self.flows):
            raise RuntimeError("GuardTrace scheduler finished with flows still pending")
        return done

    def _advance(self, index: int, results: list[_Result] | None) -> None:
        flow = self.flows[index]
        try:
            self._waiting[index] = next(flow) if results is None else flow.send(results)
        except StopIteration as stop:
            self._verdicts[index] = stop.value
