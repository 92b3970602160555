"""The ``traceguard`` command line: ``audit`` chat logs, ``eval`` on labelled data, ``report``.

``audit`` and ``eval`` build their auditor from a :class:`~traceguard.config.GuardConfig`: the
one in ``--config guard.yaml``, or one made from the auditor flags (:mod:`traceguard._cli_config`).
The parser lives in :mod:`traceguard._cli_args`; each subcommand is one handler here.

Exit codes (``traceguard audit``; ``eval`` and ``report`` use 0 and 2 only):

====  ==========================================================================================
0     the run completed (without ``--fail-on``: whatever the verdicts; failures are in the file)
1     ``--fail-on``: some trace was graded at or above the threshold
2     usage or configuration error (bad option, missing file, unreadable policy, resume refused)
3     traces were sent to the auditor and not one got a verdict (a dead ``--auditor-url``, a
      missing ``--model`` folder), with or without ``--fail-on``; or ``--fail-on``: no trace
      over the threshold, but some could not be audited — an audit error is not a pass
4     part of the input could not be split into records (a JSON array cut short, or damaged
      where no element boundary can be found): records there are lost. Each such region is an
      ``invalid_input`` record of error type ``UnreadableInput`` saying which lines and how many
      bytes; every record that could be delimited was audited. Takes precedence over 1 and 3
5     a file could not be written or read (disk full, quota exceeded, permissions, I/O error).
      The verdicts already written are whole lines: free space and run the same command again
      with ``--resume``
130   interrupted (Ctrl-C); continue with ``--resume``
====  ==========================================================================================
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from traceguard._cli_args import build_parser
from traceguard._exceptions import ConfigurationError, TraceguardError

if TYPE_CHECKING:
    from traceguard._cli_config import CliGuard
    from traceguard.audit.summary import AuditSummary
    from traceguard.config import GuardConfig

__all__ = [
    "EXIT_AUDIT_ERRORS",
    "EXIT_FAIL_ON",
    "EXIT_INPUT_LOST",
    "EXIT_IO_ERROR",
    "EXIT_OK",
    "EXIT_USAGE",
    "build_parser",
    "main",
]

EXIT_OK = 0
EXIT_FAIL_ON = 1
EXIT_USAGE = 2
EXIT_AUDIT_ERRORS = 3
EXIT_INPUT_LOST = 4
EXIT_IO_ERROR = 5
EXIT_INTERRUPTED = 130


def _run(args: argparse.Namespace, out: Path, *, report: Path | None, sinks: bool) -> AuditSummary:
    """Audit ``args.inputs`` into ``out`` with the guard the flags (or ``--config``) describe."""
    from traceguard._cli_config import guard_from_args
    from traceguard.audit.runner import AuditOptions, arun_audit

    guard = guard_from_args(args)
    cache: Path | None = None
    if not args.no_cache:
        cache = Path(args.cache) if args.cache else out.with_name(out.name + ".cache.sqlite")
    if args.engine == "ray":
        if sinks and (guard.config.sinks or guard.config.review is not None):
            raise ConfigurationError(
                "--engine ray does not hand decisions to the configuration's sinks or review "
                "queue (the output file holds every one); use the in-process engine for them"
            )
        return _run_ray(args, out, report=report, config=guard.config, sizes=guard, cache=cache)
    auditor = guard.config.build_auditor()
    try:
        built_sinks = guard.config.build_sinks() if sinks else []
    except BaseException:
        auditor.close()
        raise
    options = AuditOptions(
        auditor=auditor,
        policy=guard.config.policy,
        format=args.format,
        image_root=args.image_root,
        batch_output=args.batch_output,
        concurrency=guard.concurrency,
        batch_size=guard.batch_size,
        resume=args.resume,
        cache=cache,
        report=report,
        progress=not args.quiet,
        sinks=built_sinks,
    )

    async def go() -> AuditSummary:
        try:
            return await arun_audit(args.inputs, out, options)
        finally:
            await auditor.aclose()

    # The program's top level: the one place an event loop is started.
    return asyncio.run(go())


def _run_ray(
    args: argparse.Namespace,
    out: Path,
    *,
    report: Path | None,
    config: GuardConfig,
    sizes: CliGuard,
    cache: Path | None,
) -> AuditSummary:
    """``--engine ray``: the same audit on Ray Data (:mod:`traceguard.audit.ray_engine`)."""
    from traceguard.audit.ray_engine import RayOptions, run_audit_ray
    from traceguard.audit.runner import AuditOptions

    options = AuditOptions(
        format=args.format,
        image_root=args.image_root,
        batch_output=args.batch_output,
        concurrency=sizes.concurrency,
        batch_size=sizes.batch_size,
        resume=args.resume,
        cache=cache,
        report=report,
        progress=not args.quiet,
    )
    ray_options = RayOptions(
        address=args.ray_address,
        actors=args.ray_actors,
        gpus_per_actor=args.ray_gpus,
        rows_per_block=args.ray_block_rows,
    )
    return run_audit_ray(args.inputs, out, config, options, ray_options)


def _audit(args: argparse.Namespace) -> int:
    report = Path(args.report) if args.report else None
    summary = _run(args, Path(args.out), report=report, sinks=True)
    print(summary.table())
    if summary.sink_errors:
        print(
            f"traceguard: {summary.sink_errors} decision record(s) could not be delivered to the "
            f"configured sinks (all are in {args.out}; see the log above)",
            file=sys.stderr,
        )
    code: int = summary.exit_code(args.fail_on)
    if summary.unreadable:
        print(
            f"traceguard: input not fully read: {summary.unreadable} region(s) could not be split "
            f"into records and were skipped (records there are lost); first: "
            f"{summary.first_unreadable}",
            file=sys.stderr,
        )
    if summary.nothing_audited:
        print(
            "traceguard: no trace could be audited: check the auditor "
            f"({summary.first_auditor_error})",
            file=sys.stderr,
        )
    if args.fail_on and summary.threshold_hit(args.fail_on):
        also = f"; {summary.failed} traces could not be audited" if summary.failed else ""
        print(f"traceguard: traces at or above {args.fail_on} found{also}", file=sys.stderr)
    elif code == EXIT_AUDIT_ERRORS and not summary.nothing_audited:
        print(
            f"traceguard: {summary.failed} traces could not be audited (--fail-on)",
            file=sys.stderr,
        )
    return code


def _eval(args: argparse.Namespace) -> int:
    from traceguard.audit._output import existing_records
    from traceguard.audit.evaluate import evaluate_records, input_splits
    from traceguard.audit.runner import open_readers

    splits = None
    if args.split is not None:
        splits = input_splits(
            open_readers(
                args.inputs,
                format=args.format,
                image_root=args.image_root,
                batch_output=args.batch_output,
            )
        )
    with tempfile.TemporaryDirectory(prefix="traceguard-eval-") as scratch:
        verdicts = Path(args.verdicts) if args.verdicts else Path(scratch) / "verdicts.jsonl"
        summary = _run(args, verdicts, report=None, sinks=False)
        metrics = evaluate_records(existing_records(verdicts), split=args.split, splits=splits)
    if not metrics.total:
        if args.split is not None:
            raise ConfigurationError(
                f"no labelled traces in split {args.split!r} ({metrics.other_split} records of "
                f"other splits and {metrics.no_split} without a 'split' field were excluded)"
            )
        raise ConfigurationError(
            "no labelled traces in the input (expected evaluation_result, label or expected_risk)"
        )
    print(f"auditor: {', '.join(sorted(summary.auditors))}")
    print(metrics.table())
    if args.out:
        result = {"auditor": sorted(summary.auditors), **metrics.to_dict()}
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    from traceguard.audit.report import write_report

    verdicts = Path(args.verdicts)
    if not verdicts.is_file():
        raise ConfigurationError(f"verdicts file not found: {verdicts}")
    root = Path(args.image_root) if args.image_root else None
    print(write_report(verdicts, Path(args.out), image_root=root))
    return EXIT_OK


def _io_problem(exc: OSError) -> str:
    where = f" {exc.filename}" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return (
            f"disk full: cannot write{where} ({exc.strerror}). The verdicts written so far are "
            "whole lines: free space, then run the same command with --resume"
        )
    return f"cannot access{where}: {exc.strerror or exc}"


def _review(args: argparse.Namespace) -> int:
    from traceguard.review._cli import run

    return run(args)


def _serve(args: argparse.Namespace) -> int:
    from traceguard._cli_serve import run

    return run(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module docstring)."""
    try:
        args = build_parser().parse_args(argv)
        handler = {
            "audit": _audit,
            "eval": _eval,
            "report": _report,
            "review": _review,
            "serve": _serve,
        }[args.command]
        return handler(args)
    except ConfigurationError as exc:
        print(f"traceguard: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TraceguardError as exc:
        print(f"traceguard: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"traceguard: error: {_io_problem(exc)}", file=sys.stderr)
        return EXIT_IO_ERROR
    except KeyboardInterrupt:
        print("\ntraceguard: interrupted; run again with --resume to continue", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
