"""Fitting a Qwen chat-template prompt to the token budget.

A prompt over the budget loses the middle of its longest user text (:func:`cut_user_text`),
never an image or a template token; :func:`vision_ids` names the image placeholders, which the
processor expands and which must therefore never be cut or shared.
"""

from __future__ import annotations

from typing import Any

from traceguard.backends._torch_runtime import LoadedModel

__all__ = ["TRUNCATION_MARK", "cut_user_text", "vision_ids"]

TRUNCATION_MARK = "\n[...]\n"
"""What replaces the cut middle of a user text."""


def vision_ids(tokenizer: Any) -> frozenset[int]:
    """The image and video placeholder ids, which the processor expands per image."""
    ids = set()
    for token in ("<|image_pad|>", "<|video_pad|>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            ids.add(token_id)
    return frozenset(ids)


def cut_user_text(rt: LoadedModel, messages: list[dict[str, Any]], excess: int) -> bool:
    """Remove at least ``excess`` tokens from the middle of the longest user text part.

    Returns False when no user text is left to cut.
    """
    parts = [
        item
        for message in messages
        if message["role"] == "user"
        for item in message["content"]
        if item["type"] == "text" and item["text"] != TRUNCATION_MARK
    ]
    if not parts:
        return False
    ids_of = {
        id(item): rt.tokenizer(item["text"], add_special_tokens=False)["input_ids"]
        for item in parts
    }
    longest = max(parts, key=lambda item: len(ids_of[id(item)]))
    ids = ids_of[id(longest)]
    mark = len(rt.tokenizer(TRUNCATION_MARK, add_special_tokens=False)["input_ids"])
    # A couple of spare tokens absorb merges that re-tokenising the joined text may undo.
    keep = len(ids) - excess - mark - 2
    if keep <= 0:
        longest["text"] = TRUNCATION_MARK
        return True
    head, tail = ids[: (keep + 1) // 2], ids[len(ids) - keep // 2 :]
    longest["text"] = (
        rt.tokenizer.decode(head) + TRUNCATION_MARK + (rt.tokenizer.decode(tail) if tail else "")
    )
    return True
