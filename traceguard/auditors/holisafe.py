"""The HoliSafe guard head (SafeQwen2.5-VL-7B, SafeGem-12B): a 20-way image safety classifier.

These checkpoints are full vision-language models with a small "visual guard module" on top:
the language model's last hidden states are mean-pooled over the image-token positions and fed
to an MLP (hidden width = half the model's, GELU) whose 20 logits go through a softmax. Index 0
is ``safe``; the labels are ``config.safety_categories``. One prefill pass classifies an image;
nothing needs decoding.

Two ways to run it:

- **native** (default, no code from the checkpoint runs): the base model is loaded with the stock
  transformers class (``Qwen2_5_VLForConditionalGeneration`` or
  ``Gemma3ForConditionalGeneration``, picked from ``config.json``), and the head is rebuilt from
  the checkpoint's safetensors. Expected weight names (any prefix before them is accepted, e.g.
  ``model.``)::

      img_safety_head.mlp.0.weight   [hidden/2, hidden]     first Linear
      img_safety_head.mlp.0.bias     [hidden/2]
      img_safety_head.mlp.3.weight   [n_classes, hidden/2]  output Linear (GELU, Dropout between)
      img_safety_head.mlp.3.bias     [n_classes]

  (more hidden layers continue at indices 3, 6, …; the last Linear is the output). A checkpoint
  without them fails with a :class:`~traceguard.ConfigurationError` naming what is missing.
- **remote code** (``remote_code=True``): the checkpoint's own classes, called with
  ``do_safety=True``. Two fixes make the published code load on current transformers: the
  removed ``AutoModelForVision2Seq`` is aliased to ``AutoModelForImageTextToText``, and
  ``hidden_size`` (and the other text dimensions the code reads at top level) are copied up from
  ``text_config``.

Verdict: unsafe score = 1 − P(safe); risk 1 at or above ``unsafe_threshold``, 0.5 at or above
``potential_threshold``, else 0; the category is the arg-max of the 19 unsafe classes, mapped
through :mod:`traceguard.taxonomy`. ``details["probabilities"]`` holds all 20 probabilities and
``Verdict.probabilities`` holds ``{"0": P(safe), "0.5": 0, "1": 1 − P(safe)}``, so a
:class:`~traceguard.Policy` with ``thresholds`` re-grades from the score.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import threading
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
from traceguard.taxonomy import HOLISAFE_CATEGORIES, OTHER_RISKS, from_holisafe, holisafe_key

__all__ = [
    "HEAD_WEIGHT_PATTERN",
    "HoliSafeAuditor",
    "HoliSafeResult",
    "SafetyScores",
    "fix_remote_config",
    "scores_to_verdict",
]

HEAD_WEIGHT_PATTERN = re.compile(r"(?:^|\.)img_safety_head\.mlp\.(\d+)\.(weight|bias)$")
"""Names of the guard head's weights in a HoliSafe checkpoint (group 1: module index)."""

_FAMILIES = {
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "gemma3": "Gemma3ForConditionalGeneration",
}
_CONFIGS = {"qwen2_5_vl": "Qwen2_5_VLConfig", "gemma3": "Gemma3Config"}
_TEXT_KEYS = ("hidden_size", "vocab_size", "num_hidden_layers", "num_attention_heads")
_DEFAULT_PROMPT = "Describe this image."


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


def _alias_vision2seq(transformers: Any) -> None:
    # transformers >= 5.4 removed AutoModelForVision2Seq; the published code still imports it.
    if not hasattr(transformers, "AutoModelForVision2Seq"):
        transformers.AutoModelForVision2Seq = transformers.AutoModelForImageTextToText


