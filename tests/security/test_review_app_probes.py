"""Hostile probes of the review app (``traceguard review``) over real HTTP on 127.0.0.1.

An attacker without the token, a page on another site or another local port, audited text and
metadata written by an adversary, and reviewers racing each other. Tests whose docstring names a
finding failed before its fix; the others probe what held.
"""

from __future__ import annotations

import csv
import io
import json
import re
import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from traceguard import AuditRecord, Policy, ReviewQueue, Trace
from traceguard._decision import Decision
from traceguard._trace import ToolCall
from traceguard._verdict import AuditStatus, Verdict
from traceguard.review import EscalationStore, create_app
from traceguard.review._auth import SESSION_COOKIE, ReviewAuth

from ._served import serving

TOKEN = "probe-review-token-0123456789abcdef"
HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)>\"'><svg onload=alert(3)>"
FORMULA = '=HYPERLINK("http://evil.example","x")'


def _record(n: int, *, text: str = HOSTILE, metadata: dict[str, Any] | None = None) -> AuditRecord:
    trace = Trace(
        query=f"{text} query {n}",
        thinking=f"{text} thinking",
        response=f"{text} response",
        tool_calls=(ToolCall(name=f"{text}tool", arguments=text, id=text),),
        id=f"{text} trace-{n}",
        model=f"{text} model",
        metadata=metadata
        or {
            "integration": text,
            "thread_id": f"{text} thread",
            "session_id": text,
            "run_id": text,
            "source": {"path": f"{text}/log.jsonl", "line": 3, "turn": 1},
        },
    )
    verdict = Verdict.ok(
        auditor=f"{text} auditor",
        risk=1.0,
        categories=(f"{text} category",),
        analysis=f"{text} analysis",
        probabilities={"0": 0.1, text: 0.9},
    )
    decided = Policy(harmful="escalate").decide(verdict, trace)
    decision = Decision(
        action=decided.action,
        reason=f"{text} reason",
        verdict=decided.verdict,
        disposition=decided.disposition,
        trace_id=trace.id,
        escalation_id=f"probe-{n}",
    )
    return AuditRecord.from_decision(trace, decision)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EscalationStore]:
    path = tmp_path / "reviews.sqlite"
    queue = ReviewQueue(path)
    for n in range(3):
        queue.emit(_record(n))
    failed = Verdict.failed(AuditStatus.AUDITOR_ERROR, auditor="a", error=RuntimeError(HOSTILE))
    trace = Trace(query="q", response="r", metadata={"integration": "openai"})
    decision = Policy().decide(failed, trace)
    queue.emit(
        AuditRecord.from_decision(
            trace,
            Decision(
                action=decision.action,
                reason=decision.reason,
                verdict=failed,
                disposition=decision.disposition,
                escalation_id="probe-failed",
            ),
        )
    )
    queue.close()
    opened = EscalationStore(path)
    yield opened
    opened.close()


@pytest.fixture
def app_url(store: EscalationStore) -> Iterator[str]:
    with serving(create_app(store, token=TOKEN), lifespan="off") as url:
        yield url


