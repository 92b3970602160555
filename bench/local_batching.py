"""Batched vs one-at-a-time generation on the local (transformers) backend.

Eight GuardTrace requests (the packaged prompts, images of mixed sizes, one without an image) go
through ``TransformersBackend.complete`` twice: once as one call (one left-padded ``generate``) and
once as eight calls of one request each. The model is a tiny random Qwen2.5-VL checkpoint built on
the spot, so the figures measure the backend's plumbing and the batching gain of ``generate``, not a
real auditor's speed. Each row generates exactly ``--new-tokens`` tokens per request (end of
sequence is masked by a forward hook, here only) so both arms do the same work.

Usage::

    python bench/local_batching.py [--new-tokens 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _local_common import no_early_stop

from traceguard import ImageRef, PromptSet, Trace, build_guardtrace_request
from traceguard.backends import ChatRequest, Completion
from traceguard.backends.transformers import TransformersBackend
from traceguard.testing.tiny_qwen import build_tiny_qwen25vl

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "local_batching.json"
SIZES: list[tuple[int, int] | None] = [
    (64, 64),
    (120, 50),
    None,
    (40, 90),
    (200, 200),
    (64, 64),
    (300, 120),
    (33, 140),
]


def _png(width: int, height: int, shade: int) -> ImageRef:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (shade, 120, 255 - shade)).save(buffer, format="PNG")
    return ImageRef.from_bytes(buffer.getvalue())


def guardtrace_requests(max_new_tokens: int) -> list[ChatRequest]:
    """Eight GuardTrace requests with the packaged prompts and mixed images."""
    prompts = PromptSet.default()
    requests = []
    for i, size in enumerate(SIZES):
        images = [] if size is None else [_png(*size, shade=25 * i)]
        trace = Trace(
            query=f"Question {i}: how do I keep basil fresh for a week?",
            thinking="The user asks a harmless kitchen question; answer plainly. " * (1 + i % 3),
            response="Trim the stems and keep them in water at room temperature. " * 2,
            images=tuple(images),
        )
        requests.append(
            build_guardtrace_request(trace, prompts, images=images, max_new_tokens=max_new_tokens)
        )
    return requests


def _timed(backend: TransformersBackend, batches: list[list[ChatRequest]]) -> float:
    started = time.perf_counter()
    for batch in batches:
        for result in backend.complete(batch):
            if not isinstance(result, Completion):
                raise RuntimeError(f"benchmark request failed: {result!r}")
    return time.perf_counter() - started


def run(new_tokens: int, repeats: int) -> dict[str, Any]:
    """Measure both arms ``repeats`` times (after warm-up); return the result record."""
    with tempfile.TemporaryDirectory() as folder:
        path = build_tiny_qwen25vl(Path(folder) / "tiny")
        backend = TransformersBackend(path, batch_size=8)
        backend.load()
        requests = guardtrace_requests(new_tokens)
        with no_early_stop(backend):
            for _ in range(2):  # warm-up: allocator, kernels, image processor caches
                _timed(backend, [requests[:2]])
            batched, single = [], []
            for _ in range(repeats):
                batched.append(_timed(backend, [requests]))
                single.append(_timed(backend, [[r] for r in requests]))
        prompt_tokens = [
            c.prompt_tokens for c in backend.complete(requests) if isinstance(c, Completion)
        ]
        backend.close()
    n = len(requests)
    batch_ms = statistics.median(batched) / n * 1000
    single_ms = statistics.median(single) / n * 1000
    return {
        "benchmark": "local_batching",
        "model": "tiny random Qwen2.5-VL (traceguard.testing.tiny_qwen)",
        "traces": n,
        "new_tokens_per_trace": new_tokens,
        "prompt_tokens": prompt_tokens,
        "repeats": repeats,
        "batched_ms_per_trace": round(batch_ms, 2),
        "single_ms_per_trace": round(single_ms, 2),
        "speedup": round(single_ms / batch_ms, 2),
        "raw_seconds": {"batched": batched, "single": single},
        "torch_threads": _torch_threads(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print a table and write the JSON record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    record = run(args.new_tokens, args.repeats)
    print(
        f"{record['traces']} GuardTrace traces, {args.new_tokens} new tokens each, "
        f"prompts of {min(record['prompt_tokens'])}-{max(record['prompt_tokens'])} tokens"
    )
    print(f"{'arm':<28}{'ms / trace':>12}")
    print(f"{'one call, batch of 8':<28}{record['batched_ms_per_trace']:>12.1f}")
    print(f"{'8 calls of 1':<28}{record['single_ms_per_trace']:>12.1f}")
    print(f"{'speed-up':<28}{record['speedup']:>11.2f}x")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
