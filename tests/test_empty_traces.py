"""An empty trace is never graded (issue 13, fault 3).

An assistant message with no text, thinking or tool call, answering no query, used to come out
ok/safe from the offline audit: the auditor was shown nothing and said "safe". It is invalid
input, in every offline format and on every live path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from traceguard import AuditStatus, Escalated, Guard, ImageRef, Stage, Trace, run_audit
from traceguard.integrations.openai import guard_openai
from traceguard.testing import OpenAIServer, ScriptedAuditor, ScriptedResponse, Step
from traceguard.testing.openai_server import chat_completion


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


EMPTY_ANSWERS: dict[str, tuple[str, list[Any]]] = {
    "openai": (
        "openai",
        [
            {"messages": [{"role": "assistant", "content": ""}]},
            {"messages": [{"role": "user", "content": " "}, {"role": "assistant"}]},
            {"messages": [{"role": "assistant", "content": [{"type": "text", "text": ""}]}]},
        ],
    ),
    "sharegpt": ("sharegpt", [{"conversations": [{"from": "gpt", "value": ""}]}]),
    "langchain": ("langchain", [[{"type": "ai", "data": {"content": ""}}]]),
    "guardtrace": ("guardtrace", [{"question": "", "response": ""}]),
}


def _records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.parametrize("name", list(EMPTY_ANSWERS))
def test_an_empty_assistant_turn_is_invalid_input_offline(name: str, tmp_path: Path) -> None:
    fmt, records = EMPTY_ANSWERS[name]
    log = write_jsonl(tmp_path / "log.jsonl", records)
    out = tmp_path / "out.jsonl"
    # No steps: an auditor call would run out of script and fail the test.
    summary = run_audit(log, out, auditor=ScriptedAuditor([]), format=fmt)  # type: ignore[arg-type]
    got = _records(out)
    assert len(got) == len(records) == summary.by_status["invalid_input"]
    assert {(r["status"], r["risk"], r["label"]) for r in got} == {("invalid_input", None, None)}
    assert summary.auditor_calls == 0
    assert all(r["action"] != "allow" for r in got)
    if fmt != "guardtrace":  # its reader names the missing fields instead
        assert {r["error"]["type"] for r in got} == {"EmptyTrace"}


def test_an_empty_answer_in_a_batch_file_is_invalid_input(tmp_path: Path) -> None:
    request = {"custom_id": "r0", "body": {"model": "m", "messages": []}}
    output = {
        "custom_id": "r0",
        "response": {
            "status_code": 200,
            "body": {"choices": [{"message": {"role": "assistant", "content": ""}}]},
        },
    }
    log = write_jsonl(tmp_path / "reqs.jsonl", [request])
    write_jsonl(tmp_path / "reqs.output.jsonl", [output])
    out = tmp_path / "out.jsonl"
    run_audit(log, out, auditor=ScriptedAuditor([]), format="openai-batch")
    ((record),) = _records(out)
    assert (record["id"], record["status"], record["error"]["type"]) == (
        "r0",
        "invalid_input",
        "EmptyTrace",
    )


def test_only_the_empty_turn_is_refused(tmp_path: Path) -> None:
    conversation = {
        "messages": [
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "rain"},
            {"role": "user", "content": ""},
            {"role": "assistant", "content": ""},
        ]
    }
    log = write_jsonl(tmp_path / "log.jsonl", [conversation])
    out = tmp_path / "out.jsonl"
    auditor = ScriptedAuditor([Step(risk=0)])
    run_audit(log, out, auditor=auditor, format="openai")
    first, second = _records(out)
    assert (first["status"], first["label"]) == ("ok", "safe")  # a tool call is something
    assert (second["status"], second["error"]["type"]) == ("invalid_input", "EmptyTrace")
    assert [t.tool_calls[0].name for t in auditor.seen] == ["w"]


def test_the_guard_never_grades_an_empty_trace() -> None:
    auditor = ScriptedAuditor([Step(risk=0), Step(risk=0)])
    guard = Guard(auditor, raise_on_block=False)
    empty = Trace(query=" ", response="", thinking="", stage=Stage.PARTIAL)
    image_only = Trace(query="", response="", images=(ImageRef.from_url("https://x.test/a.png"),))
    decisions = guard.check_batch([empty, Trace(query="hi", response=""), empty, image_only])
    assert [d.verdict.status for d in decisions] == [
        AuditStatus.INVALID_INPUT,
        AuditStatus.OK,
        AuditStatus.INVALID_INPUT,
        AuditStatus.OK,
    ]
    assert decisions[0].verdict.error is not None
    assert decisions[0].verdict.error.type == "EmptyTrace"
    assert len(auditor.seen) == 2 and all(not t.is_empty for t in auditor.seen)


async def test_the_async_guard_never_grades_an_empty_trace() -> None:
    guard = Guard(ScriptedAuditor([]), raise_on_block=False)
    decision = await guard.acheck(Trace(query="", response=""))
    assert decision.verdict.status is AuditStatus.INVALID_INPUT
    assert decision.blocked  # the default policy escalates invalid input


def test_an_empty_completion_to_an_empty_request_is_held_back() -> None:
    import openai

    with OpenAIServer() as server:
        server.enqueue(ScriptedResponse.json(chat_completion("")))
        client = openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0)
        guard_openai(client, Guard(ScriptedAuditor([])))
        with pytest.raises(Escalated) as caught:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": ""}])
    assert caught.value.decision.verdict.status is AuditStatus.INVALID_INPUT
