"""The tool gate in an agent loop written against the real ``openai`` SDK (issue 12 items 2, 6).

The model (the loopback server) reasons its way to a dangerous tool call. The answer itself is
only "potentially harmful" to the answer audit (which drops the thinking and keeps the calls),
so without the gate the loop would run the tool. ``check_tool_calls`` audits each call with the
reasoning that led to it, and the tool function records that it never ran.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import openai
import pytest
from _openai_support import call

from traceguard import (
    Action,
    Blocked,
    Escalated,
    Guard,
    Policy,
    Stage,
    Trace,
    guard_tool,
    tool_context,
)
from traceguard.integrations.openai import (
    ToolCallReview,
    acheck_tool_calls,
    check_tool_calls,
    guard_openai,
    tool_context_of,
)
from traceguard.testing import ScriptedAuditor, Step
from traceguard.testing.openai_server import (
    OpenAIServer,
    ScriptedResponse,
    chat_completion,
    chat_completion_chunks,
    responses_response,
)

EVIL = "I will move the savings of this elderly stranger to my own account before they notice."
KIND = "The user asked to pay the electricity bill; 40 EUR to the power company."
USER = [{"role": "user", "content": "Please sort out my bank account."}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "wire_money",
            "parameters": {
                "type": "object",
                "properties": {"to": {"type": "string"}, "amount": {"type": "number"}},
            },
        },
    }
]


def grade(trace: Trace) -> Step:
    """An auditor that reads the reasoning: the evil plan is harmful at the tool gate; the
    answer audit sees only ambiguous text (0.5), and its redacted output is safe."""
    if trace.stage is Stage.TOOL_CALL:
        return Step(risk=1.0 if "elderly stranger" in (trace.thinking or "") else 0.0)
    if trace.thinking and "elderly stranger" in trace.thinking:
        return Step(risk=0.5)
    return Step(risk=0.0)


class Bank:
    def __init__(self) -> None:
        self.wires: list[tuple[str, float]] = []

    def wire_money(self, to: str, amount: float) -> str:
        self.wires.append((to, amount))
        return f"wired {amount} to {to}"

    async def awire_money(self, to: str, amount: float) -> str:
        self.wires.append((to, amount))
        return f"wired {amount} to {to}"


async def review_of(guard: Guard, result: Any, **kwargs: Any) -> ToolCallReview:
    if kwargs.pop("flavor") == "async":
        return await acheck_tool_calls(guard, result, **kwargs)
    return check_tool_calls(guard, result, **kwargs)


def script_turns(server: OpenAIServer, thinking: str) -> None:
    """First answer: a wire_money call after ``thinking``; second: a closing answer."""
    call_spec = {"name": "wire_money", "arguments": {"to": "acct-666", "amount": 9000}, "id": "c1"}
    server.enqueue(
        ScriptedResponse.json(
            chat_completion(None, reasoning_content=thinking, tool_calls=[call_spec])
        ),
        ScriptedResponse.json(chat_completion("Done.")),
    )


async def agent_loop(
    client: Any, guard: Guard, tools: dict[str, Callable[..., str]], flavor: str
) -> list[dict[str, Any]]:
    """A plain tool-calling loop: ask, gate the calls, run the allowed ones, answer the rest."""
    messages: list[dict[str, Any]] = list(USER)
    for _ in range(4):
        completion = await call(
            client.chat.completions.create, model="m", messages=messages, tools=TOOLS
        )
        message = completion.choices[0].message
        if not message.tool_calls:
            messages.append({"role": "assistant", "content": message.content})
            return messages
        review = await review_of(guard, completion, messages=messages, flavor=flavor)
        messages.append(message.model_dump(exclude_none=True))
        for check in review.checks:
            if check.allowed:
                output = tools[check.call.name](**json.loads(check.call.arguments))
                messages.append({"role": "tool", "tool_call_id": check.call.id, "content": output})
            else:
                messages.append(check.chat_message())
    raise AssertionError("the loop did not end")


async def test_harmful_reasoning_before_a_dangerous_call_never_runs_the_tool(
    server: OpenAIServer, client: Any, flavor: str
) -> None:
    auditor = ScriptedAuditor(rule=grade)
    guard = Guard(auditor, Policy())
    guard_openai(client, guard)
    bank = Bank()
    script_turns(server, EVIL)

    messages = await agent_loop(client, guard, {"wire_money": bank.wire_money}, flavor)

    assert bank.wires == []  # the tool function never ran
    tool_message = messages[2]
    assert tool_message["role"] == "tool" and tool_message["tool_call_id"] == "c1"
    assert "wire_money" in tool_message["content"] and "not run" in tool_message["content"]
    assert messages[-1] == {"role": "assistant", "content": "Done."}
    # The answer audit redacted the thinking away from the caller...
    assert all("elderly" not in json.dumps(m) for m in messages)
    # ...but the gate read it: the pending call was audited with the reasoning behind it.
    gate = [t for t in auditor.seen if t.stage is Stage.TOOL_CALL]
    assert len(gate) == 1 and gate[0].thinking == EVIL
    assert gate[0].query == "Please sort out my bank account."
    assert gate[0].tool_calls[0].name == "wire_money" and gate[0].tool_calls[0].id == "c1"
    # The model saw the refusal as the tool result in its next turn.
    assert server.requests[-1].json["messages"][2]["content"] == tool_message["content"]


async def test_benign_reasoning_runs_the_tool(
    server: OpenAIServer, client: Any, flavor: str
) -> None:
    guard = Guard(ScriptedAuditor(rule=grade))
    guard_openai(client, guard)
    bank = Bank()
    script_turns(server, KIND)
    messages = await agent_loop(client, guard, {"wire_money": bank.wire_money}, flavor)
    assert bank.wires == [("acct-666", 9000)]
    assert messages[2]["content"] == "wired 9000 to acct-666"


async def test_reasoning_is_read_from_the_guarded_result_without_messages(
    server: OpenAIServer, client: Any, flavor: str
) -> None:
    auditor = ScriptedAuditor(rule=grade)
    guard = Guard(auditor)
    guard_openai(client, guard)
    script_turns(server, EVIL)
    completion = await call(client.chat.completions.create, model="m", messages=USER, tools=TOOLS)
    assert "reasoning_content" not in (completion.choices[0].message.model_extra or {})
    review = await review_of(guard, completion, flavor=flavor)
    (check,) = review.checks
    assert not check.allowed and review.blocked == (check,)
    assert check.chat_message()["content"] == check.message
    gate = auditor.seen[-1]
    assert gate.thinking == EVIL and gate.query == "Please sort out my bank account."
    server.reset()


async def test_escalation_and_stop_follow_the_tool_rules(
    server: OpenAIServer, client: Any, flavor: str
) -> None:
    policy = Policy.model_validate(
        {"tools": {"rules": [{"tool": "wire_money", "action": "escalate"}]}}
    )
    guard = Guard(ScriptedAuditor(rule=grade), policy)
    completion = openai.types.chat.ChatCompletion.model_validate(
        chat_completion(
            None, reasoning_content=KIND, tool_calls=[{"name": "wire_money", "id": "c9"}]
        )
    )
    review = await review_of(guard, completion, messages=USER, flavor=flavor)
    (check,) = review.escalated
    assert check.escalation_id and not check.allowed
    assert "human reviewer" in (check.message or "")
    assert review.allowed == ()

    stopping = Policy.model_validate({"tools": {"on_block": "stop"}})
    evil = openai.types.chat.ChatCompletion.model_validate(
        chat_completion(
            None, reasoning_content=EVIL, tool_calls=[{"name": "wire_money", "id": "c1"}]
        )
    )
    with pytest.raises(Blocked) as caught:
        await review_of(Guard(ScriptedAuditor(rule=grade), stopping), evil, flavor=flavor)
    assert caught.value.decision.stop_run and not isinstance(caught.value, Escalated)


async def test_responses_function_calls_are_gated(
    server: OpenAIServer, client: Any, flavor: str
) -> None:
    auditor = ScriptedAuditor(rule=grade)
    guard = Guard(auditor)
    guard_openai(client, guard)
    payload = responses_response(
        None,
        reasoning_summary=EVIL,
        tool_calls=[{"name": "wire_money", "arguments": {"to": "x"}, "id": "call_r"}],
    )
    server.enqueue(ScriptedResponse.json(payload), path="/v1/responses")
    response = await call(client.responses.create, model="m", input="Sort out my account.")
    review = await review_of(guard, response, flavor=flavor)
    (check,) = review.checks
    assert check.call.id == "call_r" and not check.allowed
    item = check.responses_item()
    assert item["type"] == "function_call_output" and item["call_id"] == "call_r"
    assert auditor.seen[-1].thinking == EVIL
    assert auditor.seen[-1].query == "Sort out my account."


async def test_a_streamed_answer_is_gated_with_its_audited_reasoning(
    server: OpenAIServer, client: Any, flavor: str
) -> None:
    auditor = ScriptedAuditor(rule=grade)
    guard = Guard(auditor)
    guard_openai(client, guard)
    spec = {"name": "wire_money", "arguments": {"to": "x"}, "id": "c5"}
    server.enqueue(
        ScriptedResponse.sse(
            chat_completion_chunks(None, reasoning_content=EVIL, tool_calls=[spec])
        )
    )
    manager = client.chat.completions.stream(model="m", messages=USER, tools=TOOLS)
    if flavor == "async":
        async with manager as stream:
            async for _ in stream:
                pass
            final = await stream.get_final_completion()
    else:
        with manager as stream:
            for _ in stream:
                pass
            final = stream.get_final_completion()
    # The helper assembled the answer; the gate finds the reasoning its guarded stream audited.
    review = await review_of(guard, final, messages=USER, flavor=flavor)
    (check,) = review.checks
    assert not check.allowed
    assert auditor.seen[-1].thinking == EVIL


def test_a_result_without_tool_calls_needs_no_audit() -> None:
    auditor = ScriptedAuditor([])
    completion = openai.types.chat.ChatCompletion.model_validate(chat_completion("Hello."))
    assert check_tool_calls(Guard(auditor), completion).checks == ()
    assert auditor.seen == []
    with pytest.raises(TypeError, match="ChatCompletion or a Response"):
        check_tool_calls(Guard(auditor), {"choices": []})


def test_the_decision_of_an_allowed_call_has_no_message_to_send() -> None:
    completion = openai.types.chat.ChatCompletion.model_validate(
        chat_completion(
            None, reasoning_content=KIND, tool_calls=[{"name": "wire_money", "id": "c2"}]
        )
    )
    (check,) = check_tool_calls(Guard(ScriptedAuditor(rule=grade)), completion).checks
    assert check.allowed and check.decision.action is Action.ALLOW
    with pytest.raises(ValueError, match="allowed"):
        check.chat_message()


async def test_an_older_stream_is_named_with_audited(
    server: OpenAIServer, client: Any, flavor: str
) -> None:
    auditor = ScriptedAuditor(rule=grade)
    guard = Guard(auditor)
    guard_openai(client, guard)
    spec = {"name": "wire_money", "arguments": {"to": "x"}, "id": "c6"}
    server.enqueue(
        ScriptedResponse.sse(
            chat_completion_chunks(None, reasoning_content=EVIL, tool_calls=[spec])
        ),
        ScriptedResponse.json(chat_completion("Unrelated.")),
    )
    stream = await call(client.chat.completions.create, model="m", messages=USER, stream=True)
    chunks = [c async for c in stream] if flavor == "async" else list(stream)
    await call(client.chat.completions.create, model="m", messages=USER)  # audited since
    assert any(c.choices and c.choices[0].delta.tool_calls for c in chunks)
    answer = openai.types.chat.ChatCompletion.model_validate(
        chat_completion(None, tool_calls=[spec])  # what the caller assembled from the chunks
    )
    review = await review_of(guard, answer, messages=USER, audited=stream, flavor=flavor)
    assert not review.checks[0].allowed
    assert auditor.seen[-1].thinking == EVIL


# -- guard_tool functions in the same loop ------------------------------------------------------


async def self_gating_loop(
    client: Any, tools: dict[str, Callable[..., Any]], flavor: str
) -> list[dict[str, Any]]:
    """A loop that runs every call as asked: the tools are ``guard_tool`` functions and gate
    themselves, with the reasoning the answer's audit kept (``tool_context_of``)."""
    messages: list[dict[str, Any]] = list(USER)
    for _ in range(4):
        completion = await call(
            client.chat.completions.create, model="m", messages=messages, tools=TOOLS
        )
        message = completion.choices[0].message
        if not message.tool_calls:
            messages.append({"role": "assistant", "content": message.content})
            return messages
        messages_before = list(messages)
        messages.append(message.model_dump(exclude_none=True))
        with tool_context(tool_context_of(completion, messages=messages_before)):
            for tool_call in message.tool_calls:
                tool_fn = tools[tool_call.function.name]
                output = tool_fn(**json.loads(tool_call.function.arguments))
                output = await output if flavor == "async" else output
                messages.append({"role": "tool", "tool_call_id": tool_call.id, "content": output})
    raise AssertionError("the loop did not end")


