"""GuardTrace score mode vs full mode on the local (transformers) backend, time per trace.

Full mode generates the analysis and then the judgment (``max_new_tokens`` decoding steps after
one prefill); score mode reads the judgment's token probabilities right after the judgment key
(a few prefills, no decoding). Both arms audit the same eight traces through
``GuardTraceAuditor.audit_batch`` on the same backend and prompt. Full mode is made to generate its
whole budget (end of sequence masked by a forward hook, here only), as a real auditor writes a
long analysis.

The model is a tiny random Qwen2.5-VL checkpoint: its decoding steps are almost free next to its
prefill, so the measured ratio UNDERSTATES the real one. The script also prints the ratio projected
for GuardTrace-VL-3B on this kind of CPU from published per-token figures (bf16, 2 threads: ~8 s
prefill for a ~960-token prompt with one image, 0.16 s per generated token).

Usage::

    python bench/local_score_vs_full.py [--budgets 64 256] [--repeats 2]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from traceguard._images import ImageRef
from traceguard._trace import Trace
from traceguard.auditors.guardtrace import GuardTraceAuditor
from traceguard.backends.transformers import TransformersBackend
from traceguard.testing.tiny_qwen import build_tiny_qwen25vl

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "local_score_vs_full.json"
# Real GuardTrace-VL-3B size on this CPU kind (bf16, 2 threads), from the reference measurements.
REAL_PREFILL_S = 8.0
REAL_DECODE_S_PER_TOKEN = 0.16
TYPICAL_ANALYSIS_TOKENS = 400


def _png(width: int, height: int, shade: int) -> ImageRef:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (shade, 90, 200)).save(buffer, format="PNG")
    return ImageRef.from_bytes(buffer.getvalue())


def traces() -> list[Trace]:
    """Eight traces of similar length, each with one small image."""
    sizes = [(64, 64), (120, 50), (90, 90), (40, 90), (200, 200), (64, 64), (300, 120), (33, 140)]
    return [
        Trace(
            query=f"Question {i}: what household chemicals should never be mixed?",
            thinking="Safety question; list the dangerous combinations and why. " * 3,
            response="Never mix bleach with ammonia or with acids; ventilate the room. " * 2,
            images=(_png(*size, shade=25 * i),),
        )
        for i, size in enumerate(sizes)
    ]


@contextmanager
def no_early_stop(backend: TransformersBackend) -> Iterator[None]:
    """Mask end-of-sequence so full mode decodes its whole budget (benchmark only)."""
    tokenizer = backend.processor.tokenizer
    stop_ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]

    def mask(module: Any, args: Any, output: Any) -> Any:
        output.logits[:, -1, stop_ids] = -1e9
        return output

    handle = backend.model.register_forward_hook(mask)
    try:
        yield
    finally:
        handle.remove()


def _per_trace_ms(auditor: GuardTraceAuditor, batch: list[Trace], repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        verdicts = auditor.audit_batch(batch)
        runs.append(time.perf_counter() - started)
        # Random weights emit noise: unparseable (full) or low-mass (score) verdicts are expected;
        # an auditor error would mean the benchmark measured a failure path.
        if any(v.status.value == "auditor_error" for v in verdicts):
            raise RuntimeError(f"backend failed: {[v.error for v in verdicts]}")
    return statistics.median(runs) / len(batch) * 1000


def projected_ratio(budget: int, score_requests: int) -> float:
    """Full / score time for the real 3B model: prefills and decode steps at published speeds."""
    full = REAL_PREFILL_S + budget * REAL_DECODE_S_PER_TOKEN
    score = score_requests * REAL_PREFILL_S
    return full / score


def run(budgets: list[int], repeats: int) -> dict[str, Any]:
    """Measure score mode and full mode at each budget; return the result record."""
    batch = traces()
    with tempfile.TemporaryDirectory() as folder:
        path = build_tiny_qwen25vl(Path(folder) / "tiny")
        backend = TransformersBackend(path, batch_size=8)
        backend.load()
        score = GuardTraceAuditor(backend, mode="score")
        score.audit_batch(batch[:2])  # warm-up
        score_ms = _per_trace_ms(score, batch, repeats)
        requests = [v.details.get("score_requests", 1) for v in score.audit_batch(batch)]
        full_rows: list[dict[str, Any]] = []
        with no_early_stop(backend):
            for budget in budgets:
                full = GuardTraceAuditor(backend, max_new_tokens=budget)
                full.audit_batch(batch[:2])  # warm-up
                full_ms = _per_trace_ms(full, batch, repeats)
                full_rows.append(
                    {
                        "max_new_tokens": budget,
                        "full_ms_per_trace": round(full_ms, 2),
                        "measured_ratio": round(full_ms / score_ms, 2),
                    }
                )
        backend.close()
    mean_requests = statistics.mean(requests)
    for row in full_rows:
        budget = row["max_new_tokens"]
        # Score mode re-prefills the prompt for each branch it follows ("", "0", "0."): one
        # prefill for a confident "1", up to three for a "0" that might become "0.5".
        row["projected_real_ratio_1_request"] = round(projected_ratio(budget, 1), 2)
        row["projected_real_ratio_3_requests"] = round(projected_ratio(budget, 3), 2)
    return {
        "benchmark": "local_score_vs_full",
        "model": "tiny random Qwen2.5-VL (traceguard.testing.tiny_qwen)",
        "traces": len(batch),
        "repeats": repeats,
        "score_ms_per_trace": round(score_ms, 2),
        "score_requests_per_trace_tiny": mean_requests,
        "full": full_rows,
        "projection_basis": {
            "prefill_s": REAL_PREFILL_S,
            "decode_s_per_token": REAL_DECODE_S_PER_TOKEN,
            "typical_analysis_tokens": TYPICAL_ANALYSIS_TOKENS,
            "projected_real_ratio_typical_1_request": round(
                projected_ratio(TYPICAL_ANALYSIS_TOKENS, 1), 2
            ),
        },
        "note": (
            "The tiny model's decode steps are nearly free next to its prefill, so the measured "
            "ratio understates the real one; see the projected columns."
        ),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print a table and write the JSON record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    record = run(args.budgets, args.repeats)
    print(
        f"{record['traces']} traces; score mode: {record['score_ms_per_trace']:.1f} ms/trace "
        f"({record['score_requests_per_trace_tiny']:.2f} prefills per trace)"
    )
    header = f"{'full budget':>12}{'full ms/trace':>15}{'ratio (tiny)':>14}"
    header += f"{'real, 1 prefill':>17}{'real, 3 prefills':>18}"
    print(header)
    for row in record["full"]:
        print(
            f"{row['max_new_tokens']:>12}{row['full_ms_per_trace']:>15.1f}"
            f"{row['measured_ratio']:>13.2f}x{row['projected_real_ratio_1_request']:>16.2f}x"
            f"{row['projected_real_ratio_3_requests']:>17.2f}x"
        )
    basis = record["projection_basis"]
    equivalent = basis["prefill_s"] / basis["decode_s_per_token"]
    print(
        f"note: the tiny model understates the ratio. Real GuardTrace-VL-3B here: "
        f"~{basis['prefill_s']:.0f} s prefill ~ {equivalent:.0f} tokens of decoding at "
        f"{basis['decode_s_per_token']} s/token; a typical "
        f"{basis['typical_analysis_tokens']}-token analysis projects to "
        f"{basis['projected_real_ratio_typical_1_request']:.1f}x (one score prefill)."
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
