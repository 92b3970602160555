"""Human review of escalations: the queue, its database, and the reviewers' web app.

::

    from traceguard import Guard, ReviewQueue

    queue = ReviewQueue("reviews.sqlite")
    guard = Guard(auditor, sinks=[queue], on_escalate="wait", review_timeout=600)

    # elsewhere: traceguard review --queue reviews.sqlite   (the web app)

- :class:`ReviewQueue` is the sink: it files every escalation (text, thumbnails, verdict,
  reason, origin) without ever making the guarded call wait for the database.
- :class:`EscalationStore` is the database itself: listing, filtering, resolving, counts,
  retention, delivery marks for resumers. Reviewer tools and the web app use it directly.
- :func:`create_app` (needs ``traceguard-vl[review]``) builds the Starlette app that
  ``traceguard review`` serves. It is imported on first use, so this package stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from traceguard._decision import ReviewOutcome
from traceguard.review._entry import NewEscalation, offline_escalation_id
from traceguard.review._model import (
    AlreadyResolved,
    Escalation,
    EscalationContent,
    EscalationFilter,
    ImageInfo,
    Page,
    SourceLocation,
    StoredImage,
    parse_age,
)
from traceguard.review._sink import ReviewQueue
from traceguard.review._store import EscalationStore

if TYPE_CHECKING:
    from traceguard.review.app import create_app as create_app

__all__ = [
    "AlreadyResolved",
    "Escalation",
    "EscalationContent",
    "EscalationFilter",
    "EscalationStore",
    "ImageInfo",
    "NewEscalation",
    "Page",
    "ReviewOutcome",
    "ReviewQueue",
    "SourceLocation",
    "StoredImage",
    "create_app",
    "offline_escalation_id",
    "parse_age",
]


def __getattr__(name: str) -> Any:
    # The web app needs the [review] extra; load it only when asked for.
    if name == "create_app":
        from traceguard.review.app import create_app

        return create_app
    raise AttributeError(f"module 'traceguard.review' has no attribute {name!r}")
