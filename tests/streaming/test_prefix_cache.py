"""The local backend's prefix cache on the tiny checkpoint: a stream's next checkpoint computes
only its new tokens, and scores what a pass from scratch scores.

The tiny checkpoint's weights are random, so the scores are noise; what is checked is that the
noise is the same with and without the cache, and how many tokens the model computed.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from traceguard import ImageRef, Stage, Trace
from traceguard.auditors._guardtrace_format import DEFAULT_SCORE_PREFIX, build_guardtrace_request
from traceguard.auditors._guardtrace_prompts import PromptSet
from traceguard.backends._base import ChatRequest, TokenDistribution
from traceguard.backends._prefix_cache import IN_PLACE_TAIL
from traceguard.backends.transformers import TransformersBackend
from traceguard.testing.tiny_qwen import build_tiny_qwen25vl

pytestmark = pytest.mark.slow

THINKING = " ".join(f"Step {i}: the quick brown fox checks the lazy dog." for i in range(60))
TOLERANCE = 1e-4  # float32 rounding: a cached pass multiplies in another order


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen25vl(tmp_path_factory.mktemp("tiny-prefix-cache"))


@pytest.fixture
def cached(tiny_path: Path) -> Iterator[TransformersBackend]:
    backend = TransformersBackend(tiny_path, prefix_cache_tokens=100_000)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def scratch(tiny_path: Path) -> Iterator[TransformersBackend]:
    backend = TransformersBackend(tiny_path, prefix_cache_tokens=0)
    yield backend
    backend.close()


def checkpoint_request(
    thinking: str, *, images: tuple[ImageRef, ...] = (), query: str = "How do I bake bread?"
) -> ChatRequest:
    """The score-mode request GuardTrace sends for a checkpoint of ``thinking``."""
    trace = Trace(query=query, thinking=thinking, response="", stage=Stage.CHECKPOINT)
    return build_guardtrace_request(
        trace,
        PromptSet.default(),
        images=list(images),
        max_new_tokens=8,
        assistant_prefix=DEFAULT_SCORE_PREFIX,
    )


def with_speculation(request: ChatRequest) -> list[ChatRequest]:
    """The first round of score mode: the prefix, and the way to 0.5 guessed ahead."""
    base = request.assistant_prefix or ""
    return [
        ChatRequest(request.messages, request.max_new_tokens, base + tail)
        for tail in ("", "0", "0.")
    ]


def prompt_ids(backend: TransformersBackend, request: ChatRequest) -> list[int]:
    """The ids of the longest prompt of a speculation round (what the model runs)."""
    runtime = backend._ensure_loaded()
    prepared = backend._prepare(runtime, with_speculation(request)[-1])
    ids: list[int] = backend._encode(runtime, [prepared])["input_ids"][0].tolist()
    return ids


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def assert_same(got: list[object], want: list[object]) -> None:
    for a, b in zip(got, want, strict=True):
        assert isinstance(a, TokenDistribution) and isinstance(b, TokenDistribution)
        assert set(a.logprobs) == set(b.logprobs)
        worst = max(abs(v - b.logprobs[k]) for k, v in a.logprobs.items())
        assert worst < TOLERANCE


def test_each_checkpoint_prefills_only_its_new_tokens(
    cached: TransformersBackend, scratch: TransformersBackend
) -> None:
    cuts = [len(THINKING) * k // 8 for k in range(1, 9)]
    previous: list[int] | None = None
    for cut in cuts:
        request = checkpoint_request(THINKING[:cut])
        before = cached.prefix_cache_stats
        got = cached.next_token_logprobs(with_speculation(request), top_k=50)
        after = cached.prefix_cache_stats
        want = scratch.next_token_logprobs(with_speculation(request), top_k=50)
        assert_same(got, want)
        ids = prompt_ids(cached, request)
        computed = after.computed_tokens - before.computed_tokens
        if previous is None:
            assert computed == len(ids)
            assert after.hits == 0
        else:
            # Everything the two prompts share came from the cache: the new thinking, and the
            # constant tail after it (the response placeholder, the turn's end, the prefix).
            assert computed == len(ids) - common_prefix(previous, ids)
            assert after.hits == before.hits + 1
            assert computed < len(ids) // 4
        previous = ids
    # Eight checkpoints cost about one prompt's worth of tokens, not eight.
    stats = cached.prefix_cache_stats
    assert stats.computed_tokens < 1.5 * len(previous or [])


def test_the_final_audit_reuses_the_thinking(
    cached: TransformersBackend, scratch: TransformersBackend
) -> None:
    cached.next_token_logprobs(with_speculation(checkpoint_request(THINKING)), top_k=20)
    final = build_guardtrace_request(
        Trace(query="How do I bake bread?", thinking=THINKING, response="Mix flour and water."),
        PromptSet.default(),
        images=[],
        max_new_tokens=8,
        assistant_prefix=DEFAULT_SCORE_PREFIX,
    )
    before = cached.prefix_cache_stats
    got = cached.next_token_logprobs(with_speculation(final), top_k=20)
    assert_same(got, scratch.next_token_logprobs(with_speculation(final), top_k=20))
    computed = cached.prefix_cache_stats.computed_tokens - before.computed_tokens
    assert computed < 60  # the answer and the tail; the thousand-token thinking was reused


def test_images_share_a_prefix_only_with_the_same_images(
    cached: TransformersBackend, scratch: TransformersBackend
) -> None:
    red, blue = png((200, 40, 40)), png((40, 40, 200))  # same size: same placeholder ids
    first = checkpoint_request(THINKING[:400], images=(red,))
    second = checkpoint_request(THINKING[:800], images=(red,))
    other = checkpoint_request(THINKING[:800], images=(blue,))
    cached.next_token_logprobs(with_speculation(first), top_k=20)
    before = cached.prefix_cache_stats
    got = cached.next_token_logprobs(with_speculation(second), top_k=20)
    assert_same(got, scratch.next_token_logprobs(with_speculation(second), top_k=20))
    middle = cached.prefix_cache_stats
    assert middle.hits == before.hits + 1
    got = cached.next_token_logprobs(with_speculation(other), top_k=20)
    assert_same(got, scratch.next_token_logprobs(with_speculation(other), top_k=20))
    after = cached.prefix_cache_stats
    assert after.hits == middle.hits  # another image: computed from scratch
    assert after.computed_tokens - middle.computed_tokens == len(prompt_ids(cached, other))


def test_interleaved_streams_keep_their_own_caches(cached: TransformersBackend) -> None:
    a = [checkpoint_request(THINKING[: 300 * k], query="Stream A asks.") for k in (1, 2, 3)]
    b = [checkpoint_request(THINKING[::-1][: 300 * k], query="Stream B asks.") for k in (1, 2, 3)]
    last: dict[str, list[int]] = {}
    for ours, theirs in zip(a, b, strict=True):
        for name, request in (("a", ours), ("b", theirs)):
            before = cached.prefix_cache_stats
            cached.next_token_logprobs(with_speculation(request), top_k=20)
            computed = cached.prefix_cache_stats.computed_tokens - before.computed_tokens
            ids = prompt_ids(cached, request)
            if name in last:
                # A stream's next checkpoint finds its own last prompt, not the other stream's
                # (which shares only the system prompt, and was copied, not cut, to serve it).
                assert computed == len(ids) - common_prefix(last[name], ids)
                assert common_prefix(last[name], ids) > IN_PLACE_TAIL
            last[name] = ids


def test_the_cache_holds_at_most_its_budget(tiny_path: Path) -> None:
    backend = TransformersBackend(tiny_path, prefix_cache_tokens=1500)
    try:
        for k in range(1, 4):
            request = checkpoint_request(THINKING[: 200 * k], query=f"Question {k}?")
            backend.next_token_logprobs(with_speculation(request), top_k=5)
            assert backend.prefix_cache_stats.cached_tokens <= 1500
        huge = checkpoint_request(THINKING * 2)
        backend.next_token_logprobs(with_speculation(huge), top_k=5)
        assert backend.prefix_cache_stats.cached_tokens <= 1500
    finally:
        backend.close()
    assert backend.prefix_cache_stats.cached_tokens == 0


def test_off_means_off(scratch: TransformersBackend) -> None:
    scratch.next_token_logprobs(with_speculation(checkpoint_request(THINKING[:100])), top_k=5)
    stats = scratch.prefix_cache_stats
    assert (stats.lookups, stats.hits, stats.cached_tokens) == (0, 0, 0)


def test_a_batch_keeps_batching_until_its_prompts_share_a_cached_prefix(
    tiny_path: Path, scratch: TransformersBackend
) -> None:
    backend = TransformersBackend(tiny_path, prefix_cache_tokens=100_000)
    try:
        strangers = [
            checkpoint_request(f"Unrelated thinking {i}.", query=f"Q{i}?") for i in range(3)
        ]
        batch = [r for request in strangers for r in with_speculation(request)]
        got = backend.next_token_logprobs(batch, top_k=10)
        assert_same(got, scratch.next_token_logprobs(batch, top_k=10))
        assert backend.prefix_cache_stats.lookups == 0  # nothing cached: one batched pass
        backend.next_token_logprobs(with_speculation(checkpoint_request(THINKING[:500])), top_k=10)
        grown = checkpoint_request(THINKING[:900])
        batch = [r for request in (grown, *strangers) for r in with_speculation(request)]
        before = backend.prefix_cache_stats
        got = backend.next_token_logprobs(batch, top_k=10)
        assert_same(got, scratch.next_token_logprobs(batch, top_k=10))
        after = backend.prefix_cache_stats
        # Now every prompt extends a cached one (the grown checkpoint its own last prompt, the
        # others the system prompt they share with it): each computes only what differs.
        assert (after.lookups - before.lookups, after.hits - before.hits) == (4, 4)
        total = sum(len(prompt_ids(backend, r)) for r in (grown, *strangers))
        assert after.computed_tokens - before.computed_tokens < total // 3
    finally:
        backend.close()


def png(color: tuple[int, int, int]) -> ImageRef:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (56, 56), color).save(buffer, format="PNG")
    return ImageRef.from_bytes(buffer.getvalue())
