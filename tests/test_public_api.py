"""The public surface: what `traceguard` exports, and what importing it costs."""

from __future__ import annotations

import subprocess
import sys

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
