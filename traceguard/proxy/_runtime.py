"""Everything one proxy process holds: guards, keys, the upstream client, metrics, its state.

Built once from a :class:`~traceguard.config.GuardConfig` whose ``serve`` section is complete
(command-line overrides applied). The auditor and the sinks are built once and shared: a client
key with its own policy gets its own :class:`~traceguard.Guard` over the same auditor and sinks.
Slow sinks are put behind one :class:`~traceguard.BackgroundSink` here, so guards never wrap
them twice.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Iterable, Sequence

from traceguard._config_serve import ServeSpec, is_loopback_host
from traceguard._decision import Decision
from traceguard._exceptions import ConfigurationError
from traceguard._guard import Guard
from traceguard._policy import Policy
from traceguard._sinks import BackgroundSink, Sink
from traceguard._trace import Trace
from traceguard.config import GuardConfig

from ._apis import GuardedApi
from ._errors import ProxyError
from ._keys import Client, KeyRing, TokenBucket, bearer_token
from ._metrics import Metrics
from ._telemetry import span
from ._upstream import Upstream, header_value

__all__ = ["Proxy", "check_exposure"]

logger = logging.getLogger("traceguard.proxy")

_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]", "::1")


def check_exposure(spec: ServeSpec, *, keys: int) -> None:
    """Refuse a proxy anyone could use; warn when keys travel in clear over a network.

    Raises:
        ConfigurationError: no client keys and not ``open``; or ``open`` on a non-loopback
            host.
    """
    loopback = is_loopback_host(spec.host)
    if spec.open and not loopback:
        raise ConfigurationError(
            f"serve.open lets anyone call the upstream without a key; it is allowed on a "
            f"loopback host only, not {spec.host!r}. Give the clients keys (serve.keys)."
        )
    if not spec.open and keys == 0:
        raise ConfigurationError(
            "serve: no client keys. Add serve.keys (or serve.keys_file) with the sha256 of "
            "each client's key, or set serve.open: true to accept keyless requests on loopback."
        )
    if not loopback:
        logger.warning(
            "traceguard serve is listening on %s, beyond this machine: client keys and "
            "completions cross the network in clear unless a TLS terminator sits in front",
            spec.host,
        )


def _rule_pattern(rule: str) -> tuple[str, re.Pattern[str]]:
    method, path = rule.split(" ", 1)
    parts = [("[^/]+" if part == "*" else re.escape(part)) for part in path.strip("/").split("/")]
    return method, re.compile("^/" + "/".join(parts) + "/?$")


class Proxy:
    """The state of one proxy process (see the module documentation)."""

    def __init__(self, config: GuardConfig, spec: ServeSpec) -> None:
        if spec.upstream.url is None:
            raise ConfigurationError(
                "serve: no upstream. Give --upstream URL or serve.upstream.url in the file"
            )
        keys = spec.client_keys()
        check_exposure(spec, keys=len(keys))
        self.spec = spec
        self.config = config
        self.metrics = Metrics()
        self.draining = False
        self._rules = [_rule_pattern(rule) for rule in spec.passthrough]
        sinks: list[Sink] = [
            BackgroundSink(sink) if sink.slow else sink for sink in config.build_sinks()
        ]
        try:
            auditor = config.build_auditor()
            # One schedule (and checkpoint auditor) for every client's guard; the main one owns it.
            self.checkpoints = config.build_checkpoints()
        except BaseException:
            for sink in sinks:
                sink.close()
            raise
        self.guard = self._guard(auditor, config.policy, sinks, owns=True)
        guards: dict[int, Guard] = {}
        clients: dict[str, Client] = {}
        for key in keys:
            guard = self.guard
            if key.policy is not None:
                guard = guards.setdefault(
                    id(key.policy), self._guard(auditor, key.policy, sinks, owns=False)
                )
            bucket = None
            if key.rate_limit is not None:
                bucket = TokenBucket(
                    rate=key.rate_limit.requests_per_minute / 60.0 / spec.workers,
                    capacity=max(1.0, key.rate_limit.capacity / spec.workers),
                )
            clients[key.sha256] = Client(name=key.name, guard=guard, bucket=bucket)
        open_client = Client(name="open", guard=self.guard) if spec.open else None
        self.keys = KeyRing(clients, open_client=open_client)
        self.upstream = Upstream(spec.upstream.url, spec.upstream)

    def _guard(
        self, auditor: object, policy: Policy, sinks: Sequence[Sink], *, owns: bool
    ) -> Guard:
        return Guard(
            auditor,  # type: ignore[arg-type]
            policy,
            sinks,
            raise_on_block=False,
            background_slow_sinks=False,
            owns_auditor=owns,
            checkpoints=self.checkpoints,
        )

    # -- admission ----------------------------------------------------------------------------

    def admit(self, headers: Iterable[tuple[bytes, bytes]]) -> Client:
        """The client a request comes from, if it may be served now.

        Raises:
            ProxyError: draining, a refused origin or host, a missing or unknown key, a rate
                limit, or too many requests in flight.
        """
        headers = list(headers)
        if self.draining:
            raise ProxyError("shutting_down", "The proxy is shutting down; retry elsewhere.")
        origin = header_value(headers, "origin")
        if origin and origin not in self.spec.allowed_origins:
            raise ProxyError(
                "origin_not_allowed", "Requests from this browser origin are not accepted."
            )
        token = bearer_token(header_value(headers, "authorization"))
        if token is None and self.keys.open_client is not None:
            self._check_host(header_value(headers, "host"))
        client = self.keys.lookup(token)
        if client is None:
            if token is None:
                raise ProxyError(
                    "missing_api_key", "Send your client key as 'Authorization: Bearer <key>'."
                )
            raise ProxyError("invalid_api_key", "The client key is not known to this proxy.")
        if client.bucket is not None:
            wait = client.bucket.take(time.monotonic())
            if wait is not None:
                self.metrics.inc("traceguard_proxy_rate_limited_total", client=client.name)
                raise ProxyError(
                    "rate_limit_exceeded",
                    f"Rate limit of client {client.name!r} reached; retry after the "
                    "Retry-After seconds.",
                    headers=(("retry-after", str(max(1, math.ceil(wait)))),),
                )
        if self.metrics.in_flight >= self.spec.limits.max_in_flight:
            raise ProxyError(
                "overloaded",
                "Too many requests in flight; retry shortly.",
                headers=(("retry-after", "1"),),
            )
        return client

    def _check_host(self, host: str) -> None:
        # Keyless (open) mode on loopback: a web page that rebinds its own name to 127.0.0.1
        # would otherwise be same-origin with the proxy. Only loopback names are served.
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if name not in _LOOPBACK_NAMES and name != self.spec.host:
            raise ProxyError(
                "host_not_allowed", "Keyless requests are served to loopback host names only."
            )

    def passthrough_allowed(self, method: str, path: str) -> bool:
        """True when ``METHOD path`` is one of the ``serve.passthrough`` endpoints.

        A ``.`` or ``..`` segment never matches: the upstream would resolve it to a path the
        rule does not name (``GET /v1/models/*`` must not reach ``GET /v1/``)."""
        if any(segment in (".", "..") for segment in path.split("/")):
            return False
        return any(
            (rule_method in ("*", method)) and pattern.fullmatch(path)
            for rule_method, pattern in self._rules
        )

    # -- auditing -----------------------------------------------------------------------------

    async def audit(
        self,
        client: Client,
        api: GuardedApi,
        traces: Sequence[Trace],
        *,
        checkpoint: bool = False,
    ) -> list[Decision]:
        """``client``'s guard on ``traces``, counted in the metrics (never raises for an
        auditor failure: that is a verdict the policy acts on). ``checkpoint``: the partial
        output of a stream, audited by the checkpoint guard, never waiting for a reviewer."""
        started = time.perf_counter()
        with span("traceguard.audit", api=api.name, client=client.name, traces=len(traces)) as s:
            if checkpoint:
                guard = client.guard.checkpoint_guard
                decisions = await guard.acheck_batch(traces, wait_for_review=False)
            else:
                decisions = await client.guard.acheck_batch(traces)
            if s is not None:
                s.set_attribute("traceguard.actions", ",".join(d.action.value for d in decisions))
        metrics = self.metrics
        metrics.observe("traceguard_proxy_auditor_seconds", time.perf_counter() - started)
        for trace, decision in zip(traces, decisions, strict=True):
            metrics.inc("traceguard_proxy_audits_total", api=api.name, stage=trace.stage.value)
            metrics.inc(
                "traceguard_proxy_decisions_total",
                action=decision.action.value,
                disposition=decision.disposition.value,
            )
            if not decision.verdict.is_ok:
                metrics.inc("traceguard_proxy_auditor_errors_total", status=_status(decision))
        return decisions

    async def ready(self) -> bool:
        """True when the auditor can be reached (a served backend answers ``GET /models``)."""
        from ._ready import auditor_reachable

        return not self.draining and await auditor_reachable(self.config)

    async def aclose(self) -> None:
        """Close the upstream client, then every guard (flushing the sinks once)."""
        await self.upstream.aclose()
        await self.guard.aclose()


def _status(decision: Decision) -> str:
    status = decision.verdict.status
    return str(getattr(status, "value", status))