async def test_a_guard_tool_function_never_runs_after_harmful_reasoning(
    server: OpenAIServer, client: Any, flavor: str
) -> None:
    auditor = ScriptedAuditor(rule=grade)
    guard = Guard(auditor)
    guard_openai(client, guard)
    bank = Bank()
    wire = bank.awire_money if flavor == "async" else bank.wire_money
    script_turns(server, EVIL)

    messages = await self_gating_loop(client, {"wire_money": guard_tool(guard)(wire)}, flavor)

    assert bank.wires == []  # the function's body never ran
    assert "wire_money" in messages[2]["content"] and "not run" in messages[2]["content"]
    assert messages[-1] == {"role": "assistant", "content": "Done."}
    # The caller never saw the reasoning (redacted), yet the tool's own gate audited it.
    assert all("elderly" not in json.dumps(m) for m in messages)
    (gate,) = [t for t in auditor.seen if t.stage is Stage.TOOL_CALL]
    assert gate.thinking == EVIL and gate.query == "Please sort out my bank account."
    assert gate.tool_calls[0].arguments == '{"to": "acct-666", "amount": 9000}'


async def test_a_guard_tool_function_runs_after_benign_reasoning(
    server: OpenAIServer, client: Any, flavor: str
) -> None:
    guard = Guard(ScriptedAuditor(rule=grade))
    guard_openai(client, guard)
    bank = Bank()
    wire = bank.awire_money if flavor == "async" else bank.wire_money
    script_turns(server, KIND)
    messages = await self_gating_loop(client, {"wire_money": guard_tool(guard)(wire)}, flavor)
    assert bank.wires == [("acct-666", 9000)]
    assert messages[2]["content"] == "wired 9000 to acct-666"
