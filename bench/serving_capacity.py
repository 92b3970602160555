"""Per-trace work of a GuardTrace audit, measured on the shipped example logs: the capacity inputs.

For every trace of ``examples/logs`` this renders the exact GuardTrace request the auditor sends
(system prompt, the user turn with query, thinking and response, the images) and counts:

- characters of text, and text tokens estimated at ``--chars-per-token`` (4 by default: a
  common figure for English under byte-level BPE tokenizers such as Qwen2.5's; an estimate,
  stated as such — no Qwen tokenizer is available offline here);
- image tokens, exactly: Qwen2.5-VL resizes each image to multiples of 28 pixels within its
  pixel bounds and spends one token per 28x28 patch, plus the two vision delimiter tokens.

The requests are the auditor's own: a recording backend stands in for the model.

It also reads the client overhead measured by ``bench/served_throughput.py`` (its results
file), so ``docs/serving.md`` can derive its capacity table from figures measured here. GPU
throughput is not measured here (there is no GPU): the table takes it as an input.

Usage::

    python bench/serving_capacity.py [--chars-per-token 4]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Sequence
from typing import Any

from _audit_common import RESULTS, ROOT, save

from traceguard import GuardTraceAuditor, ImageAccess
from traceguard.audit import common_image_root
from traceguard.audit.runner import open_readers
from traceguard.backends import ChatBackend, ChatRequest, Completion, ImagePart, TextPart

VISION_DELIMITERS = 2
"""``<|vision_start|>`` and ``<|vision_end|>`` around each image's patch tokens."""
CHAT_TEMPLATE_TOKENS = 12
"""Role markers of a two-message chat (``<|im_start|>system\\n`` ... ``<|im_end|>``), about."""
PATCH = 28
MIN_PIXELS = 4 * PATCH * PATCH
MAX_PIXELS = 16384 * PATCH * PATCH
"""Qwen2.5-VL's default pixel bounds (what a server uses unless told otherwise)."""


def _image_tokens(width: int, height: int, max_pixels: int = MAX_PIXELS) -> int:
    """Qwen2.5-VL's count: the image is resized to sides that are multiples of 28, its area
    kept within the pixel bounds, and each 28x28 patch becomes one token."""
    rows, cols = max(1, round(height / PATCH)), max(1, round(width / PATCH))
    if rows * cols * PATCH * PATCH > max_pixels:
        scale = (height * width / max_pixels) ** 0.5
        rows = max(1, math.floor(height / scale / PATCH))
        cols = max(1, math.floor(width / scale / PATCH))
    elif rows * cols * PATCH * PATCH < MIN_PIXELS:
        scale = (MIN_PIXELS / (height * width)) ** 0.5
        rows, cols = math.ceil(height * scale / PATCH), math.ceil(width * scale / PATCH)
    return rows * cols + VISION_DELIMITERS


class _Recorder(ChatBackend):
    """A backend that keeps the requests the auditor sends and answers "safe"."""

    name = "recorder"

    def __init__(self) -> None:
        self.requests: list[ChatRequest] = []

    def complete(self, requests: Sequence[ChatRequest]) -> list[Any]:
        self.requests.extend(requests)
        answer = "\u201cAnalysis\u201d: recorded.\n\u201cJudgment\u201d: 0"
        return [Completion(text=answer, latency_ms=0.0, model="recorder") for _ in requests]

    def next_token_logprobs(
        self, requests: Sequence[ChatRequest], top_k: int = 20
    ) -> list[Exception]:  # type: ignore[override]
        raise NotImplementedError("full mode only")


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 1),
        "median": round(statistics.median(values), 1),
        "mean": round(statistics.fmean(values), 1),
        "max": round(max(values), 1),
    }


def measure(chars_per_token: float) -> dict[str, Any]:
    readers = open_readers(ROOT / "examples" / "logs")
    recorder = _Recorder()
    auditor = GuardTraceAuditor(recorder, image_access=ImageAccess(root=common_image_root(readers)))
    traces = [item.trace for reader in readers for item in reader.items() if item.trace]
    auditor.audit_batch(traces)  # the requests the auditor sends, recorded
    text_tokens: list[float] = []
    image_tokens: list[float] = []
    chars: list[float] = []
    system_chars = 0
    with_images = 0
    for request in recorder.requests:
        text = ""
        pictures = 0
        for message in request.messages:
            for part in message.content:
                if isinstance(part, TextPart):
                    text += part.text
                    if message.role == "system":
                        system_chars = max(system_chars, len(part.text))
                elif isinstance(part, ImagePart):
                    pictures += _image_tokens(*part.image.to_pil().size)
        with_images += bool(pictures)
        chars.append(len(text))
        text_tokens.append(len(text) / chars_per_token + CHAT_TEMPLATE_TOKENS)
        image_tokens.append(pictures)
    prompt_tokens = [t + i for t, i in zip(text_tokens, image_tokens, strict=True)]
    served = json.loads((RESULTS / "served_throughput.json").read_text(encoding="utf-8"))
    return {
        "benchmark": "serving_capacity",
        "traces": len(recorder.requests),
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
