"""Reading configuration files (YAML, TOML, JSON) so that every error can say where it is.

:func:`read_mapping` returns the data of a file; :func:`read_document` also keeps the line of
every key, so a validation error can name the key *and* the line
(:func:`describe_validation_error`)::

    guard.yaml:14: auditor.stages[1].backend.timeout: Input should be greater than 0

Where the lines come from:

- YAML: the node marks of :func:`yaml.compose` (exact, for every key and list item). Duplicate
  keys are an error: PyYAML would silently keep the last one, and a rule that vanishes without a
  word is worse than a refused file.
- JSON and TOML: the parsers keep no positions, so the line is found by looking for the key in
  the text, after the line of its parent; a key that cannot be placed that way is named by its
  path only. JSON duplicate keys are refused as in YAML; TOML refuses them itself.

Syntax errors name the file and the position the parser reports. Everything here raises
:class:`~traceguard.ConfigurationError`.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from traceguard._exceptions import ConfigurationError
from traceguard._version import install_hint

if TYPE_CHECKING:
    from pydantic import ValidationError

__all__ = [
    "ConfigDocument",
    "KeyPath",
    "data_path",
    "describe_validation_error",
    "format_key_path",
    "read_document",
    "read_mapping",
]

KeyPath = tuple[str | int, ...]
"""Where a value sits in a document: mapping keys and list indices from the top."""

_SUFFIXES = (".yaml", ".yml", ".toml", ".json")


@dataclass(frozen=True)
class ConfigDocument:
    """A configuration file's data, with the line of each key where it is known."""

    path: Path
    data: Any
    """What the file holds (None for an empty YAML file)."""
    lines: Mapping[KeyPath, int] = field(default_factory=dict)
    """1-based line of each key (or list item) by its path."""

    def line_of(self, path: KeyPath) -> int | None:
        """The line of ``path``, or of its nearest ancestor whose line is known."""
        for end in range(len(path), 0, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None


def read_mapping(path: str | os.PathLike[str], *, what: str = "configuration") -> dict[str, Any]:
    """The mapping a ``.yaml``/``.yml``, ``.toml`` or ``.json`` file holds at its top level.

    An empty (or all-comment) YAML file is an empty mapping.

    Raises:
        ConfigurationError: unreadable file, unknown suffix, syntax error, duplicate key, or
            something other than a mapping at the top; the message names the file (and the
            line, where the parser gives one). ``what`` names the kind of file in messages.
    """
    document = read_document(path, what=what)
    return dict(document.data)


def read_document(path: str | os.PathLike[str], *, what: str = "configuration") -> ConfigDocument:
    """Like :func:`read_mapping`, keeping the line of every key for error messages."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise ConfigurationError(
            f"{path}: unknown {what} format {suffix!r} (expected .yaml, .yml, .toml or .json)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"{path}: cannot read {what}: {exc}") from None
    if suffix in (".yaml", ".yml"):
        data, lines = _read_yaml(path, text, what)
    elif suffix == ".toml":
        data = _read_toml(path, text)
        lines = _search_lines(text, data, _toml_key_pattern)
    else:
        data = _read_json(path, text)
        lines = _search_lines(text, data, _json_key_pattern)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigurationError(f"{path}: a {what} must hold a mapping at the top level")
    return ConfigDocument(path=path, data=dict(data), lines=lines)


# -- YAML -------------------------------------------------------------------------------------


def _read_yaml(path: Path, text: str, what: str) -> tuple[Any, dict[KeyPath, int]]:
    try:
        import yaml
    except ImportError:
        raise ConfigurationError(
            f"{path}: reading a YAML {what} needs PyYAML: {install_hint('yaml')} "
            "(or write it as TOML or JSON)"
        ) from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        lines: dict[KeyPath, int] = {}
        if node is not None:
            _yaml_lines(path, node, (), lines)
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        raise ConfigurationError(f"{path}: invalid YAML: {_yaml_problem(exc)}") from None
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{path}: invalid YAML: {exc}") from None
    finally:
        loader.dispose()
    return data, lines


def _yaml_problem(exc: Any) -> str:
    """PyYAML's message on one line: the problem, where it is, and what it was parsing."""
    text = str(exc.problem or "syntax error")
    if exc.problem_mark is not None:
        text += f" (line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1})"
    if exc.context:
        text += f", {exc.context}"
        if exc.context_mark is not None:
            text += f" from line {exc.context_mark.line + 1}"
    return text


def _yaml_lines(path: Path, node: Any, prefix: KeyPath, lines: dict[KeyPath, int]) -> None:
    import yaml

    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue  # a complex key; the validation error will name the parent
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # '<<: *anchor' merges keys; its own keys carry their lines
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in seen:
                dotted = format_key_path((*prefix, key))
                raise ConfigurationError(
                    f"{path}:{line}: {dotted}: duplicate key (first on line {seen[key]})"
                )
            seen[key] = line
            lines[(*prefix, key)] = line
            _yaml_lines(path, value_node, (*prefix, key), lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*prefix, index)] = item.start_mark.line + 1
            _yaml_lines(path, item, (*prefix, index), lines)


