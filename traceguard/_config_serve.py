"""The ``serve`` section of :class:`~traceguard.config.GuardConfig`: how ``traceguard serve`` runs.

The proxy reads the same file as the library and the offline audit; this section only says how
it listens, whom it lets in, where it forwards and what a block looks like to a client::

    serve:
      upstream:
        url: http://127.0.0.1:8000/v1      # the model server (``--upstream`` overrides)
        api_key_env: UPSTREAM_API_KEY      # its key stays here, never sent by clients
      host: 127.0.0.1                      # loopback unless you mean otherwise
      port: 8700
      keys:                                # client keys, stored as sha256 hex digests
        - name: team-a
          sha256: 3f1e...                  # printf %s "$KEY" | sha256sum
          rate_limit: {requests_per_minute: 600, burst: 60}
          policy: strict-policy.yaml       # optional: this client's own policy
      keys_file: keys.yaml                 # more keys, same shape, kept apart from the config
      stream: {mode: buffer, early_stop: true}
      block: {mode: error, status: 400}    # or mode: refusal (a normal completion)
      limits: {max_body_bytes: 16777216}
      metrics: {token_env: METRICS_TOKEN}  # without it: /metrics answers loopback peers only

Nothing here is a secret: client keys are digests, the upstream key and the metrics token are
read from environment variables named in the file. Paths resolve against the file's folder.
Loading never imports the proxy's dependencies; :meth:`ServeSpec.client_keys` reads the keys
file and :mod:`traceguard.proxy` does the rest.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from traceguard._config_fields import (
    EnvName,
    ResolvedPath,
    Spec,
    refuse_inline_secret,
    resolve_path,
    url_without_secrets,
)
from traceguard._config_files import describe_validation_error, read_document
from traceguard._exceptions import ConfigurationError
from traceguard._policy import Policy

__all__ = [
    "BlockSpec",
    "ClientKeySpec",
    "LimitsSpec",
    "MetricsSpec",
    "RateLimitSpec",
    "ServeSpec",
    "StreamSpec",
    "UpstreamSpec",
    "is_loopback_host",
]

_MIB = 1024 * 1024

DEFAULT_PASSTHROUGH = (
    "GET /v1/models",
    "GET /v1/models/*",
    "POST /v1/embeddings",
    "POST /v1/tokenize",
    "POST /v1/detokenize",
)
"""Endpoints forwarded unaudited by default: none of them returns generated text."""

_KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PASSTHROUGH_RULE = re.compile(r"^(GET|POST|PUT|PATCH|DELETE|\*) /v1(/[A-Za-z0-9_.:{}*-]+)+/?$")


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class UpstreamSpec(Spec):
    """The OpenAI-compatible server the proxy forwards to."""

    url: str | None = None
    """Its base URL, ending where ``/v1`` ends (``http://host:8000/v1``); ``--upstream``
    overrides it."""
    api_key_env: EnvName | None = None
    """The environment variable holding the upstream's API key (sent as a bearer token)."""
    headers_from_env: dict[str, EnvName] = Field(default_factory=dict)
    """Extra headers for the upstream, each read from the environment variable named here."""
    timeout_s: PositiveFloat = 600.0
    """Longest wait for the upstream's next bytes (a long generation streams for minutes)."""
    connect_timeout_s: PositiveFloat = 10.0
    max_connections: PositiveInt = 1000
    api_key: None = Field(default=None, exclude=True, repr=False)

    @field_validator("api_key", mode="before")
    @classmethod
    def _no_inline_key(cls, value: object) -> None:
        raise refuse_inline_secret("api_key", "name its environment variable in api_key_env")

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        return check_upstream_url(value) if value is not None else None


def check_upstream_url(url: str) -> str:
    """An upstream base URL without credentials or query, and without a trailing slash."""
    return url_without_secrets(url, where="upstream").rstrip("/")


class RateLimitSpec(Spec):
    """A token bucket: ``requests_per_minute`` on average, bursts up to ``burst``."""

    requests_per_minute: PositiveFloat
    burst: PositiveInt | None = None
    """Requests allowed at once after a quiet spell (default: a tenth of the minute's,
    at least 1)."""

    @property
    def capacity(self) -> int:
        """The bucket size."""
        if self.burst is not None:
            return self.burst
        return max(1, round(self.requests_per_minute / 10))


class ClientKeySpec(Spec):
    """One client API key, stored as the sha256 hex digest of the key."""

    name: str
    """Shown in logs, metrics and audit records (never the key)."""
    sha256: str
    policy: Policy | None = None
    """This client's policy (inline, or a file read at load); default: the guard's."""
    rate_limit: RateLimitSpec | None = None
    key: None = Field(default=None, exclude=True, repr=False)

    @field_validator("key", mode="before")
    @classmethod
    def _no_plain_key(cls, value: object) -> None:
        raise ValueError(
            'client keys are stored hashed: write sha256 (printf %s "$KEY" | sha256sum), '
            "never the key"
        )

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _KEY_NAME.match(value):
            raise ValueError(
                "a key name is 1-64 letters, digits and _.@- (it appears in logs and metrics)"
            )
        return value

    @field_validator("sha256")
    @classmethod
    def _check_digest(cls, value: str) -> str:
        value = value.strip().lower()
        if not _SHA256.match(value):
            raise ValueError("expected the 64 hex digits of a sha256 digest")
        return value

    @field_validator("policy", mode="before")
    @classmethod
    def _read_policy(cls, value: object, info: ValidationInfo) -> object:
        if not isinstance(value, str | os.PathLike):
            return value
        try:
            return Policy.from_file(resolve_path(Path(value), info))
        except ConfigurationError as exc:
            raise ValueError(str(exc)) from None


class _KeysFile(Spec):
    keys: tuple[ClientKeySpec, ...]


class StreamSpec(Spec):
    """How streamed answers (``stream: true``) are guarded; the wrapper's ``stream_mode``."""

    mode: Literal["buffer", "passthrough"] = "buffer"
    """``buffer``: nothing reaches the client before the audit passed. ``passthrough``: chunks
    flow at once and the audit runs at the end (a block then ends the stream with an error
    event; what was shown cannot be taken back)."""
    early_stop: bool = True
    """Audit the thinking as soon as it is complete; a block closes the upstream request."""


class BlockSpec(Spec):
    """What a client gets when the output is held back."""

    mode: Literal["error", "refusal"] = "error"
    """``error``: an OpenAI-style error (``status``, ``error.code`` = ``content_blocked``);
    ``refusal``: an ordinary completion carrying the refusal text."""
    status: Literal[400, 403, 422, 451] = 400
    refusal: str | None = None
    """The refusal text (default: the policy's ``redaction.refusal_message``)."""


class LimitsSpec(Spec):
    """Bounds on what one request may cost the proxy."""

    max_body_bytes: PositiveInt = 16 * _MIB
    """Largest request body (images inline as data URIs count here)."""
    max_response_bytes: PositiveInt = 64 * _MIB
    """Largest upstream answer the proxy holds for an audit (a JSON body, a buffered stream)."""
    max_in_flight: PositiveInt = 1024
    """Guarded requests handled at once; more get 503 ``overloaded``."""
    body_timeout_s: PositiveFloat = 60.0
    """Longest a request body may take to arrive, from the request's start; a slower one gets
    408 ``request_timeout`` (a client trickling its body must not hold a slot forever)."""


class MetricsSpec(Spec):
    """Who may read ``/metrics``."""

    token_env: EnvName | None = None
    """The environment variable holding a bearer token for ``/metrics``; without it only
    loopback peers may read them."""


class ServeSpec(Spec):
    """The ``serve`` section (see the module documentation)."""

    upstream: UpstreamSpec = Field(default_factory=UpstreamSpec)
    host: str = "127.0.0.1"
    port: int = Field(default=8700, ge=1, le=65535)
    workers: PositiveInt = 1
    open: bool = False
    """Accept requests without a client key. Only on a loopback host."""
    keys: tuple[ClientKeySpec, ...] = ()
    keys_file: ResolvedPath | None = None
    """A YAML/TOML/JSON file ``{keys: [...]}``, read when the proxy starts."""
    stream: StreamSpec = Field(default_factory=StreamSpec)
    block: BlockSpec = Field(default_factory=BlockSpec)
    limits: LimitsSpec = Field(default_factory=LimitsSpec)
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)
    passthrough: tuple[str, ...] = DEFAULT_PASSTHROUGH
    """Endpoints forwarded unaudited, as ``METHOD /v1/path`` (``*`` matches one path segment,
    or any method). Everything else that is not a guarded endpoint is refused: a new endpoint
    that returns generated text must not slip past the guard."""
    allowed_origins: tuple[str, ...] = ()
    """Browser origins allowed to call (requests with another ``Origin`` are refused)."""
    shutdown_grace_s: PositiveFloat = 30.0
    """On SIGTERM, how long open streams may take to finish."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("passthrough")
    @classmethod
    def _check_rules(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for rule in value:
            if not _PASSTHROUGH_RULE.match(rule):
                raise ValueError(f"{rule!r}: expected 'METHOD /v1/path', e.g. 'GET /v1/models'")
            if rule.split(" ", 1)[1].rstrip("/") in ("/v1/chat/completions", "/v1/responses"):
                raise ValueError(f"{rule!r}: a guarded endpoint cannot be passed through")
        return value

    @model_validator(mode="after")
    def _unique_keys(self) -> ServeSpec:
        _check_unique(self.keys, where="serve.keys")
        return self

    def client_keys(self) -> tuple[ClientKeySpec, ...]:
        """``keys`` and those of ``keys_file``; names and digests must be unique.

        Raises:
            ConfigurationError: an unreadable or invalid keys file (naming the line and key),
                or a name or digest given twice.
        """
        keys = self.keys
        if self.keys_file is not None:
            document = read_document(self.keys_file, what="keys file")
            base = {"base_dir": self.keys_file.parent}
            try:
                loaded = _KeysFile.model_validate(document.data, context=base)
            except ValidationError as exc:
                message = describe_validation_error(
                    exc,
                    source=str(document.path),
                    data=document.data,
                    document=document,
                    title="invalid keys file",
                )
                raise ConfigurationError(message) from None
            keys = (*keys, *loaded.keys)
        try:
            _check_unique(keys, where="serve keys")
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        return keys

    def with_overrides(self, **changes: Any) -> ServeSpec:
        """A copy with the command line's settings (``None`` leaves a setting as it is),
        validated like the file."""
        data = self.model_dump()
        for name, value in changes.items():
            if value is None:
                continue
            if name == "upstream":
                data["upstream"] = {**data["upstream"], "url": value}
            else:
                data[name] = value
        try:
            return ServeSpec.model_validate(data)
        except ValidationError as exc:
            raise ConfigurationError(
                describe_validation_error(exc, source="command line", data=data, title="serve")
            ) from None


def _check_unique(keys: tuple[ClientKeySpec, ...], *, where: str) -> None:
    names: set[str] = set()
    digests: set[str] = set()
    for key in keys:
        if key.name in names:
            raise ValueError(f"{where}: the key name {key.name!r} is used twice")
        if key.sha256 in digests:
            raise ValueError(f"{where}: key {key.name!r} repeats the digest of another key")
        names.add(key.name)
        digests.add(key.sha256)
