"""The whole loop in a real browser: a ``create_agent`` agent paused by TraceguardMiddleware on an
escalation, a reviewer approving it in the review app (Debian's headless Chromium driven by
Playwright), and ``resume_reviewed`` finishing the agent with the held output."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("langchain.agents")
pytest.importorskip("langchain_openai")
pytest.importorskip("playwright")
pytest.importorskip("uvicorn")

from _agent_support import Recorder, call, chat_model, reply
from langchain.agents import create_agent
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.memory import InMemorySaver

# The review app's own browser-test pieces (tests/ is on sys.path through tests/conftest.py).
from review._server import serving
from review.test_browser import CHROMIUM, CHROMIUM_ARGS, log_in

from traceguard import Guard, Policy, ReviewQueue, Trace
from traceguard.integrations.langchain import TraceguardMiddleware
from traceguard.integrations.langgraph import resume_reviewed
from traceguard.review import EscalationStore
from traceguard.testing import ScriptedAuditor, Step
from traceguard.testing.openai_server import OpenAIServer

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        shutil.which(CHROMIUM) is None, reason=f"needs Debian's chromium at {CHROMIUM}"
    ),
]


@pytest.fixture
def page() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1440, "height": 900})
        tab = context.new_page()
        dialogs: list[str] = []
        tab.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        tab.dialogs = dialogs
        yield tab
        context.close()
        browser.close()


def test_a_reviewer_approves_in_the_browser_and_the_paused_agent_finishes(
    page: Any, tmp_path: Path
) -> None:
    queue = ReviewQueue(tmp_path / "reviews.sqlite")
    # An unrelated escalation from another integration, which the filter must hide.
    other = Guard(ScriptedAuditor([1.0]), Policy(harmful="escalate"), sinks=[queue])
    other.check_batch([Trace(query="other", response="r", metadata={"integration": "openai"})])

    def rule(trace: Trace) -> Step:
        if trace.stage.value == "final" and "port scan" in (trace.thinking or ""):
            return Step(risk=1.0, categories=("cybersecurity",), analysis="scans a host")
        return Step(risk=0.0)

    recorder = Recorder()
    guard = Guard(ScriptedAuditor(rule=rule), Policy(harmful="escalate"), sinks=[queue])
    with OpenAIServer() as server:
        server.enqueue(
            reply(
                "<think>a port scan of the lab host</think>Scanning 10.0.0.5 now.",
                calls=[call("shell", {"cmd": "nmap 10.0.0.5"})],
            ),
            reply("Port 22 is open on 10.0.0.5."),
        )
        agent = create_agent(
            chat_model(server),
            tools=recorder.tools(),
            middleware=[TraceguardMiddleware(guard)],
            checkpointer=InMemorySaver(),
        )
        config = {"configurable": {"thread_id": "agent-thread-7"}}
        paused = agent.invoke({"messages": [HumanMessage("Which ports are open?")]}, config)
        escalation_id = paused["__interrupt__"][0].value["escalation_id"]
        assert recorder.calls == []
        queue.flush(30)

        store = EscalationStore(queue.path)
        with serving(store) as url:
            log_in(page, url, "Ana")
            assert page.locator("tr[data-href]").count() == 2
            page.select_option("select[name=integration]", "langgraph")
            page.click("form.filters button[type=submit]")
            page.wait_for_url("**integration=langgraph**")
            rows = page.locator("tr[data-href]")
            assert rows.count() == 1
            rows.first.locator("a").click()
            page.wait_for_selector("#resolve")
            assert page.locator("#thinking").inner_text() == "a port scan of the lab host"
            assert page.locator("#response").inner_text().startswith("Scanning 10.0.0.5 now.")
            assert "nmap 10.0.0.5" in page.locator("body").inner_text()  # the held tool call
            assert "agent-thread-7" in page.locator("dl.meta").inner_text()
            page.fill("#note", "our own lab host")
            page.click("#approve")
            page.wait_for_selector(".resolved.approved")
            assert "Approved by Ana" in page.locator(".resolved").inner_text()
            page.screenshot(path=str(tmp_path / "approved.png"), full_page=True)
        assert store.get(escalation_id).state == "approved"
        store.close()

        [resumed] = resume_reviewed(agent, queue)
        assert (resumed.resolution, resumed.resumed) == ("approved", True)
        messages = resumed.result["messages"]
        assert (
            messages[1].content
            == "<think>a port scan of the lab host</think>Scanning 10.0.0.5 now."
        )
        assert recorder.names() == ["shell"]  # the held call ran once, after the approval
        assert messages[-1].content == "Port 22 is open on 10.0.0.5."
        assert resume_reviewed(agent, queue) == []
        assert server.unexpected == []
    queue.close()
    assert page.dialogs == []
    assert (tmp_path / "approved.png").stat().st_size > 10_000
