"""The HoliSafe guard head (SafeQwen2.5-VL-7B, SafeGem-12B) as an auditor: a 20-way image safety
classifier graded into verdicts.

The checkpoint is loaded and run by :class:`~traceguard.backends.holisafe_head.HoliSafeHead`
(native head or the checkpoint's remote code; see there). Index 0 of the head is ``safe``; the
labels are ``config.safety_categories``.

Verdict: unsafe score = 1 − P(safe); risk 1 at or above ``unsafe_threshold``, 0.5 at or above
``potential_threshold``, else 0; the category is the arg-max of the 19 unsafe classes, mapped
through :mod:`traceguard.taxonomy`. ``details["probabilities"]`` holds all 20 probabilities and
``Verdict.probabilities`` holds ``{"0": P(safe), "0.5": 0, "1": 1 − P(safe)}``, so a
:class:`~traceguard.Policy` with ``thresholds`` re-grades from the score.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from traceguard._auditor import Auditor
from traceguard._exceptions import AuditorError, ConfigurationError, ImageError
from traceguard._images import ImageAccess, ImageRef
from traceguard._trace import Trace
from traceguard._verdict import AuditStatus, Verdict
from traceguard.auditors._combine import combine_verdicts
from traceguard.auditors._image_batch import load_images, regroup
from traceguard.backends._torch_runtime import as_auditor_error
from traceguard.backends.holisafe_head import (
    DEFAULT_PROMPT,
    HEAD_WEIGHT_PATTERN,
    HoliSafeHead,
    SafetyScores,
    fix_remote_config,
)
from traceguard.taxonomy import OTHER_RISKS, from_holisafe

__all__ = [
    "HEAD_WEIGHT_PATTERN",
    "HoliSafeAuditor",
    "HoliSafeResult",
    "SafetyScores",
    "fix_remote_config",
    "scores_to_verdict",
]


@dataclass(frozen=True)
class HoliSafeResult:
    """What :meth:`HoliSafeAuditor.classify_and_generate` returns: a verdict and an answer."""

    verdict: Verdict
    response: str | None
    """The model's answer to the query; None when generation failed (see ``verdict``)."""


def scores_to_verdict(
    scores: SafetyScores,
    *,
    auditor: str,
    unsafe_threshold: float,
    potential_threshold: float,
    latency_ms: float = 0.0,
) -> Verdict:
    """Grade one image's class probabilities (the rule in the module documentation)."""
    unsafe = scores.unsafe_score
    risk = 1.0 if unsafe >= unsafe_threshold else 0.5 if unsafe >= potential_threshold else 0.0
    top, top_p = scores.top_unsafe
    categories = ((from_holisafe(top) or OTHER_RISKS),) if risk > 0.0 else ()
    return Verdict.ok(
        auditor=auditor,
        risk=risk,
        categories=categories,
        analysis=f"P(safe)={1.0 - unsafe:.3f}; likeliest unsafe class {top} ({top_p:.3f})",
        latency_ms=latency_ms,
        probabilities={"0": 1.0 - unsafe, "0.5": 0.0, "1": unsafe},
        details={
            "unsafe_score": unsafe,
            "top_category": top,
            "top_probability": top_p,
            "probabilities": dict(zip(scores.labels, scores.probabilities, strict=True)),
        },
    )


