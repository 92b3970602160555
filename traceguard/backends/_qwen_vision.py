"""Image preparation for Qwen2.5-VL, with or without ``qwen-vl-utils``.

Qwen2.5-VL checkpoints are evaluated with ``qwen_vl_utils.process_vision_info``, which resizes every
image *before* the processor sees it; skipping that pre-resize changes the pixel values the model
gets. Every ``qwen-vl-utils`` release imports torchvision at import time, though, and the light
install (CPU torch, no torchvision) cannot import it. For images its logic needs only PIL, so this
module uses the real package whenever it imports and otherwise an image-only equivalent:
RGBA composited on white, other modes converted to RGB, ``smart_resize`` to multiples of 28 within
the pixel bounds, then a plain PIL resize.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MIN_PIXELS",
    "IMAGE_FACTOR",
    "QWEN_VISION_MODEL_TYPES",
    "fetch_image",
    "prepare_for_model",
    "prepare_images",
    "smart_resize",
    "uses_qwen_vl_utils",
]

# One image token covers a 2×2 merge of 14-pixel patches: sizes are multiples of 28.
IMAGE_FACTOR = 28
# qwen-vl-utils' defaults: between 4 and 16384 image tokens.
DEFAULT_MIN_PIXELS = 4 * IMAGE_FACTOR * IMAGE_FACTOR
DEFAULT_MAX_PIXELS = 16384 * IMAGE_FACTOR * IMAGE_FACTOR
# Beyond this aspect ratio the vision tower's patch grid degenerates; qwen-vl-utils refuses too.
MAX_ASPECT_RATIO = 200


def smart_resize(
    height: int,
    width: int,
    factor: int = IMAGE_FACTOR,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[int, int]:
    """The (height, width) Qwen2.5-VL resizes an image to.

    Both sides become multiples of ``factor``, the area lands within ``[min_pixels, max_pixels]``
    and the aspect ratio is kept as closely as those constraints allow. Identical to
    ``qwen_vl_utils.smart_resize`` except for very thin images under a small ``max_pixels``, where
    that one returns a zero side and this one (like transformers) keeps one row of patches.

    Raises:
        ValueError: the bounds are inverted, or the aspect ratio exceeds 200.
    """
    if max_pixels < min_pixels:
        raise ValueError(f"max_pixels ({max_pixels}) is below min_pixels ({min_pixels})")
    if min(height, width) <= 0:
        raise ValueError(f"image has an empty side: {width}x{height}")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise ValueError(f"aspect ratio {ratio:.1f} exceeds {MAX_ASPECT_RATIO}")
    new_h = max(factor, round(height / factor) * factor)
    new_w = max(factor, round(width / factor) * factor)
    if new_h * new_w > max_pixels:
        scale = math.sqrt(height * width / max_pixels)
        # qwen-vl-utils can floor a thin side to 0 here and crash in the resize; transformers'
        # processor keeps one patch row instead, and so does this.
        new_h = max(factor, math.floor(height / scale / factor) * factor)
        new_w = max(factor, math.floor(width / scale / factor) * factor)
    elif new_h * new_w < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        new_h = math.ceil(height * scale / factor) * factor
        new_w = math.ceil(width * scale / factor) * factor
    return new_h, new_w


def _to_rgb(image: Image) -> Image:
    from PIL import Image as PILImage

    if image.mode == "RGBA":
        # Transparent regions become white, as in qwen-vl-utils (convert() would make them black).
        background = PILImage.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.split()[3])
        return background
    return image.convert("RGB")


def fetch_image(
    image: Image,
    *,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> Image:
    """Convert ``image`` to RGB and resize it the way ``qwen_vl_utils.fetch_image`` does."""
    rgb = _to_rgb(image)
    width, height = rgb.size
    new_h, new_w = smart_resize(
        height,
        width,
        min_pixels=DEFAULT_MIN_PIXELS if min_pixels is None else min_pixels,
        max_pixels=DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels,
    )
    return rgb.resize((new_w, new_h))


@functools.cache
def _qwen_vl_utils_process() -> Callable[..., Any] | None:
    """``qwen_vl_utils.process_vision_info`` if the package imports here, else None."""
    try:
        from qwen_vl_utils import process_vision_info
    except Exception:
        return None
    return process_vision_info  # type: ignore[no-any-return]


def uses_qwen_vl_utils() -> bool:
    """Whether the real ``qwen-vl-utils`` is used (False: the image-only fallback)."""
    return _qwen_vl_utils_process() is not None


def prepare_images(
    images: Sequence[Image],
    *,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> list[Image]:
    """Pre-resize ``images`` for a Qwen2.5-VL processor, in order."""
    if not images:
        return []
    process = _qwen_vl_utils_process()
    if process is None:
        return [fetch_image(im, min_pixels=min_pixels, max_pixels=max_pixels) for im in images]
    bounds: dict[str, int] = {}
    if min_pixels is not None:
        bounds["min_pixels"] = min_pixels
    if max_pixels is not None:
        bounds["max_pixels"] = max_pixels
    conversation = [
        {"role": "user", "content": [{"type": "image", "image": im, **bounds} for im in images]}
    ]
    image_inputs, _ = process(conversation)
    return list(image_inputs or [])


QWEN_VISION_MODEL_TYPES = frozenset({"qwen2_vl", "qwen2_5_vl"})
"""``config.model_type`` of the checkpoints whose reference code pre-resizes with
``qwen-vl-utils`` (GuardTrace-VL, SafeGuard-VL-RL, SafeQwen2.5-VL)."""


def prepare_for_model(
    images: Sequence[Image],
    model_type: str,
    *,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> list[Image]:
    """Images as the reference code of a ``model_type`` checkpoint hands them to its processor.

    Qwen2-VL-family checkpoints get the ``qwen-vl-utils`` pre-resize. Every other family
    (LLaVA-OneVision, whose processor picks an "anyres" grid of 384-pixel tiles plus a base
    view; Gemma-3, which resizes to its fixed input) gets the images untouched: its reference
    code opens the file and calls the processor, and a Qwen resize to multiples of 28 first
    would change the pixels (and, for anyres, the grid) it was trained on.
    """
    if model_type in QWEN_VISION_MODEL_TYPES:
        return prepare_images(images, min_pixels=min_pixels, max_pixels=max_pixels)
    return list(images)
