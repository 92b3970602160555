"""A non-streamed answer, audited as the HTTP body the SDK is about to parse.

The guard reads the body before the SDK does, and when the decision changes the output it hands
the SDK a new body instead. Whatever the caller asked the SDK for then comes out of the audited
body with the type it expects: a ``ChatCompletion``, a ``ParsedChatCompletion`` (``parse``; the
``parsed`` field is parsed from the audited content), a ``Response`` / ``ParsedResponse``, the
raw wrapper of ``with_raw_response`` / ``with_streaming_response`` (whose ``.parse()``,
``.text`` and ``.json()`` all read the audited body), or the ``httpx`` response itself.

Without I/O: :class:`BodyAudit` turns the body into traces, and the decisions into the body to
hand on (or raises when the output is blocked and the wrapper raises on block).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from traceguard._chat import RequestContext
from traceguard._decision import Decision
from traceguard._streaming import StreamOptions, blocked_error, edit_for
from traceguard._trace import Trace

from ._openai_request import output_trace
from ._openai_result import chat_traces, edit_chat, edit_response, response_trace
from ._openai_surfaces import Api

__all__ = ["BodyAudit"]


class BodyAudit:
    """The audit of one non-streamed body.

    Protocol: build it from the body bytes, audit :attr:`traces` (one per choice; never empty),
    then call :meth:`finish` with the decisions: it returns the body bytes to hand on (``None``:
    the original, unchanged) or raises :class:`~traceguard.Blocked` /
    :class:`~traceguard.Escalated`.
    """

    def __init__(
        self,
        api: Api,
        context: RequestContext,
        body: bytes,
        options: StreamOptions,
        *,
        structured: bool,
    ) -> None:
        self.api = api
        self.options = options
        self.structured = structured
        self.result: Any = None
        """The body as an SDK object (None when it is not a JSON object)."""
        self.traces: list[Trace] = self._read(context, body)

    def _read(self, context: RequestContext, body: bytes) -> list[Trace]:
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            # Not what the API answers; audit the text as the response rather than let it by.
            text = body.decode("utf-8", "replace")
            return [output_trace(context, response=text, thinking=None)]
        from openai._models import construct_type

        if self.api == "chat":
            from openai.types.chat import ChatCompletion

            self.result = construct_type(type_=ChatCompletion, value=data)
            traces = chat_traces(context, self.result)
        else:
            from openai.types.responses import Response

            self.result = construct_type(type_=Response, value=data)
            traces = [response_trace(context, self.result)]
        # An answer without choices still showed the query to the model: audit that, never none.
        return traces or [output_trace(context, response="", thinking=None)]

    def finish(self, decisions: Sequence[Decision]) -> bytes | None:
        """The body the SDK gets under ``decisions``; None when the original stands."""
        blocked = next((d for d in decisions if d.blocked), None)
        if blocked is not None and self.options.on_block == "raise":
            raise blocked_error(blocked)
        refusal = self.options.refusal
        edits = [edit_for(t, d, refusal) for t, d in zip(self.traces, decisions, strict=True)]
        if blocked is not None:
            # One blocked choice withholds them all: the caller asked for one answer.
            edits = [edit_for(t, blocked, refusal) for t in self.traces]
        if all(edit.noop for edit in edits):
            return None
        if self.result is None:
            # An unreadable body that may not pass as it is: the refusal alone.
            return json.dumps({"error": None, "refusal": refusal}).encode()
        edited: Any
        if self.api == "chat":
            edited = edit_chat(self.result, self.traces, edits, structured=self.structured)
        else:
            edited = edit_response(self.result, edits[0], structured=self.structured)
        return json.dumps(edited.model_dump(mode="json", exclude_unset=True)).encode()
