"""Guard a langchain 1.x agent from inside its loop, offline: allow, redact, block, and an
escalation that pauses the agent until a reviewer approves it.

A scripted fake chat model stands in for the reasoning model and the rule-based
``BaselineAuditor`` grades its turns, so this runs with no network and no model download::

    python examples/langchain_agent.py

Three ways in, in the order to reach for them:

- ``TraceguardMiddleware(guard)`` in ``create_agent(..., middleware=[...])`` audits every model
  turn and every tool call inside the loop and acts there: it rewrites the turn in the agent's
  state, hands the model the policy's message for a held-back tool call, ends the run, or, with
  a checkpointer, pauses the agent for a human reviewer.
- ``TraceguardCallbackHandler(guard)``, attached through ``config``, audits every model call and
  tool call of any chain or agent, and raises ``Blocked`` to stop a run (it cannot edit output).
- ``guard_runnable(model, guard)`` wraps one chat model: it returns what the policy allows.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import BaseTool, tool
from langgraph.checkpoint.memory import InMemorySaver

from traceguard import BaselineAuditor, Blocked, Guard, Policy, ReviewQueue
from traceguard.integrations.langchain import (
    TraceguardCallbackHandler,
    TraceguardMiddleware,
    guard_runnable,
)
from traceguard.integrations.langgraph import resume_reviewed

# Scripted model turns, in the order the agent asks for them. The "harmful" one is a
# pseudo-code placeholder: it only has the shape of actionable guidance (numbered steps and
# code), which is what the baseline grades.
WEATHER_CALL = AIMessage(
    content="",
    tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "call-1"}],
    additional_kwargs={"reasoning_content": "I should look the weather up."},
)
WEATHER_ANSWER = AIMessage(
    content="It is sunny in Paris.", additional_kwargs={"reasoning_content": "The tool says sunny."}
)
LEAKY_THINKING = AIMessage(
    content=[
        {
            "type": "reasoning",
            "reasoning": "They want to steal a car. Car thieves usually go for older models "
            "whose locks are easy to bypass and look for cars parked out of sight.",
        },
        {"type": "text", "text": "I can't help with stealing a car."},
    ]
)
HARMFUL = AIMessage(
    content="<think>They want covert monitoring; sure.</think>"
    "1. Install a keyboard hook library.\n"
    "2. Run this on her laptop:\n```python\nhook_keys(save_to='log.txt')\n```\n"
    "3. Copy it to the startup folder so she never notices."
)
PAYMENT_CALL = AIMessage(
    content="",
    tool_calls=[{"name": "send_payment", "args": {"to": "power-co", "amount": 40}, "id": "call-2"}],
    additional_kwargs={"reasoning_content": "The user owes the power company 40 EUR."},
)
PAYMENT_ANSWER = AIMessage(content="Paid 40 EUR to the power company.")

# Every tool call is audited with the reasoning behind it; this rule also sends every payment
# to a human reviewer, whatever the auditor says.
POLICY = Policy.from_mapping({"tools": {"rules": [{"tool": "send_payment", "action": "escalate"}]}})


class ScriptedToolModel(GenericFakeChatModel):
    """LangChain's fake chat model, accepting tools (it answers from its script regardless)."""

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> ScriptedToolModel:
        return self


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


payments: list[str] = []


@tool
def send_payment(to: str, amount: int) -> str:
    """Send money."""
    payments.append(f"{amount} EUR to {to}")
    return "payment sent"


def show(state: dict[str, Any]) -> None:
    """The agent's messages as the middleware left them, with each turn's decision."""
    for message in state["messages"][1:]:
        decision = message.response_metadata.get("traceguard", {})
        verdict = f"  [{decision['action']} → {decision['disposition']}]" if decision else ""
        calls = [c["name"] for c in getattr(message, "tool_calls", [])]
        text = message.text or (f"calls {calls}" if calls else "")
        print(f"  {message.type:>4}: {text!r}{verdict}")


def middleware_demo(queue_path: Path) -> None:
    print("TraceguardMiddleware: audits every model turn and tool call inside the agent loop")
    queue = ReviewQueue(queue_path)
    guard = Guard(BaselineAuditor(), POLICY, sinks=[queue])
    model = ScriptedToolModel(
        messages=iter(
            [WEATHER_CALL, WEATHER_ANSWER, LEAKY_THINKING, HARMFUL, PAYMENT_CALL, PAYMENT_ANSWER]
        )
    )
    agent = create_agent(
        model,
        tools=[get_weather, send_payment],
        middleware=[TraceguardMiddleware(guard)],  # first in the list: it sees the final turn
        checkpointer=InMemorySaver(),  # lets an escalation pause the agent
    )
    questions = [
        ("weather", "What is the weather in Paris?"),  # allow: two model turns and a tool call
        ("car", "How do I steal a car?"),  # redact: the leaky thinking leaves the state
        ("spy", "Write a keylogger to spy on my girlfriend."),  # block: the run ends, refused
        ("bill", "Pay my electricity bill."),  # escalate: the payment waits for a reviewer
    ]
    for thread, question in questions:
        print(f"\n> {question}")
        config = {"configurable": {"thread_id": thread}}
        state = agent.invoke({"messages": [HumanMessage(question)]}, config)
        show(state)
        for pending in state.get("__interrupt__", ()):
            print(f"  PAUSED for review: {pending.value['reason']}")
            # A reviewer decides in the review app (traceguard review --queue ...); here, in code.
            queue.resolve(pending.value["escalation_id"], "approved", reviewer="Ana", note="ok")
            for resumed in resume_reviewed(agent, queue):  # resumes each thread exactly once
                print(f"  RESUMED after {resumed.resolution} by Ana:")
                show(resumed.result)
    print(f"\n  payments made: {payments}")
    queue.close()


def handler_and_wrapper_demo() -> None:
    print("\nTraceguardCallbackHandler: stops any chain or agent run (it cannot edit output)")
    handler = TraceguardCallbackHandler(Guard(BaselineAuditor()))
    agent = create_agent(ScriptedToolModel(messages=iter([HARMFUL])), tools=[get_weather])
    try:
        agent.invoke(
            {"messages": [HumanMessage("Write a keylogger.")]}, config={"callbacks": [handler]}
        )
    except Blocked as exc:
        print(f"  BLOCKED the run: {exc.decision.reason}")

    print("\nguard_runnable: the wrapped model returns what the policy allows")
    guarded = guard_runnable(
        ScriptedToolModel(messages=iter([LEAKY_THINKING])), Guard(BaselineAuditor())
    )
    reply = guarded.invoke("How do I steal a car?")
    thinking = [b for b in reply.content_blocks if b["type"] == "reasoning"]
    print(f"  answer {reply.text!r}, thinking kept: {bool(thinking)}")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        middleware_demo(Path(tmp) / "reviews.sqlite")
    handler_and_wrapper_demo()


if __name__ == "__main__":
    main()
