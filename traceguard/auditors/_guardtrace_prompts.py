"""Prompt templates for the GuardTrace auditor: :class:`PromptSet`.

The packaged templates live in ``traceguard.prompts`` (``prompts/*.txt`` in the source tree) and
are read with :mod:`importlib.resources`, so they work from a wheel, a zip or an editable install.
Users can point at their own files instead, or load the prompts GuardTrace-VL was trained on
from their own copy of its repository with :meth:`PromptSet.from_guardtrace_repo`: traceguard
does not ship that text. The packaged system prompts are a rewrite in traceguard's words; the
published accuracy of GuardTrace-VL holds for the trained prompts, and the rewrite has not been
measured on the real weights.

The user template has three placeholders, ``{query}``, ``{thinking}`` and ``{response}``. They
are filled in one pass by :meth:`PromptSet.render_user`, which never interprets braces in the
values: audited text is hostile and may contain ``{query}`` or unbalanced ``{`` itself.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from traceguard._exceptions import ConfigurationError

__all__ = ["PLACEHOLDERS", "PromptSet"]

PLACEHOLDERS = ("query", "thinking", "response")
"""The fields every user template must place, as ``{name}``."""

_PLACEHOLDER_RE = re.compile(r"\{(query|thinking|response)\}")
_PACKAGE = "traceguard.prompts"
_SYSTEM_FILE = "guardtrace_system.txt"
_SYSTEM_BINARY_FILE = "guardtrace_system_binary.txt"
_USER_FILE = "guardtrace_user.txt"
# File names in the GuardTrace-VL repository; the three-level one is published misspelt.
_REPO_THREE_LEVEL = ("qta_prompt.txt", "qta_pormpt.txt")
_REPO_TWO_LEVEL = ("qa_prompt.txt",)
# The output-format line: the judgment key, then the levels in brackets ("[0/0.5/1]").
_JUDGMENT_LEVELS = re.compile(r"judge?ment\W{0,4}[:：]\s*\[([^\]\n]*)\]", re.IGNORECASE)


@dataclass(frozen=True)
class PromptSet:
    """The three texts a GuardTrace request is built from, plus a version for caching.

    Build one with :meth:`default` or :meth:`from_files`; constructing it directly validates the
    texts the same way.
    """

    system: str
    """System prompt for traces with thinking (three levels: 0, 0.5, 1)."""
    system_binary: str
    """System prompt for traces without thinking (two levels: 0, 1)."""
    user: str
    """User-turn template with ``{query}``, ``{thinking}`` and ``{response}``."""
    version: str
    """Identifies the prompt texts; part of verdict cache keys, so it changes with any edit."""
    name: str = "custom"
    """Where the texts come from (``traceguard-packaged``, ``guardtrace-repo``, ``custom``)."""

    @property
    def sha256(self) -> str:
        """The full sha256 of the three texts; every verdict records it with :attr:`name`."""
        return _digest(self.system, self.system_binary, self.user, length=64)

    def describe(self) -> dict[str, str]:
        """``{"name", "sha256", "version"}``: what a verdict records about its prompt set."""
        return {"name": self.name, "sha256": self.sha256, "version": self.version}

    def __post_init__(self) -> None:
        for field_name in ("system", "system_binary"):
            if not getattr(self, field_name).strip():
                raise ConfigurationError(f"prompt {field_name!r} is empty")
        found = _PLACEHOLDER_RE.findall(self.user)
        missing = [name for name in PLACEHOLDERS if name not in found]
        if missing:
            names = ", ".join("{" + name + "}" for name in missing)
            raise ConfigurationError(f"user prompt template lacks the placeholder(s) {names}")

    @classmethod
    def default(cls) -> PromptSet:
        """The prompts shipped with traceguard (read once, then cached)."""
        return _default_prompts()

    @classmethod
    def from_texts(
        cls,
        *,
        system: str,
        user: str,
        system_binary: str | None = None,
        version: str | None = None,
        name: str = "custom",
    ) -> PromptSet:
        """A prompt set from strings; ``system_binary`` defaults to ``system``.

        ``version`` defaults to a hash of the three texts.
        """
        binary = system if system_binary is None else system_binary
        return cls(
            system=system,
            system_binary=binary,
            user=user,
            version=version or f"{name}-" + _digest(system, binary, user),
            name=name,
        )

    @classmethod
    def from_files(
        cls,
        *,
        system: str | Path | None = None,
        user: str | Path | None = None,
        system_binary: str | Path | None = None,
        version: str | None = None,
    ) -> PromptSet:
        """A prompt set read from UTF-8 files; any file not given comes from :meth:`default`.

        Raises:
            ConfigurationError: a file cannot be read, is empty, or the user template lacks a
                placeholder.
        """
        base = cls.default()
        system_text = _read_file(system) if system is not None else base.system
        user_text = _read_file(user) if user is not None else base.user
        binary_text = _read_file(system_binary) if system_binary is not None else base.system_binary
        return cls.from_texts(
            system=system_text, user=user_text, system_binary=binary_text, version=version
        )

    @classmethod
    def from_guardtrace_repo(cls, path: str | Path) -> PromptSet:
        """The system prompts GuardTrace-VL was trained on, from your copy of its repository.

        ``path`` is a clone of ``xiangyx2020/GuardTrace-VL`` (or a downloaded snapshot of it):
        the three-level prompt is ``prompts/qta_prompt.txt`` (published as ``qta_pormpt.txt``;
        both spellings are found) and the two-level one ``prompts/qa_prompt.txt``. Each file
        is the whole system prompt, read as the reference code reads it (stripped). The user
        turn is the packaged template, which lays out the three ``Current Task …`` lines the
        way the reference evaluation code does.

        Checked before use: both files exist, neither holds a template placeholder (they are
        sent as they are), and the judgment line of each offers the levels of its scale
        (``0/0.5/1`` and ``0/1``), so swapped or foreign files are refused.

        Raises:
            ConfigurationError: a file is missing, unreadable, or fails a check.
        """
        folder = Path(path)
        prompts_dir = folder / "prompts" if (folder / "prompts").is_dir() else folder
        if not prompts_dir.is_dir():
            raise ConfigurationError(f"{str(folder)!r} is not a GuardTrace-VL repository folder")
        three = _repo_file(prompts_dir, _REPO_THREE_LEVEL, "three-level (qta)")
        two = _repo_file(prompts_dir, _REPO_TWO_LEVEL, "two-level (qa)")
        system = _read_file(three).strip()
        binary = _read_file(two).strip()
        _check_repo_prompt(three, system, expected=("0", "0.5", "1"))
        _check_repo_prompt(two, binary, expected=("0", "1"))
        base = cls.default()
        return cls.from_texts(
            system=system, user=base.user, system_binary=binary, name="guardtrace-repo"
        )

    def system_prompt(self, *, binary: bool) -> str:
        """The system prompt for the two-level (``binary``) or three-level scale."""
        return self.system_binary if binary else self.system

    def render_user(self, *, query: str, thinking: str, response: str) -> str:
        """Fill the user template. Braces in the values are kept as they are.

        A line of audited text that starts like one of the template's own section labels (such
        as ``Current Task Cleaned Response:``) gets a zero-width space in front, so a thinking
        cannot open a forged, benign-looking section of its own.
        """
        labels = _section_labels(self.user)
        values = {
            "query": _defuse_labels(query, labels),
            "thinking": _defuse_labels(thinking, labels),
            "response": _defuse_labels(response, labels),
        }
        # One regex pass over the template only: substituted text is never scanned again, so a
        # value containing "{response}" or "{" cannot inject into or break the template.
        return _PLACEHOLDER_RE.sub(lambda match: values[match.group(1)], self.user)


_ZERO_WIDTH_SPACE = "\u200b"


def _section_labels(template: str) -> tuple[str, ...]:
    """The text before each placeholder on its line: the labels the auditor reads sections by."""
    labels = []
    for line in template.splitlines():
        match = _PLACEHOLDER_RE.search(line)
        if match is not None and line[: match.start()].strip():
            labels.append(line[: match.start()].strip().casefold())
    return tuple(labels)


def _defuse_labels(text: str, labels: tuple[str, ...]) -> str:
    if not labels:
        return text
    lines = text.split("\n")
    for index, line in enumerate(lines):
        if line.lstrip().casefold().startswith(labels):
            lines[index] = _ZERO_WIDTH_SPACE + line
    return "\n".join(lines)


def _digest(*texts: str, length: int = 12) -> str:
    hasher = hashlib.sha256()
    for text in texts:
        hasher.update(text.encode("utf-8"))
        hasher.update(b"\0")
    return hasher.hexdigest()[:length]


def _clean(text: str) -> str:
    # Editors add a final newline; the model was trained without a trailing one.
    return text.rstrip()


def _read_file(path: str | Path) -> str:
    try:
        return _clean(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read prompt file {str(path)!r}: {exc}") from exc


def _read_resource(name: str) -> str:
    try:
        return _clean(resources.files(_PACKAGE).joinpath(name).read_text(encoding="utf-8"))
    except (OSError, ModuleNotFoundError) as exc:
        raise ConfigurationError(f"packaged prompt {name!r} is missing: {exc}") from exc


@functools.cache
def _default_prompts() -> PromptSet:
    system = _read_resource(_SYSTEM_FILE)
    binary = _read_resource(_SYSTEM_BINARY_FILE)
    user = _read_resource(_USER_FILE)
    return PromptSet(
        system=system,
        system_binary=binary,
        user=user,
        version="traceguard-" + _digest(system, binary, user),
        name="traceguard-packaged",
    )


def _repo_file(folder: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise ConfigurationError(
        f"no {what} prompt in {str(folder)!r}: expected one of {', '.join(names)}"
    )


def _check_repo_prompt(path: Path, text: str, *, expected: tuple[str, ...]) -> None:
    found = _PLACEHOLDER_RE.findall(text)
    if found:
        raise ConfigurationError(
            f"{str(path)!r} holds the placeholder {{{found[0]}}}: a trained system prompt is "
            "sent as it is, so this is not one"
        )
    lines = _JUDGMENT_LEVELS.findall(text)
    if not lines:
        raise ConfigurationError(f"{str(path)!r} has no judgment line such as “Judgment”: [0/1]")
    levels = tuple(level.strip() for level in lines[-1].split("/"))
    if levels != expected:
        raise ConfigurationError(
            f"{str(path)!r} offers the levels {'/'.join(levels)}, expected {'/'.join(expected)}"
        )
