"""The policy text LlavaGuard v1.2 was trained on, read from the user's copy of its repository.

traceguard does not ship that text. The LlavaGuard repository (``ml-research/LlavaGuard``) keeps
it in Python modules rather than text files:

- ``llavaguard/taxonomy/taxonomies.py``: the opening sentence (``policy_start_sentence_v16``) and
  the category blocks (``custom_policy_dict_v2``: ``"O1: Hate, Humiliation, Harassment"`` → three
  texts, the category's default guidance, the text used when it is declared non-violating, and
  the one used when it is declared sensitive);
- ``llavaguard/taxonomy/assessment.py``: the assessment steps and JSON template
  (``json_template_v20``, an f-string that lists the category names).

Those are the pieces of template version ``json-v24``, the one the v1.2 OneVision models were
trained with. Their prompts were assembled as: opening sentence, then for each category its key,
``": \\n"``, the chosen text and a newline, then the template. The modules are *read*, never
imported or run: :func:`read_policy_pieces` evaluates only literals, names bound to literals,
f-strings over those, and ``"sep".join(...)`` over a comprehension of them.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traceguard._exceptions import ConfigurationError

__all__ = ["MODE_INDEX", "TrainedPolicyText", "read_policy_pieces"]

MODE_INDEX: Mapping[str, int] = {"default": 0, "non_violating": 1, "sensitive": 2}
"""Which of a category's three trained texts each mode uses."""

_TAXONOMIES = Path("llavaguard") / "taxonomy" / "taxonomies.py"
_ASSESSMENT = Path("llavaguard") / "taxonomy" / "assessment.py"
_CODE = re.compile(r"^\s*(O[1-9])\s*:")
# The image goes as its own content item before the text (as in the -hf models' usage), so the
# "<image>" line the original template ends with is dropped.
_IMAGE_LINE = re.compile(r"^[ \t]*<image>[ \t]*\n?", re.MULTILINE)


@dataclass(frozen=True)
class TrainedPolicyText:
    """The trained pieces, ready to render under any per-category modes."""

    start: str
    categories: tuple[tuple[str, str, tuple[str, str, str]], ...]
    """(code, key as written, (default, non_violating, sensitive)) in the trained order."""
    response_template: str
    source: str
    """Where the pieces were read from (the repository folder)."""

    def render(self, modes: Mapping[str, str]) -> str:
        """The prompt, assembled as the training code assembled it."""
        parts = [self.start]
        for code, key, texts in self.categories:
            parts.append(key + ": \n" + texts[MODE_INDEX[modes.get(code, "default")]] + "\n")
        return "".join(parts) + self.response_template


def read_policy_pieces(
    repo: Path,
    *,
    start: str = "policy_start_sentence_v16",
    categories: str = "custom_policy_dict_v2",
    response: str = "json_template_v20",
) -> TrainedPolicyText:
    """Read the trained policy from a LlavaGuard repository folder (see the module notes).

    Raises:
        ConfigurationError: a module or name is missing, holds something that cannot be read
            without running code, or the categories are not O1–O9 with three texts each.
    """
    names = _assignments(repo / _TAXONOMIES) | _assignments(repo / _ASSESSMENT)
    reader = _Reader(names)
    opening = reader.text(start)
    blocks = reader.value(categories)
    template = reader.text(response)
    if not isinstance(blocks, dict):
        raise ConfigurationError(f"{categories} in the LlavaGuard repository is not a mapping")
    parsed: list[tuple[str, str, tuple[str, str, str]]] = []
    for key, texts in blocks.items():
        match = _CODE.match(str(key))
        if match is None or not isinstance(texts, list | tuple) or len(texts) != 3:
            raise ConfigurationError(
                f"{categories}[{key!r}] is not an O1–O9 category with three texts "
                "(default, non-violating, sensitive)"
            )
        if not all(isinstance(t, str) and t.strip() for t in texts):
            raise ConfigurationError(f"{categories}[{key!r}] has an empty text")
        parsed.append((match.group(1), str(key), (texts[0], texts[1], texts[2])))
    codes = [code for code, _, _ in parsed]
    if sorted(codes) != [f"O{i}" for i in range(1, 10)]:
        raise ConfigurationError(f"{categories} names the categories {codes}, expected O1–O9")
    for field in ('"rating"', '"category"', '"rationale"'):
        if field not in template:
            raise ConfigurationError(f"{response} lacks the JSON field {field}")
    return TrainedPolicyText(
        start=opening,
        categories=tuple(parsed),
        response_template=_IMAGE_LINE.sub("", template),
        source=str(repo),
    )


