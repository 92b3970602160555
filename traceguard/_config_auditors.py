"""The auditor part of :class:`~traceguard.config.GuardConfig`: auditors and their backends.

Each spec mirrors one constructor (same names, same defaults) and builds it with ``build()``.
Auditors and backends never import this module; it imports them only inside ``build()``, so
reading a configuration needs neither torch nor a network.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from traceguard._exceptions import ConfigurationError

if TYPE_CHECKING:
    from traceguard._auditor import Auditor
    from traceguard._images import ImageAccess
    from traceguard.backends import ChatBackend

__all__ = [
    "AuditorSpec",
    "BackendSpec",
    "BaselineSpec",
    "GuardTraceSpec",
    "HoliSafeSpec",
    "LlavaGuardSpec",
    "LocalBackendSpec",
    "PromptFiles",
    "SafeGuardSpec",
    "ServedBackendSpec",
    "SingleAuditorSpec",
    "StagedSpec",
    "env_headers",
    "refuse_inline_secret",
    "resolve_path",
    "url_without_secrets",
]

DEFAULT_API_KEY_ENV = "TRACEGUARD_AUDITOR_API_KEY"
"""The environment variable a served backend reads its API key from unless told otherwise."""


class Spec(BaseModel):
    """Base of every configuration section.

    Frozen, so a spec shared by threads (or shipped to workers) cannot change under them; extra
    keys are refused, so a typo (``max_new_token: 50``) is an error, never a setting silently
    ignored.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


# -- paths and secrets ------------------------------------------------------------------------


def _base_dir(info: ValidationInfo) -> Path:
    context = info.context if isinstance(info.context, dict) else {}
    base = context.get("base_dir")
    return Path(base) if base is not None else Path.cwd()


def resolve_path(value: Path, info: ValidationInfo) -> Path:
    """Relative paths are taken relative to the configuration file's folder; ``~`` expands."""
    path = value.expanduser()
    return path if path.is_absolute() else (_base_dir(info) / path).resolve()


def _existing_file(value: Path, info: ValidationInfo) -> Path:
    path = resolve_path(value, info)
    if not path.is_file():
        raise ValueError(f"file not found: {path}")
    return path


def _model_ref(value: str, info: ValidationInfo) -> str:
    """A checkpoint folder becomes absolute; a hub id (``org/name``) stays as written."""
    if not value.strip():
        raise ValueError("the model must not be empty")
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    candidate = _base_dir(info) / path
    if value.startswith((".", "~")) or candidate.exists():
        return str(candidate.resolve())
    return value


def _existing_dir(value: Path, info: ValidationInfo) -> Path:
    path = resolve_path(value, info)
    if not path.is_dir():
        raise ValueError(f"folder not found: {path}")
    return path


FilePath = Annotated[Path, AfterValidator(_existing_file)]
"""A file that must exist when the configuration is loaded."""
DirectoryPath = Annotated[Path, AfterValidator(_existing_dir)]
"""A folder that must exist when the configuration is loaded."""
ResolvedPath = Annotated[Path, AfterValidator(resolve_path)]
"""A path made absolute against the configuration file's folder."""
ModelRef = Annotated[str, AfterValidator(_model_ref)]
"""A local checkpoint folder (made absolute) or a model hub id."""
EnvName = Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
"""The name of an environment variable."""