@dataclass
class _Runtime:
    torch: Any
    model: Any
    processor: Any
    chat_template: str
    head: Any | None  # None: the remote code computes the probabilities itself
    labels: tuple[str, ...]
    safe_index: int
    image_token_ids: tuple[int, ...]
    family: str
    eos_ids: list[int]
    pad_id: int


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
        prompt: str = _DEFAULT_PROMPT,
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
        if base not in ("auto", *_FAMILIES):
            raise ConfigurationError(f"unknown base {base!r}")
        if no_image not in ("safe", "invalid_input"):
            raise ConfigurationError(f"no_image must be 'safe' or 'invalid_input': {no_image!r}")
        if batch_size < 1:
            raise ConfigurationError("batch_size must be at least 1")
        if dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigurationError(f"unknown dtype {dtype!r}")
        self.model_path = str(model)
        self.remote_code = remote_code
        self.base = base
        self.processor_path = str(processor) if processor is not None else None
        self.unsafe_threshold = unsafe_threshold
        self.potential_threshold = potential_threshold
        self.prompt = prompt
        self.device = device
        self.dtype = dtype
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.batch_size = batch_size
        self.image_access = image_access if image_access is not None else ImageAccess()
        self.no_image = no_image
        local = Path(model)
        label = local.name if local.exists() else str(model)
        self.name = name if name is not None else f"holisafe:{label}"
        self._lock = threading.RLock()
        self._runtime: _Runtime | None = None

    # -- loading ------------------------------------------------------------------------------

    def load(self) -> None:
        """Load the model, processor and head now instead of on first use.

        Raises:
            ConfigurationError: the checkpoint cannot be loaded, or its head is missing.
        """
        self._ensure_loaded()

    @property
    def labels(self) -> tuple[str, ...]:
        """The head's class labels, in order (loads the model if needed)."""
        return self._ensure_loaded().labels

    def close(self) -> None:
        """Drop the model; the next call loads it again."""
        with self._lock:
            self._runtime = None

    def _ensure_loaded(self) -> _Runtime:
        with self._lock:
            if self._runtime is None:
                self._runtime = self._load()
            return self._runtime

    def _load(self) -> _Runtime:
        missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigurationError(
                f"HoliSafeAuditor needs {' and '.join(missing)}: pip install 'traceguard-vl[local]'"
            )
        import torch

        transformers: Any = importlib.import_module("transformers")
        folder = _resolve_folder(self.model_path)
        raw = _read_json(folder / "config.json")
        family = self.base if self.base != "auto" else _family_of(raw)
        torch_dtype = self._torch_dtype(torch)
        try:
            if self.remote_code:
                model = self._load_remote(transformers, folder, torch_dtype)
                head = None
            else:
                config_cls = getattr(transformers, _CONFIGS[family])
                config = config_cls.from_dict(raw)
                model_cls = getattr(transformers, _FAMILIES[family])
                model = model_cls.from_pretrained(folder, config=config, dtype=torch_dtype)
                head = _load_head(torch, folder, _hidden_size(model.config))
            model = model.to(self.device).eval()
            processor, template = self._load_processor(folder)
        except ConfigurationError:
            raise
        except Exception as exc:  # a missing file, a shape mismatch, no CUDA: cannot serve
            raise ConfigurationError(f"cannot load {self.model_path!r}: {exc}") from exc
        if head is not None:
            head = head.to(device=model.device, dtype=torch_dtype)
        n_classes = _n_classes(head, raw)
        labels = _labels(raw, n_classes)
        tokenizer = processor.tokenizer
        tokenizer.padding_side = "left"
        eos = getattr(model.generation_config, "eos_token_id", None)
        eos_ids = sorted({eos} if isinstance(eos, int) else set(eos or ()))
        if tokenizer.eos_token_id is not None:
            eos_ids = sorted({*eos_ids, int(tokenizer.eos_token_id)})
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
        return _Runtime(
            torch=torch,
            model=model,
            processor=processor,
            chat_template=template,
            head=head,
            labels=labels,
            safe_index=_safe_index(labels),
            image_token_ids=_image_token_ids(model.config),
            family=family,
            eos_ids=eos_ids,
            pad_id=int(pad),
        )

    def _load_remote(self, transformers: Any, folder: Path, torch_dtype: Any) -> Any:
        _alias_vision2seq(transformers)
        config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=True)
        fix_remote_config(config)
        for loader in ("AutoModelForImageTextToText", "AutoModel"):
            try:
                return getattr(transformers, loader).from_pretrained(
                    folder, config=config, dtype=torch_dtype, trust_remote_code=True
                )
            except ValueError:  # this auto class has no mapping for the checkpoint's config
                continue
        raise ConfigurationError(f"no auto class loads {self.model_path!r} with remote code")

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

    def classify(self, images: Sequence[ImageRef]) -> list[SafetyScores | AuditorError]:
        """The head's probabilities for each image (loaded, bytes-backed refs), in order."""
        with self._lock:
            try:
                rt = self._ensure_loaded()
            except ConfigurationError as exc:
                return [AuditorError(str(exc)) for _ in images]
            results: list[SafetyScores | AuditorError] = []
            for start in range(0, len(images), self.batch_size):
                chunk = list(images[start : start + self.batch_size])
                try:
                    results.extend(self._classify_batch(rt, chunk))
                except Exception as exc:
                    results.extend(_as_error(exc) for _ in chunk)
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
            else:
                output = rt.model(**inputs, output_hidden_states=True, use_cache=False)
                probs = self._head_probs(rt, output.hidden_states[-1], inputs["input_ids"])
        return [self._scores(rt, row) for row in probs.float().tolist()]

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
        inputs.pop("token_type_ids", None)
        return inputs.to(rt.model.device)

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
        """Answer ``query`` about ``images`` and classify the images, from one prefill.

        Natively, one ``generate`` call returns both: the prefill's last hidden states feed the
        head, the decoding writes the answer. With remote code it is a classification pass and a
        ``generate`` with ``do_safety=False``. The images are pooled together, as the head does
        for a multi-image input. Never raises for model trouble: the verdict says what failed.
        """
        try:
            loaded = [image.load(self.image_access) for image in images]
        except ImageError as exc:
            failed = Verdict.failed(AuditStatus.INVALID_INPUT, auditor=self.name, error=exc)
            return HoliSafeResult(verdict=failed, response=None)
        if not loaded:
            return HoliSafeResult(verdict=self._no_image(), response=None)
        with self._lock:
            started = time.perf_counter()
            try:
                rt = self._ensure_loaded()
                probs, response = self._generate(rt, query, loaded, max_new_tokens)
                scores = self._scores(rt, probs)
            except Exception as exc:
                error = _as_error(exc)
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

    def _generate(
        self, rt: _Runtime, query: str, images: list[ImageRef], max_new_tokens: int
    ) -> tuple[list[float], str]:
        inputs = self._encode(rt, [self._messages(images, query)], [images])
        prompt_len = int(inputs["input_ids"].shape[1])
        options: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "do_sample": False,
            "pad_token_id": rt.pad_id,
            "eos_token_id": rt.eos_ids or None,
        }
        with rt.torch.inference_mode():
            if rt.head is None:
                probs = rt.model(**inputs, do_safety=True).img_safety_probs
                sequences = rt.model.generate(**inputs, do_safety=False, **options)
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


