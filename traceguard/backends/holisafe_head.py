"""The HoliSafe guard head run in-process: :class:`HoliSafeHead` (extra ``local``).

HoliSafe checkpoints (SafeQwen2.5-VL-7B, SafeGem-12B) are full vision-language models with a small
"visual guard module" on top: an MLP (hidden width = half the model's, GELU) whose logits go
through a softmax. What it pools differs by family, and the native path follows each checkpoint's
own code (see ``docs/model-fidelity.md``):

- **SafeQwen2.5-VL**: the language model's last hidden states, mean-pooled over the image and
  video token positions of each prompt (one prefill pass);
- **SafeGem (Gemma-3)**: the image features of the vision tower and multimodal projector, mean-
  pooled over each image's tokens, one row per image. The language model does not take part, so
  classifying needs no prefill; generation passes ``token_type_ids``, which Gemma-3 needs for
  bidirectional attention inside each image.

What the probabilities mean for a verdict is the auditor's business
(:class:`~traceguard.auditors.holisafe.HoliSafeAuditor`); this module loads the checkpoint and
runs the forward passes, on the torch runtime it shares with the local backend.

Two ways to run it:

- **native** (default, no code from the checkpoint runs): the base model is loaded with the stock
  transformers class (``Qwen2_5_VLForConditionalGeneration`` or
  ``Gemma3ForConditionalGeneration``, picked from ``config.json``), and the head is rebuilt from
  the checkpoint's safetensors (:mod:`traceguard.backends._holisafe_checkpoint` says which
  weight names it expects). Both families are checked against a module shaped like their
  published code, on the same tiny checkpoint (``tests/auditors/test_holisafe_reference.py``):
  the twenty probabilities agree. A family not checked that way has no native path.
- **remote code** (``remote_code=True``): the checkpoint's own class, named in its
  ``config.json`` ``auto_map`` under the auto class its model card loads with
  (``AutoModelForVision2Seq`` for SafeQwen, then ``AutoModelForImageTextToText``, then
  ``AutoModel`` for SafeGem), called with ``do_safety=True``. The class is loaded from that entry
  directly: going through an auto class whose entry the checkpoint lacks would silently load the
  stock model without its head. Two fixes make the published code load on current
  transformers: the removed ``AutoModelForVision2Seq`` is aliased to
  ``AutoModelForImageTextToText`` (the code imports it), and ``hidden_size`` (and the other text
  dimensions the code reads at top level) are copied up from ``text_config``.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from traceguard._exceptions import AuditorError, ConfigurationError
from traceguard._images import ImageRef
from traceguard.backends._holisafe_checkpoint import (
    HEAD_WEIGHT_PATTERN,
    class_count,
    family_of,
    hidden_size,
    image_token_ids,
    load_head,
    read_json,
    resolve_folder,
    safe_index,
    safety_labels,
)
from traceguard.backends._torch_runtime import (
    Lazy,
    LoadedModel,
    as_auditor_error,
    check_dtype,
    require_torch,
    torch_dtype,
)

__all__ = ["HEAD_WEIGHT_PATTERN", "HoliSafeHead", "SafetyScores", "fix_remote_config"]

Base = Literal["auto", "qwen2_5_vl", "gemma3"]

_FAMILIES = {
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "gemma3": "Gemma3ForConditionalGeneration",
}
_CONFIGS = {"qwen2_5_vl": "Qwen2_5_VLConfig", "gemma3": "Gemma3Config"}
_TEXT_KEYS = ("hidden_size", "vocab_size", "num_hidden_layers", "num_attention_heads")
_REMOTE_AUTO_CLASSES = ("AutoModelForVision2Seq", "AutoModelForImageTextToText", "AutoModel")
"""``auto_map`` keys tried in order (SafeQwen's card loads with the first, SafeGem's the last)."""
DEFAULT_PROMPT = "Describe this image."
"""The text after the image in a classification request."""


@dataclass(frozen=True)
class SafetyScores:
    """The head's output for one input: a probability per class, in head order."""

    labels: tuple[str, ...]
    probabilities: tuple[float, ...]
    safe_index: int

    @property
    def unsafe_score(self) -> float:
        """1 − P(safe)."""
        return 1.0 - self.probabilities[self.safe_index]

    @property
    def top_unsafe(self) -> tuple[str, float]:
        """The likeliest class other than ``safe``, with its probability."""
        index = max(
            (i for i in range(len(self.labels)) if i != self.safe_index),
            key=lambda i: self.probabilities[i],
        )
        return self.labels[index], self.probabilities[index]


