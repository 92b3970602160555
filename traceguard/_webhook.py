"""``WebhookSink``: audit records delivered to an HTTP receiver at least once.

``emit`` never waits for the network: it encodes the record and queues it (in memory, or in the
spill file when the memory queue is full or the receiver is down). A worker thread POSTs batches
and retries with exponential backoff, for as long as the sink lives, every failure that is not
the receiver refusing the content. ``close`` waits for the queue to drain (up to
``close_timeout``), keeps what is left in the spill file — a sink opened later for the same URL
sends it — and says what it could not deliver. ``delivered``, ``pending``, ``dropped`` and
``rejected`` count every record.

What counts as what, by the receiver's answer:

- 2xx: delivered.
- 400, 409, 413, 415, 422: the receiver refuses this content. A batch is split and its records
  retried one by one; a single record refused is *rejected*: counted and logged, not retried.
- anything else (connection errors, timeouts, 3xx, 401, 403, 404, 408, 429, 5xx): not delivered
  *yet*: kept, and retried after a backoff (``Retry-After`` honoured up to ``max_backoff``).

The URL is checked when the sink is built: http(s) only, and a host on the machine itself, a
private network or link-local only with ``allow_private=True`` (cloud metadata addresses never).
Names are resolved again before each delivery. The URL's path, query and credentials, and the
header values, never appear in logs, errors or the repr: webhook URLs often are the secret.
"""

from __future__ import annotations

import atexit
import collections
import hashlib
import ipaddress
import logging
import os
import random
import socket
import threading
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar, Literal

import httpx

from traceguard._exceptions import ConfigurationError, SinkError
from traceguard._http_deadline import call_deadline, deadline_client
from traceguard._http_log import quiet_url
from traceguard._net_addresses import METADATA_ADDRESSES, is_public_address
from traceguard._retry_after import parse_retry_after
from traceguard._sinks import AuditRecord, Sink
from traceguard._urls import redact_url
from traceguard._webhook_spill import SpillFile

__all__ = ["WebhookSink", "check_webhook_url", "default_spill_dir"]

logger = logging.getLogger("traceguard.sinks")

_REFUSED_CONTENT = frozenset({400, 409, 413, 415, 422})
_Source = Literal["memory", "singles", "spill"]
_LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


_LIVE: weakref.WeakSet[WebhookSink] = weakref.WeakSet()
"""Sinks not closed yet: at interpreter exit their queues go to disk, not away."""


@atexit.register
def _keep_queues_at_exit() -> None:
    for sink in list(_LIVE):
        sink._keep_at_exit()


