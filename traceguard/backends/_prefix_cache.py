"""Reusing the attention cache of a prompt for the next prompt that starts the same way.

Checkpoints of one stream send the auditor the same prompt again and again, each time with a
longer thinking: system prompt, query, the thinking so far, then a short constant tail (the
response placeholder, the end of the turn, the score prefix). GuardTrace's layout already puts
the thinking after everything that stays fixed and before that tail, so from one checkpoint to
the next only the new thinking and the tail change. :class:`PrefixCache` keeps the key/value
cache of recent prompts; a prompt whose token ids share a long prefix with one of them runs the
model on the rest only (:func:`score_with_prefix`). Checkpoint k+1 then costs its new tokens plus
the tail, and a stream's checkpoints add up to about one audit of the whole stream, not the
square of it.

Rules that keep the reuse exact:

- Reuse is by token ids, never by text: the seam between old and new thinking may tokenise
  differently once more text arrives ("hel" + "lo" → "hello"), so the common prefix is
  recomputed from the first id that differs.
- Images: the cache is only shared between prompts with the same images (by content digest),
  since identical placeholder ids stand for any image of that size; and the shared prefix must
  cover every image placeholder (the model cannot re-read part of an image).
- Positions: Qwen2-VL's 3-D rotary positions of text after the last image run one per token
  from a fixed offset, recorded with the entry, so the new tokens get the positions a full
  pass would give them.
- An entry that a prompt would cut deeply (another trace sharing only the system prompt) is
  copied, not cut: a concurrent stream keeps its own cache.

torch is imported by the caller's runtime (``rt.torch``), never at import time.
"""

from __future__ import annotations

import copy
import inspect
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from traceguard.backends._base import TokenDistribution
from traceguard.backends._shared_prefill import merged_logprobs
from traceguard.backends._torch_runtime import LoadedModel

__all__ = ["PrefixCache", "PrefixCacheStats", "score_with_prefix"]

IN_PLACE_TAIL = 64
"""An entry is cut in place when a prompt keeps all of it but at most this many tokens (the
tail after the thinking); a deeper cut copies it first."""


@dataclass(frozen=True)
class PrefixCacheStats:
    """What the prefix cache saved: counts since the backend was built."""

    lookups: int = 0
    """Scoring passes that consulted the cache."""
    hits: int = 0
    """Passes that started from a cached prefix."""
    reused_tokens: int = 0
    """Prompt tokens taken from the cache instead of computed."""
    computed_tokens: int = 0
    """Prompt tokens the model computed (prefilled) in those passes."""
    cached_tokens: int = 0
    """Tokens held in the cache now."""


@dataclass
class _Entry:
    key: Hashable
    """What must match besides the ids: the images, by content."""
    ids: list[int]
    """The expanded prompt ids whose keys and values ``cache`` holds, in order."""
    cache: Any
    rope_delta: int
    """Position of text token ``i`` after the last image: ``i + rope_delta``."""
    vision_end: int
    """Index after the last image placeholder (0 without images)."""


class PrefixCache:
    """Key/value caches of recently scored prompts, at most ``max_tokens`` tokens in all.

    Least recently used entries go first. Not thread-safe by itself: the backend calls it under
    its model lock.
    """

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._next = 0
        self._lock = threading.Lock()
        self._stats = PrefixCacheStats()

    @property
    def stats(self) -> PrefixCacheStats:
        """Counts so far, and the tokens cached now."""
        with self._lock:
            held = sum(len(entry.ids) for entry in self._entries.values())
            return PrefixCacheStats(
                lookups=self._stats.lookups,
                hits=self._stats.hits,
                reused_tokens=self._stats.reused_tokens,
                computed_tokens=self._stats.computed_tokens,
                cached_tokens=held,
            )

    def clear(self) -> None:
        """Drop every entry (the model is being unloaded)."""
        self._entries.clear()

    def best(self, key: Hashable, ids: Sequence[int]) -> tuple[int, _Entry, int] | None:
        """The entry sharing the longest prefix with ``ids`` (same ``key``): (its id, it, the
        shared length); None when none shares a token."""
        found: tuple[int, _Entry, int] | None = None
        for handle, entry in self._entries.items():
            if entry.key != key:
                continue
            shared = _common_prefix(entry.ids, ids)
            if shared and (found is None or shared > found[2]):
                found = (handle, entry, shared)
        return found

    def take(self, handle: int, entry: _Entry, keep: int) -> _Entry:
        """An entry holding the first ``keep`` tokens of ``entry``: the entry itself, cut, when
        little is cut off (it becomes the new prompt's); a cut copy otherwise."""
        drop = len(entry.ids) - keep
        if drop > IN_PLACE_TAIL:
            entry = _Entry(
                entry.key,
                entry.ids[:keep],
                copy.deepcopy(entry.cache),
                entry.rope_delta,
                entry.vision_end,
            )
        else:
            self._entries.pop(handle, None)
            entry.ids = entry.ids[:keep]
        if drop > 0:
            _crop(entry.cache, drop)
        return entry

    def put(self, entry: _Entry) -> None:
        """Keep ``entry`` as the most recent; evict the oldest beyond ``max_tokens``."""
        if len(entry.ids) > self.max_tokens:
            return
        self._entries[self._next] = entry
        self._next += 1
        total = sum(len(e.ids) for e in self._entries.values())
        while total > self.max_tokens and self._entries:
            _, oldest = self._entries.popitem(last=False)
            total -= len(oldest.ids)

    def count(self, *, hit: bool, reused: int, computed: int) -> None:
        with self._lock:
            s = self._stats
            self._stats = PrefixCacheStats(
                lookups=s.lookups + 1,
                hits=s.hits + int(hit),
                reused_tokens=s.reused_tokens + reused,
                computed_tokens=s.computed_tokens + computed,
            )


