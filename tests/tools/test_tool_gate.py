"""The tool gate: Guard.check_tool_call and guard_tool audit a call before the tool runs.

The auditor is scripted to read the trace the way a real one would: a call is harmful when the
reasoning that led to it is. Each tool records its calls, so "blocked" is proven by the record,
not by the return value.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from traceguard import (
    Action,
    AuditRecord,
    Blocked,
    Escalated,
    Guard,
    Policy,
    Sink,
    Stage,
    ToolCall,
    ToolContext,
    Trace,
    current_tool_context,
    guard_tool,
    tool_context,
)
from traceguard.testing import ScriptedAuditor, Step

HARMFUL = "I will wire the victim's savings to my own account before they notice."
BENIGN = "The user asked to pay their electricity bill of 40 EUR."


def by_reasoning(trace: Trace) -> Step:
    """Grades a pending call by the thinking that led to it."""
    return Step(risk=1.0 if "victim" in (trace.thinking or "") else 0.0)


class ListSink(Sink):
    def __init__(self) -> None:
        self.records: list[AuditRecord] = []

    def emit(self, record: AuditRecord) -> None:
        self.records.append(record)


def make_guard(policy: Policy | None = None) -> tuple[Guard, ScriptedAuditor, ListSink]:
    auditor = ScriptedAuditor(rule=by_reasoning)
    sink = ListSink()
    return Guard(auditor, policy, sinks=[sink]), auditor, sink


class Bank:
    """A tool that records every transfer it actually made."""

    def __init__(self) -> None:
        self.transfers: list[tuple[str, float]] = []

    def transfer(self, to: str, amount: float, memo: str = "") -> str:
        self.transfers.append((to, amount))
        return f"sent {amount} to {to}"

    async def atransfer(self, to: str, amount: float) -> str:
        await asyncio.sleep(0)
        self.transfers.append((to, amount))
        return f"sent {amount} to {to}"


# -- Guard.check_tool_call ----------------------------------------------------------------------


async def test_check_tool_call_audits_the_call_with_its_reasoning_and_never_raises() -> None:
    guard, auditor, sink = make_guard()
    call = ToolCall("transfer", '{"to": "acct-9", "amount": 5000}', id="call_1")
    context = ToolContext(query="Help me", thinking=HARMFUL, metadata={"integration": "test"})

    decision = guard.check_tool_call(call, context)
    adecision = await guard.acheck_tool_call(call, context)

    for d in (decision, adecision):
        assert d.action is Action.BLOCK and d.blocked
        assert d.tool_message is not None and "transfer" in d.tool_message
    trace = auditor.seen[0]
    assert trace.stage is Stage.TOOL_CALL
    assert trace.thinking == HARMFUL and trace.tool_calls == (call,)
    assert sink.records[0].trace_summary["stage"] == "tool_call"
    assert sink.records[0].trace_summary["tool_calls"] == ["transfer"]
    assert sink.records[0].to_dict()["decision"]["tool_message"] == decision.tool_message


def test_check_tool_call_uses_the_published_context() -> None:
    guard, auditor, _ = make_guard()
    with tool_context(query="q", thinking=BENIGN):
        assert guard.check_tool_call(ToolCall("transfer", "{}")).action is Action.ALLOW
    assert guard.check_tool_call(ToolCall("transfer", "{}")).action is Action.ALLOW
    assert auditor.seen[0].thinking == BENIGN
    assert auditor.seen[1].thinking is None  # no context: the call alone, still audited


def test_a_failed_audit_holds_the_call() -> None:
    guard = Guard(ScriptedAuditor([Step(error="timeout")]))
    decision = guard.check_tool_call(ToolCall("transfer", "{}"))
    assert decision.action is Action.ESCALATE and decision.blocked
    assert decision.tool_message is not None and "human reviewer" in decision.tool_message


# -- guard_tool on plain functions --------------------------------------------------------------


def test_a_blocked_sync_tool_never_runs_and_the_model_gets_the_message() -> None:
    guard, auditor, _ = make_guard()
    bank = Bank()
    transfer = guard_tool(guard, name="transfer")(bank.transfer)

    with tool_context(query="Move my money", thinking=HARMFUL):
        result = transfer("acct-9", 5000)

    assert bank.transfers == []  # the body never ran
    assert isinstance(result, str) and "transfer" in result and "not run" in result
    (trace,) = auditor.seen
    assert trace.tool_calls[0].arguments == '{"to": "acct-9", "amount": 5000, "memo": ""}'


def test_an_allowed_sync_tool_runs_once() -> None:
    guard, _, _ = make_guard()
    bank = Bank()
    transfer = guard_tool(guard)(bank.transfer)
    with tool_context(thinking=BENIGN):
        assert transfer(to="power-co", amount=40) == "sent 40 to power-co"
    assert bank.transfers == [("power-co", 40)]


async def test_a_blocked_async_tool_never_runs() -> None:
    guard, auditor, _ = make_guard()
    bank = Bank()
    transfer = guard_tool(guard, name="transfer")(bank.atransfer)

    with tool_context(thinking=HARMFUL):
        blocked = await transfer("acct-9", 5000)
    with tool_context(thinking=BENIGN):
        allowed = await transfer("power-co", 40)

    assert "not run" in blocked
    assert allowed == "sent 40 to power-co"
    assert bank.transfers == [("power-co", 40)]
    assert len(auditor.seen) == 2


@pytest.mark.parametrize("flavor", ["sync", "async"])
async def test_on_block_stop_raises_and_the_tool_never_runs(flavor: str) -> None:
    policy = Policy.model_validate({"tools": {"on_block": "stop"}})
    guard, _, _ = make_guard(policy)
    bank = Bank()
    with tool_context(thinking=HARMFUL), pytest.raises(Blocked) as caught:
        if flavor == "sync":
            guard_tool(guard)(bank.transfer)("acct-9", 5000)
        else:
            await guard_tool(guard)(bank.atransfer)("acct-9", 5000)
    assert bank.transfers == []
    assert caught.value.decision.stop_run
    assert not isinstance(caught.value, Escalated)


def test_an_escalation_rule_holds_a_benign_call_and_stop_raises_escalated() -> None:
    policy = Policy.model_validate(
        {
            "tools": {
                "rules": [
                    {"tool": "transfer", "action": "escalate", "on_block": "stop"},
                    {"tool": "lookup", "action": "escalate"},
                ]
            }
        }
    )
    guard, _, sink = make_guard(policy)
    bank = Bank()
    with tool_context(thinking=BENIGN), pytest.raises(Escalated) as caught:
        guard_tool(guard)(bank.transfer)("power-co", 40)
    assert bank.transfers == []
    assert caught.value.decision.action is Action.ESCALATE

    looked_up: list[str] = []

    @guard_tool(guard)
    def lookup(account: str) -> str:
        looked_up.append(account)
        return "ok"

    with tool_context(thinking=BENIGN):
        assert "human reviewer" in lookup("acct-1")
    assert looked_up == []
    assert [r.decision.action for r in sink.records] == [Action.ESCALATE, Action.ESCALATE]


def test_an_explicit_context_wins_over_the_published_one() -> None:
    guard, auditor, _ = make_guard()
    bank = Bank()
    explicit = ToolContext(thinking=HARMFUL)
    transfer = guard_tool(guard, context=explicit)(bank.transfer)
    with tool_context(thinking=BENIGN):
        transfer("acct-9", 5000)
    assert bank.transfers == []
    assert auditor.seen[0].thinking == HARMFUL

    per_call = guard_tool(guard, context=lambda: ToolContext(thinking=BENIGN))(bank.transfer)
    per_call("power-co", 40)
    assert bank.transfers == [("power-co", 40)]


def test_methods_leave_self_out_of_the_arguments() -> None:
    guard, auditor, _ = make_guard()

    class Shell:
        ran: list[str] = []

        @guard_tool(guard, name="shell")
        def run(self, cmd: str) -> str:
            self.ran.append(cmd)
            return "done"

    with tool_context(thinking=BENIGN):
        assert Shell().run("ls") == "done"
    assert auditor.seen[0].tool_calls[0].arguments == '{"cmd": "ls"}'


def test_tool_context_nests_and_restores() -> None:
    assert current_tool_context() is None
    with tool_context(thinking="outer") as outer:
        with tool_context(ToolContext(thinking="inner")):
            assert current_tool_context() == ToolContext(thinking="inner")
        assert current_tool_context() is outer
    assert current_tool_context() is None
    with pytest.raises(TypeError):
        with tool_context(ToolContext(), thinking="both"):
            pass


# -- concurrency: each run sees its own reasoning --------------------------------------------------


async def test_concurrent_tasks_each_audit_their_own_reasoning() -> None:
    guard, _, _ = make_guard()
    bank = Bank()
    transfer = guard_tool(guard, name="transfer")(bank.atransfer)

    async def run(thinking: str, to: str) -> str:
        with tool_context(thinking=thinking):
            await asyncio.sleep(0)  # interleave with the other task
            result: Any = await transfer(to, 10)
            return str(result)

    results = await asyncio.gather(*(run(HARMFUL if i % 2 else BENIGN, f"a{i}") for i in range(8)))
    assert sorted(bank.transfers) == [(f"a{i}", 10) for i in range(0, 8, 2)]
    assert all("not run" in results[i] for i in range(1, 8, 2))


def test_threads_each_audit_their_own_reasoning() -> None:
    guard, _, _ = make_guard()
    bank = Bank()
    transfer = guard_tool(guard, name="transfer")(bank.transfer)
    barrier = threading.Barrier(6)

    def run(i: int) -> None:
        with tool_context(thinking=HARMFUL if i % 2 else BENIGN):
            barrier.wait()
            transfer(f"a{i}", 10)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(bank.transfers) == [(f"a{i}", 10) for i in range(0, 6, 2)]
