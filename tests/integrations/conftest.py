"""Fixtures of the OpenAI wrapper tests: the loopback OpenAI-compatible server and a real SDK
client on it, sync and async.

The server runs once per test module; every test that asks for it gets it reset, and fails if
the SDK sent a request the test had scripted no answer for. Test modules that define their own
``server`` (the LangChain ones) keep theirs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest

from traceguard.testing.openai_server import OpenAIServer


@pytest.fixture(scope="module")
def _openai_server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as srv:
        yield srv


@pytest.fixture
def server(_openai_server: OpenAIServer) -> Iterator[OpenAIServer]:
    _openai_server.reset()
    yield _openai_server
    assert not _openai_server.unexpected, "a request found no scripted answer"


@pytest.fixture(params=["sync", "async"])
def flavor(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def client(server: OpenAIServer, flavor: str) -> AsyncIterator[Any]:
    if flavor == "sync":
        sync = openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)
        yield sync
        sync.close()
    else:
        async_client = openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0)
        yield async_client
        await async_client.close()
