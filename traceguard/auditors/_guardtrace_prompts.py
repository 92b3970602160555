"""Prompt templates for the GuardTrace auditor: :class:`PromptSet`.

The packaged templates live in ``traceguard.prompts`` (``prompts/*.txt`` in the source tree) and
are read with :mod:`importlib.resources`, so they work from a wheel, a zip or an editable install.
Users can point at their own files instead (for example the official GuardTrace system prompt).

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
    ) -> PromptSet:
        """A prompt set from strings; ``system_binary`` defaults to ``system``.

        ``version`` defaults to a hash of the three texts.
        """
        binary = system if system_binary is None else system_binary
        return cls(
            system=system,
            system_binary=binary,
            user=user,
            version=version or "custom-" + _digest(system, binary, user),
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


def _digest(*texts: str) -> str:
    hasher = hashlib.sha256()
    for text in texts:
        hasher.update(text.encode("utf-8"))
        hasher.update(b"\0")
    return hasher.hexdigest()[:12]


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
    )
