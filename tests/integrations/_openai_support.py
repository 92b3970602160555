"""Shared pieces of the OpenAI wrapper tests (the fixtures are in ``conftest.py``)."""

from __future__ import annotations

import inspect
from typing import Any


async def call(method: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a sync or async SDK method the same way."""
    result = method(*args, **kwargs)
    return await result if inspect.isawaitable(result) else result
