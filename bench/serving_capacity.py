"""Per-trace work of a GuardTrace audit, measured on the shipped example logs: the capacity inputs.

For every trace of ``examples/logs`` this renders the exact GuardTrace request the auditor sends
(system prompt, the user turn with query, thinking and response, the images) and counts:

- characters of text, and text tokens estimated at ``--chars-per-token`` (4 by default: a
  common figure for English under byte-level BPE tokenizers such as Qwen2.5's; an estimate,
  stated as such — no Qwen tokenizer is available offline here);
- image tokens, exactly: Qwen2.5-VL resizes each image to multiples of 28 pixels within its
  pixel bounds and spends one token per 28x28 patch (:func:`smart_resize`), plus the two
  vision delimiter tokens.

It also reads the client overhead measured by ``bench/served_throughput.py`` (its results
file), so ``docs/serving.md`` can derive its capacity table from figures measured here. GPU
throughput is not measured here (there is no GPU): the table takes it as an input.

Usage::

    python bench/serving_capacity.py [--chars-per-token 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

from _audit_common import RESULTS, ROOT, save

from traceguard._images import ImageAccess
from traceguard.audit.runner import common_image_root, open_readers
from traceguard.auditors._guardtrace_format import build_guardtrace_request
from traceguard.auditors._guardtrace_prompts import PromptSet
from traceguard.backends._base import ImagePart, TextPart
from traceguard.backends._qwen_vision import smart_resize

VISION_DELIMITERS = 2
"""``<|vision_start|>`` and ``<|vision_end|>`` around each image's patch tokens."""
CHAT_TEMPLATE_TOKENS = 12
"""Role markers of a two-message chat (``<|im_start|>system\\n`` ... ``<|im_end|>``), about."""


def _image_tokens(width: int, height: int) -> int:
    new_h, new_w = smart_resize(height, width)
    return new_h * new_w // (28 * 28) + VISION_DELIMITERS


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 1),
        "median": round(statistics.median(values), 1),
        "mean": round(statistics.fmean(values), 1),
        "max": round(max(values), 1),
    }


def measure(chars_per_token: float) -> dict[str, Any]:
    readers = open_readers(ROOT / "examples" / "logs")
    access = ImageAccess(root=common_image_root(readers))
    prompts = PromptSet.default()
    text_tokens: list[float] = []
    image_tokens: list[float] = []
    chars: list[float] = []
    traces = with_images = 0
    for reader in readers:
        for item in reader.items():
            if item.trace is None:
                continue
            loaded = []
            for ref in item.trace.images:
                try:
                    loaded.append(ref.load(access))
                except Exception:
                    loaded.append(None)  # the auditor sends the placeholder text instead
            request = build_guardtrace_request(
                item.trace, prompts, images=loaded, max_new_tokens=2000
            )
            text = ""
            pictures = 0
            for message in request.messages:
                for part in message.content:
                    if isinstance(part, TextPart):
                        text += part.text
                    elif isinstance(part, ImagePart):
                        pictures += _image_tokens(*part.image.to_pil().size)
            traces += 1
            with_images += bool(pictures)
            chars.append(len(text))
            text_tokens.append(len(text) / chars_per_token + CHAT_TEMPLATE_TOKENS)
            image_tokens.append(pictures)
    prompt_tokens = [t + i for t, i in zip(text_tokens, image_tokens, strict=True)]
    system_chars = len(prompts.system_prompt(binary=False))
    served = json.loads((RESULTS / "served_throughput.json").read_text(encoding="utf-8"))
    return {
        "benchmark": "serving_capacity",
        "traces": traces,
        "traces_with_images": with_images,
        "chars_per_token": chars_per_token,
        "system_prompt_chars": system_chars,
        "system_prompt_tokens_est": round(system_chars / chars_per_token),
        "request_chars": _summary(chars),
        "text_tokens_est": _summary(text_tokens),
        "image_tokens": _summary(image_tokens),
        "prompt_tokens_est": _summary(prompt_tokens),
        "served_throughput": {"delay_s": served["delay_s"], "rows": served["rows"]},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--chars-per-token", type=float, default=4.0)
    args = parser.parse_args()
    result = measure(args.chars_per_token)
    print(json.dumps({k: v for k, v in result.items() if k != "served_throughput"}, indent=2))
    print(f"wrote {save('serving_capacity', result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
