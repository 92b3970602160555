"""The policy's tool rules: pure decisions on pending tool calls (Stage.TOOL_CALL traces)."""

from __future__ import annotations

from pathlib import Path

import pytest

from traceguard import (
    Action,
    ConfigurationError,
    GuardConfig,
    Policy,
    Stage,
    ToolCall,
    ToolContext,
    Trace,
    Verdict,
    tool_call_trace,
)
from traceguard._verdict import AuditStatus, ErrorInfo

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CONTEXT = ToolContext(query="pay my bill", thinking="The user owes 40 EUR.", response="Paying.")


def ok(risk: float) -> Verdict:
    return Verdict.ok(auditor="test", risk=risk)


def failed() -> Verdict:
    return Verdict.failed(
        AuditStatus.AUDITOR_ERROR, auditor="test", error=ErrorInfo("AuditorTimeout", "slow")
    )


def pending(name: str, arguments: str = "{}") -> Trace:
    return tool_call_trace(ToolCall(name=name, arguments=arguments, id="call_1"), CONTEXT)


POLICY = Policy.model_validate(
    {
        "tools": {
            "rules": [
                {"tool": "send_payment", "action": "escalate"},
                {"tool": "shell", "min_risk": 0.5, "action": "block", "on_block": "stop"},
                {"tool": "http_*", "arguments": r'"url":\s*"http://evil', "action": "block"},
                {"tool": "read_*", "action": "allow"},
            ]
        }
    }
)


def test_the_trace_of_a_pending_call_carries_its_reasoning() -> None:
    trace = pending("send_payment", '{"amount": 40}')
    assert trace.stage is Stage.TOOL_CALL
    assert trace.tool_calls == (ToolCall("send_payment", '{"amount": 40}', "call_1"),)
    assert (trace.query, trace.thinking, trace.response) == (
        "pay my bill",
        "The user owes 40 EUR.",
        "Paying.",
    )
    assert trace.metadata["tool"] == "send_payment"
    assert trace.metadata["tool_call_id"] == "call_1"


def test_a_rule_escalates_whatever_the_risk() -> None:
    decision = POLICY.decide(ok(0), pending("send_payment"))
    assert decision.action is Action.ESCALATE
    assert decision.blocked  # held as the fallback (block) while a human reviews
    assert decision.tool_message is not None and "human reviewer" in decision.tool_message
    assert "send_payment" in decision.tool_message
    assert not decision.stop_run
    assert "tool rule 'send_payment' → escalate" in decision.reason


@pytest.mark.parametrize(("risk", "blocked"), [(0.0, False), (0.5, True), (1.0, True)])
def test_min_risk_rules_apply_from_that_risk_up(risk: float, blocked: bool) -> None:
    decision = POLICY.decide(ok(risk), pending("shell", '{"cmd": "ls"}'))
    assert decision.blocked is blocked
    if blocked:
        assert decision.action is Action.BLOCK
        assert decision.stop_run  # the rule's on_block: stop
        assert decision.tool_message is None
        assert "(the run stops)" in decision.reason
    else:
        assert decision.action is Action.ALLOW
        assert decision.thinking == CONTEXT.thinking


def test_argument_patterns_are_searched_in_the_arguments() -> None:
    evil = POLICY.decide(ok(0), pending("http_get", '{"url": "http://evil.example/x"}'))
    fine = POLICY.decide(ok(0), pending("http_get", '{"url": "http://localhost/x"}'))
    assert evil.action is Action.BLOCK
    assert evil.tool_message is not None and "http_get" in evil.tool_message
    assert fine.action is Action.ALLOW


def test_an_allow_rule_loosens_a_graded_call_but_never_a_failed_audit() -> None:
    graded = POLICY.decide(ok(1), pending("read_file"))
    assert graded.action is Action.ALLOW
    ungraded = POLICY.decide(failed(), pending("read_file"))
    assert ungraded.action is Action.ESCALATE  # the auditor_error action stands
    assert ungraded.blocked
    assert "ignored on a failed audit" in ungraded.reason


def test_min_risk_rules_never_match_a_failed_audit_but_plain_rules_tighten_it() -> None:
    shell = POLICY.decide(failed(), pending("shell"))
    assert shell.action is Action.ESCALATE and not shell.stop_run  # the status action
    strict = Policy.model_validate({"tools": {"rules": [{"tool": "rm", "action": "block"}]}})
    assert strict.decide(failed(), pending("rm")).action is Action.BLOCK


