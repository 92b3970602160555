"""The choke points of a guarded client: ``request`` and the step that ends it.

Every HTTP call of the ``openai`` SDK, whichever resource or helper made it, goes through
``client.request(cast_to, options, stream=, stream_cls=)``, which sends it and hands the HTTP
response to ``client._process_response(...)`` to become what the caller gets. The wrapper
replaces both on the one client instance (instance attributes; the class is untouched):

- ``request``: classifies the call (:mod:`._openai_surfaces`): refuses it under ``strict`` when
  its output cannot be audited, or warns; for an audited streamed call, swaps ``stream_cls`` for a
  guarded stream class made for this call (:func:`._openai_stream.stream_class`), as logfire does;
- ``_process_response``: for an audited non-streamed call, reads the body, audits it
  (:class:`._openai_body.BodyAudit`) and hands the SDK the audited body; for a raw streamed body,
  hands it the audited event stream. The result, whatever its type, carries the decisions.

``copy`` / ``with_options`` are replaced too, so a derived client is guarded by the same guard
with the same options. Each hook has a sync and an async shell around the same steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from traceguard._chat import RequestContext
from traceguard._decision import Decision
from traceguard._trace import Trace

from ._openai_body import BodyAudit
from ._openai_decisions import attach
from ._openai_request import chat_request_context, responses_request_context
from ._openai_stream import (
    GuardedAsyncStream,
    GuardedStream,
    audited_sse_response,
    replaced_body,
)
from ._openai_surfaces import Api, classify, is_structured, request_body

if TYPE_CHECKING:
    from .openai import GuardedClient

__all__ = ["Plan", "async_hooks", "context_of", "is_raw", "plan_response", "sync_hooks"]

RAW_RESPONSE_HEADER = "X-Stainless-Raw-Response"


@dataclass(frozen=True)
class Plan:
    """What ``_process_response`` does for an audited call."""

    api: Api
    context: RequestContext
    structured: bool
    raw_stream: bool
    """A streamed body read raw (``with_raw_response`` / ``with_streaming_response``)."""


def _headers(options: Any) -> Any:
    headers = getattr(options, "headers", None)
    return headers if hasattr(headers, "get") else {}


def is_raw(options: Any) -> bool:
    return bool(_headers(options).get(RAW_RESPONSE_HEADER))


def context_of(api: Api, body: dict[str, Any]) -> RequestContext:
    """What the caller asked, from the request body of ``api``."""
    return chat_request_context(body) if api == "chat" else responses_request_context(body)


def plan_response(options: Any, *, stream: bool) -> Plan | None:
    """What to do with the answer to ``options``; None for a call the hook leaves alone."""
    surface = classify(str(getattr(options, "method", "")), str(getattr(options, "url", "")))
    if surface.kind != "audited" or surface.api is None:
        return None
    raw = is_raw(options)
    if stream and not raw:
        return None  # the guarded stream class swapped in by ``request`` audits it
    body = request_body(getattr(options, "json_data", None), getattr(options, "extra_json", None))
    return Plan(
        api=surface.api,
        context=context_of(surface.api, body),
        structured=is_structured(surface.api, body),
        raw_stream=stream,
    )


def _with_decisions(options: Any, decisions: Sequence[Decision], traces: Sequence[Trace]) -> Any:
    """``options`` whose post-parser puts the decisions on whatever the SDK parses."""
    from openai._compat import model_copy
    from openai._types import NotGiven

    original = options.post_parser

    def post_parser(parsed: Any) -> Any:
        if not isinstance(original, NotGiven):
            parsed = original(parsed)
        attach(parsed, decisions, traces)
        return parsed

    copied = model_copy(options)
    copied.post_parser = post_parser
    return copied


# -- sync -------------------------------------------------------------------------------------


def sync_hooks(handle: GuardedClient, client: Any) -> dict[str, Callable[..., Any]]:
    """The sync client's replacement methods, by attribute name."""
    request = client.request
    process_response = client._process_response
    copy = client.copy

    def guarded_request(
        cast_to: Any, options: Any, *, stream: bool = False, stream_cls: Any = None
    ) -> Any:
        stream_cls = handle.before_request(options, cast_to, stream, stream_cls)
        return request(cast_to, options, stream=stream, stream_cls=stream_cls)

    def guarded_process_response(**kwargs: Any) -> Any:
        plan = plan_response(kwargs["options"], stream=kwargs["stream"])
        if plan is None or not handle.active:
            return process_response(**kwargs)
        response = kwargs["response"]
        if plan.raw_stream:
            stream = handle.new_stream(plan, kwargs, is_async=False)
            assert isinstance(stream, GuardedStream)
            kwargs["response"] = audited_sse_response(response, stream)
            result = process_response(**kwargs)
            handle.link_stream(result, stream)
            return result
        response.read()
        audit = BodyAudit(
            plan.api, plan.context, response.content, handle.options, structured=plan.structured
        )
        decisions = handle.guard.check_batch(audit.traces)
        handle.concluded(decisions, audit.traces, audit.result)
        body = audit.finish(decisions)
        if body is not None:
            kwargs["response"] = replaced_body(response, body)
        kwargs["options"] = _with_decisions(kwargs["options"], decisions, audit.traces)
        result = process_response(**kwargs)
        attach(result, decisions, audit.traces)
        return result

    def guarded_copy(*args: Any, **kwargs: Any) -> Any:
        return handle.derive(copy(*args, **kwargs))

    return {
        "request": guarded_request,
        "_process_response": guarded_process_response,
        "copy": guarded_copy,
        "with_options": guarded_copy,
    }


# -- async ------------------------------------------------------------------------------------


def async_hooks(handle: GuardedClient, client: Any) -> dict[str, Callable[..., Any]]:
    """The async client's replacement methods, by attribute name."""
    request = client.request
    process_response = client._process_response
    copy = client.copy

    async def guarded_request(
        cast_to: Any, options: Any, *, stream: bool = False, stream_cls: Any = None
    ) -> Any:
        stream_cls = handle.before_request(options, cast_to, stream, stream_cls)
        return await request(cast_to, options, stream=stream, stream_cls=stream_cls)

    async def guarded_process_response(**kwargs: Any) -> Any:
        plan = plan_response(kwargs["options"], stream=kwargs["stream"])
        if plan is None or not handle.active:
            return await process_response(**kwargs)
        response = kwargs["response"]
        if plan.raw_stream:
            stream = handle.new_stream(plan, kwargs, is_async=True)
            assert isinstance(stream, GuardedAsyncStream)
            kwargs["response"] = audited_sse_response(response, stream)
            result = await process_response(**kwargs)
            handle.link_stream(result, stream)
            return result
        await response.aread()
        audit = BodyAudit(
            plan.api, plan.context, response.content, handle.options, structured=plan.structured
        )
        decisions = await handle.guard.acheck_batch(audit.traces)
        handle.concluded(decisions, audit.traces, audit.result)
        body = audit.finish(decisions)
        if body is not None:
            kwargs["response"] = replaced_body(response, body)
        kwargs["options"] = _with_decisions(kwargs["options"], decisions, audit.traces)
        result = await process_response(**kwargs)
        attach(result, decisions, audit.traces)
        return result

    def guarded_copy(*args: Any, **kwargs: Any) -> Any:
        return handle.derive(copy(*args, **kwargs))

    return {
        "request": guarded_request,
        "_process_response": guarded_process_response,
        "copy": guarded_copy,
        "with_options": guarded_copy,
    }