def fix_remote_config(config: Any) -> list[str]:
    """Copy text dimensions the remote code reads at top level up from ``text_config``.

    Newer transformers keep ``hidden_size`` & co. only under ``config.text_config``; the
    published HoliSafe code reads ``config.hidden_size``. Returns the keys copied.
    """
    text = getattr(config, "text_config", None)
    copied = []
    for key in _TEXT_KEYS:
        value = getattr(text, key, None) if text is not None else None
        if value is not None and getattr(config, key, None) is None:
            setattr(config, key, value)
            copied.append(key)
    return copied


def _refuse_missing(model: str, info: Any, path: str) -> None:
    """A load that left weights at their random initialisation scores noise: refuse it."""
    missing = sorted((info or {}).get("missing_keys") or ())
    if missing:
        raise ConfigurationError(
            f"{path} load of {model!r} left {len(missing)} weights missing (e.g. {missing[0]}): "
            "the model would score noise. Is the checkpoint complete, and saved in a layout "
            "this transformers reads?"
        )


def _share_weight_renames(model_cls: Any, family: str) -> None:
    """Let the checkpoint's class load weight names the way its stock base class does.

    transformers >= 5 renames the weights of checkpoints saved in the older layout (which is
    also the layout it saves in) while loading, but only for its own classes: a custom class
    subclassing ``Qwen2_5_VLForConditionalGeneration`` would get a randomly initialised language
    model. Registering the stock class's renames under the custom class's name makes the load
    the one the stock class gets. transformers 4.x has no registry and needs none (the renames
    are a class attribute the subclass inherits).
    """
    try:
        registry: Any = importlib.import_module("transformers.conversion_mapping")
    except ImportError:
        return
    lookup = registry.get_checkpoint_conversion_mapping
    stock = lookup(_FAMILIES[family]) or lookup(family)
    if stock and model_cls.__name__ not in _FAMILIES.values():
        registry.register_checkpoint_conversion_mapping(model_cls.__name__, stock, overwrite=True)


def _alias_vision2seq(transformers: Any) -> None:
    # transformers >= 5.4 removed AutoModelForVision2Seq; the published code still imports it.
    if not hasattr(transformers, "AutoModelForVision2Seq"):
        transformers.AutoModelForVision2Seq = transformers.AutoModelForImageTextToText


@dataclass
class _Runtime(LoadedModel):
    head: Any | None = None  # None: the remote code computes the probabilities itself
    labels: tuple[str, ...] = ()
    safe_index: int = 0
    image_token_ids: tuple[int, ...] = ()
    family: str = ""


