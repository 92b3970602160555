"""The review app over real HTTP on 127.0.0.1: authentication, CSRF, headers, inert content,
resolution races, exports. The browser tests (test_browser.py) drive the same app in Chromium."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from traceguard import ImageRef, ReviewQueue, Trace
from traceguard.review import EscalationStore
from traceguard.review.app import CONTENT_SECURITY_POLICY

from ._helpers import escalated, png_bytes
from ._server import TOKEN, serving

XSS = (
    '<script>alert("x")</script><img src=x onerror=alert(1)>'
    '<a href="javascript:alert(2)">click</a><svg onload=alert(3)></svg>\u202eevil'
)


@pytest.fixture
def app_url(tmp_path: Path) -> Iterator[tuple[str, list[str], EscalationStore]]:
    path = tmp_path / "reviews.sqlite"
    queue = ReviewQueue(path)
    ids = []
    for n, text in enumerate(['=HYPERLINK("http://evil")', XSS, "+1 plain", "@SUM(A1)"]):
        record = escalated(
            Trace(
                query=f"q{n}",
                thinking=text,
                response=text,
                images=(ImageRef.from_bytes(png_bytes()),),
                metadata={"integration": "openai" if n % 2 else "offline"},
            )
        )
        queue.emit(record)
        ids.append(record.decision.escalation_id or "")
    queue.close()
    store = EscalationStore(path)
    with serving(store) as url:
        yield url, ids, store
    store.close()


def login(client: httpx.Client, name: str = "ana", token: str = TOKEN) -> httpx.Response:
    form = client.get("/login")
    nonce = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert nonce is not None
    return client.post(
        "/login",
        data={"csrf": nonce.group(1), "name": name, "token": token, "next": "/"},
    )


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None
    return found.group(1)


def test_every_page_needs_the_token(app_url: tuple[str, list[str], EscalationStore]) -> None:
    url, ids, _ = app_url
    with httpx.Client(base_url=url, follow_redirects=True) as client:
        for path in (
            "/",
            f"/items/{ids[0]}",
            f"/items/{ids[0]}/images/0",
            "/export.csv",
            "/export.jsonl",
            "/api/session",
        ):
            response = client.get(path)
            assert response.status_code == 401, path
            assert "q0" not in response.text and "HYPERLINK" not in response.text
        assert (
            client.post(f"/items/{ids[0]}/resolve", data={"resolution": "approved"}).status_code
            == 401
        )
        wrong = client.get("/", headers={"authorization": "Bearer not-the-token"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        assert client.get("/", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_security_headers_on_every_response(
    app_url: tuple[str, list[str], EscalationStore],
) -> None:
    url, ids, _ = app_url
    with httpx.Client(base_url=url, follow_redirects=True) as client:
        responses = [client.get("/"), client.get("/login"), client.get("/static/app.js")]
        login(client)
        responses += [client.get("/"), client.get(f"/items/{ids[1]}"), client.get("/nope")]
    for response in responses:
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["cache-control"] == "no-store"


def test_login_cookie_and_failures(app_url: tuple[str, list[str], EscalationStore]) -> None:
    url, _, _ = app_url
    with httpx.Client(base_url=url, follow_redirects=True) as client:
        assert login(client, token="wrong-token-000000000").status_code == 401
        ok = login(client)
        assert ok.status_code == 200 and "Pending" in ok.text
        cookie = ok.history[0].headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        # The login form needs its own double-submit token.
        assert client.post("/login", data={"name": "x", "token": TOKEN}).status_code == 403
    with httpx.Client(base_url=url, follow_redirects=True) as client:
        for _ in range(10):
            login(client, token="wrong-token-000000000")
        assert login(client).status_code == 429  # throttled, even with the right token


def test_login_never_redirects_elsewhere(app_url: tuple[str, list[str], EscalationStore]) -> None:
    url, _, _ = app_url
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "/ok"):
        with httpx.Client(base_url=url) as client:
            form = client.get("/login")
            response = client.post(
                "/login",
                data={"csrf": csrf_of(form), "name": "a", "token": TOKEN, "next": target},
            )
            assert response.status_code == 303
            assert response.headers["location"] == ("/ok" if target == "/ok" else "/")


def test_state_changes_need_the_csrf_token(app_url: tuple[str, list[str], EscalationStore]) -> None:
    url, ids, store = app_url
    with httpx.Client(base_url=url, follow_redirects=True) as client:
        login(client)
        item = f"/items/{ids[0]}/resolve"
        assert client.post(item, data={"resolution": "approved"}).status_code == 403
        assert (
            client.post(item, data={"resolution": "approved", "csrf": "forged"}).status_code == 403
        )
        assert client.post("/logout", data={}).status_code == 403
        assert store.get(ids[0]).state == "pending"
        page = client.get(f"/items/{ids[0]}")
        done = client.post(
            item, data={"resolution": "approved", "note": "ok", "csrf": csrf_of(page)}
        )
        assert done.status_code == 200 and "Recorded." in done.text
    assert store.get(ids[0]).reviewer == "ana"


def test_bearer_clients_use_the_session_csrf(
    app_url: tuple[str, list[str], EscalationStore],
) -> None:
    url, ids, store = app_url
    headers = {"authorization": f"Bearer {TOKEN}", "x-reviewer": "ci-bot"}
    with httpx.Client(base_url=url, headers=headers, follow_redirects=True) as client:
        item = f"/items/{ids[2]}/resolve"
        assert client.post(item, data={"resolution": "rejected"}).status_code == 403
        csrf = client.get("/api/session").json()["csrf"]
        response = client.post(
            item, data={"resolution": "rejected"}, headers={"x-csrf-token": csrf}
        )
        assert response.status_code == 200
    assert (store.get(ids[2]).state, store.get(ids[2]).reviewer) == ("rejected", "ci-bot")


def test_second_reviewer_sees_who_won(app_url: tuple[str, list[str], EscalationStore]) -> None:
    url, ids, _ = app_url
    with (
        httpx.Client(base_url=url, follow_redirects=True) as ana,
        httpx.Client(base_url=url, follow_redirects=True) as bo,
    ):
        login(ana, "ana")
        login(bo, "bo")
        ana_page, bo_page = ana.get(f"/items/{ids[3]}"), bo.get(f"/items/{ids[3]}")
        item = f"/items/{ids[3]}/resolve"
        assert (
            ana.post(item, data={"resolution": "rejected", "csrf": csrf_of(ana_page)}).status_code
            == 200
        )
        late = bo.post(item, data={"resolution": "approved", "csrf": csrf_of(bo_page)})
        assert late.status_code == 409
        assert "already rejected by ana" in late.text


class _Elements(HTMLParser):
    """Every element of a page with its attributes (what a browser would build)."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))


