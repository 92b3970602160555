"""``traceguard serve``: an OpenAI-compatible guard proxy (extra ``[proxy]``).

Point any OpenAI client at the proxy instead of the model server, and every chat completion
and Responses API answer is audited under the guard's policy before the client sees it::

    traceguard serve --config guard.yaml --upstream http://127.0.0.1:8000/v1

    from traceguard.proxy import create_app      # the ASGI app, for your own server
    app = create_app("guard.yaml", upstream="http://127.0.0.1:8000/v1")

This package is the proxy's only door; nothing in :mod:`traceguard` imports it.
"""

from __future__ import annotations

from traceguard._version import install_hint

try:
    import openai  # noqa: F401  (the SDK's types read upstream answers)
    import starlette  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"traceguard.proxy needs its extra: {install_hint('proxy')} (missing: {exc.name})"
    ) from exc

from traceguard.proxy.app import create_app
from traceguard.proxy.server import serve

__all__ = ["create_app", "serve"]