def _assignments(path: Path) -> dict[str, ast.expr]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, UnicodeDecodeError, SyntaxError) as exc:
        raise ConfigurationError(
            f"cannot read {str(path)!r}: is this a clone of the LlavaGuard repository? ({exc})"
        ) from exc
    found: dict[str, ast.expr] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                found[target.id] = node.value
    return found


class _Reader:
    """Evaluates the few expression forms the policy modules use, and nothing else."""

    def __init__(self, names: dict[str, ast.expr]) -> None:
        self.names = names

    def value(self, name: str, scope: Mapping[str, Any] | None = None) -> Any:
        if scope is not None and name in scope:
            return scope[name]
        if name not in self.names:
            raise ConfigurationError(f"the LlavaGuard repository defines no {name!r}")
        return self._eval(self.names[name], scope or {})

    def text(self, name: str) -> str:
        value = self.value(name)
        if not isinstance(value, str) or not value.strip():
            raise ConfigurationError(f"{name} in the LlavaGuard repository is not a text")
        return value

    def _eval(self, node: ast.expr, scope: Mapping[str, Any]) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return self.value(node.id, scope)
        if isinstance(node, ast.List | ast.Tuple):
            return [self._eval(item, scope) for item in node.elts]
        if isinstance(node, ast.Dict) and None not in node.keys:
            return {
                self._eval(k, scope): self._eval(v, scope)
                for k, v in zip(node.keys, node.values, strict=True)
                if k is not None
            }
        if isinstance(node, ast.JoinedStr):
            return "".join(self._piece(part, scope) for part in node.values)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left, right = self._eval(node.left, scope), self._eval(node.right, scope)
            if isinstance(left, str) and isinstance(right, str):
                return left + right
        if _is_join(node):
            assert isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            separator = node.func.value
            assert isinstance(separator, ast.Constant)
            return str(separator.value).join(self._comprehension(node.args[0], scope))
        raise ConfigurationError(
            f"line {getattr(node, 'lineno', '?')} of the LlavaGuard policy modules cannot be "
            "read without running code; traceguard does not run it"
        )

    def _piece(self, part: ast.expr, scope: Mapping[str, Any]) -> str:
        if isinstance(part, ast.Constant):
            return str(part.value)
        if isinstance(part, ast.FormattedValue) and part.format_spec is None:
            if part.conversion in (-1, ord("s")):
                return str(self._eval(part.value, scope))
        raise ConfigurationError("an f-string of the LlavaGuard policy uses a format spec")

    def _comprehension(self, node: ast.expr, scope: Mapping[str, Any]) -> list[str]:
        if not isinstance(node, ast.ListComp | ast.GeneratorExp) or len(node.generators) != 1:
            raise ConfigurationError("a join in the LlavaGuard policy is not over a comprehension")
        loop = node.generators[0]
        if not isinstance(loop.target, ast.Name) or loop.ifs:
            raise ConfigurationError("a comprehension in the LlavaGuard policy is too complex")
        items = self._eval(loop.iter, scope)
        return [str(self._eval(node.elt, {**scope, loop.target.id: item})) for item in list(items)]


def _is_join(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "join"
        and isinstance(node.func.value, ast.Constant)
        and isinstance(node.func.value.value, str)
        and len(node.args) == 1
        and not node.keywords
    )