def default_spill_dir() -> Path:
    """Where webhook sinks keep undelivered records by default: ``$XDG_STATE_HOME`` (or
    ``~/.local/state``) ``/traceguard/webhook-spill``."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return Path(state) / "traceguard" / "webhook-spill"


def _address_problem(address: str, *, allow_private: bool) -> str | None:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone id is not an address
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    if ip in METADATA_ADDRESSES or mapped in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if not allow_private and not is_public_address(ip):
        return "not a public address (loopback, private or link-local: set allow_private=True)"
    return None


def check_webhook_url(url: str, *, allow_private: bool = False) -> httpx.URL:
    """The parsed webhook URL, or :class:`~traceguard.ConfigurationError` saying why not.

    Only http(s) with a host; a literal IP address or ``localhost`` must be public unless
    ``allow_private``; a cloud metadata address never is allowed. A host name is resolved here
    when the resolver answers, and every address it gives must pass the same test.
    """
    shown = redact_url(url, keep_path=False)
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        raise ConfigurationError(f"webhook URL {shown!r} is not a valid URL") from None
    if parsed.scheme not in ("http", "https"):
        raise ConfigurationError(
            f"webhook URL {shown!r}: only http and https are allowed, not {parsed.scheme!r}"
        )
    host = parsed.host
    if not host:
        raise ConfigurationError(f"webhook URL {shown!r} has no host")
    for address in _addresses(parsed, resolve=True):
        problem = _address_problem(address, allow_private=allow_private)
        if problem is not None:
            raise ConfigurationError(f"webhook URL {shown!r} points to {problem}")
    return parsed


def _addresses(url: httpx.URL, *, resolve: bool) -> list[str]:
    host = url.host.strip("[]")
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    else:
        return [host]
    if host.lower() in _LOOPBACK_NAMES or host.lower().endswith(".localhost"):
        return ["127.0.0.1"]
    if not resolve:
        return []
    try:
        infos = socket.getaddrinfo(host, url.port or 443, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []  # unresolvable now: checked again before each delivery
    return sorted({str(info[4][0]) for info in infos})


class WebhookSink(Sink):
    """POSTs audit records as JSON to a URL, at least once (see the module docstring).

    Args:
        url: the receiver, http(s) only.
        headers: extra HTTP headers (auth tokens); their values are never logged.
        timeout: deadline of one POST, connect to last byte.
        batch_size: records per POST. 1 (default) sends each record as its JSON object; more
            send a JSON array of up to that many records.
        max_queue: records held in memory; beyond them records go to the spill file.
        spill_dir: the folder of spill files (one subfolder per URL); default
            :func:`default_spill_dir`; ``False`` keeps records in memory only, so a full queue
            drops them (counted in ``dropped``).
        allow_private: allow a receiver on this machine, a private network or link-local.
        max_retries: failed attempts in a row before the receiver counts as down; the queued
            records then move to the spill file and the backoff keeps growing to
            ``max_backoff``. Retries go on until :meth:`close` either way.
        backoff, max_backoff: exponential backoff with jitter between attempts.
        close_timeout: how long :meth:`close` tries to deliver what is queued.
        transport: an httpx transport (tests); the default enforces the deadline.
    """

    slow: ClassVar[bool] = False  # emit only queues: no BackgroundSink needed around it

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        batch_size: int = 1,
        max_queue: int = 10_000,
        spill_dir: str | os.PathLike[str] | Literal[False] | None = None,
        allow_private: bool = False,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        close_timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if max_retries < 0 or batch_size < 1 or max_queue < 1:
            raise ConfigurationError("max_retries must be >= 0, batch_size and max_queue >= 1")
        if timeout <= 0 or backoff < 0 or max_backoff < 0 or close_timeout < 0:
            raise ConfigurationError("webhook timeouts and backoffs must not be negative")
        self._url = check_webhook_url(url, allow_private=allow_private)
        self._origin = redact_url(url, keep_path=False)
        self._allow_private = allow_private
        self.batch_size = batch_size
        self.max_queue = max_queue
        self.close_timeout = close_timeout
        self._timeout = timeout
        self._max_retries = max_retries
        self._backoff = backoff
        self._max_backoff = max_backoff
        options = {"headers": dict(headers or {}), "timeout": timeout}
        self._client = (
            httpx.Client(transport=transport, **options)  # type: ignore[arg-type]
            if transport is not None
            else deadline_client(**options)
        )
        self._spill: SpillFile | None = None
        if spill_dir is not False:
            folder = Path(spill_dir) if spill_dir is not None else default_spill_dir()
            # One folder per URL; its name reveals nothing of the URL.
            self._spill = SpillFile(folder / hashlib.sha256(url.encode()).hexdigest()[:24])
        self._memory: collections.deque[bytes] = collections.deque()
        self._singles: collections.deque[bytes] = collections.deque()
        """Records of a batch the receiver refused, retried one by one to find the culprit."""
        self._flight: list[bytes] = []
        """Records taken from memory and being posted (spilled ones stay in the file)."""
        self._failures = 0  # failed attempts in a row
        self._closing = False
        self._stopped = False
        self._abandoned = False  # close() stopped waiting for a post: the worker leaves state be
        self._cond = threading.Condition()
        self.delivered = 0
        self.dropped = 0
        """Records lost: the memory queue was full and there is no spill file (or the disk was)."""
        self.rejected = 0
        """Records the receiver refused (400, 409, 413, 415, 422): logged, not retried."""
        if self._spill is not None:
            adopted = self._spill.adopt_orphans()
            if adopted:
                logger.warning(
                    "webhook %s: %d record(s) left by an earlier run will be sent",
                    self._origin,
                    adopted,
                )
        self._worker = threading.Thread(target=self._run, name="traceguard-webhook", daemon=True)
        self._worker.start()
        _LIVE.add(self)

    # -- counts --------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Records accepted and not delivered yet (in memory, being posted, or spilled)."""
        with self._cond:
            return self._pending()

    def _pending(self) -> int:
        spilled = self._spill.lines if self._spill is not None else 0
        return len(self._memory) + len(self._singles) + len(self._flight) + spilled

    @property
    def undelivered(self) -> int:
        """Records not delivered: pending, dropped and rejected."""
        with self._cond:
            return self._pending() + self.dropped + self.rejected

    # -- the caller's side ---------------------------------------------------------------------

    def emit(self, record: AuditRecord) -> None:
        """Queue ``record`` for delivery; never waits for the network.

        Raises:
            SinkError: the sink is closed.
        """
        line = record.to_json_bytes()
        with self._cond:
            if self._closing:
                raise SinkError(f"{self!r} is closed")
            down = self._failures > self._max_retries
            if len(self._memory) < self.max_queue and not (down and self._spill is not None):
                self._memory.append(line)
            else:
                self._to_spill([line])
            self._cond.notify_all()

    def _to_spill(self, lines: list[bytes]) -> None:
        """Keep ``lines`` on disk (caller holds the lock); count them dropped if that fails."""
        if self._spill is None:
            self._lost(len(lines), "the memory queue is full and spilling is off")
            return
        try:
            self._spill.append(lines)
        except OSError as exc:
            self._lost(len(lines), f"cannot write the spill file ({exc.strerror})")

    def _lost(self, count: int, why: str) -> None:
        self.dropped += count
        if self.dropped == count or self.dropped % 100 < count:
            logger.error("webhook %s: %d record(s) dropped so far: %s", self._origin, count, why)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every accepted record is delivered (or rejected); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending() == 0, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Deliver what is queued (up to ``timeout``, default ``close_timeout``), then stop.

        What is still undelivered is kept in the spill file for the next sink on this URL and
        logged with the counts; ``pending``, ``dropped`` and ``rejected`` keep them. Idempotent.
        """
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._cond.notify_all()
        self.flush(self.close_timeout if timeout is None else timeout)
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._worker.join(self._timeout + 1.0)
        with self._cond:
            # A post still running (a receiver slower than its deadline) is abandoned: its
            # records are kept too, and may reach the receiver twice.
            self._abandoned = self._worker.is_alive()
            left = [*self._flight, *self._singles, *self._memory]
            self._flight, self._singles, self._memory = [], collections.deque(), collections.deque()
            self._to_spill(left)
            pending, dropped, rejected = self._pending(), self.dropped, self.rejected
            spill = self._spill
            if spill is not None:
                try:
                    spill.close()
                except OSError as exc:
                    logger.error("webhook %s: cannot close the spill file: %s", self._origin, exc)
        self._client.close()
        if pending or dropped or rejected:
            kept = (
                f"kept in {spill.path} for the next WebhookSink on this URL"
                if spill is not None and pending
                else "lost"
            )
            logger.warning(
                "webhook %s closed: %d delivered, %d not delivered (%s), %d dropped, %d rejected",
                self._origin,
                self.delivered,
                pending,
                kept,
                dropped,
                rejected,
            )

    def _keep_at_exit(self) -> None:
        """The interpreter exits without :meth:`close`: spill the queue, send nothing."""
        if not self._cond.acquire(timeout=1.0):  # never hang the exit on a stuck worker
            return
        try:
            if self._closing:
                return
            self._closing = self._stopped = self._abandoned = True
            left = [*self._flight, *self._singles, *self._memory]
            self._flight, self._singles, self._memory = [], collections.deque(), collections.deque()
            self._to_spill(left)
            pending, dropped = self._pending(), self.dropped
            if self._spill is not None:
                self._spill.close()
        except OSError as exc:
            logger.error("webhook %s: cannot keep the queue at exit: %s", self._origin, exc)
            return
        finally:
            self._cond.release()
        if pending or dropped:
            logger.warning(
                "webhook %s was not closed: %d record(s) not delivered, kept for the next run; "
                "%d dropped",
                self._origin,
                pending,
                dropped,
            )

    # -- the worker ----------------------------------------------------------------------------

    def _next_batch(self) -> tuple[list[bytes], _Source] | None:
        """The next records to post and where they come from; None when the sink stops."""
        with self._cond:
            while True:
                if self._stopped:
                    return None
                if self._singles:
                    self._flight = [self._singles.popleft()]
                    return self._flight, "singles"
                if self._spill is not None and self._spill.lines:
                    return self._spill.peek(self.batch_size), "spill"
                if self._memory:
                    count = min(self.batch_size, len(self._memory))
                    self._flight = [self._memory.popleft() for _ in range(count)]
                    return self._flight, "memory"
                self._cond.wait()

    def _run(self) -> None:
        while (taken := self._next_batch()) is not None:
            batch, source = taken
            outcome, retry_after = self._post(batch)
            with self._cond:
                if self._abandoned:
                    return
                if outcome == "retry":
                    self._failed(batch, source, retry_after)
                else:
                    self._settled(batch, source, refused=outcome == "refused")
                self._cond.notify_all()

    def _failed(self, batch: list[bytes], source: _Source, retry_after: float | None) -> None:
        """Keep ``batch`` for the next attempt and back off (caller holds the lock)."""
        self._failures += 1
        if source != "spill":  # a spilled batch is still in the file: peeked, not dropped
            self._flight = []
            queue = self._singles if source == "singles" else self._memory
            queue.extendleft(reversed(batch))
        if self._failures > self._max_retries and self._spill is not None:
            # The receiver is down: what waits is kept on disk, not in memory only.
            self._to_spill([*self._singles, *self._memory])
            self._singles.clear()
            self._memory.clear()
            self._spill_sync()
        wait = self._wait(retry_after)
        if self._failures == 1 or self._failures == self._max_retries + 1:
            logger.warning(
                "webhook %s: delivery failed (%d in a row), retrying in %.1f s",
                self._origin,
                self._failures,
                wait,
            )
        self._cond.wait_for(lambda: self._stopped, wait)

    def _settled(self, batch: list[bytes], source: _Source, *, refused: bool) -> None:
        """``batch`` got an answer: delivered, or refused (caller holds the lock)."""
        if self._failures > self._max_retries:
            logger.warning("webhook %s: delivering again", self._origin)
        self._failures = 0
        if refused and len(batch) > 1:
            self._singles.extend(batch)  # one of them is refused: find which
        elif refused:
            self.rejected += 1
            logger.error("webhook %s refused a record (HTTP 4xx): dropped", self._origin)
        else:
            self.delivered += len(batch)
        if source == "spill":
            assert self._spill is not None
            self._spill.drop(len(batch))
        else:
            self._flight = []

    def _spill_sync(self) -> None:
        if self._spill is not None:
            try:
                self._spill.sync()
            except OSError as exc:
                logger.error("webhook %s: cannot sync the spill file: %s", self._origin, exc)

    def _wait(self, retry_after: float | None) -> float:
        exponent = min(self._failures - 1, 30)
        delay = min(self._max_backoff, self._backoff * 2.0**exponent)
        delay += random.uniform(0.0, self._backoff)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self._max_backoff))
        return delay

    def _post(self, batch: list[bytes]) -> tuple[Literal["ok", "refused", "retry"], float | None]:
        """POST ``batch``: delivered, refused (the content), or to retry (with Retry-After)."""
        body = batch[0] if self.batch_size == 1 else b"[" + b",".join(batch) + b"]"
        for address in _addresses(self._url, resolve=True):
            problem = _address_problem(address, allow_private=self._allow_private)
            if problem is not None:
                logger.error("webhook %s now resolves to %s: not sent", self._origin, problem)
                return "retry", None
        try:
            with call_deadline(self._timeout), quiet_url("origin"):
                response = self._client.post(
                    self._url, content=body, headers={"content-type": "application/json"}
                )
        except httpx.HTTPError as exc:
            # The message of a transport error may include the full URL; name only its type.
            logger.debug("webhook %s: %s", self._origin, type(exc).__name__)
            return "retry", None
        status = response.status_code
        if 200 <= status < 300:
            return "ok", None
        if status in _REFUSED_CONTENT:
            return "refused", None
        return "retry", parse_retry_after(response.headers.get("retry-after"))

    def __repr__(self) -> str:
        return f"WebhookSink({self._origin!r})"
