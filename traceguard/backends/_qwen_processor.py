"""Loading a Qwen2-VL / Qwen2.5-VL processor on installs without torchvision.

``AutoProcessor.from_pretrained`` on a Qwen2.5-VL checkpoint always builds the *video* processor,
which raises ``ImportError`` when torchvision is missing (transformers issues #48558, #43986), even
though an auditor only ever sends images. The image processor itself needs only PIL. When that
happens this module assembles the processor from its parts, through a subclass that accepts a
missing video processor; passing ``video_processor=None`` to the stock class is refused by its
argument check.
"""

from __future__ import annotations

import functools
import importlib
import json
from pathlib import Path
from typing import Any

__all__ = ["load_processor"]


def load_processor(
    model: str,
    *,
    trust_remote_code: bool = False,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> tuple[Any, str]:
    """Return ``(processor, chat_template)`` for the checkpoint ``model``.

    ``min_pixels`` / ``max_pixels`` override the image processor's bounds when given.

    Raises:
        OSError, ValueError: the checkpoint's processor files cannot be read.
        ImportError: a dependency other than torchvision is missing.
        KeyError: the checkpoint has no chat template.
    """
    # transformers is only partly typed; its loaders are used as untyped (Any) here.
    transformers: Any = importlib.import_module("transformers")
    pixel_kwargs: dict[str, int] = {}
    if min_pixels is not None:
        pixel_kwargs["min_pixels"] = min_pixels
    if max_pixels is not None:
        pixel_kwargs["max_pixels"] = max_pixels
    try:
        processor = transformers.AutoProcessor.from_pretrained(
            model, trust_remote_code=trust_remote_code, **pixel_kwargs
        )
    except ImportError as exc:
        if "torchvision" not in str(exc).lower():
            raise
        processor = _image_only_processor(model, trust_remote_code, pixel_kwargs)
    template = getattr(processor, "chat_template", None) or getattr(
        processor.tokenizer, "chat_template", None
    )
    if not template:
        raise KeyError(f"{model!r} has no chat template")
    return processor, str(template)


def _image_only_processor(model: str, trust_remote_code: bool, pixel_kwargs: dict[str, int]) -> Any:
    transformers: Any = importlib.import_module("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        model, trust_remote_code=trust_remote_code
    )
    image_processor = transformers.AutoImageProcessor.from_pretrained(
        model, trust_remote_code=trust_remote_code, **pixel_kwargs
    )
    class_name = _read_json(model, "preprocessor_config.json").get(
        "processor_class", "Qwen2_5_VLProcessor"
    )
    base = getattr(transformers, class_name, None) or transformers.Qwen2_5_VLProcessor
    template = _read_chat_template(model) or getattr(tokenizer, "chat_template", None)
    # Processor-level settings (LLaVA-OneVision's num_image_tokens, feature strategy, ...) live in
    # processor_config.json; the stock loader passes them on, so the image-only one must too.
    options = {
        key: value
        for key, value in _read_json(model, "processor_config.json").items()
        if key not in ("processor_class", "chat_template", "auto_map")
    }
    return _image_only_class(base)(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=None,
        chat_template=template,
        **options,
    )


@functools.cache
def _image_only_class(base: type[Any]) -> type[Any]:
    class ImageOnlyProcessor(base):  # type: ignore[misc]
        """``base`` without a video processor: image and text inputs only."""

        def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    ImageOnlyProcessor.__name__ = ImageOnlyProcessor.__qualname__ = f"ImageOnly{base.__name__}"
    return ImageOnlyProcessor


def _resolve(model: str, filename: str) -> Path | None:
    local = Path(model) / filename
    if Path(model).is_dir():
        return local if local.is_file() else None
    hub: Any = importlib.import_module("transformers.utils.hub")
    found = hub.cached_file(model, filename, _raise_exceptions_for_missing_entries=False)
    return Path(found) if found else None


def _read_json(model: str, filename: str) -> dict[str, Any]:
    path = _resolve(model, filename)
    if path is None:
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _read_chat_template(model: str) -> str | None:
    jinja = _resolve(model, "chat_template.jinja")
    if jinja is not None:
        return jinja.read_text(encoding="utf-8")
    template = _read_json(model, "chat_template.json").get("chat_template")
    return template if isinstance(template, str) else None
