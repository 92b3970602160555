"""One configuration for the whole guard: :class:`GuardConfig`.

The same file configures the library (``Guard.from_config("guard.yaml")``), the offline audit
(``traceguard audit --config guard.yaml``), the proxy and the Ray workers::

    auditor:                      # tagged by kind: guardtrace, llavaguard, safeguard,
      kind: guardtrace            #   holisafe, baseline, staged
      mode: score
      backend:                    # tagged by kind: local or served
        kind: served
        endpoints: [http://gpu-a:8000/v1, http://gpu-b:8000/v1]
        model: DloadingX/GuardTrace-VL-3B
        api_key_env: AUDITOR_KEY  # the name of a variable, never the key
    policy: policy.yaml           # or the policy inline, as a mapping
    images: {root: ./images}
    sinks:
      - {kind: jsonl, path: audit.jsonl}
    review: {path: review.sqlite}
    checkpoints: {every_tokens: 128}  # audit streamed thinking before it ends
    serve: {upstream: {url: http://127.0.0.1:8000/v1}, keys: [...]}  # traceguard serve

Rules the model enforces:

- Every section is frozen and refuses unknown keys: a typo is an error, never a setting that is
  silently ignored. Errors name the file, the line and the key
  (``guard.yaml:9: auditor.backend.timeout: Input should be greater than 0``).
- Relative paths are resolved against the configuration file's folder when it is loaded, and the
  policy file is read then (and inlined), so a loaded spec needs nothing but itself to build the
  guard: it is what gets shipped to workers. ``model_dump()`` round-trips through
  :meth:`GuardConfig.from_mapping`.
- No secrets: API keys, auth headers and webhook URLs that carry tokens come from environment
  variables named in the file, read when the auditor or sink is built. URLs with credentials or
  query strings are refused.

Auditors and backends never import this module; it imports them only when building.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from traceguard._config_auditors import (
    AuditorSpec,
    BaselineSpec,
    GuardTraceSpec,
    HoliSafeSpec,
    LlavaGuardSpec,
    PromptFiles,
    SafeGuardSpec,
    SingleAuditorSpec,
    StagedSpec,
)
from traceguard._config_backends import BackendSpec, LocalBackendSpec, ServedBackendSpec
from traceguard._config_checkpoints import CheckpointsSpec
from traceguard._config_fields import (
    EnvName,
    ResolvedPath,
    Spec,
    env_headers,
    refuse_inline_secret,
    resolve_path,
    url_without_secrets,
)
from traceguard._config_files import ConfigDocument, describe_validation_error, read_document
from traceguard._config_serve import ServeSpec
from traceguard._exceptions import ConfigurationError
from traceguard._images import ImageAccess
from traceguard._policy import Policy

if TYPE_CHECKING:
    from traceguard._auditor import Auditor
    from traceguard._checkpoints import AuditSchedule
    from traceguard._guard import Guard
    from traceguard._sinks import Sink

__all__ = [
    "AuditorSpec",
    "BackendSpec",
    "BaselineSpec",
    "CheckpointsSpec",
    "GuardConfig",
    "GuardTraceSpec",
    "HoliSafeSpec",
    "ImagesSpec",
    "JsonlSinkSpec",
    "LlavaGuardSpec",
    "LocalBackendSpec",
    "PromptFiles",
    "ReviewSpec",
    "SafeGuardSpec",
    "ServeSpec",
    "ServedBackendSpec",
    "SingleAuditorSpec",
    "SinkSpec",
    "StagedSpec",
    "WebhookSinkSpec",
]

_DEFAULT_ACCESS = ImageAccess()


class ImagesSpec(Spec):
    """Where the auditors may load images from, and their limits (:class:`ImageAccess`).

    The defaults read only images carried in the trace itself (bytes, data URIs): paths need a
    ``root``, URLs need ``allow_remote``.
    """

    root: ResolvedPath | None = None
    """Image paths must resolve under this folder (relative: to the configuration file)."""
    allow_any_path: bool = False
    allow_remote: bool = False
    allow_private_hosts: bool = False
    max_bytes: PositiveInt = _DEFAULT_ACCESS.max_bytes
    max_pixels: PositiveInt = _DEFAULT_ACCESS.max_pixels
    timeout_s: PositiveFloat = _DEFAULT_ACCESS.timeout_s
    max_redirects: NonNegativeInt = _DEFAULT_ACCESS.max_redirects

    def access(self) -> ImageAccess:
        """The :class:`ImageAccess` every auditor of the configuration gets."""
        return ImageAccess(**self.model_dump())


class JsonlSinkSpec(Spec):
    """:class:`~traceguard.JsonlSink`: one JSON line per decision appended to ``path``."""

    kind: Literal["jsonl"] = "jsonl"
    path: ResolvedPath
    fsync: bool = False

    def build(self) -> Sink:
        """The sink (opens the file)."""
        from traceguard import JsonlSink

        try:
            return JsonlSink(self.path, fsync=self.fsync)
        except OSError as exc:
            raise ConfigurationError(f"jsonl sink: cannot open {self.path}: {exc}") from None


class WebhookSinkSpec(Spec):
    """:class:`~traceguard.WebhookSink`: POSTs each decision as JSON, at least once.

    Give ``url``, or ``url_env`` when the URL itself is the secret (Slack and Teams webhooks).
    Header values are read from environment variables.
    """

    kind: Literal["webhook"] = "webhook"
    url: str | None = None
    url_env: EnvName | None = None
    headers_from_env: dict[str, EnvName] = Field(default_factory=dict)
    timeout: PositiveFloat = 10.0
    max_retries: NonNegativeInt = 3
    backoff: NonNegativeFloat = 0.5
    max_backoff: NonNegativeFloat = 30.0
    batch_size: PositiveInt = 1
    max_queue: PositiveInt = 10_000
    spill_dir: ResolvedPath | Literal[False] | None = None
    """Where undelivered records wait on disk (default: the user's state folder); false: not."""
    allow_private: bool = False
    """Allow a receiver on this machine, a private network or link-local."""
    close_timeout: NonNegativeFloat = 10.0
    headers: None = Field(default=None, exclude=True, repr=False)

    @field_validator("headers", mode="before")
    @classmethod
    def _no_inline_headers(cls, value: object) -> None:
        raise refuse_inline_secret("headers", "use headers_from_env")

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        return url_without_secrets(value, where="webhook") if value is not None else None

    @model_validator(mode="after")
    def _one_url(self) -> WebhookSinkSpec:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("give either url or url_env, not both")
        return self

    def build(self) -> Sink:
        """The sink."""
        from traceguard import WebhookSink

        url = self.url
        if url is None:
            url = os.environ.get(self.url_env or "")
            if not url:
                raise ConfigurationError(
                    f"webhook sink: the environment variable {self.url_env} is not set"
                )
        return WebhookSink(
            url,
            headers=env_headers(self.headers_from_env, what="webhook sink"),
            timeout=self.timeout,
            max_retries=self.max_retries,
            backoff=self.backoff,
            max_backoff=self.max_backoff,
            batch_size=self.batch_size,
            max_queue=self.max_queue,
            spill_dir=self.spill_dir,
            allow_private=self.allow_private,
            close_timeout=self.close_timeout,
        )


SinkSpec = Annotated[JsonlSinkSpec | WebhookSinkSpec, Field(discriminator="kind")]


class ReviewSpec(Spec):
    """The human review queue escalations go to (a SQLite file), served by ``traceguard
    review``."""

    path: ResolvedPath
    escalations_only: bool = True
    """Store only escalated decisions (False: every decision)."""
    store_content: bool = True
    """Keep the audited text and image thumbnails for the reviewer (False: hashes only)."""
    max_age: str | None = None
    """Retention, e.g. ``30d``: resolved items older than this are purged."""
    base_url: str | None = None
    """Where reviewers reach the review app; escalation records (and so webhook notifications)
    then link to the item's page."""
    timeout: PositiveFloat = 5.0
    """Seconds one database attempt waits for another process's lock (callers never wait)."""
    wait: bool = False
    """A guard built from this configuration holds escalated calls until a reviewer decides
    (``Guard(on_escalate="wait")``)."""
    wait_timeout: PositiveFloat = 300.0
    """How long such a call waits before the policy's fallback applies (``review_timeout``)."""

    @field_validator("max_age")
    @classmethod
    def _check_age(cls, value: str | None) -> str | None:
        if value is not None:
            from traceguard.review import parse_age

            parse_age(value)
        return value

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str | None) -> str | None:
        if value is not None:
            from traceguard.review._sink import check_review_url

            return check_review_url(value)
        return value

    def build(self, image_access: ImageAccess | None = None) -> Sink:
        """The queue, as a sink; ``image_access`` lets it make thumbnails of image files."""
        from traceguard import ReviewQueue

        try:
            return ReviewQueue(
                self.path,
                escalations_only=self.escalations_only,
                store_content=self.store_content,
                image_access=image_access,
                timeout=self.timeout,
                max_age=self.max_age,
                review_url=self.base_url,
            )
        except ValueError as exc:
            raise ConfigurationError(f"review: {exc}") from None
        except Exception as exc:  # sqlite3 errors: a missing folder, a locked or foreign file
            raise ConfigurationError(f"review queue {self.path}: {exc}") from None


