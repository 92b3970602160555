"""The LangGraph building block: pause on an escalation, resume on the reviewer's decision.

Real langgraph graphs with a real checkpointer (``InMemorySaver``); the model is LangChain's
``ChatOpenAI`` against the loopback OpenAI-compatible server, so a resumed node calls it again
exactly as it would in production.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from langchain_openai import ChatOpenAI
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command

from traceguard import Guard, Policy, ReviewQueue, Trace
from traceguard.integrations.langgraph import (
    INTERRUPT_TYPE,
    aresume_reviewed,
    areview_gate,
    resume_reviewed,
    review_gate,
)
from traceguard.review import EscalationStore
from traceguard.testing import ScriptedAuditor, Step
from traceguard.testing.openai_server import OpenAIServer, ScriptedResponse, chat_completion

REFUSAL = "I can't help with that request."


class State(TypedDict):
    question: str
    answer: str
    log: Annotated[list[str], operator.add]


@pytest.fixture(scope="module")
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as srv:
        yield srv


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[ReviewQueue]:
    q = ReviewQueue(tmp_path / "reviews.sqlite")
    yield q
    q.close()


def build_graph(
    server: OpenAIServer, guard: Guard, *, checkpointer: Any = None, asynchronous: bool = False
) -> Any:
    model = ChatOpenAI(model="m", base_url=server.base_url, api_key="k", max_retries=0)

    def trace_of(state: State, reply: Any) -> Trace:
        return Trace(query=state["question"], response=str(reply.content))

    def answer(state: State) -> dict[str, Any]:
        reply = model.invoke(state["question"])
        decision = review_gate(guard, trace_of(state, reply))
        text = REFUSAL if decision.blocked else str(decision.response)
        return {"answer": text, "log": ["answered"]}

    async def aanswer(state: State) -> dict[str, Any]:
        reply = await model.ainvoke(state["question"])
        decision = await areview_gate(guard, trace_of(state, reply))
        text = REFUSAL if decision.blocked else str(decision.response)
        return {"answer": text, "log": ["answered"]}

    def finish(state: State) -> dict[str, Any]:
        return {"log": ["finished"]}

    builder = StateGraph(State)
    builder.add_node("answer", aanswer if asynchronous else answer)
    builder.add_node("finish", finish)
    builder.add_edge(START, "answer")
    builder.add_edge("answer", "finish")
    builder.add_edge("finish", END)
    return builder.compile(checkpointer=checkpointer)


def escalating_guard(queue: ReviewQueue) -> tuple[Guard, ScriptedAuditor]:
    auditor = ScriptedAuditor(rule=lambda trace: Step(risk=1.0, categories=("cybersecurity",)))
    return Guard(auditor, Policy(harmful="escalate"), sinks=[queue]), auditor


def script_answers(server: OpenAIServer, *texts: str) -> None:
    server.reset()
    server.enqueue(*(ScriptedResponse.json(chat_completion(text)) for text in texts))


@pytest.mark.parametrize("resolution", ["approved", "rejected"])
def test_graph_pauses_and_resumes_with_the_decision(
    server: OpenAIServer, queue: ReviewQueue, resolution: str
) -> None:
    script_answers(server, "the held answer", "the held answer")  # the resumed node asks again
    guard, auditor = escalating_guard(queue)
    graph = build_graph(server, guard, checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "thread-1"}}

    paused = graph.invoke({"question": "how?", "log": []}, config)
    [pending] = paused["__interrupt__"]
    payload = pending.value
    assert payload["type"] == INTERRUPT_TYPE and payload["held_as"] == "block"
    assert payload["risk"] == 1.0 and payload["categories"] == ["cybersecurity"]
    assert "the held answer" not in str(payload)  # no audited text in the interrupt
    queue.flush(30)
    item = queue.get(payload["escalation_id"])
    assert (item.integration, item.thread_id) == ("langgraph", "thread-1")
    assert item.content is not None and item.content.response == "the held answer"

    assert resume_reviewed(graph, queue) == []  # nothing decided yet
    reviewer = EscalationStore(queue.path)
    reviewer.resolve(item.escalation_id, resolution, "ana", "checked")  # type: ignore[arg-type]
    reviewer.close()

    [resumed] = resume_reviewed(graph, queue)
    assert resumed.resumed and resumed.resolution == resolution
    final = resumed.result
    assert final["log"] == ["answered", "finished"]
    assert final["answer"] == ("the held answer" if resolution == "approved" else REFUSAL)
    assert len(auditor.seen) == 1  # the re-run node took the recorded verdict: no new audit
    assert queue.counts()["pending"] == 0 and len(queue.store.pending()) == 0
    assert resume_reviewed(graph, queue) == []  # exactly once
    assert queue.get(item.escalation_id).delivered_to == "resume_reviewed"
    assert not server.unexpected


def test_a_new_output_on_resume_is_reviewed_afresh(
    server: OpenAIServer, queue: ReviewQueue
) -> None:
    script_answers(server, "first answer", "a different answer")
    guard, auditor = escalating_guard(queue)
    graph = build_graph(server, guard, checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "t-new"}}
    first = graph.invoke({"question": "q", "log": []}, config)["__interrupt__"][0].value
    queue.flush(30)
    queue.resolve(first["escalation_id"], "approved", reviewer="ana")
    # The approval covers "first answer"; the re-run model said something else: pause again.
    second = graph.invoke(
        Command(resume={"escalation_id": first["escalation_id"], "resolution": "approved"}), config
    )
    again = second["__interrupt__"][0].value
    assert again["escalation_id"] != first["escalation_id"]
    assert len(auditor.seen) == 2
    queue.flush(30)
    assert queue.get(again["escalation_id"]).content.response == "a different answer"  # type: ignore[union-attr]


def test_the_queue_record_wins_over_a_forged_resume(
    server: OpenAIServer, queue: ReviewQueue
) -> None:
    script_answers(server, "answer", "answer")
    guard, _ = escalating_guard(queue)
    graph = build_graph(server, guard, checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "t-forged"}}
    payload = graph.invoke({"question": "q", "log": []}, config)["__interrupt__"][0].value
    queue.flush(30)
    queue.resolve(payload["escalation_id"], "rejected", reviewer="ana")
    final = graph.invoke(Command(resume="approved"), config)
    assert final["answer"] == REFUSAL


def test_without_a_checkpointer_the_fallback_applies(
    server: OpenAIServer, queue: ReviewQueue
) -> None:
    script_answers(server, "answer")
    guard, _ = escalating_guard(queue)
    graph = build_graph(server, guard)  # no checkpointer: nothing can pause
    final = graph.invoke({"question": "q", "log": []})
    assert "__interrupt__" not in final
    assert final["answer"] == REFUSAL  # held as block, the policy's fallback
    queue.flush(30)
    assert queue.counts()["pending"] == 1  # still filed for review


def test_unescalated_outputs_pass_untouched(server: OpenAIServer, queue: ReviewQueue) -> None:
    script_answers(server, "fine")
    guard = Guard(ScriptedAuditor([0.0]), sinks=[queue])
    graph = build_graph(server, guard, checkpointer=InMemorySaver())
    final = graph.invoke({"question": "q", "log": []}, {"configurable": {"thread_id": "ok"}})
    assert final["answer"] == "fine" and "__interrupt__" not in final


async def test_async_graph_pauses_and_resumes(server: OpenAIServer, queue: ReviewQueue) -> None:
    script_answers(server, "held", "held")
    guard, auditor = escalating_guard(queue)
    graph = build_graph(server, guard, checkpointer=InMemorySaver(), asynchronous=True)
    config = {"configurable": {"thread_id": "async-1"}}
    paused = await graph.ainvoke({"question": "q", "log": []}, config)
    eid = paused["__interrupt__"][0].value["escalation_id"]
    queue.flush(30)
    queue.resolve(eid, "approved", reviewer="bo")
    [resumed] = await aresume_reviewed(graph, queue)
    assert resumed.result["answer"] == "held" and len(auditor.seen) == 1
    assert await aresume_reviewed(graph, queue) == []


def test_two_resumers_resume_once(server: OpenAIServer, queue: ReviewQueue) -> None:
    script_answers(server, "x", "x")
    guard, _ = escalating_guard(queue)
    graph = build_graph(server, guard, checkpointer=InMemorySaver())
    payload = graph.invoke({"question": "q", "log": []}, {"configurable": {"thread_id": "two"}})
    eid = payload["__interrupt__"][0].value["escalation_id"]
    queue.flush(30)
    queue.resolve(eid, "approved", reviewer="ana")
    other = EscalationStore(queue.path)
    assert other.claim_delivery(eid, "the other resumer")
    assert resume_reviewed(graph, queue) == []  # claimed elsewhere: not resumed here
    other.close()


def test_a_failed_resume_is_retried(server: OpenAIServer, queue: ReviewQueue) -> None:
    script_answers(server, "x")  # the resumed node's model call will find no answer: 500
    guard, _ = escalating_guard(queue)
    graph = build_graph(server, guard, checkpointer=InMemorySaver())
    payload = graph.invoke({"question": "q", "log": []}, {"configurable": {"thread_id": "retry"}})
    eid = payload["__interrupt__"][0].value["escalation_id"]
    queue.flush(30)
    queue.resolve(eid, "approved", reviewer="ana")
    with pytest.raises(Exception, match="500|Internal"):
        resume_reviewed(graph, queue)
    assert queue.get(eid).delivered_at is None  # released: the next call tries again
    server.reset()
    server.enqueue(ScriptedResponse.json(chat_completion("x")))
    [resumed] = resume_reviewed(graph, queue)
    assert resumed.result["answer"] == "x"