# -- checkpoint reading ---------------------------------------------------------------------------


def _resolve_folder(model: str) -> Path:
    local = Path(model)
    if local.is_dir():
        return local
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model))
    except Exception as exc:
        raise ConfigurationError(f"cannot find checkpoint {model!r}: {exc}") from exc


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read {str(path)!r}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigurationError(f"{str(path)!r} is not a JSON object")
    return data


def _family_of(config: dict[str, Any]) -> str:
    names = [str(config.get("model_type", ""))] + [str(a) for a in config.get("architectures", [])]
    text = " ".join(names).lower()
    if "qwen2_5_vl" in text or "qwen2.5" in text or "safeqwen" in text:
        return "qwen2_5_vl"
    if "gemma3" in text or "safegem" in text:
        return "gemma3"
    raise ConfigurationError(
        f"cannot tell the base architecture from model_type/architectures {names}; "
        "pass base='qwen2_5_vl' or base='gemma3'"
    )


def _hidden_size(config: Any) -> int:
    text = getattr(config, "text_config", None)
    size = getattr(text, "hidden_size", None) or getattr(config, "hidden_size", None)
    if not size:
        raise ConfigurationError("the model config has no hidden_size")
    return int(size)


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map", {})
        names = {file for key, file in weight_map.items() if HEAD_WEIGHT_PATTERN.search(str(key))}
        return [folder / name for name in sorted(names)]
    return sorted(folder.glob("*.safetensors"))