def _policy_from_path(value: object, info: ValidationInfo) -> object:
    """A policy given as a path is read now (relative to the configuration file) and inlined."""
    if not isinstance(value, str | os.PathLike):
        return value
    path = resolve_path(Path(value), info)
    try:
        return Policy.from_file(path)
    except ConfigurationError as exc:
        raise ValueError(str(exc)) from None


class GuardConfig(Spec):
    """The whole guard: auditor, policy, images, sinks and review queue.

    Load it with :meth:`from_file` (YAML, TOML or JSON) or :meth:`from_mapping`; build the parts
    with :meth:`build_auditor`, :meth:`build_policy`, :meth:`build_sinks`, or everything at once
    with :meth:`build_guard`. Subclasses may add sections (the proxy adds its own).
    """

    auditor: AuditorSpec
    policy: Policy = Field(default_factory=Policy)
    """The policy inline, or the path of a policy file (read and inlined at load)."""
    images: ImagesSpec = Field(default_factory=ImagesSpec)
    sinks: tuple[SinkSpec, ...] = ()
    review: ReviewSpec | None = None
    checkpoints: CheckpointsSpec | None = None
    """When streaming integrations and the proxy audit a stream before it ends."""
    serve: ServeSpec | None = None
    """How ``traceguard serve`` runs (:mod:`traceguard._config_serve`); other uses ignore it."""

    @field_validator("policy", mode="before")
    @classmethod
    def _read_policy(cls, value: object, info: ValidationInfo) -> object:
        return _policy_from_path(value, info)

    # -- loading ---------------------------------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> GuardConfig:
        """Load a ``.yaml``/``.yml``, ``.toml`` or ``.json`` configuration file.

        Raises:
            ConfigurationError: unreadable file, syntax error, unknown key, invalid value,
                missing file it refers to; each problem on its own line, naming the file, the
                line and the key.
        """
        document = read_document(path, what="guard configuration")
        return cls._validated(document.data, document.path.parent, str(document.path), document)

    @classmethod
    def from_mapping(
        cls,
        data: Mapping[str, Any],
        *,
        base_dir: str | os.PathLike[str] | None = None,
        source: str = "<mapping>",
    ) -> GuardConfig:
        """Validate configuration data; relative paths resolve against ``base_dir`` (default:
        the working directory). ``source`` names the data in error messages."""
        base = Path(base_dir) if base_dir is not None else Path.cwd()
        return cls._validated(dict(data), base, source, None)

    @classmethod
    def _validated(
        cls, data: dict[str, Any], base_dir: Path, source: str, document: ConfigDocument | None
    ) -> GuardConfig:
        try:
            return cls.model_validate(data, context={"base_dir": base_dir.resolve()})
        except ValidationError as exc:
            message = describe_validation_error(
                exc, source=source, data=data, document=document, title="invalid configuration"
            )
            raise ConfigurationError(message) from None

    # -- building --------------------------------------------------------------------------------

    def build_auditor(self) -> Auditor:
        """The configured auditor, with the ``images`` access (models load on first use)."""
        return self.auditor.build(self.images.access())

    def build_policy(self) -> Policy:
        """The policy."""
        return self.policy

    def build_checkpoints(self) -> AuditSchedule | None:
        """The checkpoint schedule, with its own auditor if the section names one."""
        if self.checkpoints is None:
            return None
        return self.checkpoints.schedule(self.images.access())

    def build_sinks(self) -> list[Sink]:
        """The sinks, then the review queue if configured. If one cannot be built, those
        already built are closed."""
        built: list[Sink] = []
        try:
            for spec in self.sinks:
                built.append(spec.build())
            if self.review is not None:
                built.append(self.review.build(self.images.access()))
        except BaseException:
            for sink in built:
                sink.close()
            raise
        return built

    def build_guard(self, *, raise_on_block: bool = True) -> Guard:
        """A :class:`~traceguard.Guard` over all of it; closing the guard closes the auditor."""
        from traceguard import Guard

        sinks = self.build_sinks()
        auditor: Auditor | None = None
        try:
            auditor = self.build_auditor()
            checkpoints = self.build_checkpoints()
        except BaseException:
            for sink in sinks:
                sink.close()
            if auditor is not None:
                auditor.close()
            raise
        review = self.review
        return Guard(
            auditor,
            self.policy,
            sinks,
            raise_on_block=raise_on_block,
            owns_auditor=True,
            on_escalate="wait" if review is not None and review.wait else "fallback",
            review_timeout=review.wait_timeout if review is not None else 300.0,
            checkpoints=checkpoints,
        )

    # -- facts the command line and the runners need ---------------------------------------------

    def runs_locally(self) -> bool:
        """True when some model of the configuration runs in this process."""
        return any(_is_local(spec) for spec in _auditor_specs(self.auditor))

    def is_served(self) -> bool:
        """True when some model of the configuration is called over HTTP."""
        return any(
            isinstance(getattr(spec, "backend", None), ServedBackendSpec)
            for spec in _auditor_specs(self.auditor)
        )


def _auditor_specs(spec: Any) -> list[Any]:
    return spec.auditor_specs() if isinstance(spec, StagedSpec) else [spec]


def _is_local(spec: Any) -> bool:
    return isinstance(spec, HoliSafeSpec) or isinstance(
        getattr(spec, "backend", None), LocalBackendSpec
    )