# -- TOML and JSON ----------------------------------------------------------------------------


def _read_toml(path: Path, text: str) -> Any:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on Python 3.10 only
        import tomli as tomllib
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path}: invalid TOML: {exc}") from None


def _read_json(path: Path, text: str) -> Any:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise ConfigurationError(f"{path}: duplicate key {key!r}")
            result[key] = value
        return result

    try:
        return json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"{path}: invalid JSON: {exc}") from None


def _json_key_pattern(key: str) -> re.Pattern[str]:
    return re.compile(re.escape(json.dumps(key)) + r"\s*:")


def _toml_key_pattern(key: str) -> re.Pattern[str]:
    # A key at the start of a line (``key =``, ``"key" =``, ``key.sub =``) or inside a table
    # header (``[auditor.backend]``, ``[[sinks]]``).
    bare = re.escape(key)
    quoted = re.escape(json.dumps(key))
    name = rf"(?:{bare}|{quoted})"
    return re.compile(
        rf"^[ \t]*(?:{name}[ \t]*[=.]|\[\[?[^\]\n]*(?<![\w-]){name}(?![\w-])[^\]\n]*\]\]?)",
        re.MULTILINE,
    )


def _search_lines(
    text: str, data: Any, pattern: Callable[[str], re.Pattern[str]]
) -> dict[KeyPath, int]:
    """Lines of keys found by searching the text, each key after its parent's position and
    each list item after the previous item's keys."""
    lines: dict[KeyPath, int] = {}

    def walk(node: Any, prefix: KeyPath, start: int) -> int:
        """Record the keys under ``node``; returns where the last key found ends."""
        end = start
        if isinstance(node, Mapping):
            for key, value in node.items():
                match = pattern(str(key)).search(text, start)
                if match is None:
                    continue
                path = (*prefix, str(key))
                lines[path] = text.count("\n", 0, match.start()) + 1
                end = max(end, walk(value, path, match.end()))
        elif isinstance(node, list):
            for index, item in enumerate(node):
                path = (*prefix, index)
                end = walk(item, path, end)
                first = [line for key, line in lines.items() if key[: len(path)] == path]
                if first:  # an item's line is that of its first key
                    lines[path] = min(first)
        return end

    walk(data, (), 0)
    return lines


# -- validation errors ------------------------------------------------------------------------


def format_key_path(path: Sequence[str | int]) -> str:
    """``("auditor", "stages", 1, "model")`` → ``auditor.stages[1].model``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<top level>"


def data_path(data: Any, loc: Sequence[str | int]) -> KeyPath:
    """The part of a pydantic error location that exists in ``data``.

    Pydantic locations also name union members and tagged-union tags (``"guardtrace"``,
    ``"served"``) that are not keys of the file; they are skipped.
    """
    path: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, Mapping) and isinstance(part, str) and part in node:
            node = node[part]
            path.append(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            path.append(part)
    return tuple(path)


def _at(data: Any, path: KeyPath) -> Any:
    for part in path:
        data = data[part]
    return data


def _tag_message(error: Any) -> str:
    ctx = error.get("ctx") or {}
    if error["type"] == "union_tag_not_found":
        return "Field required (it says which kind of section this is)"
    return f"unknown value {ctx.get('tag')!r} (expected one of {ctx.get('expected_tags', '')})"


def describe_validation_error(
    exc: ValidationError,
    *,
    source: str,
    data: Any,
    document: ConfigDocument | None = None,
    title: str = "invalid configuration",
) -> str:
    """One line per error: ``source:line: key.path: message`` (the line where known).

    ``data`` is what was validated (to tell keys of the file from pydantic's union tags);
    ``document`` supplies the lines.
    """
    seen: set[str] = set()
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = tuple(error["loc"])
        path = data_path(data, loc)
        shown: tuple[str | int, ...] = path
        if error["type"] == "missing" and loc and loc[-1] not in path:
            shown = (*path, loc[-1])
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            # Point at the tag key itself (``kind``), or name it when it is missing.
            tag = str((error.get("ctx") or {}).get("discriminator", "")).strip("'")
            message = _tag_message(error)
            if tag:
                shown = (*path, tag)
                if isinstance(_at(data, path), Mapping) and tag in _at(data, path):
                    path = shown
        elif message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        line = document.line_of(path) if document is not None else None
        where = f"{source}:{line}" if line is not None else source
        text = f"{where}: {format_key_path(shown)}: {message}"
        if text not in seen:  # a union reports the same miss once per member
            seen.add(text)
            lines.append(text)
    return f"{title}:\n  " + "\n  ".join(lines)
