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
"""

from __future__ import annotations

from traceguard._decision import ReviewOutcome
from traceguard.review._entry import offline_escalation_id
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

__all__ = [
    "AlreadyResolved",
    "Escalation",
    "EscalationContent",
    "EscalationFilter",
    "EscalationStore",
    "ImageInfo",
    "Page",
    "ReviewOutcome",
    "ReviewQueue",
    "SourceLocation",
    "StoredImage",
    "offline_escalation_id",
    "parse_age",
]
