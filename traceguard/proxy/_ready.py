"""Readiness: can the auditor be reached? A cheap probe, never an audit.

A served backend is reachable when one of its endpoints answers ``GET <url>/models`` with
anything below 500 within two seconds (a 401 still proves a live server; the audit itself will
say if the key is wrong). Every served model of a staged auditor must be reachable. Local
models and the baseline run in this process: they are ready once the process is.
"""

from __future__ import annotations

import asyncio
import os

import httpx

from traceguard._config_auditors import StagedSpec
from traceguard._config_backends import ServedBackendSpec
from traceguard.config import GuardConfig

__all__ = ["auditor_reachable", "served_backends"]

_TIMEOUT_S = 2.0


def served_backends(config: GuardConfig) -> list[ServedBackendSpec]:
    """The served backends of the configured auditor (every stage)."""
    specs = (
        config.auditor.auditor_specs()
        if isinstance(config.auditor, StagedSpec)
        else [config.auditor]
    )
    backends = [getattr(spec, "backend", None) for spec in specs]
    return [backend for backend in backends if isinstance(backend, ServedBackendSpec)]


async def _answers(client: httpx.AsyncClient, spec: ServedBackendSpec) -> bool:
    key = os.environ.get(spec.api_key_env)
    headers = {"authorization": f"Bearer {key}"} if key else {}
    for url in spec.urls:
        try:
            response = await client.get(url.rstrip("/") + "/models", headers=headers)
        except httpx.HTTPError:
            continue
        if response.status_code < 500:
            return True
    return False


async def auditor_reachable(config: GuardConfig) -> bool:
    """True when every served backend has an endpoint that answers (see above)."""
    backends = served_backends(config)
    if not backends:
        return True
    async with httpx.AsyncClient(timeout=_TIMEOUT_S, trust_env=False) as client:
        results = await asyncio.gather(*(_answers(client, spec) for spec in backends))
    return all(results)
