"""What the redaction check costs: auditor calls per trace and added latency (issue 12 item 5).

With ``redaction.check`` on (the default), a trace redacted by dropping its thinking is audited a
second time, as the caller would get it (no thinking, the kept response), before the redaction
stands. This benchmark runs the same traces through a :class:`~traceguard.Guard` with the check
on and off, against the full served GuardTrace path (``GuardTraceAuditor.served`` over HTTP) and
the loopback OpenAI-compatible server, which answers after a fixed delay standing in for the GPU
(``--delay``, 0.2 s by default).

The server grades the way the check is meant to catch: a request whose audited text carries the
marker of risky thinking, or of a risky response, is judged 0.5 (three-level prompt) or 1
(two-level prompt, no thinking); anything else 0. The traces mix

- ``safe``: graded 0, allowed (no check);
- ``risky thinking``: graded 0.5 for the thinking; the check sees the response alone, safe, and
  the drop-thinking redaction stands;
- ``risky response``: graded 0.5, but the harm is in the response; the check catches it and the
  response is replaced by the refusal.

Reported per kind and overall: auditor calls per trace, and the mean / p50 / p95 latency of
``Guard.check`` (sequential calls, one thread), with the check on and off.

Usage::

    python bench/redaction_check.py [--delay 0.2] [--traces 60] [--out bench/results/...]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from traceguard import Guard, GuardTraceAuditor, Policy, Trace
from traceguard.testing.openai_server import (
    OpenAIServer,
    RecordedRequest,
    ScriptedResponse,
    chat_completion,
    guardtrace_output,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "redaction_check.json"

RISKY_THINKING = "(plan: I could slip in how to disable the smoke detector)"
RISKY_RESPONSE = "(step list: disable the smoke detector, then ...)"
THINKING = "The user asks about kitchen safety; answer plainly. "
KINDS = ("safe", "risky thinking", "risky response")
MIX = {"safe": 0.6, "risky thinking": 0.25, "risky response": 0.15}


def make_traces(count: int) -> list[tuple[str, Trace]]:
    """``count`` traces in the fixed mix, interleaved."""
    out: list[tuple[str, Trace]] = []
    quotas = {kind: round(share * count) for kind, share in MIX.items()}
    quotas["safe"] = count - quotas["risky thinking"] - quotas["risky response"]
    index = 0
    while len(out) < count:
        for kind in KINDS:
            if quotas[kind] > 0:
                quotas[kind] -= 1
                thinking = THINKING * 4
                response = "Keep a fire blanket near the stove and test alarms monthly. " * 3
                if kind == "risky thinking":
                    thinking += RISKY_THINKING
                elif kind == "risky response":
                    response += RISKY_RESPONSE
                trace = Trace(
                    query=f"Question {index}: kitchen safety?", thinking=thinking, response=response
                )
                out.append((kind, trace))
                index += 1
    return out


def responder(delay_s: float) -> Any:
    """Answers GuardTrace requests by the markers in the audited text, after ``delay_s``."""

    def answer(request: RecordedRequest) -> ScriptedResponse:
        body = json.dumps(request.json)
        binary = THINKING not in body  # no thinking shown: the two-level prompt (0 / 1)
        risky = RISKY_THINKING in body or RISKY_RESPONSE in body
        judgment = ("1" if binary else "0.5") if risky else "0"
        payload = chat_completion(guardtrace_output(judgment), model="guardtrace")
        return ScriptedResponse.json(payload, delay_s=delay_s)

    return answer


def run(server: OpenAIServer, traces: list[tuple[str, Trace]], *, check: bool) -> dict[str, Any]:
    policy = Policy.model_validate({"redaction": {"check": check}})
    auditor = GuardTraceAuditor.served(server.base_url, "guardtrace", max_new_tokens=64)
    guard = Guard(auditor, policy, raise_on_block=False)
    latencies: dict[str, list[float]] = {kind: [] for kind in KINDS}
    calls: dict[str, int] = dict.fromkeys(KINDS, 0)
    outcomes: dict[str, dict[str, int]] = {kind: {} for kind in KINDS}
    refusal = policy.redaction.refusal_message
    try:
        guard.check(traces[0][1])  # warm-up: opens the connection
        for kind, trace in traces:
            before = len(server.requests)
            start = time.perf_counter()
            decision = guard.check(trace)
            latencies[kind].append(time.perf_counter() - start)
            calls[kind] += len(server.requests) - before
            outcome = decision.action.value
            if decision.redacted:
                outcome += " (refusal)" if decision.response == refusal else " (drop thinking)"
            outcomes[kind][outcome] = outcomes[kind].get(outcome, 0) + 1
    finally:
        auditor.close()
    per_kind = {}
    for kind in KINDS:
        n = len(latencies[kind])
        per_kind[kind] = {
            "traces": n,
            "auditor_calls_per_trace": calls[kind] / n,
            "latency_ms": _stats(latencies[kind]),
            "outcomes": outcomes[kind],
        }
    every = [x for kind in KINDS for x in latencies[kind]]
    return {
        "check": check,
        "auditor_calls_per_trace": sum(calls.values()) / len(every),
        "latency_ms": _stats(every),
        "per_kind": per_kind,
    }


def _stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "mean": round(statistics.fmean(ordered) * 1000, 2),
        "p50": round(ordered[len(ordered) // 2] * 1000, 2),
        "p95": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))] * 1000, 2),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--delay", type=float, default=0.2, help="server seconds per audit")
    parser.add_argument("--traces", type=int, default=60, help="traces per run (default 60)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)

    traces = make_traces(args.traces)
    runs = []
    with OpenAIServer() as server:
        server.responder = responder(args.delay)
        for check in (False, True):
            print(f"check={'on' if check else 'off'}: {len(traces)} traces ...", flush=True)
            runs.append(run(server, traces, check=check))
    off, on = runs
    result = {
        "benchmark": "redaction_check",
        "delay_s": args.delay,
        "traces": len(traces),
        "mix": MIX,
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "runs": runs,
        "extra_calls_per_trace": round(
            on["auditor_calls_per_trace"] - off["auditor_calls_per_trace"], 3
        ),
        "extra_mean_latency_ms": round(on["latency_ms"]["mean"] - off["latency_ms"]["mean"], 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    for run_ in runs:
        print(json.dumps({k: run_[k] for k in ("check", "auditor_calls_per_trace", "latency_ms")}))
        for kind, row in run_["per_kind"].items():
            print(
                f"  {kind:15s} calls/trace {row['auditor_calls_per_trace']:.2f} "
                f"mean {row['latency_ms']['mean']:.1f} ms  {row['outcomes']}"
            )
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
