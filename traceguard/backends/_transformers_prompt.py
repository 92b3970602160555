"""One request as a prompt for the local model: its messages rendered with the checkpoint's chat
template (control tokens defused), its images prepared once per message list, the user text cut
to the token budget; then a batch of prompts as model inputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from traceguard._exceptions import AuditorError
from traceguard.backends._base import ChatMessage, ChatRequest, ImagePart, TextPart
from traceguard.backends._defuse import defuse_control_tokens
from traceguard.backends._qwen_prompt import cut_user_text
from traceguard.backends._qwen_vision import prepare_for_model
from traceguard.backends._transformers_load import LocalRuntime

__all__ = ["Prepared", "VisionCache", "encode", "prepare_request", "token_ids"]


@dataclass
class Prepared:
    """One request rendered and measured, ready to be batched."""

    text: str
    images: list[Any]
    prompt_tokens: int
    truncated: bool
    max_new_tokens: int
    text_ids: list[int]
    """Token ids of ``text`` before the processor expands each image placeholder."""


VisionCache = dict[tuple[ChatMessage, ...], tuple[list[Any], int]]
"""Per call: resized images and their extra token count, by message list (score mode asks for
several prefixes of one conversation; its images are processed once)."""


def prepare_request(
    rt: LocalRuntime,
    request: ChatRequest,
    vision: VisionCache | None = None,
    *,
    min_pixels: int | None,
    max_pixels: int | None,
    max_input_tokens: int,
) -> Prepared:
    """``request`` rendered, its images prepared and its prompt measured; a prompt over
    ``max_input_tokens`` loses the middle of its user text (``truncated``).

    Raises:
        AuditorError: the prompt does not fit even with the user text cut.
    """
    if request.max_new_tokens < 1:
        raise AuditorError("max_new_tokens must be at least 1")
    messages: list[dict[str, Any]] = []
    refs = []
    for message in request.messages:
        content: list[dict[str, Any]] = []
        for part in message.content:
            if isinstance(part, TextPart):
                text = defuse_control_tokens(part.text, rt.control_tokens)
                content.append({"type": "text", "text": text})
            elif isinstance(part, ImagePart):
                content.append({"type": "image"})
                refs.append(part.image)
        messages.append({"role": message.role, "content": content})
    prefix = request.assistant_prefix or ""

    def render() -> str:
        text: str = rt.tokenizer.apply_chat_template(
            messages, chat_template=rt.chat_template, tokenize=False, add_generation_prompt=True
        )
        return text + prefix

    text = render()
    ids = token_ids(rt, text)
    cached = vision.get(request.messages) if vision is not None else None
    if cached is None:
        images = prepare_for_model(
            [ref.to_pil() for ref in refs],
            rt.model_type,
            min_pixels=min_pixels,
            max_pixels=max_pixels,
        )
        encoded = rt.processor(text=[text], images=images or None, return_tensors="pt")
        # Image placeholders expand to many tokens; the offset depends on the images only,
        # so it stays fixed while the text shrinks and across assistant prefixes.
        image_overhead = int(encoded["input_ids"].shape[1]) - len(ids)
        if vision is not None:
            vision[request.messages] = (images, image_overhead)
    else:
        images, image_overhead = cached
    total = len(ids) + image_overhead
    truncated = False
    for _ in range(8):
        if total <= max_input_tokens:
            break
        if not cut_user_text(rt, messages, total - max_input_tokens):
            raise AuditorError(
                f"prompt needs {total} tokens, over max_input_tokens={max_input_tokens}, "
                "even with the user text cut"
            )
        truncated = True
        text = render()
        ids = token_ids(rt, text)
        total = len(ids) + image_overhead
    if total > max_input_tokens:
        raise AuditorError(f"could not cut the prompt to {max_input_tokens} tokens")
    return Prepared(text, images, total, truncated, request.max_new_tokens, ids)


def token_ids(rt: LocalRuntime, text: str) -> list[int]:
    """``text``'s token ids, image placeholders unexpanded."""
    ids: list[int] = rt.tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids


def encode(rt: LocalRuntime, batch: list[Prepared]) -> Any:
    """The batch as model inputs on the model's device (left-padded)."""
    images = [image for p in batch for image in p.images]
    inputs = rt.processor(
        text=[p.text for p in batch],
        images=images or None,
        padding=True,
        return_tensors="pt",
    )
    return inputs.to(rt.device)
