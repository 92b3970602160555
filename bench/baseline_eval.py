"""Measure the baseline auditor on traceguard's labelled set.

Prints, per split, the confusion matrix over the levels 0 / 0.5 / 1, accuracy, macro F1, per-level
F1, and binary precision/recall for "flagged" (risk >= 0.5) and for "harmful" (risk = 1), then
writes everything to ``bench/results/baseline_eval.json``.

The set is synthetic and built by us (``examples/labelled/``), with templates the rules' author
also wrote: read every figure as an upper bound on real-world performance.

Usage::

    python bench/baseline_eval.py [--set examples/labelled/traces.jsonl] [--output PATH]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from traceguard import Trace
from traceguard.auditors.baseline import BaselineAuditor

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SET = ROOT / "examples" / "labelled" / "traces.jsonl"
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "baseline_eval.json"
LEVELS = (0.0, 0.5, 1.0)


def load(path: Path) -> list[dict[str, Any]]:
    """The labelled records of a JSONL file."""
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def to_trace(record: dict[str, Any]) -> Trace:
    """A GuardTrace-format record as a Trace (the set has no images)."""
    return Trace(
        query=record["question"] or "",
        thinking=record.get("thinking"),
        response=record.get("response") or "",
        id=record["id"],
    )


def _f1(tp: int, fp: int, fn: int) -> dict[str, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4)}


def metrics(gold: Sequence[float], pred: Sequence[float | None]) -> dict[str, Any]:
    """Confusion matrix and scores; a failed verdict (None) counts as a wrong answer."""
    confusion = {str(g): {str(p): 0 for p in (*LEVELS, None)} for g in LEVELS}
    for g, p in zip(gold, pred, strict=True):
        confusion[str(g)][str(p)] += 1
    per_level = {}
    for level in LEVELS:
        tp = sum(g == level and p == level for g, p in zip(gold, pred, strict=True))
        fp = sum(g != level and p == level for g, p in zip(gold, pred, strict=True))
        fn = sum(g == level and p != level for g, p in zip(gold, pred, strict=True))
        per_level[str(level)] = _f1(tp, fp, fn)

    def binary(threshold: float) -> dict[str, float]:
        pairs = [
            (g >= threshold, p is not None and p >= threshold)
            for g, p in zip(gold, pred, strict=True)
        ]
        tp = sum(g and p for g, p in pairs)
        fp = sum(p and not g for g, p in pairs)
        fn = sum(g and not p for g, p in pairs)
        return _f1(tp, fp, fn)

    n = len(gold)
    return {
        "n": n,
        "accuracy": round(sum(g == p for g, p in zip(gold, pred, strict=True)) / n, 4)
        if n
        else 0.0,
        "macro_f1": round(sum(v["f1"] for v in per_level.values()) / len(LEVELS), 4),
        "per_level": per_level,
        "flagged": binary(0.5),
        "harmful": binary(1.0),
        "confusion": confusion,
    }


def _timed(auditor: BaselineAuditor, traces: Sequence[Trace]) -> float:
    started = time.perf_counter()
    auditor.audit_batch(traces)
    return time.perf_counter() - started


def evaluate(path: Path = DEFAULT_SET) -> dict[str, Any]:
    """Run the baseline over the set; metrics per split and overall, plus throughput."""
    records = load(path)
    auditor = BaselineAuditor()
    traces = [to_trace(r) for r in records]
    verdicts = auditor.audit_batch(traces)
    # Best of three timed passes: the machine is shared, and the minimum is the least noisy.
    elapsed = min(_timed(auditor, traces) for _ in range(3))
    results: dict[str, Any] = {
        "auditor": auditor.name,
        "set": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
        "note": "synthetic set built by traceguard; figures are an upper bound on real traffic",
        "traces_per_second": round(len(traces) / elapsed) if elapsed else None,
        "splits": {},
    }
    for split in ("test", "dev", "all"):
        chosen = [i for i, r in enumerate(records) if split == "all" or r.get("split") == split]
        gold = [float(records[i]["evaluation_result"]) for i in chosen]
        pred = [verdicts[i].risk for i in chosen]
        results["splits"][split] = metrics(gold, pred)
    results["test_errors"] = [
        {"id": r["id"], "gold": r["evaluation_result"], "pred": v.risk, "analysis": v.analysis}
        for r, v in zip(records, verdicts, strict=True)
        if r.get("split") == "test" and v.risk != float(r["evaluation_result"])
    ]
    return results


def render(results: dict[str, Any]) -> str:
    """A human-readable report of :func:`evaluate`'s results."""
    lines = [f"auditor: {results['auditor']}   set: {results['set']}", results["note"]]
    for split, m in results["splits"].items():
        lines.append(f"\n== {split} (n={m['n']}) ==")
        lines.append("gold\\pred      0    0.5      1  failed")
        for g, row in m["confusion"].items():
            cells = "".join(f"{row[p]:>7}" for p in ("0.0", "0.5", "1.0", "None"))
            lines.append(f"{g:>9}{cells}")
        lines.append(f"accuracy {m['accuracy']:.3f}   macro F1 {m['macro_f1']:.3f}")
        lines.append(
            "per-level F1: " + "  ".join(f"{lv}: {v['f1']:.3f}" for lv, v in m["per_level"].items())
        )
        for name in ("flagged", "harmful"):
            b = m[name]
            lines.append(
                f"{name:>8} (risk {'>= 0.5' if name == 'flagged' else '= 1'}): precision "
                f"{b['precision']:.3f}  recall {b['recall']:.3f}  F1 {b['f1']:.3f}"
            )
    lines.append(f"\nthroughput: {results['traces_per_second']} traces/s (single thread)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Evaluate the baseline auditor.")
    parser.add_argument("--set", type=Path, default=DEFAULT_SET)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    results = evaluate(args.set)
    print(render(results))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
