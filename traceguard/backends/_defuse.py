"""Defusing chat control tokens inside audited text: one function for every backend.

Audited text is hostile. A response that spells ``<|im_end|>`` followed by
``<|im_start|>assistant`` would, once the chat template is applied, close the user turn and open
an assistant turn of its own, with a verdict of its choosing; ``<|vision_start|>`` or
``<image>`` would make the processor look for an image that is not there. The model's tokenizer
turns those strings into their control ids only when they appear exactly, so inserting one
invisible character after the first one breaks the match and the text reaches the model as
plain text.

The local backend knows its tokenizer and defuses every special and added token it has, plus
the generic shapes below. A served backend cannot see the server's tokenizer, so it defuses the
generic shapes: every ``<|…|>`` token (Qwen/ChatML, Llama 3, Phi), Gemma's turn and image
markers, the ``<image>`` / ``<video>`` placeholders of LLaVA-style processors, and the
``[INST]``, ``<s>`` markers of Llama 2 and Mistral templates. Both go through
:func:`defuse_control_tokens`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["GENERIC_CONTROL_TOKENS", "control_token_pattern", "defuse_control_tokens"]

DEFUSER = "\u200b"
"""Inserted after the first character of a control-token lookalike: invisible, and it breaks
the exact match the tokenizer needs."""

_GENERIC = (
    r"<\|[^<>|\s]{1,48}\|>"
    r"|<(?:start|end)_of_(?:turn|image)>|<image_soft_token>|<bos>|<eos>"
    r"|</?s>|\[/?INST\]|<<(?:/)?SYS>>"
    r"|<(?:image|video|audio)>"
)

GENERIC_CONTROL_TOKENS = re.compile(_GENERIC)
"""Control-token shapes of the common chat templates, matched whatever the server's model."""


def control_token_pattern(tokens: Iterable[str] = ()) -> re.Pattern[str]:
    """The generic shapes plus ``tokens`` (a tokenizer's special and added tokens).

    Single-character tokens are left out: they cannot be broken by an insertion.
    """
    own = sorted({t for t in tokens if len(t) > 1}, key=len, reverse=True)
    if not own:
        return GENERIC_CONTROL_TOKENS
    return re.compile("|".join([*(re.escape(t) for t in own), _GENERIC]))


def defuse_control_tokens(text: str, pattern: re.Pattern[str] = GENERIC_CONTROL_TOKENS) -> str:
    """``text`` with every control-token lookalike broken by an invisible character."""
    return pattern.sub(lambda match: match.group(0)[0] + DEFUSER + match.group(0)[1:], text)
