"""Token scores from shared prefills: one forward pass answers several nested prompts.

Score mode asks for the next token after "“Judgment”: ", "“Judgment”: 0" and "“Judgment”: 0."
of one conversation at once. When those prompts, after tokenisation, are prefixes of one another,
:func:`group_shared_prefills` puts them in one :class:`ScoreGroup` and :func:`score_groups` runs
one forward pass over the longest, reading each shorter prompt's logits at its own last position.
Causal attention makes those logits the ones a separate pass would give.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from traceguard.backends._base import ChatMessage, ChatRequest, TokenDistribution
from traceguard.backends._torch_runtime import LoadedModel

__all__ = [
    "MAX_SHARED_TAIL",
    "ScoreGroup",
    "group_shared_prefills",
    "merged_logprobs",
    "score_groups",
]

MAX_SHARED_TAIL = 16
"""A shared pass keeps logits for its last (longest tail + 1) positions over the whole vocabulary
(~152k for Qwen) in every row of the batch; beyond this tail a request gets a pass of its own.
Score mode's tails are 1-2 tokens."""


class _Tokenised(Protocol):
    @property
    def text_ids(self) -> list[int]:
        """Token ids of the prompt before the processor expands each image placeholder."""
        ...

    @property
    def truncated(self) -> bool:
        """Whether the prompt lost part of its user text to fit the budget."""
        ...


_P = TypeVar("_P", bound=_Tokenised)


@dataclass
class ScoreGroup(Generic[_P]):
    """Score requests answered by one forward pass over the longest prompt among them."""

    prepared: _P
    """The longest prompt, the one that runs."""
    members: list[tuple[int, int]] = field(default_factory=list)
    """(request index, tokens between that request's last token and the end of the prompt)."""


def group_shared_prefills(
    requests: Sequence[ChatRequest],
    ready: list[tuple[int, _P]],
    vision_ids: frozenset[int],
) -> list[ScoreGroup[_P]]:
    """Gather requests one forward pass can answer: same messages, nested token ids.

    ``ready`` pairs a request's index with its prepared prompt; ``vision_ids`` are the image
    placeholder tokens, which the processor expands and a shared tail must therefore not hold.
    """
    by_messages: dict[tuple[ChatMessage, ...], list[tuple[int, _P]]] = {}
    for i, prepared in ready:
        by_messages.setdefault(requests[i].messages, []).append((i, prepared))
    groups: list[ScoreGroup[_P]] = []
    for items in by_messages.values():
        left = sorted(items, key=lambda item: -len(item[1].text_ids))
        while left:
            (lead, prepared), *rest = left
            long = prepared.text_ids
            group = ScoreGroup(prepared, [(lead, 0)])
            left = []
            for i, other in rest:
                short = other.text_ids
                # Shared text can still tokenise differently at the seam (" [" is one token,
                # " " + "[" two): only a true token prefix may share the pass.
                tail = long[len(short) :]
                if (
                    long[: len(short)] == short
                    and len(tail) <= MAX_SHARED_TAIL
                    and not vision_ids.intersection(tail)
                ):
                    group.members.append((i, len(tail)))
                else:
                    left.append((i, other))
            groups.append(group)
    return groups


def score_groups(
    rt: LoadedModel,
    inputs: Any,
    groups: Sequence[ScoreGroup[Any]],
    top_k: int,
    *,
    model_name: str,
) -> list[list[TokenDistribution]]:
    """One forward pass over ``inputs`` (the groups' longest prompts, left-padded, encoded in
    order); for each group, one distribution per member, in member order."""
    torch = rt.torch
    started = time.perf_counter()
    # Left padding puts every prompt's last token in the last column, so a member's position is
    # counted from the right: keep only as many trailing positions as the deepest needs.
    keep = 1 + max(offset for group in groups for _, offset in group.members)
    rows = [row for row, group in enumerate(groups) for _ in group.members]
    columns = [keep - 1 - offset for group in groups for _, offset in group.members]
    with torch.inference_mode():
        logits = rt.model(**inputs, use_cache=False, logits_to_keep=keep).logits
        index = (
            torch.tensor(rows, device=logits.device),
            torch.tensor(columns, device=logits.device),
        )
        picked = logits[index]
        logprobs = torch.log_softmax(picked.float(), dim=-1)
        k = min(top_k, int(logprobs.shape[-1]))
        values, indices = torch.topk(logprobs, k, dim=-1)
    latency_ms = (time.perf_counter() - started) * 1000.0
    # Members of a group share the longest prompt's messages, so its cut applies to all.
    cut = [group.prepared.truncated for group in groups for _ in group.members]
    distributions = [
        TokenDistribution(
            logprobs=merged_logprobs(rt, row_values, row_ids),
            latency_ms=latency_ms,
            model=model_name,
            truncated=truncated,
        )
        for row_values, row_ids, truncated in zip(
            values.tolist(), indices.tolist(), cut, strict=True
        )
    ]
    out: list[list[TokenDistribution]] = []
    for group in groups:
        out.append(distributions[: len(group.members)])
        distributions = distributions[len(group.members) :]
    return out


def merged_logprobs(rt: LoadedModel, values: list[float], token_ids: list[int]) -> dict[str, float]:
    """Top-k (log-probability, token id) pairs as decoded token → log-probability."""
    merged: dict[str, float] = {}
    for logprob, token_id in zip(values, token_ids, strict=True):
        key = rt.tokenizer.decode([token_id], skip_special_tokens=False)
        # Distinct ids can decode to one string (partial UTF-8 bytes): add their mass.
        merged[key] = _logaddexp(merged[key], logprob) if key in merged else logprob
    return merged


def _logaddexp(a: float, b: float) -> float:
    high, low = max(a, b), min(a, b)
    return high + math.log1p(math.exp(low - high))
