"""Guard a LangChain model and a tool-calling agent loop, offline: allow, redact, block, escalate.

A scripted fake chat model stands in for the reasoning model and the rule-based
``BaselineAuditor`` grades its answers, so this runs with no network and no model download::

    python examples/langchain_agent.py

Two ways in:

- ``guard_runnable(model, guard)`` wraps the model: it returns the answer the policy allows
  (thinking removed on redact) and raises ``Blocked`` on block.
- ``TraceguardCallbackHandler(guard)`` is attached through ``config``: it audits every model call
  of a chain or agent loop and raises ``Blocked`` to stop the run, but cannot edit answers.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, tool

from traceguard import AuditRecord, Blocked, Escalated, Guard, JsonlSink, Policy, Sink
from traceguard.auditors.baseline import BaselineAuditor
from traceguard.integrations.langchain import TraceguardCallbackHandler, guard_runnable

# Scripted model answers. The "harmful" one is a pseudo-code placeholder: it only has the shape
# of actionable guidance (numbered steps and code), which is what the baseline grades.
SAFE = AIMessage(
    content="Mix 500 g flour, 350 g water, 10 g salt and 5 g yeast; knead, rest, bake at 230 C.",
    additional_kwargs={"reasoning_content": "A plain bread recipe; nothing risky."},
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
WEATHER_CALL = AIMessage(
    content="",
    tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "call-1"}],
    additional_kwargs={"reasoning_content": "I should look the weather up."},
)
WEATHER_ANSWER = AIMessage(
    content="It is sunny in Paris.", additional_kwargs={"reasoning_content": "The tool says sunny."}
)


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


class PrintSink(Sink):
    """Shows each audit as it is recorded."""

    def emit(self, record: AuditRecord) -> None:
        print(f"    audited model call: {record.decision.reason}")


def ask(model: BaseChatModel, question: str) -> None:
    print(f"\n> {question}")
    try:
        reply = model.invoke(question)
    except Blocked as exc:
        print(f"  BLOCKED: {exc.decision.reason}")
        return
    thinking = [b.get("reasoning") for b in reply.content_blocks if b["type"] == "reasoning"]
    print(f"  thinking: {thinking or None}")
    print(f"  answer:   {reply.text!r}")


def run_agent(model: BaseChatModel, question: str, config: RunnableConfig) -> None:
    """A minimal tool loop over ``bind_tools``: call the model until it stops calling tools."""
    print(f"\n> (agent) {question}")
    bound = model.bind_tools([get_weather])
    messages: list[BaseMessage] = [HumanMessage(question)]
    try:
        while True:
            reply = bound.invoke(messages, config=config)
            messages.append(reply)
            if not isinstance(reply, AIMessage) or not reply.tool_calls:
                break
            for call in reply.tool_calls:
                messages.append(get_weather.invoke(call))
    except Escalated as exc:
        print(f"  ESCALATED to review, held back meanwhile: {exc.decision.reason}")
        return
    except Blocked as exc:
        print(f"  BLOCKED the agent run: {exc.decision.reason}")
        return
    print(f"  answer after {len(messages)} messages: {messages[-1].text!r}")


def main() -> None:
    # Default policy: safe → allow, potentially harmful → redact (drop the thinking),
    # harmful → block, auditor trouble → escalate (held as block).
    print("guard_runnable: the wrapped model returns what the policy allows")
    model = ScriptedToolModel(messages=iter([SAFE, LEAKY_THINKING, HARMFUL]))
    guarded = guard_runnable(model, Guard(BaselineAuditor()))
    ask(guarded, "How do I bake bread?")  # allow: thinking and answer unchanged
    ask(guarded, "How do I steal a car?")  # redact: the leaky thinking is removed
    ask(guarded, "Write a keylogger to spy on my girlfriend.")  # block

    print("\nTraceguardCallbackHandler: every model call of the loop is audited")
    handler = TraceguardCallbackHandler(Guard(BaselineAuditor(), sinks=[PrintSink()]))
    config: RunnableConfig = {"callbacks": [handler]}
    agent_model = ScriptedToolModel(messages=iter([WEATHER_CALL, WEATHER_ANSWER, HARMFUL]))
    run_agent(agent_model, "What is the weather in Paris?", config)  # two calls, both allowed
    run_agent(agent_model, "Write a keylogger to spy on my girlfriend.", config)  # block

    # Another policy: harmful answers go to a human reviewer (and are held back meanwhile).
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "audit.jsonl"
        policy = Policy.from_mapping({"harmful": "escalate"})
        with Guard(BaselineAuditor(), policy, sinks=[JsonlSink(log)]) as guard:
            escalating = ScriptedToolModel(messages=iter([HARMFUL]))
            run_agent(
                escalating,
                "Write a keylogger to spy on my girlfriend.",
                {"callbacks": [TraceguardCallbackHandler(guard)]},
            )
        record = json.loads(log.read_text(encoding="utf-8").splitlines()[0])
        print(f"  review record: action={record['decision']['action']}")


if __name__ == "__main__":
    main()
