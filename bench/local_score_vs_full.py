"""GuardTrace score mode vs full mode on the local (transformers) backend, time per trace.

Full mode generates the analysis and then the judgment (``max_new_tokens`` decoding steps after
one prefill); score mode reads the judgment's token probabilities right after the judgment key:
it asks for the distributions after "“Judgment”: ", "… 0" and "… 0." in one round, which the
backend answers from ONE prefill of the longest (no decoding). The script counts the prompt rows
the model actually runs (a forward pre-hook) to report prefills per trace. Score mode is measured
twice: on the raw random model, which spreads its mass over junk ("[", "\n", ...) the scorer
then follows for a round or two, and with the model's output at the judgment rewritten (a forward
hook) to digits in the trained format, as GuardTrace-VL writes them. Both arms audit the
same eight traces through ``GuardTraceAuditor.audit_batch`` on the same backend and prompt. Full
mode is made to generate its whole budget (end of sequence masked by a forward hook, here only),
as a real auditor writes a long analysis.

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
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _local_common import no_early_stop

from traceguard import ImageRef, Trace
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


@contextmanager
def count_prefills(backend: TransformersBackend) -> Iterator[list[int]]:
    """Record the prompt rows of each forward call that reads a whole prompt (not a decode step)."""
    rows: list[int] = []

    def count(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[1] > 1:
            rows.append(int(ids.shape[0]))

    handle = backend.model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        yield rows
    finally:
        handle.remove()


@contextmanager
def writes_digits(backend: TransformersBackend) -> Iterator[None]:
    """Make the model write the level digit by digit after the judgment key (benchmark only).

    Every logit row is replaced by a distribution that depends on its input token: after " "
    (the key's last token) "0" or "1", after "0" "." or a newline, after "." "5".
    """
    import torch

    tokenizer = backend.processor.tokenizer

    def token_id(text: str) -> int:
        [single] = tokenizer(text, add_special_tokens=False)["input_ids"]
        return int(single)

    table = {" ": {"0": 0.7, "1": 0.3}, "0": {".": 0.2, "\n": 0.8}, ".": {"5": 1.0}}

    def rewrite(module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> Any:
        ids = kwargs["input_ids"]
        logits = output.logits
        kept = ids[:, ids.shape[1] - logits.shape[1] :]
        for token, probs in table.items():
            row = torch.full((logits.shape[-1],), -1e4)
            for next_token, p in probs.items():
                row[token_id(next_token)] = math.log(p)
            logits[kept == token_id(token)] = row
        return output

    handle = backend.model.register_forward_hook(rewrite, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _score_arm(
    backend: TransformersBackend, auditor: GuardTraceAuditor, batch: list[Trace], repeats: int
) -> dict[str, float]:
    ms = _per_trace_ms(auditor, batch, repeats)
    with count_prefills(backend) as rows:
        verdicts = auditor.audit_batch(batch)
    return {
        "ms_per_trace": round(ms, 2),
        "prefills_per_trace": sum(rows) / len(batch),
        "rounds_per_trace": statistics.mean(v.details.get("score_rounds", 0) for v in verdicts),
        "distributions_per_trace": statistics.mean(
            v.details.get("score_requests", 0) for v in verdicts
        ),
    }


def projected_ratio(budget: int, prefills: float) -> float:
    """Full / score time for the real 3B model: prefills and decode steps at published speeds."""
    full = REAL_PREFILL_S + budget * REAL_DECODE_S_PER_TOKEN
    score = prefills * REAL_PREFILL_S
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
        raw = _score_arm(backend, score, batch, repeats)
        with writes_digits(backend):
            digits = _score_arm(backend, score, batch, repeats)
        score_ms = digits["ms_per_trace"]
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
    for row in full_rows:
        budget = row["max_new_tokens"]
        # The distributions after "", "0" and "0." come from one prefill of the longest prompt.
        # A model that writes the level some other way (" 0", "[") costs one more round; the
        # random tiny model does so now and then, GuardTrace-VL's trained format does not.
        row["projected_real_ratio_1_prefill"] = round(projected_ratio(budget, 1), 2)
        row["measured_ratio_raw_model"] = round(row["full_ms_per_trace"] / raw["ms_per_trace"], 2)
        row["projected_real_ratio_raw_model_prefills"] = round(
            projected_ratio(budget, raw["prefills_per_trace"]), 2
        )
    return {
        "benchmark": "local_score_vs_full",
        "model": "tiny random Qwen2.5-VL (traceguard.testing.tiny_qwen)",
        "traces": len(batch),
        "repeats": repeats,
        "score_ms_per_trace": score_ms,
        "score_format_following": digits,
        "score_raw_random_model": raw,
        "full": full_rows,
        "projection_basis": {
            "prefill_s": REAL_PREFILL_S,
            "decode_s_per_token": REAL_DECODE_S_PER_TOKEN,
            "typical_analysis_tokens": TYPICAL_ANALYSIS_TOKENS,
            "projected_real_ratio_typical_1_prefill": round(
                projected_ratio(TYPICAL_ANALYSIS_TOKENS, 1), 2
            ),
        },
        "note": (
            "The tiny model's decode steps are nearly free next to its prefill, so the measured "
            "ratio understates the real one; see the projected columns. measured_ratio uses the "
            "format-following score arm. Before prefix sharing, score mode ran 3 prefills per "
            "trace in 3 rounds (3.12 on the raw random model)."
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
    print(f"{record['traces']} traces, score mode:")
    for label, arm in (
        ("model writes digits", record["score_format_following"]),
        ("raw random model", record["score_raw_random_model"]),
    ):
        print(
            f"  {label:<20} {arm['ms_per_trace']:7.1f} ms/trace, "
            f"{arm['prefills_per_trace']:.2f} prefills/trace, "
            f"{arm['distributions_per_trace']:.2f} distributions in "
            f"{arm['rounds_per_trace']:.2f} rounds"
        )
    raw_prefills = record["score_raw_random_model"]["prefills_per_trace"]
    header = f"{'full budget':>12}{'full ms/trace':>15}{'ratio (tiny)':>14}"
    header += f"{'real, 1 prefill':>17}{f'real, {raw_prefills:.2f} prefills':>22}"
    print(header)
    for row in record["full"]:
        print(
            f"{row['max_new_tokens']:>12}{row['full_ms_per_trace']:>15.1f}"
            f"{row['measured_ratio']:>13.2f}x{row['projected_real_ratio_1_prefill']:>16.2f}x"
            f"{row['projected_real_ratio_raw_model_prefills']:>21.2f}x"
        )
    basis = record["projection_basis"]
    equivalent = basis["prefill_s"] / basis["decode_s_per_token"]
    print(
        f"note: the tiny model understates the ratio. Real GuardTrace-VL-3B here: "
        f"~{basis['prefill_s']:.0f} s prefill ~ {equivalent:.0f} tokens of decoding at "
        f"{basis['decode_s_per_token']} s/token; a typical "
        f"{basis['typical_analysis_tokens']}-token analysis projects to "
        f"{basis['projected_real_ratio_typical_1_prefill']:.1f}x (one score prefill per trace)."
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
