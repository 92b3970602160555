"""The public surface: what `traceguard` exports, and what importing it costs."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import traceguard


def test_all_is_sorted_and_complete() -> None:
    names = [n for n in traceguard.__all__ if n[0].isupper()]
    assert names == sorted(names)
    for name in traceguard.__all__:
        assert hasattr(traceguard, name), name


def test_every_exception_derives_from_the_root() -> None:
    for name in traceguard.__all__:
        obj = getattr(traceguard, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, traceguard.TraceguardError), name


def test_import_stays_light() -> None:
    code = (
        "import sys, traceguard, traceguard.backends, traceguard.auditors;"
        "heavy = [m for m in ('torch', 'transformers', 'langchain_core', 'openai', 'PIL',"
        " 'qwen_vl_utils') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "", f"importing traceguard pulled in: {out}"


# -- examples, benchmarks and docs use only the public API -------------------------------------

ROOT = Path(__file__).resolve().parent.parent
_PACKAGES = ("traceguard", "integrations")


def _code_blocks(markdown: Path) -> list[tuple[int, str]]:
    """The ```python blocks of a Markdown file, with the line each starts on."""
    blocks, lines = [], markdown.read_text(encoding="utf-8").splitlines()
    start: int | None = None
    for number, line in enumerate(lines, 1):
        if start is None and line.strip().startswith("```python"):
            start = number
        elif start is not None and line.strip() == "```":
            blocks.append((start, "\n".join(lines[start : number - 1])))
            start = None
    return blocks


def _sources() -> list[tuple[str, str]]:
    """(where, code) for every example, benchmark and Python block of the docs."""
    found = [
        (str(path.relative_to(ROOT)), path.read_text(encoding="utf-8"))
        for folder in ("examples", "bench")
        for path in sorted((ROOT / folder).rglob("*.py"))
    ]
    for markdown in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for line, code in _code_blocks(markdown):
            found.append((f"{markdown.relative_to(ROOT)}:{line}", textwrap.dedent(code)))
    return found


def private_imports(code: str) -> list[str]:
    """Imports of a private module (``traceguard._x``, ``traceguard.pkg._x``) or private name."""
    try:
        tree = ast.parse(code)
    except SyntaxError:  # a docs fragment that is not a whole program (``...`` elisions)
        return []
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [(alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [(node.module, tuple(alias.name for alias in node.names))]
        else:
            continue
        for module, names in modules:
            parts = module.split(".")
            if parts[0] not in _PACKAGES:
                continue
            private = [p for p in parts[1:] if p.startswith("_")]
            private += [n for n in names if n.startswith("_")]
            if private:
                found.append(f"line {node.lineno}: {module} ({', '.join(private)})")
    return found


def test_the_private_import_check_catches_each_form() -> None:
    code = (
        "import traceguard._trace\n"
        "from traceguard._guard import Guard\n"
        "from traceguard.backends._base import ChatRequest\n"
        "from traceguard import _version\n"
        "from integrations._context import request_context\n"
        "from traceguard import Guard, Trace\n"
        "from traceguard.backends import ChatRequest\n"
        "from traceguard.integrations.openai import guard_openai\n"
        "import json._private_elsewhere\n"
    )
    assert [finding.split(":")[0] for finding in private_imports(code)] == [
        f"line {n}" for n in range(1, 6)
    ]


def test_examples_benchmarks_and_docs_import_only_public_names() -> None:
    offenders = [
        f"{where} {finding}" for where, code in _sources() for finding in private_imports(code)
    ]
    assert not offenders, "private imports (export the name instead):\n" + "\n".join(offenders)
