"""From command-line flags to a :class:`~traceguard.config.GuardConfig` and the run's sizes.

Either ``--config guard.yaml`` describes the guard, or the auditor flags do (``--auditor``,
``--model`` / ``--auditor-url``, ...); both end as the same ``GuardConfig``, so the command line
builds its auditor exactly as the library, the proxy and the Ray workers do. With ``--config``,
flags that choose the auditor are refused (two descriptions of one auditor would have to be
merged silently); flags about the run's surroundings (``--policy``, ``--image-root``,
``--allow-remote-images``) override the file.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traceguard._exceptions import ConfigurationError
from traceguard._policy import Policy
from traceguard.config import GuardConfig

__all__ = ["CliGuard", "guard_from_args"]

_AUDITOR_FLAGS = {
    "auditor": "--auditor",
    "auditor_url": "--auditor-url",
    "auditor_model": "--auditor-model",
    "api_key_env": "--api-key-env",
    "model": "--model",
    "mode": "--mode",
    "prompts": "--prompts",
    "timeout": "--timeout",
}
_SERVED_ONLY = ("auditor_model", "api_key_env", "timeout")


@dataclass(frozen=True)
class CliGuard:
    """The guard a command line describes, and how hard to drive it."""

    config: GuardConfig
    concurrency: int
    batch_size: int


def guard_from_args(args: argparse.Namespace) -> CliGuard:
    """The configuration and run sizes of ``audit`` / ``eval``.

    Raises:
        ConfigurationError: conflicting or incomplete flags, or an invalid configuration file.
    """
    given = [flag for name, flag in _AUDITOR_FLAGS.items() if getattr(args, name) is not None]
    if args.config is not None:
        if given:
            raise ConfigurationError(
                f"{', '.join(given)} cannot be combined with --config: the auditor comes from "
                f"{args.config} (edit its auditor section, or drop --config)"
            )
        config = GuardConfig.from_file(args.config)
        concurrency, batch_size = _run_sizes(
            args, local=config.runs_locally(), served=config.is_served()
        )
    else:
        if args.model is not None and args.auditor_url is not None:
            raise ConfigurationError("give either --auditor-url or --model, not both")
        concurrency, batch_size = _run_sizes(
            args, local=args.model is not None, served=args.auditor_url is not None
        )
        auditor = _auditor_from_flags(args, max_concurrency=concurrency * batch_size)
        config = GuardConfig.from_mapping({"auditor": auditor}, source="command line")
    return CliGuard(_with_overrides(config, args), concurrency, batch_size)


def _run_sizes(args: argparse.Namespace, *, local: bool, served: bool) -> tuple[int, int]:
    """Concurrency and batch size suited to the auditor, unless given: a local model batches
    traces in one forward pass, a served one overlaps many requests."""
    batch_size: int = args.batch_size if args.batch_size is not None else (8 if local else 1)
    concurrency: int = (
        args.concurrency if args.concurrency is not None else (1 if local else 16 if served else 4)
    )
    if concurrency < 1 or batch_size < 1:
        raise ConfigurationError("--concurrency and --batch-size must be at least 1")
    return concurrency, batch_size


def _auditor_from_flags(args: argparse.Namespace, *, max_concurrency: int) -> dict[str, Any]:
    """The ``auditor`` section the flags describe."""
    kind = args.auditor or (
        "guardtrace" if args.model is not None or args.auditor_url is not None else "baseline"
    )
    if args.prompts is not None and kind not in ("guardtrace", "baseline"):
        raise ConfigurationError(f"--prompts applies to --auditor guardtrace, not {kind}")
    if args.mode is not None and kind != "guardtrace":
        if args.auditor is None:
            raise ConfigurationError(
                f"--mode {args.mode} needs a GuardTrace model (--model or --auditor-url)"
            )
        raise ConfigurationError(f"--mode applies to --auditor guardtrace, not {kind}")
    if kind == "baseline":
        extra = [f for n, f in _AUDITOR_FLAGS.items() if n != "auditor" and getattr(args, n)]
        if extra:
            raise ConfigurationError(
                f"{', '.join(extra)} do not apply to --auditor baseline (the rule baseline has "
                "no model)"
            )
        return {"kind": "baseline"}
    served_only = [_AUDITOR_FLAGS[n] for n in _SERVED_ONLY if getattr(args, n) is not None]
    if kind == "holisafe":
        if args.auditor_url is not None:
            raise ConfigurationError(
                "--auditor holisafe runs in this process: give --model (a checkpoint), "
                "not --auditor-url"
            )
        if args.model is None:
            raise ConfigurationError("--auditor holisafe needs --model (a checkpoint)")
        if served_only:
            raise ConfigurationError(f"{', '.join(served_only)} apply to --auditor-url only")
        return {"kind": "holisafe", "model": args.model}
    spec: dict[str, Any] = {"kind": kind, "backend": _backend(args, kind, max_concurrency)}
    if args.mode is not None:
        spec["mode"] = args.mode
    if args.prompts is not None:
        spec["prompts"] = str(Path(args.prompts).resolve())
    return spec


def _backend(args: argparse.Namespace, kind: str, max_concurrency: int) -> dict[str, Any]:
    if args.auditor_url is not None:
        if not args.auditor_model:
            raise ConfigurationError("--auditor-url needs --auditor-model")
        backend: dict[str, Any] = {
            "kind": "served",
            "model": args.auditor_model,
            "max_concurrency": max_concurrency,
        }
        urls: list[str] = args.auditor_url
        if len(urls) == 1:
            backend["base_url"] = urls[0]
        else:
            backend["endpoints"] = urls
        if args.timeout is not None:
            backend["timeout"] = args.timeout
        if args.api_key_env is not None:
            backend["api_key_env"] = args.api_key_env
        return backend
    if args.model is not None:
        served_only = [_AUDITOR_FLAGS[n] for n in _SERVED_ONLY if getattr(args, n) is not None]
        if served_only:
            raise ConfigurationError(f"{', '.join(served_only)} apply to --auditor-url only")
        return {"kind": "local", "model": args.model}
    raise ConfigurationError(
        f"--auditor {kind} needs --model (a local checkpoint) or --auditor-url with --auditor-model"
    )


def _with_overrides(config: GuardConfig, args: argparse.Namespace) -> GuardConfig:
    """The flags that override the file: policy, image root, remote images."""
    update: dict[str, Any] = {}
    if args.policy is not None:
        update["policy"] = Policy.from_file(args.policy)
    if args.image_root is not None:
        root: Path | None = Path(args.image_root).resolve()
    else:
        # Offline logs name images relative to themselves: by default allow the inputs' folder.
        root = config.images.root or _inputs_folder(args.inputs)
    images: dict[str, Any] = {"root": root}
    if args.allow_remote_images:
        images["allow_remote"] = True
    update["images"] = config.images.model_copy(update=images)
    review_queue = getattr(args, "review_queue", None)  # audit only
    if review_queue is not None:
        from traceguard.config import ReviewSpec

        current = config.review or ReviewSpec(path=Path(review_queue))
        update["review"] = current.model_copy(update={"path": Path(review_queue).resolve()})
    return config.model_copy(update=update)


def _inputs_folder(inputs: list[str]) -> Path:
    from traceguard.audit.readers import expand_inputs

    files = expand_inputs([Path(p) for p in inputs])
    return Path(os.path.commonpath([str(f.resolve().parent) for f in files]))
