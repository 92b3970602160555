"""The backend part of an auditor spec: where the model runs, in this process
(:class:`LocalBackendSpec`) or behind an OpenAI-compatible API (:class:`ServedBackendSpec`),
tagged by ``kind``. Each mirrors its factory in :mod:`traceguard.backends` and builds it in
``build()``, importing it only then."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from traceguard._config_fields import (
    DEFAULT_API_KEY_ENV,
    EnvName,
    ModelRef,
    Spec,
    env_headers,
    refuse_inline_secret,
    url_without_secrets,
)

if TYPE_CHECKING:
    from traceguard.backends import ChatBackend

__all__ = ["BackendSpec", "LocalBackendSpec", "ServedBackendSpec"]


class LocalBackendSpec(Spec):
    """The model runs in this process with transformers (``traceguard.backends.local``)."""

    kind: Literal["local"] = "local"
    model: ModelRef
    """Checkpoint folder (relative to the configuration file) or hub id."""
    device: str = "cpu"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    attn_implementation: str | None = None
    min_pixels: PositiveInt | None = None
    max_pixels: PositiveInt | None = None
    max_input_tokens: int = Field(default=8192, ge=16)
    batch_size: PositiveInt = 8
    trust_remote_code: bool = False
    model_class: str | None = None
    """The transformers class to load (default: by the checkpoint; LLaVA-OneVision for
    LlavaGuard)."""
    name: str | None = None
    prefix_cache_tokens: int = Field(default=8192, ge=0)
    """Key/value cache kept for prompts that extend a recent one (a stream's checkpoints)."""

    def build(self, *, default_model_class: str | None = None) -> ChatBackend:
        """The backend (loads nothing until the first call)."""
        from traceguard import backends

        return backends.local(
            self.model,
            name=self.name,
            device=self.device,
            dtype=self.dtype,
            attn_implementation=self.attn_implementation,
            min_pixels=self.min_pixels,
            max_pixels=self.max_pixels,
            max_input_tokens=self.max_input_tokens,
            batch_size=self.batch_size,
            trust_remote_code=self.trust_remote_code,
            model_class=self.model_class or default_model_class,
            prefix_cache_tokens=self.prefix_cache_tokens,
        )


class ServedBackendSpec(Spec):
    """The model is served behind an OpenAI-compatible API (``traceguard.backends.served``).

    Give ``base_url`` or ``endpoints`` (several URLs in priority order, with failover). The API
    key is read from the environment variable ``api_key_env`` when the backend is built; it never
    appears in the file.
    """

    kind: Literal["served"] = "served"
    base_url: str | None = None
    endpoints: tuple[str, ...] | None = None
    model: str = Field(min_length=1)
    """The served model name."""
    api_key_env: EnvName = DEFAULT_API_KEY_ENV
    headers_from_env: dict[str, EnvName] = Field(default_factory=dict)
    """Extra HTTP headers, each read from the environment variable named here."""
    timeout: PositiveFloat = 120.0
    """Deadline of one auditor call, connect to last byte, retries included."""
    attempt_timeout: PositiveFloat | None = None
    connect_timeout: PositiveFloat = 5.0
    max_retries: NonNegativeInt = 3
    max_concurrency: PositiveInt = 16
    extra_body: dict[str, Any] | None = None
    name: str | None = None
    backoff_s: NonNegativeFloat = 0.5
    max_backoff_s: NonNegativeFloat = 8.0
    max_retry_after_s: NonNegativeFloat = 60.0
    cooldown_s: NonNegativeFloat = 10.0
    retry_read_timeouts: bool = False
    max_top_logprobs: PositiveInt = 20
    api_key: None = Field(default=None, exclude=True, repr=False)
    headers: None = Field(default=None, exclude=True, repr=False)

    @field_validator("api_key", mode="before")
    @classmethod
    def _no_inline_key(cls, value: object) -> None:
        raise refuse_inline_secret("api_key", "name its environment variable in api_key_env")

    @field_validator("headers", mode="before")
    @classmethod
    def _no_inline_headers(cls, value: object) -> None:
        raise refuse_inline_secret("headers", "use headers_from_env")

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str | None) -> str | None:
        return url_without_secrets(value, where="auditor") if value is not None else None

    @field_validator("endpoints")
    @classmethod
    def _check_endpoints(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("endpoints must list at least one URL")
        return tuple(url_without_secrets(url, where="auditor") for url in value)

    @model_validator(mode="after")
    def _one_address(self) -> ServedBackendSpec:
        if (self.base_url is None) == (self.endpoints is None):
            raise ValueError("give either base_url or endpoints (a list of URLs), not both")
        return self

    @property
    def urls(self) -> list[str]:
        """The endpoints in priority order."""
        return [self.base_url] if self.base_url is not None else list(self.endpoints or ())

    def build(self, *, default_model_class: str | None = None) -> ChatBackend:
        """The backend (connects on the first call)."""
        from traceguard import backends

        headers = env_headers(self.headers_from_env, what="served backend")
        return backends.served(
            self.urls,
            self.model,
            name=self.name,
            api_key_env=self.api_key_env,
            headers=headers or None,
            timeout=self.timeout,
            attempt_timeout=self.attempt_timeout,
            connect_timeout=self.connect_timeout,
            max_retries=self.max_retries,
            max_concurrency=self.max_concurrency,
            extra_body=self.extra_body,
            backoff_s=self.backoff_s,
            max_backoff_s=self.max_backoff_s,
            max_retry_after_s=self.max_retry_after_s,
            cooldown_s=self.cooldown_s,
            retry_read_timeouts=self.retry_read_timeouts,
            max_top_logprobs=self.max_top_logprobs,
        )


BackendSpec = Annotated[LocalBackendSpec | ServedBackendSpec, Field(discriminator="kind")]
