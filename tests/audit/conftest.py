"""Fixtures of the audit tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from ._helpers import PNG_SIZE


@pytest.fixture
def png(tmp_path: Path) -> Path:
    """A small real PNG next to the logs."""
    from PIL import Image

    path = tmp_path / "pic.png"
    Image.new("RGB", PNG_SIZE, (200, 30, 30)).save(path)
    return path