class HoliSafeHead:
    """A HoliSafe checkpoint loaded on first use: image safety probabilities, and answers.

    Args:
        model: checkpoint folder or hub id.
        remote_code: run the checkpoint's own code instead of the native head.
        base: ``"auto"`` (from ``config.json``), ``"qwen2_5_vl"`` or ``"gemma3"``.
        processor: where to load the processor from, when the checkpoint has none.
        prompt: the text after the image in a classification request.
        device, dtype: as for ``TransformersBackend``.
        min_pixels, max_pixels: image bounds for Qwen2.5-VL bases.
        batch_size: images per forward pass.

    Thread-safe: calls run one at a time on the runtime's lock.
    """

    def __init__(
        self,
        model: str | Path,
        *,
        remote_code: bool = False,
        base: Base = "auto",
        processor: str | Path | None = None,
        prompt: str = DEFAULT_PROMPT,
        device: str = "cpu",
        dtype: str = "auto",
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        batch_size: int = 8,
    ) -> None:
        if base not in ("auto", *_FAMILIES):
            raise ConfigurationError(f"unknown base {base!r}")
        if batch_size < 1:
            raise ConfigurationError("batch_size must be at least 1")
        check_dtype(dtype)
        self.model_path = str(model)
        self.remote_code = remote_code
        self.base = base
        self.processor_path = str(processor) if processor is not None else None
        self.prompt = prompt
        self.device = device
        self.dtype = dtype
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.batch_size = batch_size
        self._runtime = Lazy(self._load)

    def __repr__(self) -> str:
        return f"HoliSafeHead({self.model_path!r}, device={self.device!r})"

    # -- loading ------------------------------------------------------------------------------

    def load(self) -> None:
        """Load the model, processor and head now instead of on first use.

        Raises:
            ConfigurationError: the checkpoint cannot be loaded, or its head is missing.
        """
        self._runtime.get()

    @property
    def labels(self) -> tuple[str, ...]:
        """The head's class labels, in order (loads the model if needed)."""
        return self._runtime.get().labels

    def close(self) -> None:
        """Drop the model; the next call loads it again."""
        self._runtime.drop()

    def _load(self) -> _Runtime:
        require_torch("HoliSafeAuditor")
        import torch

        transformers: Any = importlib.import_module("transformers")
        folder = resolve_folder(self.model_path)
        raw = read_json(folder / "config.json")
        family = self.base if self.base != "auto" else family_of(raw)
        dtype = torch_dtype(torch, self.dtype, self.device)
        try:
            if self.remote_code:
                model = self._load_remote(transformers, folder, dtype)
                head = None
            else:
                config_cls = getattr(transformers, _CONFIGS[family])
                config = config_cls.from_dict(raw)
                model_cls = getattr(transformers, _FAMILIES[family])
                model, info = model_cls.from_pretrained(
                    folder, config=config, dtype=dtype, output_loading_info=True
                )
                _refuse_missing(self.model_path, info, "native")
                head = load_head(torch, folder, hidden_size(model.config))
            model = model.to(self.device)
            processor, template = self._load_processor(folder)
        except ConfigurationError:
            raise
        except Exception as exc:  # a missing file, a shape mismatch, no CUDA: cannot serve
            raise ConfigurationError(f"cannot load {self.model_path!r}: {exc}") from exc
        if head is not None:
            head = head.to(device=model.device, dtype=dtype)
        labels = safety_labels(raw, class_count(head, raw))
        return _Runtime.ready(
            torch=torch,
            model=model,
            processor=processor,
            chat_template=template,
            head=head,
            labels=labels,
            safe_index=safe_index(labels),
            image_token_ids=image_token_ids(model.config),
            family=family,
        )

    def _load_remote(self, transformers: Any, folder: Path, dtype: Any) -> Any:
        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        _alias_vision2seq(transformers)
        auto_map = read_json(folder / "config.json").get("auto_map") or {}
        for key in _REMOTE_AUTO_CLASSES:
            reference = auto_map.get(key) if isinstance(auto_map, dict) else None
            if isinstance(reference, str) and reference:
                config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=True)
                fix_remote_config(config)
                model_cls: Any = get_class_from_dynamic_module(reference, str(folder))
                _share_weight_renames(model_cls, family_of(read_json(folder / "config.json")))
                model, info = model_cls.from_pretrained(
                    folder,
                    config=config,
                    dtype=dtype,
                    trust_remote_code=True,
                    output_loading_info=True,
                )
                _refuse_missing(self.model_path, info, "remote code")
                return model
        raise ConfigurationError(
            f"{self.model_path!r} ships no remote code: its config.json auto_map names no model "
            f"class under {', '.join(_REMOTE_AUTO_CLASSES)}"
        )

    def _load_processor(self, folder: Path) -> tuple[Any, str]:
        from traceguard.backends._qwen_processor import load_processor

        source = self.processor_path or str(folder)
        return load_processor(
            source,
            trust_remote_code=False,
            min_pixels=self.min_pixels,
            max_pixels=self.max_pixels,
        )

    def _torch_dtype(self, torch: Any) -> Any:
        if self.dtype != "auto":
            return getattr(torch, self.dtype)
        return torch.bfloat16 if self.device.startswith("cuda") else torch.float32

    # -- classification -----------------------------------------------------------------------

    # -- classification -----------------------------------------------------------------------

    def classify(self, images: Sequence[ImageRef]) -> list[SafetyScores | AuditorError]:
        """The head's probabilities for each image (loaded, bytes-backed refs), in order."""
        with self._runtime.lock:
            try:
                rt = self._runtime.get()
            except ConfigurationError as exc:
                return [AuditorError(str(exc)) for _ in images]
            results: list[SafetyScores | AuditorError] = []
            for start in range(0, len(images), self.batch_size):
                chunk = list(images[start : start + self.batch_size])
                try:
                    results.extend(self._classify_batch(rt, chunk))
                except Exception as exc:
                    results.extend(as_auditor_error(exc) for _ in chunk)
            return results

    def _classify_batch(self, rt: _Runtime, images: list[ImageRef]) -> list[SafetyScores]:
        messages = [self._messages([image], self.prompt) for image in images]
        inputs = self._encode(rt, messages, [[image] for image in images])
        with rt.torch.inference_mode():
            if rt.head is None:
                output = rt.model(**inputs, do_safety=True)
                probs = output.img_safety_probs
                if probs is None:
                    raise AuditorError("the remote code returned no img_safety_probs")
            elif rt.family == "gemma3":
                probs = self._image_feature_probs(rt, inputs["pixel_values"])
            else:
                output = rt.model(**inputs, output_hidden_states=True, use_cache=False)
                probs = self._head_probs(rt, output.hidden_states[-1], inputs["input_ids"])
        rows = probs.float().tolist()
        if len(rows) != len(images):
            raise AuditorError(f"the head gave {len(rows)} rows for {len(images)} images")
        return [self._scores(rt, row) for row in rows]

    def _image_feature_probs(self, rt: _Runtime, pixel_values: Any) -> Any:
        """SafeGem's pooling: each image's projected vision features, averaged, then the head."""
        assert rt.head is not None  # native mode only
        dtype = next(rt.model.parameters()).dtype
        features = rt.model.get_image_features(pixel_values.to(dtype=dtype))
        # transformers 5 returns an output whose pooler_output holds the projected features;
        # 4.57 returns the tensor itself. Either way: [images, tokens per image, width].
        projected = getattr(features, "pooler_output", features)
        return rt.torch.softmax(rt.head(projected.mean(dim=1)).float(), dim=-1)

    def _head_probs(self, rt: _Runtime, hidden: Any, input_ids: Any) -> Any:
        torch = rt.torch
        ids = torch.tensor(rt.image_token_ids, device=input_ids.device)
        mask = torch.isin(input_ids, ids)
        if not bool(mask.any(dim=1).all()):
            raise AuditorError("an input has no image tokens to pool")
        assert rt.head is not None  # native mode only
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1)
        return torch.softmax(rt.head(pooled).float(), dim=-1)

    def _scores(self, rt: _Runtime, row: list[float]) -> SafetyScores:
        if len(row) != len(rt.labels):
            raise AuditorError(f"head gave {len(row)} probabilities for {len(rt.labels)} labels")
        return SafetyScores(labels=rt.labels, probabilities=tuple(row), safe_index=rt.safe_index)

    def _messages(self, images: Sequence[ImageRef], text: str) -> list[dict[str, Any]]:
        content: list[dict[str, Any]] = [{"type": "image"} for _ in images]
        content.append({"type": "text", "text": text})
        return [{"role": "user", "content": content}]

    def _encode(
        self, rt: _Runtime, conversations: list[list[dict[str, Any]]], images: list[list[ImageRef]]
    ) -> Any:
        texts = [
            rt.processor.tokenizer.apply_chat_template(
                conversation,
                chat_template=rt.chat_template,
                tokenize=False,
                add_generation_prompt=True,
            )
            for conversation in conversations
        ]
        pil = [[ref.to_pil().convert("RGB") for ref in row] for row in images]
        if rt.family == "qwen2_5_vl":
            from traceguard.backends._qwen_vision import prepare_images

            pil = [
                prepare_images(row, min_pixels=self.min_pixels, max_pixels=self.max_pixels)
                for row in pil
            ]
        # Gemma-3's processor wants the images grouped per prompt; Qwen's takes one flat list.
        grouped: Any = pil if rt.family == "gemma3" else [image for row in pil for image in row]
        inputs = rt.processor(text=texts, images=grouped, padding=True, return_tensors="pt")
        if rt.family != "gemma3":
            # Gemma-3 reads token_type_ids (1 on image tokens) to attend bidirectionally inside
            # each image, and must get them; Qwen's forward takes none.
            inputs.pop("token_type_ids", None)
        return inputs.to(rt.model.device)

    # -- classification and generation in one call --------------------------------------------

    def classify_and_generate(
        self, query: str, images: Sequence[ImageRef], *, max_new_tokens: int = 256
    ) -> tuple[SafetyScores, str]:
        """Answer ``query`` about ``images`` (loaded refs) and classify them, from one prefill.

        Natively on SafeQwen, one ``generate`` call returns both: the prefill's last hidden
        states feed the head (the images pooled together, as its code does for a multi-image
        input), the decoding writes the answer. On SafeGem the head reads each image's projected
        features (one row per image; the riskiest image's row is returned) and ``generate``
        writes the answer. With remote code it is a classification pass and a ``generate`` with
        ``do_safety=False``. Raises for any model trouble; the auditor turns it into a verdict.
        """
        with self._runtime.lock:
            rt = self._runtime.get()
            probs, response = self._generate(rt, query, list(images), max_new_tokens)
            return self._scores(rt, probs), response

    def _generate(
        self, rt: _Runtime, query: str, images: list[ImageRef], max_new_tokens: int
    ) -> tuple[list[float], str]:
        inputs = self._encode(rt, [self._messages(images, query)], [images])
        prompt_len = int(inputs["input_ids"].shape[1])
        options: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "do_sample": False,
            "pad_token_id": rt.pad_id,
            "eos_token_id": sorted(rt.eos_ids) or None,
        }
        with rt.torch.inference_mode():
            if rt.head is None:
                probs = rt.model(**inputs, do_safety=True).img_safety_probs
                sequences = rt.model.generate(**inputs, do_safety=False, **options)
            elif rt.family == "gemma3":
                per_image = self._image_feature_probs(rt, inputs["pixel_values"])
                # One row per image, as SafeGem's code gives; the riskiest image speaks for all.
                probs = per_image[int(per_image[:, rt.safe_index].argmin())].unsqueeze(0)
                sequences = rt.model.generate(**inputs, **options)
            else:
                out = rt.model.generate(
                    **inputs, output_hidden_states=True, return_dict_in_generate=True, **options
                )
                # Step 0 of the generation is the prefill over the whole prompt.
                prefill_last = out.hidden_states[0][-1]
                probs = self._head_probs(rt, prefill_last, inputs["input_ids"])
                sequences = out.sequences
        new_tokens = [t for t in sequences[0, prompt_len:].tolist() if t not in rt.eos_ids]
        text = rt.processor.tokenizer.decode(new_tokens, skip_special_tokens=True)
        return [float(p) for p in probs[0].float().tolist()], str(text)
