"""Greedy generation for a batch of prepared prompts on the local model."""

from __future__ import annotations

import time

from traceguard._exceptions import AuditorResponseError
from traceguard.backends._base import ChatResult, Completion
from traceguard.backends._transformers_load import LocalRuntime
from traceguard.backends._transformers_prompt import Prepared, encode

__all__ = ["generate"]


def generate(rt: LocalRuntime, batch: list[Prepared], *, model_name: str) -> list[ChatResult]:
    """One greedy ``generate`` over the batch; an output cut at its ``max_new_tokens`` is an
    :class:`AuditorResponseError`, never a completion."""
    torch = rt.torch
    started = time.perf_counter()
    inputs = encode(rt, batch)
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
                model=model_name,
                prompt_tokens=prepared.prompt_tokens,
                completion_tokens=len(new_tokens),
                truncated=prepared.truncated,
            )
        )
    return results


def _until_eos(tokens: list[int], eos_ids: frozenset[int]) -> list[int]:
    for i, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[: i + 1]
    return tokens