class HoliSafeAuditor(Auditor):
    """Classifies every image of a trace with a HoliSafe guard head; no decoding needed.

    Args:
        model: checkpoint folder or hub id (SafeQwen2.5-VL-7B, SafeGem-12B, …).
        remote_code: run the checkpoint's own code (``trust_remote_code=True``) instead of the
            native head; only for checkpoints you trust.
        base: the base architecture, ``"auto"`` (from ``config.json``), ``"qwen2_5_vl"`` or
            ``"gemma3"`` (native mode).
        processor: where to load the processor from, when the checkpoint has none (the model
            cards load it from ``Qwen/Qwen2.5-VL-7B-Instruct`` / ``google/gemma-3-12b-it``).
        unsafe_threshold: unsafe score at or above which the risk is 1.
        potential_threshold: unsafe score at or above which the risk is 0.5.
        prompt: the text after the image in a classification request. The image tokens come
            first and attention is causal, so it does not change the scores.
        device, dtype: as for ``TransformersBackend`` (``"auto"``: bf16 on CUDA, fp32 elsewhere).
        min_pixels, max_pixels: image bounds for Qwen2.5-VL bases.
        batch_size: images per forward pass.
        image_access: where images may be loaded from, and their limits.
        no_image: what a trace without images gets (``"safe"``: nothing to rate, risk 0).
        name: the verdicts' ``auditor`` field.
    """

    def __init__(
        self,
        model: str | Path,
        *,
        remote_code: bool = False,
        base: Literal["auto", "qwen2_5_vl", "gemma3"] = "auto",
        processor: str | Path | None = None,
        unsafe_threshold: float = 0.5,
        potential_threshold: float = 0.2,
        prompt: str = DEFAULT_PROMPT,
        device: str = "cpu",
        dtype: str = "auto",
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        batch_size: int = 8,
        image_access: ImageAccess | None = None,
        no_image: Literal["safe", "invalid_input"] = "safe",
        name: str | None = None,
    ) -> None:
        if not 0.0 < potential_threshold <= unsafe_threshold <= 1.0:
            raise ConfigurationError(
                "thresholds must satisfy 0 < potential_threshold <= unsafe_threshold <= 1"
            )
        if no_image not in ("safe", "invalid_input"):
            raise ConfigurationError(f"no_image must be 'safe' or 'invalid_input': {no_image!r}")
        self.head = HoliSafeHead(
            model,
            remote_code=remote_code,
            base=base,
            processor=processor,
            prompt=prompt,
            device=device,
            dtype=dtype,
            min_pixels=min_pixels,
            max_pixels=max_pixels,
            batch_size=batch_size,
        )
        """The checkpoint, loaded on first use."""
        self.model_path = str(model)
        self.unsafe_threshold = unsafe_threshold
        self.potential_threshold = potential_threshold
        self.image_access = image_access if image_access is not None else ImageAccess()
        self.no_image = no_image
        local = Path(model)
        label = local.name if local.exists() else str(model)
        self.name = name if name is not None else f"holisafe:{label}"

    # -- the checkpoint's options, read from the head ------------------------------------------

    @property
    def remote_code(self) -> bool:
        """``head.remote_code``."""
        return self.head.remote_code

    @property
    def base(self) -> str:
        """``head.base``."""
        return self.head.base

    @property
    def processor_path(self) -> str | None:
        """``head.processor_path``."""
        return self.head.processor_path

    @property
    def prompt(self) -> str:
        """``head.prompt``."""
        return self.head.prompt

    @property
    def device(self) -> str:
        """``head.device``."""
        return self.head.device

    @property
    def dtype(self) -> str:
        """``head.dtype``."""
        return self.head.dtype

    @property
    def min_pixels(self) -> int | None:
        """``head.min_pixels``."""
        return self.head.min_pixels

    @property
    def max_pixels(self) -> int | None:
        """``head.max_pixels``."""
        return self.head.max_pixels

    @property
    def batch_size(self) -> int:
        """``head.batch_size``."""
        return self.head.batch_size

    # -- loading ------------------------------------------------------------------------------

    def load(self) -> None:
        """Load the model, processor and head now instead of on first use.

        Raises:
            ConfigurationError: the checkpoint cannot be loaded, or its head is missing.
        """
        self.head.load()

    @property
    def labels(self) -> tuple[str, ...]:
        """The head's class labels, in order (loads the model if needed)."""
        return self.head.labels

    def close(self) -> None:
        """Drop the model; the next call loads it again."""
        self.head.close()

    def classify(self, images: Sequence[ImageRef]) -> list[SafetyScores | AuditorError]:
        """The head's probabilities for each image (loaded, bytes-backed refs), in order."""
        return self.head.classify(images)

    # -- the auditor interface ----------------------------------------------------------------

    def audit_batch(self, traces: Sequence[Trace]) -> list[Verdict]:
        """One verdict per trace: each image classified, the images' verdicts merged."""
        loaded = [load_images(trace, self.image_access) for trace in traces]
        flat = [
            image for images in loaded if not isinstance(images, ImageError) for image in images
        ]
        started = time.perf_counter()
        scores = self.classify(flat) if flat else []
        per_image_ms = (time.perf_counter() - started) * 1000.0 / max(len(flat), 1)

        def merge(images: list[ImageRef], group: Sequence[Any]) -> Verdict:
            return self._merge([self._grade(result, per_image_ms) for result in group], images)

        return regroup(self.name, loaded, scores, empty=self._no_image, merge=merge)

    def _grade(self, result: SafetyScores | AuditorError, latency_ms: float) -> Verdict:
        if isinstance(result, AuditorError):
            return Verdict.failed(
                AuditStatus.AUDITOR_ERROR, auditor=self.name, error=result, latency_ms=latency_ms
            )
        return scores_to_verdict(
            result,
            auditor=self.name,
            unsafe_threshold=self.unsafe_threshold,
            potential_threshold=self.potential_threshold,
            latency_ms=latency_ms,
        )

    def _merge(self, parts: list[Verdict], images: list[ImageRef]) -> Verdict:
        if len(parts) == 1 and parts[0].is_ok:
            # One image: keep its probabilities so a policy's thresholds can re-grade it.
            return Verdict.ok(
                auditor=self.name,
                risk=parts[0].risk or 0.0,
                categories=parts[0].categories,
                analysis=parts[0].analysis,
                latency_ms=parts[0].latency_ms,
                probabilities=parts[0].probabilities,
                details={**parts[0].details, "images": 1, "image": repr(images[0])},
            )
        records = []
        for part, image in zip(parts, images, strict=True):
            record = part.to_dict()
            record["image"] = repr(image)
            records.append(record)
        return combine_verdicts(
            parts,
            auditor=self.name,
            labels=[f"image {i + 1}" for i in range(len(parts))],
            details={"images": len(images), "per_image": records},
        )

    def _no_image(self) -> Verdict:
        if self.no_image == "invalid_input":
            return Verdict.failed(
                AuditStatus.INVALID_INPUT,
                auditor=self.name,
                error=ImageError("the trace has no image for the HoliSafe head to classify"),
            )
        return Verdict.ok(auditor=self.name, risk=0.0, details={"images": 0})

    # -- classification and generation in one call --------------------------------------------

    def classify_and_generate(
        self, query: str, images: Sequence[ImageRef], *, max_new_tokens: int = 256
    ) -> HoliSafeResult:
        """Answer ``query`` about ``images`` and classify the images in the same call.

        See :meth:`~traceguard.backends.holisafe_head.HoliSafeHead.classify_and_generate` for
        what is pooled per family (SafeQwen: all images together, from the prefill; SafeGem: one
        row per image, the riskiest one kept). Never raises for model trouble: the verdict says
        what failed.
        """
        try:
            loaded = [image.load(self.image_access) for image in images]
        except ImageError as exc:
            failed = Verdict.failed(AuditStatus.INVALID_INPUT, auditor=self.name, error=exc)
            return HoliSafeResult(verdict=failed, response=None)
        if not loaded:
            return HoliSafeResult(verdict=self._no_image(), response=None)
        started = time.perf_counter()
        try:
            scores, response = self.head.classify_and_generate(
                query, loaded, max_new_tokens=max_new_tokens
            )
        except Exception as exc:
            error = as_auditor_error(exc)
            failed = Verdict.failed(AuditStatus.AUDITOR_ERROR, auditor=self.name, error=error)
            return HoliSafeResult(verdict=failed, response=None)
        latency = (time.perf_counter() - started) * 1000.0
        verdict = scores_to_verdict(
            scores,
            auditor=self.name,
            unsafe_threshold=self.unsafe_threshold,
            potential_threshold=self.potential_threshold,
            latency_ms=latency,
        )
        return HoliSafeResult(verdict=verdict, response=response)
