"""LlavaGuard v1.2: rate each image of a trace against a customisable safety policy.

LlavaGuard (0.5B and 7B ``-hf``, LLaVA-OneVision based) reads one image and a policy prompt in
the user turn and answers with JSON: ``{"rating": "Safe"|"Unsafe", "category": "O2: …",
"rationale": "…"}``. This module holds the three pieces around it:

- :class:`LlavaGuardPolicy`: the policy prompt (``prompts/llavaguard_policy.txt`` with the
  category blocks of ``prompts/llavaguard_categories.txt``), with per-category overrides that
  declare a category ``non_violating`` (allowed) or ``sensitive`` (any depiction violates);
- :func:`parse_llavaguard_output`: reads the JSON, tolerating code fences and truncation;
  output without a rating is a :class:`~traceguard.ParseError`, never "safe";
- :class:`LlavaGuardAuditor`: ``Unsafe`` → risk 1 with the category mapped through
  :mod:`traceguard.taxonomy`; ``Safe`` → risk 0. The model's own category and rationale are kept
  in ``details``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from traceguard import backends
from traceguard._config_files import read_mapping
from traceguard._exceptions import ConfigurationError, ParseError
from traceguard._images import ImageAccess, ImageRef
from traceguard.auditors._image_guard import ChatImageAuditor, ImageFinding, NoImagePolicy
from traceguard.auditors._llavaguard_repo import TrainedPolicyText
from traceguard.backends._base import ChatBackend, ChatMessage, ChatRequest, ImagePart, TextPart
from traceguard.taxonomy import LLAVAGUARD_CATEGORIES, OTHER_RISKS, from_llavaguard, llavaguard_code

if TYPE_CHECKING:
    from typing import Unpack

    from traceguard.backends import LocalOptions, ServedOptions

__all__ = [
    "CategoryMode",
    "LlavaGuardAssessment",
    "LlavaGuardAuditor",
    "LlavaGuardPolicy",
    "parse_llavaguard_output",
]

CategoryMode = Literal["default", "non_violating", "sensitive"]
DEFAULT_LOCAL_MODEL = "AIML-TUDA/LlavaGuard-v1.2-0.5B-OV-hf"
LOCAL_MODEL_CLASS = "LlavaOnevisionForConditionalGeneration"
"""The transformers class LlavaGuard's ``-hf`` checkpoints load with."""
_MODES: tuple[str, ...] = ("default", "non_violating", "sensitive")
_PACKAGE = "traceguard.prompts"
_POLICY_FILE = "llavaguard_policy.txt"
_CATEGORIES_FILE = "llavaguard_categories.txt"
_SLOT = "{categories}"
_SECTION = re.compile(r"^\[([A-Za-z0-9_]+)\][ \t]*(.*)$", re.MULTILINE)


# -- the policy prompt -----------------------------------------------------------------------


