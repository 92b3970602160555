"""Per-call overhead of ``guard_openai`` with an instant auditor, against the bare client.

One run, one process, one loopback server (in-process, answering at once), the real ``openai``
SDK. Variants, interleaved round by round so drift hits them all alike:

- ``bare``: the plain ``openai.OpenAI`` client;
- ``traceguard``: the same client wrapped by ``guard_openai`` with a ``ScriptedAuditor`` whose
  rule answers 0 at once (so what is measured is the wrapper: extraction, policy, redaction
  checks, stream re-typing), default buffer mode for non-streamed calls;
- ``traceguard-passthrough`` / ``traceguard-buffer``: streamed calls in each mode;
- ``langsmith``: ``langsmith.wrappers.wrap_openai`` with ``LANGSMITH_TRACING=false``, a peer
  wrapper that only observes.

Each answer carries ``reasoning_content`` so thinking extraction (and, when streaming, the early
thinking audit) runs. Reported: p50 and p99 latency per call (non-streamed), time to first chunk
and to last chunk (streamed), the ratio to bare, and the wrapper's own p50 overhead also measured
directly (the guarded end of ``request`` minus the SDK's own step, on a recorded body).

Usage::

    python bench/openai_overhead.py [--calls 500] [--output bench/results/openai_overhead.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ["LANGSMITH_TRACING"] = "false"  # before langsmith is imported: nothing is sent

import openai
from openai.types.chat import ChatCompletion

from traceguard import Guard
from traceguard.integrations.openai import guard_openai
from traceguard.testing import ScriptedAuditor
from traceguard.testing.openai_server import (
    OpenAIServer,
    RecordedRequest,
    ScriptedResponse,
    chat_completion,
    chat_completion_chunks,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "openai_overhead.json"
MESSAGES = [{"role": "user", "content": "Give me a bread recipe."}]
CONTENT = "Mix 500 g flour, 350 g water, 10 g salt and 5 g yeast; knead, rest, bake at 230 C."
THINKING = "The user wants a basic recipe. Nothing risky about bread."
CHUNKS = chat_completion_chunks(content=CONTENT, reasoning_content=THINKING, chunk_size=12)
COMPLETION = chat_completion(CONTENT, reasoning_content=THINKING)


def _responder(request: RecordedRequest) -> ScriptedResponse:
    body = request.json if isinstance(request.json, dict) else {}
    if body.get("stream"):
        return ScriptedResponse.sse(CHUNKS)
    return ScriptedResponse.json(COMPLETION)


def _client(server: OpenAIServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="bench", max_retries=0)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _summary(samples_ms: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(_pct(samples_ms, 0.50), 4),
        "p99_ms": round(_pct(samples_ms, 0.99), 4),
        "mean_ms": round(statistics.fmean(samples_ms), 4),
    }


def _time_plain(client: openai.OpenAI) -> float:
    start = time.perf_counter()
    client.chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]
    return (time.perf_counter() - start) * 1000


def _time_stream(client: openai.OpenAI) -> tuple[float, float]:
    start = time.perf_counter()
    stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    first = None
    for _ in stream:
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    assert first is not None
    return (first - start) * 1000, (end - start) * 1000


def _direct_overhead(client: openai.OpenAI, repeats: int) -> dict[str, float]:
    """The wrapper's own work per answer, without the network: the guarded end of ``request``
    (``_process_response``: read the body, context, traces, audit, policy, hand the SDK the
    audited body, attach the decisions) minus the SDK's own step on the same recorded body."""
    import httpx2
    from openai._models import FinalRequestOptions

    body = json.dumps(COMPLETION).encode()
    options = FinalRequestOptions.construct(
        method="post", url="/chat/completions", json_data={"model": "m", "messages": MESSAGES}
    )
    request = httpx2.Request("POST", "http://bench.invalid/v1/chat/completions")

    def once(process: Callable[..., Any]) -> float:
        response = httpx2.Response(200, content=body, request=request)
        start = time.perf_counter()
        result = process(
            cast_to=ChatCompletion,
            options=options,
            response=response,
            stream=False,
            stream_cls=None,
        )
        elapsed = (time.perf_counter() - start) * 1000
        assert isinstance(result, ChatCompletion)
        return elapsed

    sdk = client._process_response  # the SDK's own step, bound before wrapping
    handle = guard_openai(client, Guard(ScriptedAuditor(rule=lambda trace: 0)))
    guarded = client._process_response
    samples = []
    for _ in range(repeats):
        samples.append(once(guarded) - once(sdk))
    handle.restore()
    return _summary(samples)


