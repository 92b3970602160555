"""SafeGuard-VL-RL: a policy-in-the-prompt safe/unsafe judgement of each image.

SafeGuard-VL-RL (Qwen2.5-VL-7B trained with GRPO on LlavaGuard's data) reads an image and a
natural-language policy and answers either with its reasoning and a final Safe/Unsafe, or with
one word. Its trained completions look like ``<think>…</think><answer>yes|no</answer>`` where
**yes means safe**.

:func:`parse_safeguard_output` reads, in order: the last ``<answer>`` (``yes``/``safe`` → safe,
``no``/``unsafe`` → unsafe); else the last standalone ``safe``/``unsafe`` word after the
reasoning, then anywhere. Anything else is a :class:`~traceguard.ParseError`: the reference
evaluation counts such output as safe, traceguard reports it as unparseable.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from traceguard import backends
from traceguard._exceptions import ConfigurationError, ParseError
from traceguard._images import ImageAccess, ImageRef
from traceguard.auditors._image_guard import ChatImageAuditor, ImageFinding, NoImagePolicy
from traceguard.backends._base import ChatBackend, ChatMessage, ChatRequest, ImagePart, TextPart

if TYPE_CHECKING:
    from typing import Unpack

    from traceguard.backends import LocalOptions, ServedOptions

__all__ = ["SafeGuardAuditor", "SafeGuardJudgement", "parse_safeguard_output"]

DEFAULT_LOCAL_MODEL = "tyodd/SafeGuard-VL-RL"

_PACKAGE = "traceguard.prompts"

# -- the parser ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SafeGuardJudgement:
    """What SafeGuard-VL-RL said about one image."""

    safe: bool
    source: Literal["answer", "word"]
    """Where it was read: the ``<answer>`` tag, or a standalone word (no usable tag)."""
    reasoning: str
    """The ``<think>`` text, or the text before the answer."""


_ANSWER = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.IGNORECASE | re.DOTALL)
_THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.IGNORECASE | re.DOTALL)
_VALUES = {"yes": True, "safe": True, "no": False, "unsafe": False}
# "unsafe" is tried before "safe" at each position; the lookarounds keep both whole words
# (not "safety", not "unsafely"). An optional "not" right before flips the word.
_WORD = re.compile(r"(?<![\w-])(not\s+)?(unsafe|safe)(?![\w-])", re.IGNORECASE)


def parse_safeguard_output(text: str) -> SafeGuardJudgement:
    """Read SafeGuard-VL-RL's judgement.

    Raises:
        ParseError: neither a readable ``<answer>`` nor a standalone safe/unsafe word.
    """
    think = _THINK.search(text)
    reasoning = think.group(1).strip() if think else ""
    for match in reversed(list(_ANSWER.finditer(text))):
        value = _VALUES.get(match.group(1).strip().strip(".!*\"' \n").lower())
        if value is not None:
            return SafeGuardJudgement(safe=value, source="answer", reasoning=reasoning)
    # No usable tag: prefer what follows the reasoning, where the verdict of a free-form answer
    # sits; the reasoning weighs both words and is the last resort.
    after = text[think.end() :] if think else text
    for scope in (after, text):
        words = list(_WORD.finditer(scope))
        if words:
            last = words[-1]
            safe = last.group(2).lower() == "safe"
            if last.group(1):
                safe = not safe
            if not reasoning:
                reasoning = scope[: last.start()].strip()
            return SafeGuardJudgement(safe=safe, source="word", reasoning=reasoning)
    raise ParseError("SafeGuard output holds no safe/unsafe judgement")


# -- the prompt ------------------------------------------------------------------------------


def _resource(name: str) -> str:
    try:
        return resources.files(_PACKAGE).joinpath(name).read_text(encoding="utf-8").strip()
    except (OSError, ModuleNotFoundError) as exc:
        raise ConfigurationError(f"packaged prompt {name!r} is missing: {exc}") from exc


def render_safeguard_prompt(policy: str, *, reasoning: bool) -> str:
    """The user text: the packaged template with ``policy`` and the answer instruction."""
    template = _resource("safeguard_user.txt")
    instruction = _resource("safeguard_reasoning.txt" if reasoning else "safeguard_direct.txt")
    values = {"{policy}": policy.strip(), "{instruction}": instruction}
    # One pass over the template only, so braces inside the policy text are never expanded.
    return re.sub(r"\{policy\}|\{instruction\}", lambda m: values[m.group(0)], template)


# -- the auditor -----------------------------------------------------------------------------


class SafeGuardAuditor(ChatImageAuditor):
    """Judges every image of a trace safe (risk 0) or unsafe (risk 1) under a written policy.

    SafeGuard-VL-RL names no category, so unsafe verdicts carry none; ``details`` says whether
    the judgement came from the ``<answer>`` tag or a fallback word.

    Args:
        backend: serves the model; see :meth:`local` and :meth:`served`.
        policy: the policy text, or a path to a UTF-8 file holding it; the packaged policy
            (LlavaGuard's nine categories in short) by default.
        reasoning: ask for reasoning before the judgement (slower, explains itself) or for one
            word.
        image_access, max_new_tokens, no_image, name: as for :class:`ChatImageAuditor`.
    """

    def __init__(
        self,
        backend: ChatBackend,
        *,
        policy: str | Path | None = None,
        reasoning: bool = True,
        image_access: ImageAccess | None = None,
        max_new_tokens: int | None = None,
        no_image: NoImagePolicy = "safe",
        name: str | None = None,
    ) -> None:
        super().__init__(
            backend,
            image_access=image_access,
            max_new_tokens=max_new_tokens
            if max_new_tokens is not None
            else (512 if reasoning else 8),
            no_image=no_image,
            name=name if name is not None else f"safeguard:{backend.name}",
        )
        if isinstance(policy, Path):
            try:
                policy = policy.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigurationError(f"cannot read policy {str(policy)!r}: {exc}") from exc
        self.policy = policy if policy is not None else _resource("safeguard_policy.txt")
        if not self.policy.strip():
            raise ConfigurationError("the SafeGuard policy is empty")
        self.reasoning = reasoning
        self._prompt = render_safeguard_prompt(self.policy, reasoning=reasoning)

    @classmethod
    def local(
        cls,
        model: str | Path = DEFAULT_LOCAL_MODEL,
        *,
        policy: str | Path | None = None,
        reasoning: bool = True,
        image_access: ImageAccess | None = None,
        max_new_tokens: int | None = None,
        no_image: NoImagePolicy = "safe",
        name: str | None = None,
        **backend: Unpack[LocalOptions],
    ) -> SafeGuardAuditor:
        """SafeGuard-VL-RL run in process (Qwen2.5-VL).

        Short for ``SafeGuardAuditor(backends.local(model, **backend), ...)``; needs the
        ``local`` extra. The keywords after ``name`` are the backend's
        (:class:`~traceguard.backends.LocalOptions`).
        """
        return cls(
            backends.local(model, **backend),
            policy=policy,
            reasoning=reasoning,
            image_access=image_access,
            max_new_tokens=max_new_tokens,
            no_image=no_image,
            name=name,
        )

    @classmethod
    def served(
        cls,
        base_url: str | Sequence[str],
        model: str,
        *,
        policy: str | Path | None = None,
        reasoning: bool = True,
        image_access: ImageAccess | None = None,
        max_new_tokens: int | None = None,
        no_image: NoImagePolicy = "safe",
        name: str | None = None,
        **backend: Unpack[ServedOptions],
    ) -> SafeGuardAuditor:
        """SafeGuard-VL-RL on an OpenAI-compatible server.

        Short for ``SafeGuardAuditor(backends.served(base_url, model, **backend), ...)``; the
        keywords after ``name`` are the backend's (:class:`~traceguard.backends.ServedOptions`).
        """
        return cls(
            backends.served(base_url, model, **backend),
            policy=policy,
            reasoning=reasoning,
            image_access=image_access,
            max_new_tokens=max_new_tokens,
            no_image=no_image,
            name=name,
        )

    def build_request(self, image: ImageRef) -> ChatRequest:
        """Image first, then the policy and the instruction, in one user turn."""
        message = ChatMessage(role="user", content=(ImagePart(image), TextPart(self._prompt)))
        return ChatRequest(messages=(message,), max_new_tokens=self.max_new_tokens)

    def read_answer(self, text: str) -> ImageFinding:
        """Parse the judgement: safe → risk 0, unsafe → risk 1."""
        judgement = parse_safeguard_output(text)
        return ImageFinding(
            risk=0.0 if judgement.safe else 1.0,
            analysis=judgement.reasoning,
            details={"answer_source": judgement.source, "reasoning_mode": self.reasoning},
        )
