"""The ``checkpoints`` section of a guard configuration: :class:`CheckpointsSpec`.

::

    checkpoints:               # audit streamed thinking before it ends (README: Mid-stream)
      every_tokens: 128
      boundary: sentence       # or step; optional
      auditor: {...}           # optional: another auditor for checkpoints (default: the guard's,
                               #   GuardTrace in score mode on the same backend)

It mirrors :class:`~traceguard.AuditSchedule` field by field; the guard built from the file
(``Guard.from_config``, the proxy) audits every stream on that schedule.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from traceguard._checkpoints import AuditSchedule
from traceguard._config_auditors import AuditorSpec
from traceguard._config_fields import Spec
from traceguard._exceptions import ConfigurationError
from traceguard._images import ImageAccess

__all__ = ["CheckpointsSpec"]


class CheckpointsSpec(Spec):
    """When streams are audited before they end (:class:`~traceguard.AuditSchedule`)."""

    every_tokens: PositiveInt | None = 128
    boundary: Literal["sentence", "step"] | None = None
    min_tokens: PositiveInt = 32
    scope: Literal["thinking", "output"] = "thinking"
    chars_per_token: PositiveFloat = 4.0
    auditor: AuditorSpec | None = Field(default=None)
    """The auditor of checkpoints; default: the guard's own in its checkpoint form."""

    @model_validator(mode="after")
    def _is_a_schedule(self) -> CheckpointsSpec:
        try:
            self.schedule()
        except ConfigurationError as exc:
            raise ValueError(str(exc)) from None
        return self

    def schedule(self, access: ImageAccess | None = None) -> AuditSchedule:
        """The schedule; with ``access``, its own auditor built too (else none is built)."""
        return AuditSchedule(
            every_tokens=self.every_tokens,
            boundary=self.boundary,
            min_tokens=self.min_tokens,
            scope=self.scope,
            chars_per_token=self.chars_per_token,
            auditor=None if self.auditor is None or access is None else self.auditor.build(access),
        )