def _load_head(torch: Any, folder: Path, hidden_size: int) -> Any:
    """Rebuild the guard head MLP from the checkpoint's safetensors."""
    from safetensors import safe_open

    found: dict[int, dict[str, Any]] = {}
    for file in _weight_files(folder):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                match = HEAD_WEIGHT_PATTERN.search(key)
                if match:
                    found.setdefault(int(match.group(1)), {})[match.group(2)] = handle.get_tensor(
                        key
                    )
    if not found:
        raise ConfigurationError(
            f"{str(folder)!r} has no guard head weights: expected img_safety_head.mlp.0.weight, "
            "img_safety_head.mlp.0.bias, …, img_safety_head.mlp.<last>.weight/bias in its "
            "safetensors. Is this a HoliSafe (SafeQwen2.5-VL / SafeGem) checkpoint?"
        )
    layers: list[Any] = []
    width = hidden_size
    indices = sorted(found)
    for position, index in enumerate(indices):
        params = found[index]
        if "weight" not in params or "bias" not in params:
            missing = "weight" if "weight" not in params else "bias"
            raise ConfigurationError(
                f"guard head weight img_safety_head.mlp.{index}.{missing} is missing"
            )
        weight, bias = params["weight"], params["bias"]
        if weight.ndim != 2 or weight.shape[1] != width or bias.shape != (weight.shape[0],):
            raise ConfigurationError(
                f"guard head layer {index} has shape {tuple(weight.shape)}, expected [*, {width}]"
            )
        linear = torch.nn.Linear(width, weight.shape[0])
        with torch.no_grad():
            linear.weight.copy_(weight)
            linear.bias.copy_(bias)
        layers.append(linear)
        if position < len(indices) - 1:
            layers.append(torch.nn.GELU())
        width = weight.shape[0]
    return torch.nn.Sequential(*layers).eval()


def _n_classes(head: Any | None, config: dict[str, Any]) -> int:
    if head is not None:
        return int(head[-1].out_features)
    declared = config.get("num_safety_categories") or len(config.get("safety_categories") or ())
    return int(declared or len(HOLISAFE_CATEGORIES))


def _labels(config: dict[str, Any], n_classes: int) -> tuple[str, ...]:
    labels = config.get("safety_categories")
    if labels is None:
        if n_classes != len(HOLISAFE_CATEGORIES):
            raise ConfigurationError(
                f"config.json has no safety_categories and the head has {n_classes} outputs"
            )
        return HOLISAFE_CATEGORIES
    if not isinstance(labels, list) or len(labels) != n_classes:
        raise ConfigurationError(
            f"config.safety_categories names {len(labels) if isinstance(labels, list) else '?'} "
            f"classes, the head has {n_classes}"
        )
    return tuple(str(label) for label in labels)


def _safe_index(labels: tuple[str, ...]) -> int:
    for index, label in enumerate(labels):
        if holisafe_key(label) == "safe":
            return index
    raise ConfigurationError(f"no 'safe' class among the safety categories {labels}")


def _image_token_ids(config: Any) -> tuple[int, ...]:
    ids = []
    for key in ("image_token_id", "image_token_index", "video_token_id"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            ids.append(value)
    if not ids:
        raise ConfigurationError("the model config names no image token id")
    return tuple(dict.fromkeys(ids))


def _as_error(exc: Exception) -> AuditorError:
    if isinstance(exc, AuditorError):
        return exc
    if isinstance(exc, ConfigurationError):
        return AuditorError(str(exc))
    return AuditorError(f"{type(exc).__name__}: {exc}")
