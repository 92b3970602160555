"""The exception tree of traceguard.

Every error the library raises on purpose derives from :class:`TraceguardError`::

    TraceguardError
    ├── ConfigurationError        bad options, policy files, missing extras
    ├── InputError                a trace, log line or image that cannot be used
    │   └── ImageError            an image that cannot be loaded within the limits
    │       └── ImageAccessDenied a path outside the allowed root, a remote URL not allowed
    ├── AuditorError              the auditor could not produce an output
    │   ├── AuditorTimeout
    │   ├── AuditorUnavailable    connection refused, 5xx after retries, every base URL down
    │   └── AuditorResponseError  4xx, malformed JSON, empty choices
    ├── ParseError                the auditor answered but no verdict could be read
    ├── SinkError                 a sink could not record an audit record
    └── Blocked                   the policy blocked the output; carries the Decision
        └── Escalated             escalated to a human, and held back meanwhile

Auditor failures are normally *data*: auditors return a :class:`~traceguard.Verdict` whose status
says what went wrong, and the policy decides what to do with it. The exceptions above surface
when a caller asks for them (for example ``Guard`` raising ``Blocked``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from traceguard._decision import Decision


class TraceguardError(Exception):
    """Root of every exception raised by traceguard."""


class ConfigurationError(TraceguardError):
    """Invalid configuration: options, policy files, prompt files or a missing optional extra."""


class InputError(TraceguardError):
    """A trace, a log record or an image that cannot be audited as given."""


class ImageError(InputError):
    """An image that cannot be loaded or decoded within the configured limits."""


class ImageAccessDenied(ImageError):
    """An image source the caller did not allow (remote URL, path outside the allowed root)."""


class AuditorError(TraceguardError):
    """The auditor failed to produce an output."""


class AuditorTimeout(AuditorError):
    """The auditor did not answer in time."""


class AuditorUnavailable(AuditorError):
    """The auditor could not be reached, or kept failing after retries."""


class AuditorResponseError(AuditorError):
    """The auditor answered with something that is not a usable completion."""


class ParseError(TraceguardError):
    """The auditor's output holds no readable verdict."""


class SinkError(TraceguardError):
    """A sink could not record an audit record (closed, rejected by the receiver, retries spent)."""


class Blocked(TraceguardError):
    """The policy decided that the audited output must not reach the caller.

    Attributes:
        decision: the full decision, with the verdict and the reason.
    """

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        super().__init__(f"blocked by traceguard: {decision.reason}")


class Escalated(Blocked):
    """The output was escalated to a human reviewer and is held back until then.

    ``escalation_id`` names the review queue item; ``Guard.wait_for_review(escalation_id, ...)``
    waits for the reviewer's decision.
    """

    @property
    def escalation_id(self) -> str | None:
        """The id of the escalation's review queue item."""
        return self.decision.escalation_id
