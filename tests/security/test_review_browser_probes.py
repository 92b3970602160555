"""The review app's pages under hostile content, rendered by Debian's headless Chromium.

Every field an adversary can write (audited text, trace and thread ids, model, source path,
categories, auditor and reviewer names, notes, tool calls, auditor errors, probabilities'
labels) and every parameter the pages reflect (filters, ``next``) carries script in several
forms, and a right-to-left override. The browser must run none of it: no dialog, no flag set
by a payload, no element or attribute a payload made, no ``javascript:`` link, and no raw bidi
control reordering what a reviewer reads (finding: the source, auditor and category fields
showed it raw, so an integration name could display the model name after it reversed).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from traceguard import AuditRecord, Policy, ReviewQueue, Trace
from traceguard._decision import Decision
from traceguard._trace import ToolCall, Turn
from traceguard._verdict import AuditStatus, Verdict
from traceguard.review import EscalationStore, create_app

from ._served import serving

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TOKEN = "probe-browser-token-0123456789abcdef"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason=f"needs {CHROMIUM}"),
]

PAYLOAD = (
    "<script>window.__pwned='script';alert(1)</script>"
    "<img src=x onerror=\"window.__pwned='img';alert(2)\">"
    '"><svg/onload="window.__pwned=\'svg\'">'
    "'><a id=planted href=\"javascript:window.__pwned='link'\">x</a>"
    "<iframe srcdoc=\"<script>parent.__pwned='frame'</script>\"></iframe>"
    "{{7*7}}\u202e"
)
"""Script as an element, an event handler, an attribute break-out, a link, a frame, and a
template expression (the app's templates must not evaluate it)."""


def _record(n: int, trace_text: str) -> AuditRecord:
    trace = Trace(
        query=f"{trace_text} query",
        thinking=f"{trace_text} thinking",
        response=f"{trace_text} response",
        tool_calls=(ToolCall(name=trace_text, arguments=trace_text, id=trace_text),),
        history=(Turn(role=trace_text, content=trace_text),),
        id=trace_text,
        model=trace_text,
        metadata={
            "integration": trace_text,
            "thread_id": trace_text,
            "session_id": trace_text,
            "run_id": trace_text,
            "source": {"path": trace_text, "line": 1, "turn": 0},
        },
    )
    if n == 1:
        verdict = Verdict.failed(
            AuditStatus.UNPARSEABLE, auditor=trace_text, error=ValueError(trace_text)
        )
    else:
        verdict = Verdict.ok(
            auditor=trace_text,
            risk=1.0,
            categories=(trace_text,),
            analysis=trace_text,
            probabilities={trace_text: 1.0},
        )
    decided = Policy(harmful="escalate", unparseable="escalate").decide(verdict, trace)
    return AuditRecord.from_decision(
        trace,
        Decision(
            action=decided.action,
            reason=trace_text,
            verdict=verdict,
            disposition=decided.disposition,
            trace_id=trace.id,
            escalation_id=f"xss-{n}",
        ),
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def app_url(tmp_path: Path) -> Iterator[str]:
    queue = ReviewQueue(tmp_path / "q.sqlite")
    for n in range(3):
        queue.emit(_record(n, PAYLOAD))
    queue.close()
    store = EscalationStore(tmp_path / "q.sqlite")
    store.resolve("xss-2", "approved", reviewer=PAYLOAD[:80], note=PAYLOAD)
    with serving(create_app(store, token=TOKEN), lifespan="off") as url:
        yield url
    store.close()


def _inert(page: Any) -> None:
    page.wait_for_load_state("load")
    assert page.evaluate("window.__pwned === undefined")
    scripts = page.locator("script")
    assert scripts.count() <= 1  # the app's own, or none (a plain-text 404)
    if scripts.count():
        assert scripts.first.get_attribute("src") == "/static/app.js"
    assert page.locator("svg, iframe, #planted, a[href^='javascript:']").count() == 0
    with_handlers = page.evaluate(
        "Array.from(document.querySelectorAll('*')).filter("
        "e => Array.from(e.attributes).some(a => a.name.startsWith('on'))).length"
    )
    assert with_handlers == 0
    # Bidi overrides and invisible characters are shown as escapes in every field, so a
    # value cannot reorder or hide the text around it.
    assert "\u202e" not in page.content()
    if page.locator("main").count():
        assert "{{7*7}}" in page.content() or "xss" not in page.url


@pytest.mark.probe("review app: hostile content and headers")
def test_no_field_or_parameter_runs_script(
    browser: Any, app_url: str, tmp_path: Path, probe_cases: Any
) -> None:
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    blocked: list[str] = []
    page.on("console", lambda message: blocked.append(message.text))

    hostile = quote(PAYLOAD, safe="")
    page.goto(f"{app_url}/login?next={hostile}")
    _inert(page)
    page.fill("input[name=name]", PAYLOAD[:80])
    page.fill("input[name=token]", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_selector("nav.tabs")
    _inert(page)

    filters = "&".join(
        f"{name}={hostile}"
        for name in ("category", "auditor", "integration", "thread_id", "since", "risk")
    )
    targets = (
        "/?state=all",
        f"/?state=all&{filters}",
        f"/?state={hostile}",
        "/items/xss-0",
        "/items/xss-1",
        "/items/xss-2",
        f"/items/xss-0?{filters}",
        f"/items/{hostile}",
    )
    # Pages rendered: the login form with a hostile next, the list after login, the targets,
    # and the "already resolved" answer.
    probe_cases(2 + len(targets) + 1)
    for target in targets:
        page.goto(app_url + target)
        _inert(page)
    # The detail page shows every field as the text it is.
    page.goto(app_url + "/items/xss-0")
    assert page.locator("#thinking").inner_text() == f"{PAYLOAD} thinking".replace(
        "\u202e", "\\u202e"
    )
    page.screenshot(path=str(tmp_path / "hostile-detail.png"), full_page=True)

    # A second reviewer is told who won, with the hostile name and note as text.
    page.goto(app_url + "/items/xss-0")
    page.evaluate("document.querySelector('#resolve').action = '/items/xss-2/resolve'")
    page.click("#approve")
    page.wait_for_load_state("load")
    assert "Already resolved" in page.content()
    _inert(page)
    context.close()
    assert dialogs == []