def url_without_secrets(url: str, *, where: str) -> str:
    """Refuse URLs carrying credentials: a configuration file is not a place for secrets."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an http(s) URL, not {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            f"the {where} URL carries credentials; put them in an environment variable instead"
        )
    if parts.query:
        raise ValueError(
            f"the {where} URL has a query string, which often carries a token; "
            "put the URL in an environment variable instead"
        )
    return url


def env_headers(names: dict[str, str], *, what: str) -> dict[str, str]:
    """Header values read from the environment variables ``names`` maps header names to."""
    headers = {}
    for header, variable in names.items():
        value = os.environ.get(variable)
        if not value:
            raise ConfigurationError(
                f"{what}: header {header!r} reads the environment variable {variable}, "
                "which is not set"
            )
        headers[header] = value
    return headers


def refuse_inline_secret(field: str, instead: str) -> ValueError:
    """The error for a credential-bearing key written into the file."""
    return ValueError(
        f"{field} may hold credentials and is never read from the file: {instead} "
        "(the configuration is shipped to workers and shown in logs)"
    )


# -- backends ---------------------------------------------------------------------------------


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


# -- auditors ---------------------------------------------------------------------------------


class PromptFiles(Spec):
    """GuardTrace prompt templates read from files; any not given is the packaged one."""

    system: FilePath | None = None
    user: FilePath | None = None
    system_binary: FilePath | None = None
    version: str | None = None


class GuardTraceSpec(Spec):
    """:class:`~traceguard.GuardTraceAuditor`: audits the query, thinking, response and images."""

    kind: Literal["guardtrace"] = "guardtrace"
    backend: BackendSpec
    mode: Literal["full", "score"] = "full"
    prompts: PromptFiles | DirectoryPath | None = None
    """Prompt files, or a folder: your copy of the GuardTrace-VL repository, whose trained
    prompts are then used (:meth:`~traceguard.PromptSet.from_guardtrace_repo`)."""
    max_new_tokens: PositiveInt = 2000
    score_prefix: str | None = None
    """The assistant prefix score mode continues from (default: the packaged one)."""
    min_mass: float = Field(default=0.5, gt=0.0, le=1.0)
    top_k: PositiveInt = 20
    on_image_error: Literal["invalid_input", "placeholder"] = "invalid_input"
    name: str | None = None

    def build(self, access: ImageAccess) -> Auditor:
        """The auditor."""
        from traceguard import GuardTraceAuditor, PromptSet

        prompts = None
        if isinstance(self.prompts, Path):
            prompts = PromptSet.from_guardtrace_repo(self.prompts)
        elif self.prompts is not None:
            prompts = PromptSet.from_files(
                system=self.prompts.system,
                user=self.prompts.user,
                system_binary=self.prompts.system_binary,
                version=self.prompts.version,
            )
        options: dict[str, Any] = {}
        if self.score_prefix is not None:
            options["score_prefix"] = self.score_prefix
        return GuardTraceAuditor(
            self.backend.build(),
            mode=self.mode,
            prompts=prompts,
            image_access=access,
            on_image_error=self.on_image_error,
            max_new_tokens=self.max_new_tokens,
            name=self.name,
            min_mass=self.min_mass,
            top_k=self.top_k,
            **options,
        )


CategoryMode = Literal["default", "non_violating", "sensitive"]


class LlavaGuardSpec(Spec):
    """:class:`~traceguard.LlavaGuardAuditor`: rates each image against a safety policy."""

    kind: Literal["llavaguard"] = "llavaguard"
    backend: BackendSpec
    policy: dict[str, CategoryMode] | FilePath | None = None
    """Category overrides (``{O3: non_violating}``) or a file holding them."""
    policy_repo: DirectoryPath | None = None
    """Your clone of the LlavaGuard repository: use the policy text the model was trained on
    (:meth:`~traceguard.LlavaGuardPolicy.from_llavaguard_repo`), with ``policy``'s overrides."""
    max_new_tokens: PositiveInt = 500
    no_image: Literal["safe", "invalid_input"] = "safe"
    name: str | None = None

    @field_validator("policy")
    @classmethod
    def _known_categories(
        cls, value: dict[str, CategoryMode] | Path | None
    ) -> dict[str, CategoryMode] | Path | None:
        if isinstance(value, dict):
            from traceguard.taxonomy import llavaguard_code

            unknown = [key for key in value if llavaguard_code(key) in (None, "NA")]
            if unknown:
                raise ValueError(f"unknown LlavaGuard categories {unknown} (use O1..O9 or titles)")
        return value

    def build(self, access: ImageAccess) -> Auditor:
        """The auditor."""
        from traceguard import LlavaGuardAuditor, LlavaGuardPolicy
        from traceguard.auditors.llavaguard import LOCAL_MODEL_CLASS

        if isinstance(self.policy, Path):
            policy = LlavaGuardPolicy.from_file(self.policy)
        else:
            policy = LlavaGuardPolicy.from_mapping(self.policy or {})
        if self.policy_repo is not None:
            policy = LlavaGuardPolicy.from_llavaguard_repo(self.policy_repo, policy.overrides)
        return LlavaGuardAuditor(
            self.backend.build(default_model_class=LOCAL_MODEL_CLASS),
            policy=policy,
            image_access=access,
            max_new_tokens=self.max_new_tokens,
            no_image=self.no_image,
            name=self.name,
        )


class SafeGuardSpec(Spec):
    """:class:`~traceguard.SafeGuardAuditor`: a safe/unsafe judgement of each image."""

    kind: Literal["safeguard"] = "safeguard"
    backend: BackendSpec
    policy: str | None = None
    """The policy text (default: the packaged policy)."""
    policy_file: FilePath | None = None
    """Or a UTF-8 file holding it."""
    reasoning: bool = True
    max_new_tokens: PositiveInt | None = None
    no_image: Literal["safe", "invalid_input"] = "safe"
    name: str | None = None

    @model_validator(mode="after")
    def _one_policy(self) -> SafeGuardSpec:
        if self.policy is not None and self.policy_file is not None:
            raise ValueError("give either policy (the text) or policy_file, not both")
        return self

    def build(self, access: ImageAccess) -> Auditor:
        """The auditor."""
        from traceguard import SafeGuardAuditor

        return SafeGuardAuditor(
            self.backend.build(),
            policy=self.policy_file if self.policy_file is not None else self.policy,
            reasoning=self.reasoning,
            image_access=access,
            max_new_tokens=self.max_new_tokens,
            no_image=self.no_image,
            name=self.name,
        )