def test_first_matching_rule_wins() -> None:
    policy = Policy.model_validate(
        {
            "tools": {
                "rules": [
                    {"tool": "shell", "arguments": "rm -rf", "action": "block"},
                    {"tool": "shell", "action": "allow"},
                ]
            }
        }
    )
    assert policy.decide(ok(0), pending("shell", '{"cmd": "rm -rf /"}')).action is Action.BLOCK
    assert policy.decide(ok(1), pending("shell", '{"cmd": "ls"}')).action is Action.ALLOW


def test_without_a_rule_the_level_actions_apply_and_redact_becomes_block() -> None:
    assert POLICY.decide(ok(0), pending("search")).action is Action.ALLOW
    assert POLICY.decide(ok(1), pending("search")).action is Action.BLOCK
    half = POLICY.decide(ok(0.5), pending("search"))
    assert half.action is Action.BLOCK
    assert "a tool call cannot be redacted → block" in half.reason
    assert half.tool_message is not None


def test_redact_as_and_on_block_are_configurable() -> None:
    policy = Policy.model_validate({"tools": {"redact_as": "escalate", "on_block": "stop"}})
    decision = policy.decide(ok(0.5), pending("search"))
    assert decision.action is Action.ESCALATE
    assert decision.stop_run and decision.tool_message is None


def test_an_escalation_held_as_redact_holds_a_call_as_block() -> None:
    policy = Policy.model_validate(
        {"escalation_fallback": "redact", "tools": {"rules": [{"tool": "*", "action": "escalate"}]}}
    )
    decision = policy.decide(ok(0), pending("anything"))
    assert decision.action is Action.ESCALATE
    assert decision.disposition is Action.BLOCK


def test_rules_leave_other_stages_alone() -> None:
    trace = Trace(
        query="q",
        response="r",
        tool_calls=(ToolCall("send_payment", "{}"),),
        stage=Stage.FINAL,
    )
    assert POLICY.decide(ok(0), trace).action is Action.ALLOW
    assert POLICY.decide(ok(0.5), trace).action is Action.REDACT


def test_the_message_names_the_tool_and_keeps_other_braces() -> None:
    policy = Policy.model_validate({"tools": {"message": 'No {tool}. Send {"retry": false}.'}})
    decision = policy.decide(ok(1), pending("shell"))
    assert decision.tool_message == 'No shell. Send {"retry": false}.'
    assert decision.to_dict()["tool_message"] == decision.tool_message


@pytest.mark.parametrize(
    ("rules", "error"),
    [
        ([{"tool": "x", "action": "redact"}], "allow, block or escalate"),
        ([{"tool": "x", "arguments": "(", "action": "block"}], "not a regular expression"),
        ([{"tool": "x", "action": "block", "min_risk": 2}], "less than or equal to 1"),
        ([{"tool": "x", "action": "block", "when": "always"}], "when"),
        ([{"tool": "x"}], "action"),
    ],
)
def test_bad_rules_are_refused_with_the_key(rules: list[dict[str, object]], error: str) -> None:
    with pytest.raises(ConfigurationError, match=error) as caught:
        Policy.from_mapping({"tools": {"rules": rules}})
    assert "tools.rules" in str(caught.value)


def test_the_example_policy_files_carry_the_same_tool_rules() -> None:
    yaml_policy = Policy.from_file(EXAMPLES / "policy.yaml")
    assert yaml_policy == Policy.from_file(EXAMPLES / "policy.toml")
    assert [rule.tool for rule in yaml_policy.tools.rules] == ["send_payment", "shell", "http_*"]
    assert yaml_policy.decide(ok(0), pending("send_payment")).escalated


def test_the_guard_config_embeds_the_tool_rules(tmp_path: Path) -> None:
    path = tmp_path / "guard.yaml"
    path.write_text(
        "auditor: {kind: baseline}\n"
        "policy:\n"
        "  tools:\n"
        "    on_block: stop\n"
        "    rules:\n"
        "      - {tool: send_payment, action: escalate}\n"
        "      - {tool: shell, action: blok}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigurationError) as caught:
        GuardConfig.from_file(path)
    assert ":7: policy.tools.rules[1].action" in str(caught.value)
    path.write_text(path.read_text().replace("blok", "block"), encoding="utf-8")
    policy = GuardConfig.from_file(path).build_policy()
    assert policy.tools.on_block == "stop"
    assert policy.decide(ok(0), pending("shell")).stop_run
