"""The ``traceguard`` argument parser: one function per subcommand, one per option group.

To add a subcommand, write its ``_<name>_parser(commands)`` here and its handler in
:mod:`traceguard.cli`. Options that describe the guard (auditor, backend, policy, images) map
onto :class:`~traceguard.config.GuardConfig` in :mod:`traceguard._cli_config`; their argparse
defaults are None so that a flag given can be told from one left out (the defaults live in the
help text and in the configuration model).
"""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from traceguard._exceptions import ConfigurationError
from traceguard._version import __version__

__all__ = ["AUDITOR_KINDS", "FORMATS", "build_parser"]

FORMATS = ("auto", "openai", "openai-batch", "sharegpt", "guardtrace", "langchain")
AUDITOR_KINDS = ("guardtrace", "llavaguard", "safeguard", "holisafe", "baseline")


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
    _audit_parser(commands)
    _eval_parser(commands)
    _report_parser(commands)
    from traceguard.review._cli import add_parser as add_review_parser

    add_review_parser(commands, formatter_class=_DefaultsFormatter)
    from traceguard._cli_serve import add_parser as add_serve_parser

    add_serve_parser(commands, formatter_class=_DefaultsFormatter)
    return parser


def _audit_parser(commands: Any) -> argparse.ArgumentParser:
    audit: argparse.ArgumentParser = commands.add_parser(
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
    audit.add_argument(
        "--review-queue",
        metavar="SQLITE",
        help="file escalations in this review queue, with their log file and line, for "
        "`traceguard review` (overrides the configuration's review section)",
    )
    add_guard_options(audit, sinks=True)
    add_input_options(audit)
    add_run_options(audit)
    return audit


def _eval_parser(commands: Any) -> argparse.ArgumentParser:
    evaluate: argparse.ArgumentParser = commands.add_parser(
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
    add_guard_options(evaluate, sinks=False)
    add_input_options(evaluate)
    add_run_options(evaluate)
    return evaluate


def _report_parser(commands: Any) -> argparse.ArgumentParser:
    report: argparse.ArgumentParser = commands.add_parser(
        "report", help="render the HTML report of a verdicts file"
    )
    report.add_argument("verdicts")
    report.add_argument("--out", required=True, help="HTML file to write")
    report.add_argument("--image-root", help="folder thumbnails may be read from")
    return report


def add_guard_options(parser: argparse.ArgumentParser, *, sinks: bool) -> None:
    """What audits: a configuration file, or an auditor described by flags."""
    config = parser.add_argument_group("guard configuration")
    uses = "auditor, policy, images, sinks and review queue" if sinks else "auditor, policy, images"
    config.add_argument(
        "--config",
        metavar="GUARD_YAML",
        help=f"guard configuration file (YAML, TOML or JSON): its {uses} are used; --policy, "
        "--image-root and --allow-remote-images override it, the auditor flags below conflict "
        "with it",
    )
    group = parser.add_argument_group(
        "auditor (without --config; default: the embedded rule baseline)"
    )
    group.add_argument(
        "--auditor",
        choices=AUDITOR_KINDS,
        help="which auditor (default: guardtrace with --model or --auditor-url, else baseline); "
        "staged combinations need --config",
    )
    group.add_argument(
        "--auditor-url",
        action="append",
        metavar="URL",
        help="OpenAI-compatible server serving the auditor; repeat for failover endpoints",
    )
    group.add_argument("--auditor-model", help="model name on that server")
    group.add_argument(
        "--api-key-env",
        help="environment variable holding the server's API key "
        "(default: TRACEGUARD_AUDITOR_API_KEY)",
    )
    group.add_argument("--model", help="local checkpoint folder or hub id (needs [local])")
    group.add_argument(
        "--mode",
        choices=("full", "score"),
        help="guardtrace only. full: the auditor writes its analysis and judgment; score: one "
        "forward pass reads the probability of each risk level (default: full)",
    )
    group.add_argument(
        "--prompts",
        metavar="PATH",
        help="guardtrace only. Your copy of the GuardTrace-VL repository: audit with the prompts "
        "the model was trained on (default: traceguard's rewrite, unmeasured on real weights)",
    )
    group.add_argument(
        "--timeout",
        type=float,
        help="deadline of each served auditor call in seconds, from connecting to the last byte "
        "of the answer, retries included; a server trickling its answer cannot stretch it "
        "(default: 120.0)",
    )


def add_input_options(parser: argparse.ArgumentParser) -> None:
    """Where the logs and their images come from."""
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument(
        "--format",
        choices=FORMATS,
        default="auto",
        help="input log format (auto: detected per file)",
    )
    inputs.add_argument("--batch-output", help="Batch API output file (default: found by name)")
    inputs.add_argument(
        "--image-root",
        help="folder image paths resolve under (default: the configuration's images.root, "
        "else the folder holding the inputs)",
    )
    inputs.add_argument(
        "--allow-remote-images",
        action="store_true",
        help="fetch http(s) image URLs found in the logs (off: such images are invalid input)",
    )


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """How the run goes: policy, concurrency, cache, resume, progress."""
    run = parser.add_argument_group("run")
    run.add_argument("--policy", help="policy file (YAML, TOML or JSON)")
    run.add_argument(
        "--concurrency",
        type=int,
        help="auditor calls in flight (default: 1 for a local model, 16 for a served one, else 4)",
    )
    run.add_argument(
        "--batch-size",
        type=int,
        help="traces per auditor call (default: 8 for a local model, else 1)",
    )
    run.add_argument("--cache", help="verdict cache (SQLite; default: next to the output)")
    run.add_argument(
        "--no-cache",
        action="store_true",
        help="neither read nor write the verdict cache: audit every trace again",
    )
    run.add_argument("--resume", action="store_true", help="continue an interrupted run")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    add_engine_options(parser)


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """Where the auditing runs: this process, or a Ray cluster (needs [ray])."""
    engine = parser.add_argument_group("engine")
    engine.add_argument(
        "--engine",
        choices=("inprocess", "ray"),
        default="inprocess",
        help="inprocess: audit in this process; ray: on Ray Data across machines and GPUs, "
        "--concurrency and --batch-size per actor (needs [ray])",
    )
    engine.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="Ray cluster to join (host:6379 from `ray start --head`, or auto); default: a "
        "local Ray started for the run",
    )
    engine.add_argument(
        "--ray-actors", type=int, default=2, help="auditor actors (model replicas or clients)"
    )
    engine.add_argument(
        "--ray-gpus", type=float, default=0.0, help="GPUs per actor (1 for a local model on GPUs)"
    )
    engine.add_argument(
        "--ray-block-rows",
        type=int,
        default=512,
        help="traces per block (the unit an actor audits and the run commits)",
    )