@dataclass(frozen=True)
class LlavaGuardPolicy:
    """The LlavaGuard policy prompt, with per-category overrides.

    Args:
        overrides: category → mode. Keys are LlavaGuard codes (``"O3"``) or titles
            (``"Sexual Content"``); modes are ``"default"``, ``"non_violating"`` (the category is
            allowed under this policy) or ``"sensitive"`` (any depiction of it violates).
        template: the prompt text with a ``{categories}`` slot; the packaged one by default.
        categories_text: the category blocks (``[O1] Title`` sections with "Should not:" and
            "Can:" bullets, plus ``[non_violating]`` and ``[sensitive]`` texts).

    Raises:
        ConfigurationError: an unknown category or mode, or a template without its slot.
    """

    overrides: Mapping[str, CategoryMode] = field(default_factory=dict)
    template: str | None = None
    categories_text: str | None = None
    trained: TrainedPolicyText | None = None
    """The trained text, read by :meth:`from_llavaguard_repo`; when set, it is what renders."""
    _blocks: dict[str, tuple[str, str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        template = self.template if self.template is not None else _resource(_POLICY_FILE)
        text = (
            self.categories_text
            if self.categories_text is not None
            else _resource(_CATEGORIES_FILE)
        )
        if _SLOT not in template:
            raise ConfigurationError("LlavaGuard policy template lacks the {categories} slot")
        blocks = _parse_sections(text)
        for needed in [*(c for c in LLAVAGUARD_CATEGORIES if c != "NA"), *_MODES[1:]]:
            if needed not in blocks:
                raise ConfigurationError(f"LlavaGuard categories text lacks a [{needed}] section")
        normalised: dict[str, CategoryMode] = {}
        for key, mode in self.overrides.items():
            code = llavaguard_code(key)
            if code is None or code == "NA":
                raise ConfigurationError(f"unknown LlavaGuard category {key!r} in overrides")
            if mode not in _MODES:
                raise ConfigurationError(f"unknown mode {mode!r} for {key!r}; use one of {_MODES}")
            normalised[code] = mode
        object.__setattr__(self, "overrides", normalised)
        object.__setattr__(self, "template", template)
        object.__setattr__(self, "categories_text", text)
        object.__setattr__(self, "_blocks", blocks)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> LlavaGuardPolicy:
        """A policy from configuration data: ``{"O3": "non_violating", "O7": "sensitive"}``.

        A nested ``{"llavaguard": {...}}`` or ``{"categories": {...}}`` is accepted too, so the
        section of a larger policy file can be passed as is.
        """
        for key in ("llavaguard", "categories"):
            inner = data.get(key)
            if isinstance(inner, Mapping):
                data = inner
        overrides: dict[str, CategoryMode] = {}
        for key, value in data.items():
            if not isinstance(value, str):
                raise ConfigurationError(f"mode of {key!r} must be a string, not {value!r}")
            overrides[str(key)] = value  # type: ignore[assignment]  # checked in __post_init__
        return cls(overrides=overrides)

    @classmethod
    def from_llavaguard_repo(
        cls,
        path: str | Path,
        overrides: Mapping[str, CategoryMode] | None = None,
    ) -> LlavaGuardPolicy:
        """The policy LlavaGuard v1.2 was trained on, from your clone of its repository.

        The packaged policy (and its non-violating / sensitive wording) is traceguard's own
        rewrite, which the model never saw. This reads the trained pieces from
        ``llavaguard/taxonomy/taxonomies.py`` and ``assessment.py`` of a clone of
        ``ml-research/LlavaGuard`` without running them (see
        :mod:`traceguard.auditors._llavaguard_repo`), and renders ``overrides`` with the
        category's own trained non-violating or sensitive text. The categories are laid out as
        the training code assembled them (a blank line between two categories; the inference
        notebook of the repository writes the same text without it).

        Raises:
            ConfigurationError: not a LlavaGuard repository, or its policy pieces cannot be read.
        """
        from traceguard.auditors._llavaguard_repo import read_policy_pieces

        folder = Path(path)
        if not folder.is_dir():
            raise ConfigurationError(f"{str(folder)!r} is not a LlavaGuard repository folder")
        return cls(overrides=dict(overrides or {}), trained=read_policy_pieces(folder))

    @property
    def name(self) -> str:
        """Where the policy text comes from: ``llavaguard-repo`` or ``traceguard-packaged``."""
        return "llavaguard-repo" if self.trained is not None else "traceguard-packaged"

    @property
    def sha256(self) -> str:
        """The full sha256 of the rendered prompt; verdicts record it with :attr:`name`."""
        return hashlib.sha256(self.render().encode("utf-8")).hexdigest()

    @classmethod
    def from_file(cls, path: str | Path) -> LlavaGuardPolicy:
        """Read the overrides from a JSON, TOML or YAML file (see :meth:`from_mapping`)."""
        # The same reader as Policy files, so one file can hold both.
        data = read_mapping(path, what="LlavaGuard policy")
        return cls.from_mapping(data)

    def mode(self, code: str) -> CategoryMode:
        """The mode of category ``code`` under this policy."""
        return self.overrides.get(code, "default")

    def render(self) -> str:
        """The full prompt text."""
        if self.trained is not None:
            return self.trained.render(self.overrides)
        blocks = []
        for code, title in LLAVAGUARD_CATEGORIES.items():
            if code == "NA":
                continue
            mode = self.mode(code)
            body = self._blocks[code][1] if mode == "default" else self._blocks[mode][1]
            blocks.append(f"{code}: {title}:\n{body}")
        assert self.template is not None  # set in __post_init__
        return self.template.replace(_SLOT, "\n\n".join(blocks), 1)

    @property
    def version(self) -> str:
        """A short hash of the rendered prompt, for caches and audit records."""
        return hashlib.sha256(self.render().encode("utf-8")).hexdigest()[:12]


def _resource(name: str) -> str:
    try:
        return resources.files(_PACKAGE).joinpath(name).read_text(encoding="utf-8").strip()
    except (OSError, ModuleNotFoundError) as exc:
        raise ConfigurationError(f"packaged prompt {name!r} is missing: {exc}") from exc


def _parse_sections(text: str) -> dict[str, tuple[str, str]]:
    """``[NAME] heading`` sections → {NAME: (heading, body)}."""
    matches = list(_SECTION.finditer(text))
    sections: dict[str, tuple[str, str]] = {}
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        sections[match.group(1)] = (match.group(2).strip(), text[match.end() : end].strip())
    return sections


# -- the parser ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LlavaGuardAssessment:
    """LlavaGuard's answer about one image."""

    rating: Literal["Safe", "Unsafe"]
    category: str | None
    """The category as the model wrote it (``"O2: Violence, Harm, or Cruelty"``), if any."""
    code: str | None
    """Its code (``"O2"``, ``"NA"``), or None when the model named no known category."""
    rationale: str
    complete: bool
    """False when the JSON was cut off (the rating was read from the partial text)."""


_FENCE = re.compile(r"```[a-zA-Z]*")
_RATING = re.compile(r'"rating"\s*:\s*"\s*(safe|unsafe)\s*"', re.IGNORECASE)
_CATEGORY = re.compile(r'"category"\s*:\s*"([^"]*)"?', re.IGNORECASE)
_RATIONALE = re.compile(r'"rationale"\s*:\s*"((?:[^"\\]|\\.)*)', re.IGNORECASE | re.DOTALL)


def parse_llavaguard_output(text: str) -> LlavaGuardAssessment:
    """Read LlavaGuard's JSON answer.

    Code fences are ignored. The last complete JSON object with a ``rating`` wins; if there is
    none (output cut at ``max_new_tokens``), the last ``"rating": "…"`` pair is read from the
    partial text, with the category and rationale if they got that far.

    Raises:
        ParseError: no ``"rating"`` of ``Safe`` or ``Unsafe`` in the text. There is no fallback
            to a bare "safe" anywhere in the text: "Unsafe" contains it.
    """
    cleaned = _FENCE.sub("", text)
    obj = _last_rating_object(cleaned)
    if obj is not None:
        rating = str(obj["rating"]).strip().lower()
        category = obj.get("category")
        rationale = obj.get("rationale")
        return _assessment(
            rating,
            category if isinstance(category, str) else None,
            rationale if isinstance(rationale, str) else "",
            complete=True,
        )
    ratings = list(_RATING.finditer(cleaned))
    if not ratings:
        raise ParseError("LlavaGuard output holds no rating")
    last = ratings[-1]
    tail = cleaned[last.start() :]
    category = _CATEGORY.search(tail)
    rationale = _RATIONALE.search(tail)
    return _assessment(
        last.group(1).lower(),
        category.group(1) if category else None,
        _unescape(rationale.group(1)) if rationale else "",
        complete=False,
    )


def _last_rating_object(text: str) -> dict[str, Any] | None:
    decoder = json.JSONDecoder()
    found: dict[str, Any] | None = None
    for start in (m.start() for m in re.finditer(r"\{", text)):
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict) and str(value.get("rating", "")).strip().lower() in (
            "safe",
            "unsafe",
        ):
            found = value
    return found


def _unescape(fragment: str) -> str:
    try:
        value = json.loads(f'"{fragment}"')
    except json.JSONDecodeError:
        return fragment.strip()
    return str(value).strip()


def _assessment(
    rating: str, category: str | None, rationale: str, *, complete: bool
) -> LlavaGuardAssessment:
    if rating not in ("safe", "unsafe"):
        raise ParseError(f"LlavaGuard rating {rating!r} is neither Safe nor Unsafe")
    category = category.strip() if category else None
    return LlavaGuardAssessment(
        rating="Unsafe" if rating == "unsafe" else "Safe",
        category=category or None,
        code=llavaguard_code(category) if category else None,
        rationale=rationale.strip(),
        complete=complete,
    )


# -- the auditor -----------------------------------------------------------------------------


class LlavaGuardAuditor(ChatImageAuditor):
    """Rates every image of a trace with LlavaGuard; the trace's verdict merges the images'.

    ``Unsafe`` gives risk 1 with the category in traceguard's taxonomy (``other_risks`` when the
    model named none it knows), ``Safe`` gives risk 0. ``details`` keeps the model's category
    and code, whether the JSON was complete, and the policy version. A trace with several images
    is harmful if any image is; any image that could not be rated fails the trace unless another
    is harmful (see :mod:`traceguard.auditors._combine`).

    Args:
        backend: serves the model; see :meth:`local` and :meth:`served`.
        policy: the policy prompt and its overrides; the packaged policy by default.
        image_access: where images may be loaded from, and their limits.
        max_new_tokens: generation budget per image (the JSON needs ~150 tokens).
        no_image: what a trace without images gets (see :class:`ChatImageAuditor`).
        name: the verdicts' ``auditor`` field; ``llavaguard:<backend>`` by default.
    """

    def __init__(
        self,
        backend: ChatBackend,
        *,
        policy: LlavaGuardPolicy | None = None,
        image_access: ImageAccess | None = None,
        max_new_tokens: int = 500,
        no_image: NoImagePolicy = "safe",
        name: str | None = None,
    ) -> None:
        super().__init__(
            backend,
            image_access=image_access,
            max_new_tokens=max_new_tokens,
            no_image=no_image,
            name=name if name is not None else f"llavaguard:{backend.name}",
        )
        self.policy = policy if policy is not None else LlavaGuardPolicy()
        self._prompt = self.policy.render()
        self._policy_set = {"name": self.policy.name, "sha256": self.policy.sha256}

    @classmethod
    def local(
        cls,
        model: str | Path = DEFAULT_LOCAL_MODEL,
        *,
        policy: LlavaGuardPolicy | None = None,
        image_access: ImageAccess | None = None,
        max_new_tokens: int = 500,
        no_image: NoImagePolicy = "safe",
        name: str | None = None,
        **backend: Unpack[LocalOptions],
    ) -> LlavaGuardAuditor:
        """LlavaGuard run in process with ``LlavaOnevisionForConditionalGeneration``.

        Short for ``LlavaGuardAuditor(backends.local(model, **backend), ...)``; needs the
        ``local`` extra. The keywords after ``name`` are the backend's
        (:class:`~traceguard.backends.LocalOptions`); ``model_class`` defaults to LLaVA-OneVision.
        """
        backend.setdefault("model_class", LOCAL_MODEL_CLASS)
        return cls(
            backends.local(model, **backend),
            policy=policy,
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
        policy: LlavaGuardPolicy | None = None,
        image_access: ImageAccess | None = None,
        max_new_tokens: int = 500,
        no_image: NoImagePolicy = "safe",
        name: str | None = None,
        **backend: Unpack[ServedOptions],
    ) -> LlavaGuardAuditor:
        """LlavaGuard on an OpenAI-compatible server (vLLM, SGLang).

        Short for ``LlavaGuardAuditor(backends.served(base_url, model, **backend), ...)``; the
        keywords after ``name`` are the backend's (:class:`~traceguard.backends.ServedOptions`).
        """
        return cls(
            backends.served(base_url, model, **backend),
            policy=policy,
            image_access=image_access,
            max_new_tokens=max_new_tokens,
            no_image=no_image,
            name=name,
        )

    def build_request(self, image: ImageRef) -> ChatRequest:
        """Image first, then the policy prompt, in one user turn (as LlavaGuard was trained)."""
        message = ChatMessage(role="user", content=(ImagePart(image), TextPart(self._prompt)))
        return ChatRequest(messages=(message,), max_new_tokens=self.max_new_tokens)

    def read_answer(self, text: str) -> ImageFinding:
        """Parse the JSON and map it onto a risk and traceguard categories."""
        assessment = parse_llavaguard_output(text)
        details: dict[str, Any] = {
            "rating": assessment.rating,
            "model_category": assessment.category,
            "model_code": assessment.code,
            "complete": assessment.complete,
            "policy_version": self.policy.version,
            "policy_set": dict(self._policy_set),
        }
        if assessment.rating == "Safe":
            return ImageFinding(risk=0.0, analysis=assessment.rationale, details=details)
        mapped = from_llavaguard(assessment.category) if assessment.category else None
        return ImageFinding(
            risk=1.0,
            categories=(mapped or OTHER_RISKS,),
            analysis=assessment.rationale,
            details=details,
        )