def run(calls: int, rounds: int) -> dict[str, Any]:
    """Measure every variant; returns the JSON-ready results."""
    from langsmith.wrappers import wrap_openai

    with OpenAIServer(responder=_responder) as server:
        bare = _client(server)
        ours = _client(server)
        guard_openai(ours, Guard(ScriptedAuditor(rule=lambda trace: 0)))
        ours_pass = _client(server)
        guard_openai(
            ours_pass,
            Guard(ScriptedAuditor(rule=lambda trace: 0)),
            stream_mode="passthrough",
        )
        peer = wrap_openai(_client(server))
        plain: dict[str, openai.OpenAI] = {"bare": bare, "traceguard": ours, "langsmith": peer}
        streaming: dict[str, openai.OpenAI] = {
            "bare": bare,
            "traceguard-passthrough": ours_pass,
            "traceguard-buffer": ours,
            "langsmith": peer,
        }
        for client in {id(c): c for c in [*plain.values(), *streaming.values()]}.values():
            for _ in range(20):  # warm-up: connections, lazy imports, pydantic caches
                _time_plain(client)
                _time_stream(client)

        plain_ms: dict[str, list[float]] = {name: [] for name in plain}
        ttft_ms: dict[str, list[float]] = {name: [] for name in streaming}
        total_ms: dict[str, list[float]] = {name: [] for name in streaming}
        per_round = max(1, calls // rounds)
        for _ in range(rounds):
            for name, client in plain.items():
                plain_ms[name].extend(_time_plain(client) for _ in range(per_round))
            for name, client in streaming.items():
                for _ in range(per_round):
                    first, total = _time_stream(client)
                    ttft_ms[name].append(first)
                    total_ms[name].append(total)
        direct = _direct_overhead(_client(server), repeats=max(1000, calls * 4))

    def table(samples: dict[str, list[float]]) -> dict[str, Any]:
        base = _pct(samples["bare"], 0.5)
        rows: dict[str, Any] = {}
        for name, values in samples.items():
            row: dict[str, Any] = _summary(values)
            row["ratio_p50_vs_bare"] = round(_pct(values, 0.5) / base, 3)
            row["overhead_p50_ms"] = round(_pct(values, 0.5) - base, 4)
            rows[name] = row
        return rows

    return {
        "benchmark": "openai_overhead",
        "calls_per_variant": per_round * rounds,
        "rounds": rounds,
        "auditor": "ScriptedAuditor(rule=0) (instant)",
        "server": "in-process loopback OpenAIServer, immediate answers",
        "payload": {
            "content_chars": len(CONTENT),
            "reasoning_chars": len(THINKING),
            "stream_chunks": len(CHUNKS),
        },
        "non_streaming": table(plain_ms),
        "streaming_time_to_first_chunk": table(ttft_ms),
        "streaming_total": table(total_ms),
        "wrapper_direct_overhead": direct,
        "target": "wrapper's own overhead < 1 ms p50",
        "target_met": direct["p50_ms"] < 1.0,
        "environment": {
            "python": platform.python_version(),
            "openai": openai.__version__,
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
        },
    }


def _print(results: dict[str, Any], emit: Callable[[str], None] = print) -> None:
    for section in ("non_streaming", "streaming_time_to_first_chunk", "streaming_total"):
        emit(section)
        for name, row in results[section].items():
            emit(
                f"  {name:<24} p50 {row['p50_ms']:8.3f} ms  p99 {row['p99_ms']:8.3f} ms  "
                f"x{row['ratio_p50_vs_bare']:.3f}  (+{row['overhead_p50_ms']:.3f} ms)"
            )
    direct = results["wrapper_direct_overhead"]
    emit(f"wrapper direct overhead: p50 {direct['p50_ms']:.4f} ms, p99 {direct['p99_ms']:.4f} ms")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=500, help="calls per variant")
    parser.add_argument("--rounds", type=int, default=10, help="interleaving rounds")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    results = run(args.calls, args.rounds)
    _print(results)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
