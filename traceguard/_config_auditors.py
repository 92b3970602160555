"""The auditor part of :class:`~traceguard.config.GuardConfig`: one spec per auditor, tagged by
``kind`` (their backends are ``_config_backends``, the shared fields ``_config_fields``).

Each spec mirrors one constructor (same names, same defaults) and builds it with ``build()``.
Auditors and backends never import this module; it imports them only inside ``build()``, so
reading a configuration needs neither torch nor a network.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Discriminator, Field, PositiveInt, Tag, field_validator, model_validator

from traceguard._config_backends import BackendSpec
from traceguard._config_fields import DirectoryPath, FilePath, ModelRef, Spec

if TYPE_CHECKING:
    from traceguard._auditor import Auditor
    from traceguard._images import ImageAccess

__all__ = [
    "AuditorSpec",
    "BaselineSpec",
    "GuardTraceSpec",
    "HoliSafeSpec",
    "LlavaGuardSpec",
    "PromptFiles",
    "SafeGuardSpec",
    "SingleAuditorSpec",
    "StagedSpec",
]


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
