"""Shared helpers of the local (in-process transformers) benchmarks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from traceguard.backends.transformers import TransformersBackend


@contextmanager
def no_early_stop(backend: TransformersBackend) -> Iterator[None]:
    """Mask end-of-sequence so every generation decodes its whole budget (benchmark only)."""
    tokenizer = backend.processor.tokenizer
    stop_ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]

    def mask(module: Any, args: Any, output: Any) -> Any:
        output.logits[:, -1, stop_ids] = -1e9
        return output

    handle = backend.model.register_forward_hook(mask)
    try:
        yield
    finally:
        handle.remove()