def _csrf(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None, page.text[:300]
    return found.group(1)


def _login(client: httpx.Client, name: str = "ana", token: str = TOKEN, **extra: str) -> Any:
    form = client.get("/login")
    data = {"csrf": _csrf(form), "name": name, "token": token, "next": "/", **extra}
    return client.post("/login", data=data)


# -- authentication ------------------------------------------------------------------------------


@pytest.mark.probe("review app: sessions and login")
def test_bearer_guesses_are_throttled_like_logins(app_url: str) -> None:
    """Finding: only the login form counted failures; a wrong ``Authorization: Bearer`` header
    was answered 401 at request speed without limit, so the token could be guessed there."""
    with httpx.Client(base_url=app_url) as client:
        wrong = {"authorization": "Bearer guess-0000000000000000"}
        codes = [client.get("/", headers=wrong).status_code for _ in range(12)]
        assert codes[:10] == [401] * 10 and set(codes[10:]) == {429}
        # Throttled means throttled: the right token gets no different answer meanwhile.
        right = client.get("/", headers={"authorization": f"Bearer {TOKEN}"})
        assert right.status_code == 429
        assert right.headers["content-security-policy"].startswith("default-src 'none'")
        assert _login(client).status_code == 429  # the two paths share one count


@pytest.mark.probe("review app: sessions and login")
def test_a_session_survives_bearer_throttling(app_url: str) -> None:
    with httpx.Client(base_url=app_url, follow_redirects=True) as reviewer:
        assert _login(reviewer).status_code == 200
        with httpx.Client(base_url=app_url) as attacker:
            for _ in range(12):
                attacker.get("/", headers={"authorization": "Bearer guess-0000000000000000"})
        assert reviewer.get("/").status_code == 200


@pytest.mark.probe("review app: sessions and login")
def test_logging_in_again_ends_the_previous_session(app_url: str) -> None:
    """Finding: a login left the session cookie it arrived with alive, so a session planted in
    or stolen from a browser outlived the reviewer's next login."""
    with httpx.Client(base_url=app_url) as client:
        old = _login(client).cookies[SESSION_COOKIE]
    with httpx.Client(base_url=app_url) as client:
        form = client.get("/login")
        client.cookies.set(SESSION_COOKIE, old)  # the login arrives with the old session
        second = client.post(
            "/login", data={"csrf": _csrf(form), "name": "ana", "token": TOKEN, "next": "/"}
        )
        new = second.cookies[SESSION_COOKIE]
        assert new != old
    with httpx.Client(base_url=app_url, cookies={SESSION_COOKIE: old}) as replay:
        assert replay.get("/").status_code == 401
    with httpx.Client(base_url=app_url, cookies={SESSION_COOKIE: new}) as current:
        assert current.get("/").status_code == 200


@pytest.mark.probe("review app: sessions and login")
def test_a_planted_session_id_is_never_adopted(app_url: str) -> None:
    planted = "attacker-chosen-session-id-000000000000"
    with httpx.Client(base_url=app_url, cookies={SESSION_COOKIE: planted}) as client:
        response = _login(client)
        assert response.status_code == 303
        assert response.cookies[SESSION_COOKIE] != planted
    with httpx.Client(base_url=app_url, cookies={SESSION_COOKIE: planted}) as attacker:
        assert attacker.get("/").status_code == 401


@pytest.mark.probe("review app: sessions and login")
def test_logout_needs_csrf_and_kills_the_session_server_side(app_url: str) -> None:
    with httpx.Client(base_url=app_url, follow_redirects=True) as client:
        page = _login(client)
        cookie = client.cookies[SESSION_COOKIE]
        assert client.post("/logout", data={}).status_code == 403
        assert client.get("/").status_code == 200  # a forged logout did nothing
        out = client.post("/logout", data={"csrf": _csrf(page)})
        assert out.url.path == "/login" and 'name="token"' in out.text
        assert client.get("/").status_code == 401
    with httpx.Client(base_url=app_url, cookies={SESSION_COOKIE: cookie}) as replay:
        assert replay.get("/").status_code == 401


@pytest.mark.probe("review app: sessions and login")
def test_cookie_flags(store: EscalationStore) -> None:
    with serving(create_app(store, token=TOKEN, secure_cookies=True), lifespan="off") as url:
        with httpx.Client(base_url=url) as client:
            form = client.get("/login")
            login_cookie = form.headers["set-cookie"]
            nonce = _csrf(form)
            # httpx keeps Secure cookies off plain http, as a browser would: send it by hand.
            done = client.post(
                "/login",
                data={"csrf": nonce, "name": "ana", "token": TOKEN, "next": "/"},
                headers={"cookie": f"{login_cookie.split(';', 1)[0]}"},
            )
            assert done.status_code == 303
            cookies = done.headers.get_list("set-cookie")
            session_cookie = next(v for v in cookies if v.startswith(SESSION_COOKIE))
    for cookie in (login_cookie, session_cookie):
        flags = {part.strip().lower() for part in cookie.split(";")}
        assert {"httponly", "samesite=strict", "secure"} <= flags, cookie


@pytest.mark.probe("review app: sessions and login")
def test_sessions_are_bounded() -> None:
    """Finding: every login added a session that lived its whole TTL; a token holder (or a
    script logging in in a loop) grew the process's memory without bound."""
    auth = ReviewAuth(TOKEN, max_sessions=3)
    ids = [auth.login(TOKEN, f"r{n}", now=float(n)) for n in range(5)]
    live = [i for i in ids if i is not None and auth.session(i, now=10.0) is not None]
    assert live == ids[2:]  # the oldest went first


@pytest.mark.probe("review app: sessions and login")
@pytest.mark.parametrize(
    "target",
    [
        "//evil.example/x",
        "/\\evil.example",
        "/\t/evil.example",
        "https:evil.example",
        "javascript:alert(1)",
        "/..//evil.example",
        "%2F%2Fevil.example",
        "/%2F%2Fevil.example",
        " //evil.example",
        "/\u3002/evil.example",
    ],
)
def test_login_next_never_leaves_the_app(app_url: str, target: str) -> None:
    with httpx.Client(base_url=app_url) as client:
        response = _login(client, next=target)
        assert response.status_code == 303
        landing = urljoin(app_url + "/login", response.headers["location"])
        assert urlsplit(landing).netloc == urlsplit(app_url).netloc, landing
        assert urlsplit(landing).scheme == "http"
        # The GET form redirects a logged-in user the same way.
        again = client.get("/login", params={"next": target})
        landing = urljoin(app_url + "/login", again.headers["location"])
        assert urlsplit(landing).netloc == urlsplit(app_url).netloc, landing


@pytest.mark.probe("review app: sessions and login")
@pytest.mark.parametrize(
    "host", ["evil.example", "127.0.0.1.evil.example", "localhost.evil.example", "", "[::2]"]
)
def test_foreign_host_headers_are_refused(app_url: str, host: str) -> None:
    """DNS rebinding: a page whose name resolves to 127.0.0.1 reaches the app with its own Host."""
    with httpx.Client(base_url=app_url) as client:
        response = client.get("/login", headers={"host": host})
    assert response.status_code == 400
    assert "content-security-policy" in response.headers


# -- headers on every response -------------------------------------------------------------------


@pytest.mark.probe("review app: hostile content and headers")
def test_security_headers_on_errors_too(store: EscalationStore, probe_cases: Any) -> None:
    """Finding: answers made outside the app's own middleware (the body-size 413, a 500)
    went out without the Content-Security-Policy and friends; an image position too large for
    SQLite was such a 500."""
    app = create_app(store, token=TOKEN)
    bearer = {"authorization": f"Bearer {TOKEN}"}
    with serving(app, lifespan="off") as url, httpx.Client(base_url=url) as client:
        too_big = client.post(
            "/login",
            content=b"x" * 200_000,
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        position = client.get("/items/probe-0/images/99999999999999999999999", headers=bearer)
        store.close()  # the database goes away under the app
        broken = client.get("/items/probe-0", headers=bearer)
    assert too_big.status_code == 413
    assert position.status_code == 404
    assert broken.status_code == 500
    probe_cases(3)  # a 413 and a 404 made outside the app, a 500
    for response in (too_big, position, broken):
        assert response.headers["content-security-policy"].startswith("default-src 'none'")
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["cache-control"] == "no-store"


# -- content --------------------------------------------------------------------------------------


@pytest.mark.probe("review app: hostile content and headers")
def test_hostile_metadata_is_escaped_in_every_page(
    app_url: str, store: EscalationStore, probe_cases: Any
) -> None:
    store.resolve("probe-1", "approved", reviewer=HOSTILE[:80], note=HOSTILE)
    with httpx.Client(base_url=app_url, follow_redirects=True) as client:
        _login(client, name=HOSTILE[:80])
        pages = [
            client.get("/"),
            client.get("/", params={"state": "all"}),
            client.get("/items/probe-0"),
            client.get("/items/probe-1"),
            client.get("/items/probe-failed"),
            client.get(
                "/",
                params={
                    "category": HOSTILE,
                    "auditor": HOSTILE,
                    "integration": HOSTILE,
                    "thread_id": HOSTILE,
                    "since": HOSTILE,
                    "state": HOSTILE,
                    "risk": HOSTILE,
                },
            ),
        ]
    probe_cases(len(pages))
    for page in pages:
        assert page.status_code == 200
        found = _elements(page.text)
        assert [attrs for tag, attrs in found if tag == "script"] == [
            {"src": "/static/app.js", "defer": None}
        ]
        assert not [tag for tag, _ in found if tag in ("svg", "img", "iframe", "object")]
        assert not [k for _, attrs in found for k in attrs if k.startswith("on")]
        for tag, attrs in found:
            for name in ("href", "src", "action", "data-href"):
                value = attrs.get(name)
                assert value is None or value.startswith(("/", "?")), (tag, attrs)
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text or page is pages[-1]


@pytest.mark.probe("review app: hostile content and headers")
def test_csv_and_jsonl_exports_are_inert(app_url: str, tmp_path: Path, probe_cases: Any) -> None:
    queue = ReviewQueue(tmp_path / "formulas.sqlite")
    metadata = {"integration": "-2+3", "thread_id": FORMULA, "session_id": "@SUM(A1)"}
    queue.emit(_record(9, text=FORMULA, metadata=metadata))
    queue.close()
    store = EscalationStore(tmp_path / "formulas.sqlite")
    store.resolve("probe-9", "rejected", reviewer="+cmd|' /C calc'!A0", note="\t=1+1\n\u2028")
    with serving(create_app(store, token=TOKEN), lifespan="off") as url:
        bearer = {"authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=url, headers=bearer) as client:
            csv_text = client.get("/export.csv").text
            jsonl = client.get("/export.jsonl").content
    store.close()
    probe_cases(2)  # the CSV export, the JSONL export
    rows = list(csv.reader(io.StringIO(csv_text)))
    assert len(rows) == 2
    for cell in rows[1]:
        assert not cell or cell[0] not in "=+-@\t\r", cell
    lines = jsonl.splitlines()
    assert len(lines) == 1 and jsonl.isascii()
    assert json.loads(lines[0])["note"] == "\t=1+1\n\u2028"


class _Parsed(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))


def _elements(html: str) -> list[tuple[str, dict[str, str | None]]]:
    """Every element with its attributes, as a browser's parser would build them."""
    parser = _Parsed()
    parser.feed(html)
    return parser.elements


# -- races and sizes -----------------------------------------------------------------------------


@pytest.mark.probe("review app: races and sizes")
def test_racing_reviewers_one_wins(app_url: str, store: EscalationStore) -> None:
    reviewers = []
    for n in range(6):
        client = httpx.Client(base_url=app_url, follow_redirects=False)
        page = _login(client, name=f"reviewer-{n}")
        assert page.status_code == 303
        form = client.get("/items/probe-2")
        reviewers.append((client, _csrf(form), "approved" if n % 2 else "rejected"))
    start = threading.Barrier(len(reviewers))
    codes: list[int] = []

    def resolve(client: httpx.Client, csrf: str, resolution: str) -> None:
        start.wait()
        response = client.post(
            "/items/probe-2/resolve", data={"csrf": csrf, "resolution": resolution}
        )
        codes.append(response.status_code)

    threads = [threading.Thread(target=resolve, args=r) for r in reviewers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for client, _, _ in reviewers:
        client.close()
    assert sorted(codes) == [303] + [409] * 5
    item = store.get("probe-2")
    assert item.reviewer is not None and item.reviewer.startswith("reviewer-")


@pytest.mark.probe("review app: races and sizes")
def test_enormous_notes_and_forms_are_refused(
    app_url: str, store: EscalationStore, probe_cases: Any
) -> None:
    probe_cases(3)  # a long note, a huge form, too many fields
    with httpx.Client(base_url=app_url, follow_redirects=True) as client:
        page = _login(client)
        csrf = _csrf(page)
        note = client.post(
            "/items/probe-0/resolve",
            data={"csrf": csrf, "resolution": "approved", "note": "n" * 20_000},
        )
        assert note.status_code == 400
        form = client.post(
            "/items/probe-0/resolve",
            data={"csrf": csrf, "resolution": "approved", "note": "n" * 300_000},
        )
        assert form.status_code == 413
        fields = client.post(
            "/items/probe-0/resolve",
            data={"csrf": csrf, "resolution": "approved", **{f"f{i}": "x" for i in range(200)}},
        )
        assert fields.status_code == 400
    assert store.get("probe-0").state == "pending"
