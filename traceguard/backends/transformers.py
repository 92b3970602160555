"""A local backend: a Qwen2.5-VL-family auditor run in-process with transformers.

Install with ``pip install 'traceguard-vl[local]'``. The model loads on first use (or eagerly with
:meth:`TransformersBackend.load`) and is shared by every thread; calls serialise on a lock because a
PyTorch model is not safe to drive from two threads at once.

What one call does, per batch of ``batch_size`` requests:

1. render each request with the checkpoint's chat template (plus the assistant prefix, if any),
   pre-resize its images like ``qwen-vl-utils`` for a Qwen2-VL-family checkpoint, and leave them
   to the processor for any other (LLaVA-OneVision's anyres; see
   :mod:`traceguard.backends._qwen_vision`);
2. if the prompt is over ``max_input_tokens``, cut the middle of the longest user text — never an
   image or a template token — and mark the result ``truncated``;
3. left-pad the batch and run one greedy ``generate`` (or one forward pass for token scores);
   an item whose generation reached its ``max_new_tokens`` without an end-of-sequence (or pad)
   token gets an ``AuditorResponseError``, not a cut ``Completion`` (as the HTTP backend does
   for ``finish_reason: "length"``).

Token scores share prefills: requests with the same messages whose prompts (after tokenisation)
are prefixes of one another are answered from one forward pass over the longest
(:mod:`traceguard.backends._shared_prefill`). Across calls, the key/value cache of recent prompts
is kept (``prefix_cache_tokens``): a prompt that starts like one of them (the next checkpoint of
a stream, whose thinking grew) is computed from where they part
(:mod:`traceguard.backends._prefix_cache`).

Audited text is hostile: strings that spell the model's control tokens (``<|im_end|>``,
``<|image_pad|>``, ...) are defused before tokenisation, so a trace cannot close its own turn or
forge an assistant answer (:mod:`traceguard.backends._defuse`). Loading, the lock and the
stop tokens are the torch runtime shared with the HoliSafe head
(:mod:`traceguard.backends._torch_runtime`).

This module holds the backend's calls, batching and prefix-cache routing; loading a checkpoint is
``_transformers_load``, a request as a prompt ``_transformers_prompt``, generation
``_transformers_generate``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from traceguard._exceptions import (
    AuditorError,
    AuditorUnavailable,
    ConfigurationError,
)
from traceguard.backends._base import (
    ChatBackend,
    ChatRequest,
    ChatResult,
    ImagePart,
    ScoreResult,
    TokenDistribution,
)
from traceguard.backends._prefix_cache import PrefixCache, PrefixCacheStats, score_with_prefix
from traceguard.backends._shared_prefill import ScoreGroup, group_shared_prefills, score_groups
from traceguard.backends._torch_runtime import (
    Lazy,
    as_auditor_error,
    check_dtype,
    require_torch,
)
from traceguard.backends._transformers_generate import generate
from traceguard.backends._transformers_load import LocalRuntime, load_runtime
from traceguard.backends._transformers_prompt import (
    Prepared,
    VisionCache,
    encode,
    prepare_request,
)

__all__ = ["TransformersBackend"]


_ScoreGroup = ScoreGroup[Prepared]


_Unit = TypeVar("_Unit")
_Out = TypeVar("_Out")


class TransformersBackend(ChatBackend):
    """Run a Qwen2.5-VL auditor (GuardTrace-VL-3B, or any fine-tune of it) with transformers.

    Args:
        model: a local checkpoint folder or a hub id (already in the local cache when offline).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, or ``"auto"`` to spread the model
            with ``device_map="auto"`` (needs ``accelerate``).
        dtype: ``"auto"`` (bfloat16 on CUDA, float32 elsewhere), ``"float32"``, ``"bfloat16"``
            or ``"float16"``.
        attn_implementation: passed to ``from_pretrained`` (``"sdpa"``, ``"flash_attention_2"``).
        min_pixels: lower bound of an image's area after the pre-resize; None keeps the
            ``qwen-vl-utils`` default (4 image tokens).
        max_pixels: upper bound of an image's area. None keeps the ``qwen-vl-utils`` default
            (16384 image tokens); set it (e.g. ``448 * 448``) to bound the cost of large images.
            Both bounds are also handed to the checkpoint's image processor.
        max_input_tokens: prompts longer than this lose the middle of their user text.
        batch_size: requests per ``generate`` / forward call.
        trust_remote_code: allow the checkpoint's own Python code (off by default).
        model_class: the transformers class to load with, by name; default
            ``Qwen2_5_VLForConditionalGeneration`` (``AutoModelForImageTextToText`` also works).
        name: the model name reported in completions; default: the folder name or hub id.
        prefix_cache_tokens: token scores keep the key/value cache of recent prompts, up to
            this many tokens in all, and a prompt that extends one of them (a stream's next
            checkpoint) computes only its new tokens. Memory per token: layers × 2 × key/value
            heads × head size × bytes per value (GuardTrace-VL-3B: 36 KiB in bfloat16, so the
            default 8192 tokens hold about 300 MiB). 0 turns it off.

    Raises:
        ConfigurationError: torch or transformers is not installed, or an option is invalid.
    """

    def __init__(
        self,
        model: str | Path,
        *,
        device: str = "cpu",
        dtype: str = "auto",
        attn_implementation: str | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        max_input_tokens: int = 8192,
        batch_size: int = 8,
        trust_remote_code: bool = False,
        model_class: str | None = None,
        name: str | None = None,
        prefix_cache_tokens: int = 8192,
    ) -> None:
        require_torch("TransformersBackend")
        check_dtype(dtype)
        if batch_size < 1:
            raise ConfigurationError("batch_size must be at least 1")
        if max_input_tokens < 16:
            raise ConfigurationError("max_input_tokens must be at least 16")
        if prefix_cache_tokens < 0:
            raise ConfigurationError("prefix_cache_tokens must not be negative")
        if min_pixels is not None and max_pixels is not None and min_pixels > max_pixels:
            raise ConfigurationError("min_pixels must not exceed max_pixels")
        self.model_path = str(model)
        self.device = device
        self.dtype = dtype
        self.attn_implementation = attn_implementation
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.max_input_tokens = max_input_tokens
        self.batch_size = batch_size
        self.trust_remote_code = trust_remote_code
        self.model_class = model_class
        local = Path(model)
        self.name = name or (local.name if local.exists() else str(model))
        self.prefix_cache_tokens = prefix_cache_tokens
        self._prefixes = PrefixCache(prefix_cache_tokens) if prefix_cache_tokens else None
        self._runtime = Lazy(self._load)
        # One lock for loading and running: a PyTorch model is not safe to drive from two threads.
        self._lock = self._runtime.lock

    def __repr__(self) -> str:
        return f"TransformersBackend({self.model_path!r}, device={self.device!r})"

    # -- loading ------------------------------------------------------------------------------

    def load(self) -> None:
        """Load the model and processor now instead of on the first call.

        Raises:
            ConfigurationError: the checkpoint cannot be loaded (missing folder, unknown class,
                ``accelerate`` missing for ``device="auto"``).
        """
        self._ensure_loaded()

    @property
    def model(self) -> Any:
        """The loaded transformers model (loads it if needed)."""
        return self._ensure_loaded().model

    @property
    def processor(self) -> Any:
        """The loaded processor (tokenizer + image processor; loads it if needed)."""
        return self._ensure_loaded().processor

    def close(self) -> None:
        """Drop the model (and the prefix cache); the next call loads it again."""
        with self._lock:
            if self._prefixes is not None:
                self._prefixes.clear()
            self._runtime.drop()

    @property
    def prefix_cache_stats(self) -> PrefixCacheStats:
        """What the prefix cache saved so far (all zero when it is off)."""
        return self._prefixes.stats if self._prefixes is not None else PrefixCacheStats()

    def _ensure_loaded(self) -> LocalRuntime:
        return self._runtime.get()

    def _load(self) -> LocalRuntime:
        return load_runtime(
            self.model_path,
            model_class=self.model_class,
            dtype=self.dtype,
            device=self.device,
            attn_implementation=self.attn_implementation,
            trust_remote_code=self.trust_remote_code,
            min_pixels=self.min_pixels,
            max_pixels=self.max_pixels,
        )

    def _runtime_or_errors(self, n: int) -> LocalRuntime | list[AuditorError]:
        try:
            return self._ensure_loaded()
        except ConfigurationError as exc:
            return [AuditorUnavailable(str(exc)) for _ in range(n)]

    # -- the two calls ------------------------------------------------------------------------

    def complete(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        """Greedy generation for each request; failures come back as ``AuditorError`` values."""
        with self._lock:
            runtime = self._runtime_or_errors(len(requests))
            if isinstance(runtime, list):
                return list(runtime)
            return self._run(runtime, requests, self._generate)

    def next_token_logprobs(
        self, requests: Sequence[ChatRequest], top_k: int = 20
    ) -> list[ScoreResult]:
        """Log-probabilities of the ``top_k`` likeliest next tokens after each assistant prefix.

        Requests that differ only in how far their assistant prefix goes share one forward pass
        (see the module notes); ``batch_size`` counts those passes.
        """
        if top_k < 1:
            raise ValueError("top_k must be at least 1")
        with self._lock:
            runtime = self._runtime_or_errors(len(requests))
            if isinstance(runtime, list):
                return list(runtime)
            results: list[ScoreResult | None] = [None] * len(requests)
            ready = self._prepare_all(runtime, requests, results)
            groups = group_shared_prefills(requests, ready, runtime.vision_ids)
            alone, batched = self._prefix_cached(requests, groups)

            def score(rt: LocalRuntime, batch: list[_ScoreGroup]) -> list[list[TokenDistribution]]:
                inputs = self._encode(rt, [group.prepared for group in batch])
                return score_groups(rt, inputs, batch, top_k, model_name=self.name)

            outputs: list[list[TokenDistribution] | AuditorError] = []
            for group in alone:
                try:
                    outputs.append(self._score_cached(runtime, requests, group, top_k))
                except Exception as exc:
                    outputs.append(as_auditor_error(exc))
            in_batches = self._in_batches(runtime, batched, score)
            outputs.extend(in_batches)
            for group, output in zip([*alone, *batched], outputs, strict=True):
                for n, (i, _) in enumerate(group.members):
                    results[i] = output if isinstance(output, AuditorError) else output[n]
            return _filled(results)

    def _prefix_cached(
        self, requests: Sequence[ChatRequest], groups: list[_ScoreGroup]
    ) -> tuple[list[_ScoreGroup], list[_ScoreGroup]]:
        """The groups scored one by one through the prefix cache, and those batched.

        A lone prompt (a checkpoint, a single audit) always goes through the cache; in a batch,
        only the text prompts that extend a cached one do, and the rest keep batching.
        """
        if self._prefixes is None:
            return [], groups
        if len(groups) == 1:
            return groups, []
        alone, batched = [], []
        for group in groups:
            key = _image_key(requests[group.members[0][0]])
            prepared = group.prepared
            found = None if key else self._prefixes.best(key, prepared.text_ids)
            if found is not None and found[2] * 2 >= len(prepared.text_ids):
                alone.append(group)
            else:
                batched.append(group)
        return alone, batched

    def _score_cached(
        self, rt: LocalRuntime, requests: Sequence[ChatRequest], group: _ScoreGroup, top_k: int
    ) -> list[TokenDistribution]:
        assert self._prefixes is not None
        return score_with_prefix(
            rt,
            self._prefixes,
            self._encode(rt, [group.prepared]),
            key=_image_key(requests[group.members[0][0]]),
            offsets=[offset for _, offset in group.members],
            vision_ids=rt.vision_ids,
            top_k=top_k,
            truncated=group.prepared.truncated,
            model_name=self.name,
        )

    def _run(
        self,
        runtime: LocalRuntime,
        requests: Sequence[ChatRequest],
        step: Callable[[LocalRuntime, list[Prepared]], list[ChatResult]],
    ) -> list[ChatResult]:
        """Prepare every request and run ``step`` on them, ``batch_size`` at a time."""
        results: list[ChatResult | None] = [None] * len(requests)
        ready = self._prepare_all(runtime, requests, results)
        outputs = self._in_batches(runtime, [p for _, p in ready], step)
        for (i, _), output in zip(ready, outputs, strict=True):
            results[i] = output
        return _filled(results)

    def _prepare_all(
        self, runtime: LocalRuntime, requests: Sequence[ChatRequest], results: list[Any]
    ) -> list[tuple[int, Prepared]]:
        """The requests that could be prepared; the others get their error in ``results``."""
        ready: list[tuple[int, Prepared]] = []
        vision: VisionCache = {}
        for i, request in enumerate(requests):
            try:
                ready.append((i, self._prepare(runtime, request, vision)))
            except Exception as exc:
                results[i] = as_auditor_error(exc)
        return ready

    def _in_batches(
        self,
        runtime: LocalRuntime,
        units: list[_Unit],
        step: Callable[[LocalRuntime, list[_Unit]], list[_Out]],
    ) -> list[_Out | AuditorError]:
        """``step`` over ``batch_size`` units at a time; a failing batch is retried one by one."""
        outputs: list[_Out | AuditorError] = []
        for start in range(0, len(units), self.batch_size):
            chunk = units[start : start + self.batch_size]
            try:
                outputs.extend(step(runtime, chunk))
            except Exception:
                # One bad input must not sink its neighbours: find it by running them alone.
                for unit in chunk:
                    try:
                        outputs.append(step(runtime, [unit])[0])
                    except Exception as exc:
                        outputs.append(as_auditor_error(exc))
        return outputs

    # -- preparing one request ----------------------------------------------------------------

    def _prepare(
        self, rt: LocalRuntime, request: ChatRequest, vision: VisionCache | None = None
    ) -> Prepared:
        return prepare_request(
            rt,
            request,
            vision,
            min_pixels=self.min_pixels,
            max_pixels=self.max_pixels,
            max_input_tokens=self.max_input_tokens,
        )

    # -- running a batch ----------------------------------------------------------------------

    def _encode(self, rt: LocalRuntime, batch: list[Prepared]) -> Any:
        return encode(rt, batch)

    def _generate(self, rt: LocalRuntime, batch: list[Prepared]) -> list[ChatResult]:
        return generate(rt, batch, model_name=self.name)


def _image_key(request: ChatRequest) -> tuple[str, ...]:
    """The request's images by content: a cached prefix is only shared with the same images."""
    return tuple(
        part.image.identity()
        for message in request.messages
        for part in message.content
        if isinstance(part, ImagePart)
    )


def _filled(results: list[Any]) -> list[Any]:
    if any(result is None for result in results):
        raise RuntimeError("a request was left without a result")  # a bug, not auditor trouble
    return results