def elements(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Elements()
    parser.feed(html)
    return parser.elements


def test_audited_text_is_inert_in_the_html(app_url: tuple[str, list[str], EscalationStore]) -> None:
    url, ids, _ = app_url
    with httpx.Client(base_url=url, follow_redirects=True) as client:
        login(client)
        pages = [client.get("/"), client.get(f"/items/{ids[1]}")]
    for page in pages:
        found = elements(page.text)
        assert [a for t, a in found if t == "script"] == [{"src": "/static/app.js", "defer": None}]
        assert not [t for t, _ in found if t == "svg"]
        assert all(not k.startswith("on") for _, attrs in found for k in attrs)
        links = [a.get("href") or "" for t, a in found if t == "a"]
        assert links and all(h.startswith(("/", "?")) for h in links)
        images = [a.get("src") or "" for t, a in found if t == "img"]
        assert all(src.startswith("/items/") for src in images)
        assert "&lt;script&gt;alert" in page.text  # the payload is there, as text
    assert "\\u202e" in pages[1].text  # the bidi override, made visible


def test_images_are_served_as_reencoded_thumbnails(
    app_url: tuple[str, list[str], EscalationStore],
) -> None:
    url, ids, _ = app_url
    with httpx.Client(base_url=url, follow_redirects=True) as client:
        login(client)
        image = client.get(f"/items/{ids[0]}/images/0")
        assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
        assert image.content[:3] == b"\xff\xd8\xff"
        assert image.headers["content-security-policy"] == "default-src 'none'; sandbox"
        assert client.get(f"/items/{ids[0]}/images/5").status_code == 404


def test_exports_of_resolved_items(app_url: tuple[str, list[str], EscalationStore]) -> None:
    url, ids, store = app_url
    for eid in ids:
        store.resolve(eid, "approved", reviewer="ana")
    with httpx.Client(base_url=url, follow_redirects=True) as client:
        login(client)
        lines = client.get("/export.jsonl").text.splitlines()
        assert sorted(json.loads(line)["escalation_id"] for line in lines) == sorted(ids)
        response = client.get("/export.csv?integration=offline")
        assert response.headers["content-disposition"].startswith("attachment")
        rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == 2
    for row in rows:
        for value in row.values():
            assert not value or value[0] not in "=+-@", value
    assert {row["thinking"] for row in rows} == {'\'=HYPERLINK("http://evil")', "'+1 plain"}


def test_list_filters_and_unknown_hosts(app_url: tuple[str, list[str], EscalationStore]) -> None:
    url, ids, _ = app_url
    with httpx.Client(base_url=url, follow_redirects=True) as client:
        login(client)
        page = client.get("/?integration=openai")
        assert page.text.count('<tr data-href="/items/') == 2
        assert client.get("/items/does-not-exist").status_code == 404
        assert client.get("/", headers={"host": "attacker.example"}).status_code == 400
        big = client.post(
            "/login",
            content=b"x" * 200_000,
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert big.status_code == 413
