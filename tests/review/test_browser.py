"""The review app in a real browser: Debian's headless Chromium driven by Playwright.

The whole loop: a LangGraph graph pauses on an escalation, a reviewer finds it in the list,
filters, opens it, approves it with a note, and the paused graph resumes and finishes. Then the
hostile cases: script in the audited text stays text, a page on another origin cannot make the
reviewer's browser resolve anything, and the keyboard flow works.
"""

from __future__ import annotations

import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from traceguard import Guard, ImageRef, Policy, ReviewQueue, Trace
from traceguard.review import EscalationStore

from ._helpers import escalated, png_bytes
from ._server import TOKEN, demo_queue, serving

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        shutil.which(CHROMIUM) is None, reason=f"needs Debian's chromium at {CHROMIUM}"
    ),
]

XSS_THINKING = (
    "<script>window.__pwned = 1; alert('script')</script>\n"
    "<img src=x onerror=\"window.__pwned = 2; alert('img')\">\n"
    "<a href=\"javascript:alert('link')\">a link</a>\n"
    "<svg xmlns='http://www.w3.org/2000/svg' onload='alert(1)'><script>alert(2)</script></svg>"
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    tab = context.new_page()
    dialogs: list[str] = []
    tab.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    tab.dialogs = dialogs
    yield tab
    context.close()


def log_in(page: Any, url: str, name: str = "Ana") -> None:
    page.goto(url + "/")
    page.fill("input[name=name]", name)
    page.fill("input[name=token]", TOKEN)
    page.click("button[type=submit]")
    scripted(page, "nav.tabs")


def scripted(page: Any, selector: str) -> None:
    """Wait for ``selector`` and for the page's deferred script (the keyboard shortcuts): keys
    pressed before it ran would be lost, which a loaded machine made happen."""
    page.wait_for_selector(selector)
    page.wait_for_load_state("domcontentloaded")


def test_list_filter_open_approve_and_the_paused_graph_finishes(page: Any, tmp_path: Path) -> None:
    from langchain_openai import ChatOpenAI
    from langgraph.checkpoint.memory import InMemorySaver

    from traceguard.integrations.langgraph import resume_reviewed
    from traceguard.testing import ScriptedAuditor, Step
    from traceguard.testing.openai_server import OpenAIServer, ScriptedResponse, chat_completion

    from .test_langgraph import REFUSAL, State

    queue = ReviewQueue(tmp_path / "reviews.sqlite")
    demo_queue_items = [escalated(Trace(query=f"other {n}", response="r")) for n in range(3)]
    for record in demo_queue_items:  # unrelated items the filter must hide
        queue.emit(record)
    guard = Guard(
        ScriptedAuditor(rule=lambda t: Step(risk=1.0, categories=("cybersecurity",))),
        Policy(harmful="escalate"),
        sinks=[queue],
    )
    with OpenAIServer() as server:
        server.enqueue(
            *[ScriptedResponse.json(chat_completion("Held answer about ports.")) for _ in range(2)]
        )
        model = ChatOpenAI(model="m", base_url=server.base_url, api_key="k", max_retries=0)
        graph = _graph(model, guard, State, REFUSAL, InMemorySaver())
        config = {"configurable": {"thread_id": "browser-thread"}}
        paused = graph.invoke({"question": "Which ports are open on 10.0.0.5?", "log": []}, config)
        escalation_id = paused["__interrupt__"][0].value["escalation_id"]
        queue.flush(30)

        store = EscalationStore(queue.path)
        with serving(store) as url:
            log_in(page, url)
            assert page.locator("tr[data-href]").count() == 4
            page.select_option("select[name=integration]", "langgraph")
            page.click("form.filters button[type=submit]")
            page.wait_for_url("**integration=langgraph**")
            rows = page.locator("tr[data-href]")
            assert rows.count() == 1
            rows.first.locator("a").click()
            page.wait_for_selector("#resolve")
            assert page.locator("#response").inner_text() == "Held answer about ports."
            assert "browser-thread" in page.locator("dl.meta").inner_text()
            page.fill("#note", "scan of our own lab host: fine")
            page.click("#approve")
            page.wait_for_selector(".resolved.approved")
            assert "Approved by Ana" in page.locator(".resolved").inner_text()
            page.screenshot(path=str(tmp_path / "detail.png"), full_page=True)
        item = store.get(escalation_id)
        assert (item.state, item.reviewer, item.note) == (
            "approved",
            "Ana",
            "scan of our own lab host: fine",
        )
        store.close()

        [resumed] = resume_reviewed(graph, queue)
        assert resumed.resolution == "approved"
        assert resumed.result["answer"] == "Held answer about ports."
        assert resumed.result["log"] == ["answered", "finished"]
        assert not server.unexpected
    queue.close()
    assert page.dialogs == []
    assert (tmp_path / "detail.png").stat().st_size > 10_000


def _graph(model: Any, guard: Guard, state: Any, refusal: str, checkpointer: Any) -> Any:
    from langgraph.graph import END, START, StateGraph

    from traceguard.integrations.langgraph import review_gate

    def answer(current: Any) -> dict[str, Any]:
        reply = model.invoke(current["question"])
        trace = Trace(query=current["question"], response=str(reply.content))
        decision = review_gate(guard, trace)
        return {"answer": refusal if decision.blocked else decision.response, "log": ["answered"]}

    builder = StateGraph(state)
    builder.add_node("answer", answer)
    builder.add_node("finish", lambda current: {"log": ["finished"]})
    builder.add_edge(START, "answer")
    builder.add_edge("answer", "finish")
    builder.add_edge("finish", END)
    return builder.compile(checkpointer=checkpointer)


def test_script_in_audited_text_stays_text(page: Any, tmp_path: Path) -> None:
    svg = b"<svg xmlns='http://www.w3.org/2000/svg' onload='alert(1)'></svg>"
    record = escalated(
        Trace(
            query="<img src=x onerror=alert('query')>",
            thinking=XSS_THINKING,
            response='<a href="javascript:alert(1)">click me</a>',
            images=(ImageRef.from_bytes(svg), ImageRef.from_bytes(png_bytes())),
        ),
        analysis="<script>alert('analysis')</script>",
    )
    queue = ReviewQueue(tmp_path / "q.sqlite")
    queue.emit(record)
    queue.close()
    store = EscalationStore(tmp_path / "q.sqlite")
    with serving(store) as url:
        log_in(page, url)
        for target in (url + "/", f"{url}/items/{record.decision.escalation_id}"):
            page.goto(target)
            page.wait_for_load_state("load")
            assert page.evaluate("window.__pwned === undefined")
            assert page.locator("script").count() == 1  # the app's own static script
            assert page.locator("img[onerror], svg, a[href^='javascript:']").count() == 0
        assert page.locator("#thinking").inner_text() == XSS_THINKING
        assert (
            page.locator("#response").inner_text() == '<a href="javascript:alert(1)">click me</a>'
        )
        images = page.locator("figure.image img")
        assert images.count() == 1  # the SVG has no preview at all; the PNG is re-encoded
        natural = page.evaluate("document.querySelector('figure.image img').naturalWidth")
        assert natural == 32
    store.close()
    assert page.dialogs == []


def test_without_token_401_and_post_without_csrf_403(page: Any, tmp_path: Path) -> None:
    ids = demo_queue(tmp_path / "q.sqlite")
    store = EscalationStore(tmp_path / "q.sqlite")
    with serving(store) as url:
        response = page.goto(f"{url}/items/{ids[0]}")
        assert response.status == 401
        assert page.locator("input[name=token]").count() == 1  # the login form instead
        log_in(page, url)
        # Logged in (the session cookie goes along), but no CSRF token: refused.
        refused = page.request.post(
            f"{url}/items/{ids[0]}/resolve", form={"resolution": "approved"}
        )
        assert refused.status == 403

        # A page on another origin auto-submits a form to the app in the reviewer's browser.
        evil = _serve_page(
            f'<form id="f" method="post" action="{url}/items/{ids[0]}/resolve">'
            '<input name="resolution" value="approved"></form>'
            "<script>document.getElementById('f').submit()</script>"
        )
        try:
            with page.expect_response(lambda r: r.url.endswith("/resolve")) as forged:
                page.goto(evil.url)
            # 127.0.0.1 on another port is the same site, so the cookie goes along: the
            # CSRF token is what refuses it.
            assert forged.value.status == 403
        finally:
            evil.close()
        assert store.get(ids[0]).state == "pending"
    store.close()


def test_keyboard_flow(page: Any, tmp_path: Path) -> None:
    ids = demo_queue(tmp_path / "q.sqlite", extra=2)  # newest last
    store = EscalationStore(tmp_path / "q.sqlite")
    with serving(store) as url:
        log_in(page, url)
        rows = page.locator("tr[data-href]")
        assert rows.count() == 5
        assert "selected" in (rows.nth(0).get_attribute("class") or "")
        page.keyboard.press("j")
        page.keyboard.press("j")
        page.keyboard.press("k")
        assert "selected" in (rows.nth(1).get_attribute("class") or "")
        page.keyboard.press("o")
        scripted(page, "#resolve")
        newest_first = list(reversed(ids))
        assert page.url.split("/items/")[1].split("?")[0] == newest_first[1]
        page.keyboard.press("j")  # to the next (older) item
        page.wait_for_url(f"**/items/{newest_first[2]}**")
        scripted(page, "#resolve")
        page.keyboard.press("a")
        page.wait_for_selector(".resolved.approved")
        page.keyboard.press("u")
        page.wait_for_selector("nav.tabs")
        page.screenshot(path=str(tmp_path / "list.png"))
    assert store.get(newest_first[2]).state == "approved"
    assert [store.get(i).state for i in ids].count("pending") == 4
    store.close()


class _Page:
    def __init__(self, html: str) -> None:
        body = html.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/html")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _serve_page(html: str) -> _Page:
    return _Page(html)
