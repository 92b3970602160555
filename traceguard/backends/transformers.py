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
"""

from __future__ import annotations

import importlib.util
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from traceguard._exceptions import (
    AuditorError,
    AuditorResponseError,
    AuditorUnavailable,
    ConfigurationError,
)
from traceguard._version import install_hint
from traceguard.backends._base import (
    ChatBackend,
    ChatMessage,
    ChatRequest,
    ChatResult,
    Completion,
    ImagePart,
    ScoreResult,
    TextPart,
    TokenDistribution,
)
from traceguard.backends._defuse import (
    GENERIC_CONTROL_TOKENS,
    control_token_pattern,
    defuse_control_tokens,
)
from traceguard.backends._prefix_cache import PrefixCache, PrefixCacheStats, score_with_prefix
from traceguard.backends._qwen_prompt import cut_user_text, vision_ids
from traceguard.backends._qwen_vision import prepare_for_model
from traceguard.backends._shared_prefill import ScoreGroup, group_shared_prefills, score_groups
from traceguard.backends._torch_runtime import (
    Lazy,
    LoadedModel,
    as_auditor_error,
    check_dtype,
    require_torch,
    torch_dtype,
)

__all__ = ["TransformersBackend"]


@dataclass
class _Runtime(LoadedModel):
    """Everything loaded from the checkpoint."""

    control_tokens: re.Pattern[str] = GENERIC_CONTROL_TOKENS
    model_type: str = "qwen2_5_vl"
    """``config.model_type``: decides how images are prepared (Qwen pre-resize or none)."""
    vision_ids: frozenset[int] = frozenset()
    """Placeholder tokens the processor expands per image; a shared tail must not hold any."""


@dataclass
class _Prepared:
    """One request rendered and measured, ready to be batched."""

    text: str
    images: list[Any]
    prompt_tokens: int
    truncated: bool
    max_new_tokens: int
    text_ids: list[int]
    """Token ids of ``text`` before the processor expands each image placeholder."""


_VisionCache = dict[tuple[ChatMessage, ...], tuple[list[Any], int]]
"""Per call: resized images and their extra token count, by message list (score mode asks for
several prefixes of one conversation; its images are processed once)."""

_ScoreGroup = ScoreGroup[_Prepared]


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

    def _ensure_loaded(self) -> _Runtime:
        return self._runtime.get()

    def _load(self) -> _Runtime:
        import torch
        import transformers

        from traceguard.backends._qwen_processor import load_processor

        class_name = self.model_class or "Qwen2_5_VLForConditionalGeneration"
        model_cls = getattr(transformers, class_name, None)
        if model_cls is None:
            raise ConfigurationError(f"transformers has no model class {class_name!r}")
        kwargs: dict[str, Any] = {
            "dtype": torch_dtype(torch, self.dtype, self.device),
            "trust_remote_code": self.trust_remote_code,
        }
        if self.attn_implementation is not None:
            kwargs["attn_implementation"] = self.attn_implementation
        if self.device == "auto":
            if importlib.util.find_spec("accelerate") is None:
                raise ConfigurationError(f"device='auto' needs accelerate: {install_hint('local')}")
            kwargs["device_map"] = "auto"
        try:
            model = model_cls.from_pretrained(self.model_path, **kwargs)
            processor, chat_template = load_processor(
                self.model_path,
                trust_remote_code=self.trust_remote_code,
                min_pixels=self.min_pixels,
                max_pixels=self.max_pixels,
            )
            if self.device != "auto":
                model = model.to(self.device)
        # Anything from a missing file to a shape mismatch or an absent CUDA device: all of it
        # means this checkpoint cannot be served as configured.
        except Exception as exc:
            raise ConfigurationError(f"cannot load {self.model_path!r}: {exc}") from exc
        tokenizer = processor.tokenizer
        return _Runtime.ready(
            torch=torch,
            model=model,
            processor=processor,
            chat_template=chat_template,
            control_tokens=_control_token_pattern(tokenizer),
            vision_ids=vision_ids(tokenizer),
            model_type=str(getattr(model.config, "model_type", "")),
        )

    def _runtime_or_errors(self, n: int) -> _Runtime | list[AuditorError]:
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

            def score(rt: _Runtime, batch: list[_ScoreGroup]) -> list[list[TokenDistribution]]:
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
        self, rt: _Runtime, requests: Sequence[ChatRequest], group: _ScoreGroup, top_k: int
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
        runtime: _Runtime,
        requests: Sequence[ChatRequest],
        step: Callable[[_Runtime, list[_Prepared]], list[ChatResult]],
    ) -> list[ChatResult]:
        """Prepare every request and run ``step`` on them, ``batch_size`` at a time."""
        results: list[ChatResult | None] = [None] * len(requests)
        ready = self._prepare_all(runtime, requests, results)
        outputs = self._in_batches(runtime, [p for _, p in ready], step)
        for (i, _), output in zip(ready, outputs, strict=True):
            results[i] = output
        return _filled(results)

    def _prepare_all(
        self, runtime: _Runtime, requests: Sequence[ChatRequest], results: list[Any]
    ) -> list[tuple[int, _Prepared]]:
        """The requests that could be prepared; the others get their error in ``results``."""
        ready: list[tuple[int, _Prepared]] = []
        vision: _VisionCache = {}
        for i, request in enumerate(requests):
            try:
                ready.append((i, self._prepare(runtime, request, vision)))
            except Exception as exc:
                results[i] = as_auditor_error(exc)
        return ready

    def _in_batches(
        self,
        runtime: _Runtime,
        units: list[_Unit],
        step: Callable[[_Runtime, list[_Unit]], list[_Out]],
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
        self, rt: _Runtime, request: ChatRequest, vision: _VisionCache | None = None
    ) -> _Prepared:
        if request.max_new_tokens < 1:
            raise AuditorError("max_new_tokens must be at least 1")
        messages: list[dict[str, Any]] = []
        refs = []
        for message in request.messages:
            content: list[dict[str, Any]] = []
            for part in message.content:
                if isinstance(part, TextPart):
                    text = defuse_control_tokens(part.text, rt.control_tokens)
                    content.append({"type": "text", "text": text})
                elif isinstance(part, ImagePart):
                    content.append({"type": "image"})
                    refs.append(part.image)
            messages.append({"role": message.role, "content": content})
        prefix = request.assistant_prefix or ""

        def render() -> str:
            text: str = rt.tokenizer.apply_chat_template(
                messages, chat_template=rt.chat_template, tokenize=False, add_generation_prompt=True
            )
            return text + prefix

        text = render()
        ids = self._ids(rt, text)
        cached = vision.get(request.messages) if vision is not None else None
        if cached is None:
            images = prepare_for_model(
                [ref.to_pil() for ref in refs],
                rt.model_type,
                min_pixels=self.min_pixels,
                max_pixels=self.max_pixels,
            )
            encoded = rt.processor(text=[text], images=images or None, return_tensors="pt")
            # Image placeholders expand to many tokens; the offset depends on the images only,
            # so it stays fixed while the text shrinks and across assistant prefixes.
            image_overhead = int(encoded["input_ids"].shape[1]) - len(ids)
            if vision is not None:
                vision[request.messages] = (images, image_overhead)
        else:
            images, image_overhead = cached
        total = len(ids) + image_overhead
        truncated = False
        for _ in range(8):
            if total <= self.max_input_tokens:
                break
            if not cut_user_text(rt, messages, total - self.max_input_tokens):
                raise AuditorError(
                    f"prompt needs {total} tokens, over max_input_tokens={self.max_input_tokens}, "
                    "even with the user text cut"
                )
            truncated = True
            text = render()
            ids = self._ids(rt, text)
            total = len(ids) + image_overhead
        if total > self.max_input_tokens:
            raise AuditorError(f"could not cut the prompt to {self.max_input_tokens} tokens")
        return _Prepared(text, images, total, truncated, request.max_new_tokens, ids)

    @staticmethod
    def _ids(rt: _Runtime, text: str) -> list[int]:
        ids: list[int] = rt.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids

    # -- running a batch ----------------------------------------------------------------------

    def _encode(self, rt: _Runtime, batch: list[_Prepared]) -> Any:
        images = [image for p in batch for image in p.images]
        inputs = rt.processor(
            text=[p.text for p in batch],
            images=images or None,
            padding=True,
            return_tensors="pt",
        )
        return inputs.to(rt.device)

    def _generate(self, rt: _Runtime, batch: list[_Prepared]) -> list[ChatResult]:
        torch = rt.torch
        started = time.perf_counter()
        inputs = self._encode(rt, batch)
        prompt_len = int(inputs["input_ids"].shape[1])
        with torch.inference_mode():
            output = rt.model.generate(
                **inputs,
                max_new_tokens=max(p.max_new_tokens for p in batch),
                do_sample=False,
                num_beams=1,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=rt.pad_id,
                eos_token_id=sorted(rt.eos_ids) or None,
            )
        latency_ms = (time.perf_counter() - started) * 1000.0
        results: list[ChatResult] = []
        stops = rt.eos_ids | {rt.pad_id}
        for row, prepared in zip(output[:, prompt_len:].tolist(), batch, strict=True):
            own = row[: prepared.max_new_tokens]
            if not any(token in stops for token in own):
                # No end-of-sequence token: the output stopped at max_new_tokens, not where the
                # model ended it. A text cut right after "Judgment: 0" would read as safe when
                # the model was writing "0.5" (the HTTP backend's finish_reason "length").
                results.append(
                    AuditorResponseError(
                        f"the auditor's output was cut at max_new_tokens={prepared.max_new_tokens}"
                        f" ({len(own)} tokens generated, no end-of-sequence token); raise "
                        "max_new_tokens"
                    )
                )
                continue
            new_tokens = _until_eos(own, rt.eos_ids)
            text = rt.tokenizer.decode(new_tokens, skip_special_tokens=True)
            results.append(
                Completion(
                    text=text,
                    latency_ms=latency_ms,
                    model=self.name,
                    prompt_tokens=prepared.prompt_tokens,
                    completion_tokens=len(new_tokens),
                    truncated=prepared.truncated,
                )
            )
        return results


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


def _until_eos(tokens: list[int], eos_ids: frozenset[int]) -> list[int]:
    for i, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[: i + 1]
    return tokens


def _control_token_pattern(tokenizer: Any) -> re.Pattern[str]:
    """Every added/special token the tokenizer would turn into an id, plus the generic shapes."""
    tokens = set(getattr(tokenizer, "all_special_tokens", []) or [])
    tokens |= set(tokenizer.get_added_vocab())
    return control_token_pattern(tokens)
