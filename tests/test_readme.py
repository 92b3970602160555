"""Every Python example in README.md runs as written.

The convention (also in the README's Development section):

- every fenced ``python`` block runs, in a fresh namespace, in a scratch folder that holds
  ``policy.yaml`` (a copy of ``examples/policy.yaml``) and ``cat.png`` (a small picture);
  top-level ``await`` is allowed, and only loopback connections are (``tests/conftest.py``);
- a block whose fence is directly preceded by
  ``<!-- readme-test: illustrative: REASON -->`` is shown but not run; the reason must say why
  (what it needs that a test cannot have) and point at a runnable equivalent if there is one.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

_BLOCK = re.compile(
    r"(?:^<!--\s*readme-test:\s*(?P<mark>[^\n]*?)\s*-->\n)?^```python\n(?P<code>.*?)^```",
    re.MULTILINE | re.DOTALL,
)
_ILLUSTRATIVE = re.compile(r"^illustrative:\s*(?P<reason>.+)$")


@dataclass(frozen=True)
class Block:
    line: int
    code: str
    mark: str | None

    @property
    def id(self) -> str:
        return f"README.md:{self.line}"


def readme_blocks(text: str) -> list[Block]:
    """The ``python`` blocks of a Markdown text, with the line of their opening fence."""
    blocks = []
    for match in _BLOCK.finditer(text):
        fence = match.start("code") - len("```python\n")
        blocks.append(
            Block(line=text.count("\n", 0, fence) + 1, code=match["code"], mark=match["mark"])
        )
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))
RUNNABLE = [block for block in BLOCKS if block.mark is None]


def run_block(block: Block, folder: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Run one block in ``folder`` and return its namespace."""
    shutil.copy(ROOT / "examples" / "policy.yaml", folder / "policy.yaml")
    _write_picture(folder / "cat.png")
    monkeypatch.chdir(folder)
    code = compile(block.code, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    namespace: dict[str, Any] = {"__name__": "__readme__"}
    result = eval(code, namespace)  # the README's own examples, nothing else
    if inspect.iscoroutine(result):
        asyncio.run(result)
    return namespace


def _write_picture(path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 150, 90)).save(path)


def test_the_readme_has_examples_and_the_parser_finds_them() -> None:
    assert len(BLOCKS) >= 4
    assert RUNNABLE, "every example is marked illustrative"
    sample = "<!-- readme-test: illustrative: needs X -->\n```python\nx = 1\n```\n```python\ny\n```"
    found = readme_blocks(sample)
    assert [(b.line, b.mark, b.code) for b in found] == [
        (2, "illustrative: needs X", "x = 1\n"),
        (5, None, "y\n"),
    ]


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.mark], ids=lambda b: b.id)
def test_a_block_that_is_not_run_says_why(block: Block) -> None:
    assert block.mark is not None
    match = _ILLUSTRATIVE.match(block.mark)
    assert match is not None, f"unknown readme-test mark {block.mark!r} at {block.id}"
    assert len(match["reason"].split()) >= 4, f"say what {block.id} needs that a test lacks"


@pytest.mark.parametrize("block", RUNNABLE, ids=lambda b: b.id)
def test_every_runnable_block_runs_as_written(
    block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_block(block, tmp_path, monkeypatch)


def test_the_guard_example_allows_its_harmless_picture(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It used to escalate: the image was refused because no ImageAccess root allowed the file.
    from traceguard import Action

    (block,) = [b for b in RUNNABLE if "guard.check(" in b.code]
    namespace = run_block(block, tmp_path, monkeypatch)
    decision = namespace["decision"]
    assert decision.action is Action.ALLOW, decision.reason
    assert decision.verdict.is_ok
    assert namespace["answer"] == "It is a cat sitting on a sofa."
    assert (tmp_path / "audit.jsonl").read_text(encoding="utf-8").count("\n") == 2
