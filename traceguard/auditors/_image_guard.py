"""Shared machinery of the chat-based image guards (LlavaGuard, SafeGuard-VL-RL).

These models rate one image per request. :class:`ChatImageAuditor` turns a batch of traces into one
backend batch of per-image requests, parses each answer with the subclass's parser, and merges a
trace's per-image verdicts with :func:`~traceguard.auditors._combine.combine_verdicts`. The sync
and async drivers differ only in how they load images and call the backend.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

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
from traceguard.auditors._combine import combine_verdicts
from traceguard.auditors._image_batch import aload_images, load_images, regroup
from traceguard.backends._base import ChatBackend, ChatRequest, ChatResult, Completion

__all__ = ["ChatImageAuditor", "ImageFinding", "NoImagePolicy"]

NoImagePolicy = Literal["safe", "invalid_input"]


@dataclass(frozen=True)
class ImageFinding:
    """What a parser read from one answer about one image."""

    risk: float
    categories: tuple[str, ...] = ()
    analysis: str = ""
    details: dict[str, Any] | None = None


class ChatImageAuditor(Auditor):
    """Base of the image guards that answer in text: one request per image, then a parser.

    Args:
        backend: serves the model (local ``TransformersBackend`` or ``OpenAICompatibleBackend``).
        image_access: where images may be loaded from, and their limits.
        max_new_tokens: generation budget per image.
        no_image: what a trace without images gets. ``"safe"`` (default): an image guard has
            nothing to rate, so risk 0 with ``details["images"] == 0``; pair it with a trace
            auditor (:class:`~traceguard.auditors.staged.StagedAuditor`) for the text.
            ``"invalid_input"``: fail such traces, for deployments where every turn must carry
            an image.
        name: the verdicts' ``auditor`` field.
    """

    def __init__(
        self,
        backend: ChatBackend,
        *,
        image_access: ImageAccess | None,
        max_new_tokens: int,
        no_image: NoImagePolicy,
        name: str,
    ) -> None:
        if max_new_tokens < 1:
            raise ConfigurationError("max_new_tokens must be positive")
        if no_image not in ("safe", "invalid_input"):
            raise ConfigurationError(
                f"no_image must be 'safe' or 'invalid_input', not {no_image!r}"
            )
        self.backend = backend
        self.image_access = image_access if image_access is not None else ImageAccess()
        self.max_new_tokens = max_new_tokens
        self.no_image = no_image
        self.name = name

    # -- what subclasses provide ----------------------------------------------------------------

    @abc.abstractmethod
    def build_request(self, image: ImageRef) -> ChatRequest:
        """The chat request rating one (loaded) image."""

    @abc.abstractmethod
    def read_answer(self, text: str) -> ImageFinding:
        """Parse the model's answer; raise :class:`~traceguard.ParseError` when it holds none."""

    # -- drivers --------------------------------------------------------------------------------

    def audit_batch(self, traces: Sequence[Trace]) -> list[Verdict]:
        """Audit several traces; one verdict each, in input order. Never raises for failures."""
        loaded = [load_images(trace, self.image_access) for trace in traces]
        requests = _requests(self, loaded)
        results: list[ChatResult] = []
        if requests:
            try:
                results = list(self.backend.complete(requests))
            except Exception as exc:  # a backend should return failures; one that raises
                results = _all_failed(len(requests), exc)  # still must not fail open
        return self._verdicts(loaded, results, len(requests))

    async def aaudit_batch(self, traces: Sequence[Trace]) -> list[Verdict]:
        """Async :meth:`audit_batch`, using the backend's async method."""
        loaded = list(
            await asyncio.gather(*(aload_images(trace, self.image_access) for trace in traces))
        )
        requests = _requests(self, loaded)
        results: list[ChatResult] = []
        if requests:
            try:
                results = list(await self.backend.acomplete(requests))
            except Exception as exc:
                results = _all_failed(len(requests), exc)
        return self._verdicts(loaded, results, len(requests))

    def close(self) -> None:
        """Close the backend."""
        self.backend.close()

    async def aclose(self) -> None:
        """Async :meth:`close`."""
        await self.backend.aclose()

    # -- steps without I/O ----------------------------------------------------------------------

    def _verdicts(
        self, loaded: list[list[ImageRef] | ImageError], results: list[ChatResult], expected: int
    ) -> list[Verdict]:
        if len(results) != expected:
            error = AuditorResponseError(
                f"backend returned {len(results)} results for {expected} requests"
            )
            results = [error] * expected

        def merge(images: list[ImageRef], group: Sequence[ChatResult]) -> Verdict:
            per_image = [
                self._image_verdict(result, image)
                for result, image in zip(group, images, strict=True)
            ]
            return combine_verdicts(
                per_image,
                auditor=self.name,
                labels=[f"image {i + 1}" for i in range(len(images))],
                latency_ms=max(v.latency_ms for v in per_image),
                details={
                    "images": len(images),
                    "per_image": [
                        _image_record(v, im) for v, im in zip(per_image, images, strict=True)
                    ],
                },
            )

        return regroup(self.name, loaded, results, empty=self._no_image_verdict, merge=merge)

    def _image_verdict(self, result: ChatResult | object, image: ImageRef) -> Verdict:
        if isinstance(result, AuditorError):
            return Verdict.failed(AuditStatus.AUDITOR_ERROR, auditor=self.name, error=result)
        if not isinstance(result, Completion):
            error = AuditorResponseError(f"backend returned a {type(result).__name__}")
            return Verdict.failed(AuditStatus.AUDITOR_ERROR, auditor=self.name, error=error)
        try:
            finding = self.read_answer(result.text)
        except ParseError as exc:
            return Verdict.failed(
                AuditStatus.UNPARSEABLE,
                auditor=self.name,
                error=exc,
                raw_output=result.text,
                latency_ms=result.latency_ms,
                details={"model": result.model},
            )
        if result.truncated and finding.risk == 0:
            # The backend cut the prompt (the policy) to make room for a large image: "safe"
            # under part of a policy says nothing. Harm found stays harm, as for GuardTrace.
            return Verdict.failed(
                AuditStatus.INVALID_INPUT,
                auditor=self.name,
                error=InputError(
                    "the prompt was cut to fit the model's input limit (a large image leaves "
                    "no room for the whole policy); a safe rating under part of the policy is "
                    "not given"
                ),
                raw_output=result.text,
                latency_ms=result.latency_ms,
                details={"model": result.model, "input_truncated": True},
            )
        return Verdict.ok(
            auditor=self.name,
            risk=finding.risk,
            categories=finding.categories,
            analysis=finding.analysis,
            raw_output=result.text,
            latency_ms=result.latency_ms,
            details={
                "model": result.model,
                "input_truncated": result.truncated,
                **(finding.details or {}),
            },
        )

    def _no_image_verdict(self) -> Verdict:
        if self.no_image == "invalid_input":
            return Verdict.failed(
                AuditStatus.INVALID_INPUT,
                auditor=self.name,
                error=ImageError("the trace has no image for this image guard to rate"),
            )
        return Verdict.ok(auditor=self.name, risk=0.0, details={"images": 0})


def _requests(
    guard: ChatImageAuditor, loaded: list[list[ImageRef] | ImageError]
) -> list[ChatRequest]:
    return [
        guard.build_request(image)
        for images in loaded
        if not isinstance(images, ImageError)
        for image in images
    ]


def _all_failed(count: int, exc: Exception) -> list[ChatResult]:
    error = exc if isinstance(exc, AuditorError) else AuditorError(f"{type(exc).__name__}: {exc}")
    return [error] * count


def _image_record(verdict: Verdict, image: ImageRef) -> dict[str, Any]:
    """A per-image entry of ``details``: the verdict as data, the image by identity only."""
    record = verdict.to_dict()
    record["image"] = repr(image)
    return record
