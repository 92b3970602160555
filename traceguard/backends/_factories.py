"""``backends.local(...)`` and ``backends.served(...)``: the two ways to run an auditor's model.

Every model auditor takes a backend (``GuardTraceAuditor(backends.served(url, model), ...)``).
The option sets are written once, here, as typed dictionaries: the auditors' ``local()`` /
``served()`` conveniences take the same keywords (``**backend: Unpack[ServedOptions]``), so a
type checker knows every option, and a misspelt one is a ``TypeError`` from the backend
constructor at run time, never silently dropped. ``tests/backends/test_factories.py`` keeps
these lists equal to the constructors' signatures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:
    from typing import Unpack

    from traceguard.backends.http import OpenAICompatibleBackend
    from traceguard.backends.transformers import TransformersBackend

__all__ = ["LocalOptions", "ServedOptions", "local", "served"]


class LocalOptions(TypedDict, total=False):
    """Options of :class:`~traceguard.backends.TransformersBackend` besides model and name.

    (``name`` is left out so an auditor's ``local()`` can take its own ``name``.)
    """

    device: str
    dtype: str
    attn_implementation: str | None
    min_pixels: int | None
    max_pixels: int | None
    max_input_tokens: int
    batch_size: int
    trust_remote_code: bool
    model_class: str | None
    prefix_cache_tokens: int


class ServedOptions(TypedDict, total=False):
    """Options of :class:`~traceguard.backends.OpenAICompatibleBackend` besides URL, model and
    name."""

    api_key: str | None
    api_key_env: str
    timeout: float
    attempt_timeout: float | None
    connect_timeout: float
    max_retries: int
    max_concurrency: int
    extra_body: Mapping[str, Any] | None
    headers: Mapping[str, str] | None
    backoff_s: float
    max_backoff_s: float
    max_retry_after_s: float
    cooldown_s: float
    retry_read_timeouts: bool
    max_top_logprobs: int


def local(
    model: str | Path, *, name: str | None = None, **options: Unpack[LocalOptions]
) -> TransformersBackend:
    """Run ``model`` (a checkpoint folder or hub id) in this process with transformers.

    Needs the ``local`` extra when the model is first used; see
    :class:`~traceguard.backends.TransformersBackend` for the options; ``name`` labels the
    backend in verdicts (default: the model's folder name or hub id).
    """
    from traceguard.backends.transformers import TransformersBackend

    return TransformersBackend(model, name=name, **options)


def served(
    base_url: str | Sequence[str],
    model: str,
    *,
    name: str | None = None,
    **options: Unpack[ServedOptions],
) -> OpenAICompatibleBackend:
    """Call ``model`` on an OpenAI-compatible server (vLLM, SGLang, a hosted API).

    ``base_url`` may be a list of endpoints in priority order (failover). See
    :class:`~traceguard.backends.OpenAICompatibleBackend` for the options; ``name`` labels the
    backend in verdicts (default ``http:<model>``).
    """
    from traceguard.backends.http import OpenAICompatibleBackend

    return OpenAICompatibleBackend(base_url, model, name=name, **options)
