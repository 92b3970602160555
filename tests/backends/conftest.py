"""Fixtures for the local backend: one tiny Qwen2.5-VL checkpoint per test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from traceguard.backends.transformers import TransformersBackend
from traceguard.testing.tiny_qwen import build_tiny_qwen25vl


@pytest.fixture(scope="session")
def tiny_qwen_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2.5-VL checkpoint, built once (~4 s, mostly importing transformers)."""
    return build_tiny_qwen25vl(tmp_path_factory.mktemp("tiny-qwen25vl"))


@pytest.fixture(scope="session")
def tiny_backend(tiny_qwen_path: Path) -> Iterator[TransformersBackend]:
    """A loaded backend on the tiny checkpoint, shared by the tests that do not mutate it.

    Without the prefix cache: these tests count batched passes and compare repeated scores
    exactly, and a cache shared across tests would answer some of them from earlier ones
    (tests/streaming/test_prefix_cache.py covers the cache).
    """
    backend = TransformersBackend(tiny_qwen_path, batch_size=8, prefix_cache_tokens=0)
    backend.load()
    yield backend
    backend.close()
