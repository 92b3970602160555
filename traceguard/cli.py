"""The ``traceguard`` command line: ``audit`` chat logs, ``eval`` on labelled data, ``report``.

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
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from traceguard._auditor import Auditor
from traceguard._exceptions import ConfigurationError, TraceguardError
from traceguard._images import ImageAccess
from traceguard._version import __version__

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

_FORMATS = ("auto", "openai", "openai-batch", "sharegpt", "guardtrace", "langchain")


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors raise instead of exiting, so ``main`` returns the code."""

    def error(self, message: str) -> NoReturn:
        raise ConfigurationError(message)


class _DefaultsFormatter(argparse.HelpFormatter):
    """Help that shows each option's default, unless it is unset (None/False) or the help text
    already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help
        if (
            help_text is not None
            and "default" not in help_text
            and action.default not in (None, False, argparse.SUPPRESS)
            and action.option_strings
        ):
            help_text += " (default: %(default)s)"
        return help_text


def _auditor_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("auditor (default: the embedded rule baseline)")
    group.add_argument("--auditor-url", help="OpenAI-compatible server serving the auditor")
    group.add_argument("--auditor-model", help="model name on that server")
    group.add_argument("--api-key-env", help="environment variable holding the server's API key")
    group.add_argument("--model", help="local GuardTrace-VL checkpoint folder (needs [local])")
    group.add_argument(
        "--mode",
        choices=("full", "score"),
        default="full",
        help="full: the auditor writes its analysis and judgment; score: one forward pass reads "
        "the probability of each risk level (needs a GuardTrace model)",
    )
    group.add_argument("--timeout", type=float, default=120.0, help="seconds per auditor call")
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument(
        "--format",
        choices=_FORMATS,
        default="auto",
        help="input log format (auto: detected per file)",
    )
    inputs.add_argument("--batch-output", help="Batch API output file (default: found by name)")
    inputs.add_argument("--image-root", help="folder image paths resolve under")
    inputs.add_argument(
        "--allow-remote-images",
        action="store_true",
        help="fetch http(s) image URLs found in the logs (off: such images are invalid input)",
    )
    run = parser.add_argument_group("run")
    run.add_argument("--policy", help="policy file (YAML or TOML)")
    run.add_argument(
        "--concurrency",
        type=int,
        help="auditor calls in flight (default: 1 with --model, 16 with --auditor-url, else 4)",
    )
    run.add_argument(
        "--batch-size",
        type=int,
        help="traces per auditor call (default: 8 with --model, else 1)",
    )
    run.add_argument("--cache", help="verdict cache (SQLite; default: next to the output)")
    run.add_argument(
        "--no-cache",
        action="store_true",
        help="neither read nor write the verdict cache: audit every trace again",
    )
    run.add_argument("--resume", action="store_true", help="continue an interrupted run")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress output")


def build_parser() -> argparse.ArgumentParser:
    """The ``traceguard`` argument parser."""
    parser = _Parser(
        prog="traceguard",
        description="Audit the reasoning traces and images of multimodal agents.",
        epilog="Exit codes: 0 ok, 1 --fail-on threshold hit, 2 usage error, "
        "3 no trace could be audited (auditor failing), or --fail-on with traces that could not "
        "be audited, 4 part of the input could not be read (records lost), 5 a file could not be "
        "written or read (disk full: free space, then --resume), 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"traceguard {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    audit = commands.add_parser(
        "audit",
        help="audit chat logs, one verdict line per trace",
        formatter_class=_DefaultsFormatter,
    )
    audit.add_argument("inputs", nargs="+", help="log files or folders")
    audit.add_argument("--out", required=True, help="verdicts JSONL to write")
    audit.add_argument("--report", help="also write a self-contained HTML report")
    audit.add_argument(
        "--fail-on",
        choices=("potentially_harmful", "harmful"),
        help="exit 1 if some trace is graded at or above this level, 3 if none is but some "
        "could not be audited (default: exit 0 whatever the verdicts)",
    )
    _auditor_options(audit)

    evaluate = commands.add_parser(
        "eval",
        help="score an auditor on labelled data",
        formatter_class=_DefaultsFormatter,
    )
    evaluate.add_argument("inputs", nargs="+", help="labelled log files or folders")
    evaluate.add_argument(
        "--split",
        metavar="NAME",
        help="score only the records whose 'split' field equals NAME (e.g. test); records "
        "without the field are excluded (default: every record)",
    )
    evaluate.add_argument("--out", help="write the metrics as JSON here")
    evaluate.add_argument("--verdicts", help="keep the verdicts JSONL here (default: temporary)")
    _auditor_options(evaluate)

    report = commands.add_parser("report", help="render the HTML report of a verdicts file")
    report.add_argument("verdicts")
    report.add_argument("--out", required=True, help="HTML file to write")
    report.add_argument("--image-root", help="folder thumbnails may be read from")
    return parser


def _image_root(args: argparse.Namespace) -> Path:
    from traceguard.audit.readers import expand_inputs

    if args.image_root:
        return Path(args.image_root).resolve()
    files = expand_inputs([Path(p) for p in args.inputs])
    return Path(os.path.commonpath([str(f.resolve().parent) for f in files]))


def _make_auditor(args: argparse.Namespace, access: ImageAccess) -> Auditor:
    if args.auditor_url and args.model:
        raise ConfigurationError("give either --auditor-url or --model, not both")
    if args.auditor_url:
        if not args.auditor_model:
            raise ConfigurationError("--auditor-url needs --auditor-model")
        from traceguard.auditors.guardtrace import GuardTraceAuditor

        backend_options: dict[str, Any] = {
            "timeout": args.timeout,
            "max_concurrency": args.concurrency * args.batch_size,
        }
        if args.api_key_env:
            backend_options["api_key_env"] = args.api_key_env
        return GuardTraceAuditor.served(
            args.auditor_url,
            args.auditor_model,
            mode=args.mode,
            image_access=access,
            **backend_options,
        )
    if args.model:
        from traceguard.auditors.guardtrace import GuardTraceAuditor

        return GuardTraceAuditor.local(args.model, mode=args.mode, image_access=access)
    if args.mode != "full":
        raise ConfigurationError("--mode score needs a GuardTrace model (--model or --auditor-url)")
    from traceguard.auditors.baseline import BaselineAuditor

    return BaselineAuditor(image_access=access)


def _defaults(args: argparse.Namespace) -> None:
    """Concurrency and batch size suited to the auditor kind, unless given."""
    if args.batch_size is None:
        args.batch_size = 8 if args.model else 1
    if args.concurrency is None:
        args.concurrency = 1 if args.model else 16 if args.auditor_url else 4
    if args.concurrency < 1 or args.batch_size < 1:
        raise ConfigurationError("--concurrency and --batch-size must be at least 1")


def _run(args: argparse.Namespace, out: Path, *, report: Path | None) -> Any:
    from traceguard._policy import Policy
    from traceguard.audit.runner import arun_audit

    _defaults(args)
    policy = Policy.from_file(args.policy) if args.policy else Policy()
    access = ImageAccess(root=_image_root(args), allow_remote=args.allow_remote_images)
    cache: Path | None = None
    if not args.no_cache:
        cache = Path(args.cache) if args.cache else out.with_name(out.name + ".cache.sqlite")
    auditor = _make_auditor(args, access)

    async def go() -> Any:
        try:
            return await arun_audit(
                args.inputs,
                out,
                auditor=auditor,
                policy=policy,
                format=args.format,
                image_root=args.image_root,
                batch_output=args.batch_output,
                concurrency=args.concurrency,
                batch_size=args.batch_size,
                resume=args.resume,
                cache=cache,
                report=report,
                progress=not args.quiet,
            )
        finally:
            await auditor.aclose()

    # The program's top level: the one place an event loop is started.
    return asyncio.run(go())


def _audit(args: argparse.Namespace) -> int:
    summary = _run(args, Path(args.out), report=Path(args.report) if args.report else None)
    print(summary.table())
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
        summary = _run(args, verdicts, report=None)
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module docstring)."""
    try:
        args = build_parser().parse_args(argv)
        handler = {"audit": _audit, "eval": _eval, "report": _report}[args.command]
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
