"""traceguard: audit the reasoning traces and images of multimodal agents.

The public surface is re-exported here; modules starting with ``_`` are private.
"""

from traceguard import taxonomy
from traceguard._auditor import Auditor
from traceguard._checkpoints import AuditSchedule, CheckpointClock
from traceguard._decision import Action, Decision, ReviewOutcome
from traceguard._exceptions import (
    AuditorError,
    AuditorResponseError,
    AuditorTimeout,
    AuditorUnavailable,
    Blocked,
    ConfigurationError,
    Escalated,
    ImageAccessDenied,
    ImageError,
    InputError,
    ParseError,
    SinkError,
    TraceguardError,
)
from traceguard._guard import Guard
from traceguard._images import ImageAccess, ImageRef
from traceguard._policy import (
    CategoryRule,
    Policy,
    Redaction,
    Thresholds,
    ToolPolicy,
    ToolRule,
    strictest,
)
from traceguard._reasoning import (
    ReasoningStream,
    extract_chat_message,
    extract_langchain_message,
    extract_responses_output,
    split_think_tags,
)
from traceguard._sinks import AuditRecord, BackgroundSink, JsonlSink, Sink
from traceguard._tools import (
    ToolContext,
    current_tool_context,
    guard_tool,
    held_result,
    tool_call_trace,
    tool_context,
)
from traceguard._trace import Stage, ToolCall, Trace, Turn
from traceguard._verdict import AuditStatus, ErrorInfo, Label, Verdict
from traceguard._version import __version__
from traceguard._webhook import WebhookSink
from traceguard.audit import AuditOptions, AuditSummary, arun_audit, run_audit
from traceguard.auditors._guardtrace_format import (
    ParsedJudgment,
    build_guardtrace_request,
    parse_guardtrace_output,
)
from traceguard.auditors._guardtrace_prompts import PromptSet
from traceguard.auditors.baseline import BaselineAuditor
from traceguard.auditors.guardtrace import GuardTraceAuditor
from traceguard.auditors.holisafe import HoliSafeAuditor
from traceguard.auditors.llavaguard import (
    LlavaGuardAuditor,
    LlavaGuardPolicy,
    parse_llavaguard_output,
)
from traceguard.auditors.safeguard import SafeGuardAuditor, parse_safeguard_output
from traceguard.auditors.staged import StagedAuditor
from traceguard.backends import OpenAICompatibleBackend, TransformersBackend
from traceguard.config import GuardConfig
from traceguard.review import Escalation, ReviewQueue

__all__ = [
    "Action",
    "AuditOptions",
    "AuditRecord",
    "AuditSchedule",
    "AuditStatus",
    "AuditSummary",
    "Auditor",
    "AuditorError",
    "AuditorResponseError",
    "AuditorTimeout",
    "AuditorUnavailable",
    "BackgroundSink",
    "BaselineAuditor",
    "Blocked",
    "CategoryRule",
    "CheckpointClock",
    "ConfigurationError",
    "Decision",
    "ErrorInfo",
    "Escalated",
    "Escalation",
    "Guard",
    "GuardConfig",
    "GuardTraceAuditor",
    "HoliSafeAuditor",
    "ImageAccess",
    "ImageAccessDenied",
    "ImageError",
    "ImageRef",
    "InputError",
    "JsonlSink",
    "Label",
    "LlavaGuardAuditor",
    "LlavaGuardPolicy",
    "OpenAICompatibleBackend",
    "ParseError",
    "ParsedJudgment",
    "Policy",
    "PromptSet",
    "ReasoningStream",
    "Redaction",
    "ReviewOutcome",
    "ReviewQueue",
    "SafeGuardAuditor",
    "Sink",
    "SinkError",
    "Stage",
    "StagedAuditor",
    "Thresholds",
    "ToolCall",
    "ToolContext",
    "ToolPolicy",
    "ToolRule",
    "Trace",
    "TraceguardError",
    "TransformersBackend",
    "Turn",
    "Verdict",
    "WebhookSink",
    "arun_audit",
    "build_guardtrace_request",
    "current_tool_context",
    "extract_chat_message",
    "extract_langchain_message",
    "extract_responses_output",
    "guard_tool",
    "held_result",
    "parse_guardtrace_output",
    "parse_llavaguard_output",
    "parse_safeguard_output",
    "run_audit",
    "split_think_tags",
    "strictest",
    "taxonomy",
    "tool_call_trace",
    "tool_context",
    "__version__",
]