def score_with_prefix(
    rt: LoadedModel,
    cache: PrefixCache,
    inputs: Any,
    *,
    key: Hashable,
    offsets: Sequence[int],
    vision_ids: frozenset[int],
    top_k: int,
    truncated: bool,
    model_name: str,
) -> list[TokenDistribution]:
    """Next-token distributions of one prompt (``inputs``: the processor's output for it, batch
    of one) at each of ``offsets`` tokens before its end, reusing and refreshing ``cache``."""
    torch = rt.torch
    started = time.perf_counter()
    ids: list[int] = inputs["input_ids"][0].tolist()
    keep = 1 + max(offsets)  # positions whose logits are read; always computed
    vision_end = _vision_end(ids, vision_ids)
    found = cache.best(key, ids)
    reuse = 0
    if found is not None:
        handle, entry, shared = found
        reuse = min(shared, len(ids) - keep)
        if reuse < max(1, vision_end):
            reuse = 0
    with torch.inference_mode():
        if reuse:
            entry = cache.take(handle, entry, reuse)
            positions = torch.arange(reuse, len(ids), device=rt.device) + entry.rope_delta
            logits = rt.model(
                input_ids=torch.tensor([ids[reuse:]], device=rt.device),
                attention_mask=torch.ones((1, len(ids)), dtype=torch.long, device=rt.device),
                position_ids=positions.view(1, 1, -1).expand(3, 1, -1),
                use_cache=True,
                logits_to_keep=keep,
                **{_cache_argument(rt.model): entry.cache},
            ).logits
            entry.ids = ids
        else:
            fresh = _new_cache(rt)
            logits = rt.model(
                **inputs, use_cache=True, logits_to_keep=keep, **{_cache_argument(rt.model): fresh}
            ).logits
            entry = _Entry(key, ids, fresh, _rope_delta(rt, vision_end), vision_end)
        picked = logits[0, [keep - 1 - offset for offset in offsets]]
        logprobs = torch.log_softmax(picked.float(), dim=-1)
        values, indices = torch.topk(logprobs, min(top_k, int(logprobs.shape[-1])), dim=-1)
    cache.put(entry)
    cache.count(hit=bool(reuse), reused=reuse, computed=len(ids) - reuse)
    latency_ms = (time.perf_counter() - started) * 1000.0
    return [
        TokenDistribution(
            logprobs=merged_logprobs(rt, row_values, row_ids),
            latency_ms=latency_ms,
            model=model_name,
            truncated=truncated,
        )
        for row_values, row_ids in zip(values.tolist(), indices.tolist(), strict=True)
    ]


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    # Compare in blocks first: prompts share thousands of tokens.
    step = 256
    while i + step <= n and a[i : i + step] == b[i : i + step]:
        i += step
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _vision_end(ids: Sequence[int], vision_ids: frozenset[int]) -> int:
    for index in range(len(ids) - 1, -1, -1):
        if ids[index] in vision_ids:
            return index + 1
    return 0


def _rope_delta(rt: LoadedModel, vision_end: int) -> int:
    """How far Qwen2-VL's text positions run ahead of the token index after the images."""
    if not vision_end:
        return 0
    inner = getattr(rt.model, "model", rt.model)
    deltas = getattr(inner, "rope_deltas", None)
    if deltas is None:
        raise RuntimeError("the model did not record its rotary position offset for images")
    return int(deltas.reshape(-1)[0].item())


def _new_cache(rt: LoadedModel) -> Any:
    from transformers import DynamicCache

    try:
        return DynamicCache(config=rt.model.config)
    except TypeError:  # transformers 4.x builds it without the config
        return DynamicCache()


def _crop(cache: Any, drop: int) -> None:
    # A negative count removes that many tokens from the end in transformers 4.57 and 5.x alike
    # (5.x refuses positive lengths).
    cache.crop(-drop)


_CACHE_ARGUMENT: dict[type, str] = {}


def _cache_argument(model: Any) -> str:
    """``cache`` (transformers 5) or ``past_key_values`` (4.x): how the model takes a cache."""
    kind = type(model)
    if kind not in _CACHE_ARGUMENT:
        parameters = inspect.signature(model.forward).parameters
        _CACHE_ARGUMENT[kind] = "cache" if "cache" in parameters else "past_key_values"
    return _CACHE_ARGUMENT[kind]
