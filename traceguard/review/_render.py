"""How the review app's pages render: the Jinja2 environment (autoescaping everything, every
printed value with its deceptive characters revealed) and the two page shapes, a template page
and a short message."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from traceguard.review._auth import Identity
from traceguard.review._store import MAX_NOTE_CHARS

__all__ = ["Renderer", "count_labels", "templates"]

_PACKAGE = Path(__file__).resolve().parent

# Characters that make text display differently from what it is (Trojan Source reordering,
# invisible joiners): shown as visible escapes so a reviewer sees what is really there.
_DECEPTIVE = re.compile("[\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")


def _reveal(text: Any) -> str:
    """Jinja filter: deceptive invisible characters as ``\\u202e``-style escapes.

    The result is still escaped by autoescaping; it is never marked safe.
    """
    if text is None:
        return ""
    return _DECEPTIVE.sub(lambda m: f"\\u{ord(m.group()):04x}", str(text))


def _finalize(value: Any) -> Any:
    """Jinja ``finalize``: every value a template prints goes through :func:`_reveal` (an
    integration or auditor name must not reorder the text after it); markup the templates
    build themselves is left alone."""
    if isinstance(value, Markup) or not isinstance(value, str):
        return value
    return _reveal(value)


def _risk_label(value: Any) -> str:
    return {0.0: "0 safe", 0.5: "0.5 potentially harmful", 1.0: "1 harmful"}.get(value, "—")


def templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_PACKAGE / "templates")),
        # Every template is HTML: escape everything, whatever the file name.
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_finalize,
    )
    env.filters["reveal"] = _reveal
    env.filters["risk_label"] = _risk_label
    env.filters["path"] = lambda value: quote(str(value), safe="")
    return Jinja2Templates(env=env)


class Renderer:
    """Renders the app's pages with ``templates``."""

    def __init__(self, templates: Jinja2Templates) -> None:
        self.templates = templates

    def page(
        self, request: Request, name: str, context: dict[str, Any], status_code: int = 200
    ) -> Response:
        """Template ``name`` with ``context`` (no identity and the note limit by default)."""
        context.setdefault("identity", None)
        context.setdefault("max_note", MAX_NOTE_CHARS)
        return self.templates.TemplateResponse(request, name, context, status_code=status_code)

    def message(
        self, request: Request, identity: Identity | None, status: int, title: str, text: str
    ) -> Response:
        """A short page saying ``title`` and ``text`` with HTTP ``status``."""
        return self.page(
            request,
            "message.html",
            {"identity": identity, "title": title, "text": text},
            status_code=status,
        )


def count_labels(counts: Mapping[str, int], cap: int) -> dict[str, str]:
    """Tab labels: exact counts, or ``1,000+`` where counting stopped at the cap."""
    labels = {state: f"{cap:,}+" if n > cap else f"{n:,}" for state, n in counts.items()}
    total = sum(min(n, cap) for n in counts.values())
    labels["all"] = f"{total:,}+" if any(n > cap for n in counts.values()) else f"{total:,}"
    return labels