class HoliSafeSpec(Spec):
    """:class:`~traceguard.HoliSafeAuditor`: a safety head run in process (no served form)."""

    kind: Literal["holisafe"] = "holisafe"
    model: ModelRef
    remote_code: bool = False
    base: Literal["auto", "qwen2_5_vl", "gemma3"] = "auto"
    processor: ModelRef | None = None
    unsafe_threshold: float = Field(default=0.5, gt=0.0, le=1.0)
    potential_threshold: float = Field(default=0.2, gt=0.0, le=1.0)
    prompt: str | None = None
    device: str = "cpu"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    min_pixels: PositiveInt | None = None
    max_pixels: PositiveInt | None = None
    batch_size: PositiveInt = 8
    no_image: Literal["safe", "invalid_input"] = "safe"
    name: str | None = None

    @model_validator(mode="after")
    def _ordered_thresholds(self) -> HoliSafeSpec:
        if self.potential_threshold > self.unsafe_threshold:
            raise ValueError("potential_threshold must not exceed unsafe_threshold")
        return self

    def build(self, access: ImageAccess) -> Auditor:
        """The auditor (loads the checkpoint on the first call)."""
        from traceguard import HoliSafeAuditor

        options: dict[str, Any] = {}
        if self.prompt is not None:
            options["prompt"] = self.prompt
        return HoliSafeAuditor(
            self.model,
            remote_code=self.remote_code,
            base=self.base,
            processor=self.processor,
            unsafe_threshold=self.unsafe_threshold,
            potential_threshold=self.potential_threshold,
            device=self.device,
            dtype=self.dtype,
            min_pixels=self.min_pixels,
            max_pixels=self.max_pixels,
            batch_size=self.batch_size,
            image_access=access,
            no_image=self.no_image,
            name=self.name,
            **options,
        )


class BaselineSpec(Spec):
    """:class:`~traceguard.BaselineAuditor`: the transparent rule baseline (no model)."""

    kind: Literal["baseline"] = "baseline"

    def build(self, access: ImageAccess) -> Auditor:
        """The auditor."""
        from traceguard import BaselineAuditor

        return BaselineAuditor(image_access=access)


SingleAuditorSpec = Annotated[
    GuardTraceSpec | LlavaGuardSpec | SafeGuardSpec | HoliSafeSpec | BaselineSpec,
    Field(discriminator="kind"),
]


def _stage_shape(value: object) -> str:
    return "group" if isinstance(value, list | tuple) else "one"


Stage = Annotated[
    Annotated[SingleAuditorSpec, Tag("one")]
    | Annotated[tuple[SingleAuditorSpec, ...], Tag("group")],
    Discriminator(_stage_shape),
]
"""One auditor, or a list of auditors that run concurrently."""


class StagedSpec(Spec):
    """:class:`~traceguard.StagedAuditor`: stages in order; a stage may be a list run at once."""

    kind: Literal["staged"] = "staged"
    stages: tuple[Stage, ...]
    stop_on_harmful: bool = True
    name: str | None = None

    # Lengths are checked here rather than with min_length: pydantic reports a tuple whose items
    # failed as "too short" as well, a second, misleading error.
    @field_validator("stages")
    @classmethod
    def _not_empty(cls, stages: tuple[Any, ...]) -> tuple[Any, ...]:
        if not stages or any(isinstance(stage, tuple) and not stage for stage in stages):
            raise ValueError("stages and every list of auditors in them must not be empty")
        return stages

    def build(self, access: ImageAccess) -> Auditor:
        """The auditor; if one stage cannot be built, the ones already built are closed."""
        from traceguard import StagedAuditor

        built: list[Auditor | list[Auditor]] = []
        try:
            for stage in self.stages:
                if isinstance(stage, tuple):
                    group: list[Auditor] = []
                    built.append(group)
                    for member in stage:
                        group.append(member.build(access))
                else:
                    built.append(stage.build(access))
            return StagedAuditor(built, stop_on_harmful=self.stop_on_harmful, name=self.name)
        except BaseException:
            for item in built:
                for auditor in item if isinstance(item, list) else [item]:
                    auditor.close()
            raise

    def auditor_specs(self) -> list[SingleAuditorSpec]:
        """Every auditor of every stage, in order."""
        return [m for s in self.stages for m in (s if isinstance(s, tuple) else (s,))]


AuditorSpec = Annotated[
    GuardTraceSpec | LlavaGuardSpec | SafeGuardSpec | HoliSafeSpec | BaselineSpec | StagedSpec,
    Field(discriminator="kind"),
]
