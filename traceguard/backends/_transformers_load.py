"""Loading a checkpoint for :class:`~traceguard.backends.transformers.TransformersBackend`: the
model class by name, dtype and device, the processor and its chat template, and what the backend
derives from the tokenizer (the control tokens to defuse, the image placeholder ids)."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from typing import Any

from traceguard._exceptions import ConfigurationError
from traceguard._version import install_hint
from traceguard.backends._defuse import GENERIC_CONTROL_TOKENS, control_token_pattern
from traceguard.backends._qwen_prompt import vision_ids
from traceguard.backends._torch_runtime import LoadedModel, torch_dtype

__all__ = ["LocalRuntime", "load_runtime"]


@dataclass
class LocalRuntime(LoadedModel):
    """Everything loaded from the checkpoint."""

    control_tokens: re.Pattern[str] = GENERIC_CONTROL_TOKENS
    model_type: str = "qwen2_5_vl"
    """``config.model_type``: decides how images are prepared (Qwen pre-resize or none)."""
    vision_ids: frozenset[int] = frozenset()
    """Placeholder tokens the processor expands per image; a shared tail must not hold any."""


def load_runtime(
    model_path: str,
    *,
    model_class: str | None,
    dtype: str,
    device: str,
    attn_implementation: str | None,
    trust_remote_code: bool,
    min_pixels: int | None,
    max_pixels: int | None,
) -> LocalRuntime:
    """Load the checkpoint at ``model_path`` as :class:`TransformersBackend` runs it.

    Raises:
        ConfigurationError: unknown model class, ``accelerate`` missing for ``device="auto"``,
            or anything that keeps the checkpoint from loading as configured.
    """
    import torch
    import transformers

    from traceguard.backends._qwen_processor import load_processor

    class_name = model_class or "Qwen2_5_VLForConditionalGeneration"
    model_cls = getattr(transformers, class_name, None)
    if model_cls is None:
        raise ConfigurationError(f"transformers has no model class {class_name!r}")
    kwargs: dict[str, Any] = {
        "dtype": torch_dtype(torch, dtype, device),
        "trust_remote_code": trust_remote_code,
    }
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if device == "auto":
        if importlib.util.find_spec("accelerate") is None:
            raise ConfigurationError(f"device='auto' needs accelerate: {install_hint('local')}")
        kwargs["device_map"] = "auto"
    try:
        model = model_cls.from_pretrained(model_path, **kwargs)
        processor, chat_template = load_processor(
            model_path,
            trust_remote_code=trust_remote_code,
            min_pixels=min_pixels,
            max_pixels=max_pixels,
        )
        if device != "auto":
            model = model.to(device)
    # Anything from a missing file to a shape mismatch or an absent CUDA device: all of it
    # means this checkpoint cannot be served as configured.
    except Exception as exc:
        raise ConfigurationError(f"cannot load {model_path!r}: {exc}") from exc
    tokenizer = processor.tokenizer
    return LocalRuntime.ready(
        torch=torch,
        model=model,
        processor=processor,
        chat_template=chat_template,
        control_tokens=_control_token_pattern(tokenizer),
        vision_ids=vision_ids(tokenizer),
        model_type=str(getattr(model.config, "model_type", "")),
    )


def _control_token_pattern(tokenizer: Any) -> re.Pattern[str]:
    """Every added/special token the tokenizer would turn into an id, plus the generic shapes."""
    tokens = set(getattr(tokenizer, "all_special_tokens", []) or [])
    tokens |= set(tokenizer.get_added_vocab())
    return control_token_pattern(tokens)
