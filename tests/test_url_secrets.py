"""URL secrets (user:password, query tokens) never leave the process: one redactor everywhere.

Issue 13, fault 1: an image URL's credentials and signed-query tokens appeared verbatim in the
offline audit's ``images`` field and in the HTML report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from traceguard import (
    Guard,
    ImageAccess,
    ImageAccessDenied,
    ImageRef,
    JsonlSink,
    OpenAICompatibleBackend,
    ReviewQueue,
    Trace,
    WebhookSink,
)
from traceguard._urls import UNPARSEABLE, redact_url, url_selector
from traceguard.audit import run_audit, write_report
from traceguard.testing import ScriptedAuditor, Step


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def chat(image_url: str | None = None) -> dict[str, Any]:
    """A one-turn OpenAI-format conversation, with an image in the user turn if given."""
    content: list[dict[str, Any]] = [{"type": "text", "text": "what is in this picture?"}]
    if image_url is not None:
        content.append({"type": "image_url", "image_url": {"url": image_url}})
    return {
        "id": "c",
        "messages": [
            {"role": "user", "content": content},
            {"role": "assistant", "content": "A cat."},
        ],
    }


SECRETS = ("hunter2", "SIGSECRET", "TOKSECRET", "FRAGSECRET")
SIGNED = "https://alice:hunter2@cdn.example.com:8443/shots/a.png?sig=SIGSECRET&token=TOKSECRET"
SHOWN = "https://cdn.example.com:8443/shots/a.png"


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text
    assert "alice" not in text


# -- the redactor ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (SIGNED + "#FRAGSECRET", SHOWN),
        ("http://u:p@[::1]:8000/v1?key=k", "http://[::1]:8000/v1"),
        ("HTTPS://Example.COM/A.png", "https://example.com/A.png"),
        ("https://example.com", "https://example.com"),
        ("http://host:99999/x", UNPARSEABLE),
        ("http://[::1/x", UNPARSEABLE),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_url_to_the_origin() -> None:
    hook = "https://hooks.example.com/services/T000/B000/XXXXSECRET?token=TOKSECRET"
    assert redact_url(hook, keep_path=False) == "https://hooks.example.com"


def test_selector_keeps_the_query_but_never_credentials() -> None:
    assert url_selector(SIGNED + "#FRAGSECRET") == (
        "https://cdn.example.com:8443/shots/a.png?sig=SIGSECRET&token=TOKSECRET"
    )


def test_identity_tells_queries_apart_and_ignores_credentials() -> None:
    signed = ImageRef.from_url(SIGNED)
    assert_no_secret(signed.identity())
    assert signed.identity().startswith(f"url:{SHOWN}#sha256=")
    other_password = ImageRef.from_url(SIGNED.replace("hunter2", "letmein"))
    assert other_password.identity() == signed.identity()
    other_query = ImageRef.from_url(SIGNED.replace("SIGSECRET", "OTHER"))
    assert other_query.identity() != signed.identity()
    assert ImageRef.from_url("https://bob:pw@cdn.example.com/a.png").identity() == (
        "url:https://cdn.example.com/a.png"
    )


# -- everywhere a URL is shown or stored -------------------------------------------------------


def test_offline_records_and_report_show_image_urls_redacted(tmp_path: Path) -> None:
    # Any scheme, in any case, is a URL: not a path whose name would keep the secrets.
    urls = [SIGNED, SIGNED.replace("https", "HTTPS", 1), SIGNED.replace("https", "ftp", 1)]
    log = write_jsonl(tmp_path / "log.jsonl", [chat(url) for url in urls])
    out = tmp_path / "verdicts.jsonl"
    run_audit(log, out, auditor=ScriptedAuditor([Step(risk=1.0)] * 3), concurrency=1)
    text = out.read_text()
    assert_no_secret(text)
    images = [json.loads(line)["images"] for line in text.splitlines()]
    assert images == [[SHOWN], [SHOWN], [SHOWN.replace("https", "ftp", 1)]]
    report = write_report(out, tmp_path / "report.html", image_root=tmp_path)
    html = report.read_text()
    assert_no_secret(html)
    assert SHOWN in html


def test_report_redacts_urls_of_records_written_before_the_fix(tmp_path: Path) -> None:
    log = write_jsonl(tmp_path / "log.jsonl", [chat()])
    out = tmp_path / "verdicts.jsonl"
    run_audit(log, out, auditor=ScriptedAuditor([Step(risk=1.0)]), concurrency=1)
    record = json.loads(out.read_text())
    record["images"] = [SIGNED]  # as an older traceguard wrote it
    out.write_text(json.dumps(record) + "\n")
    html = write_report(out, tmp_path / "report.html").read_text()
    assert_no_secret(html)
    assert SHOWN in html


def test_summary_sinks_and_review_queue_store_no_url_secret(tmp_path: Path) -> None:
    trace = Trace(query="q", response="r", images=(ImageRef.from_url(SIGNED),))
    assert_no_secret(json.dumps(trace.summary()))
    assert_no_secret(repr(trace.images[0]))
    jsonl = JsonlSink(tmp_path / "records.jsonl")
    queue = ReviewQueue(tmp_path / "review.db")
    guard = Guard(
        ScriptedAuditor([Step(error="timeout")]), sinks=[jsonl, queue], raise_on_block=False
    )
    decision = guard.check(trace)
    assert decision.action.value == "escalate"
    [row] = queue.pending()
    assert_no_secret(repr(row))
    guard.close()
    assert_no_secret(jsonl.path.read_text())
    for part in tmp_path.glob("review.db*"):
        assert_no_secret(part.read_bytes().decode("latin-1"))


def test_errors_and_reprs_show_urls_redacted() -> None:
    with pytest.raises(ImageAccessDenied) as denied:
        ImageRef.from_url(SIGNED).load(ImageAccess())
    assert_no_secret(str(denied.value))
    assert SHOWN in str(denied.value)
    backend = OpenAICompatibleBackend(
        "http://alice:hunter2@127.0.0.1:9/v1?token=TOKSECRET", model="m", api_key="k"
    )
    assert_no_secret(repr(backend))
    backend.close()
    sink = WebhookSink("https://alice:hunter2@hooks.example.com/SIGSECRET?token=TOKSECRET")
    assert repr(sink) == "WebhookSink('https://hooks.example.com')"
    sink.close()
