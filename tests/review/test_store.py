"""What the queue keeps for a reviewer, how it lists and filters it, migrations and retention."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import io
import json
import sqlite3
from pathlib import Path

import pytest

from traceguard import ImageAccess, ImageRef, ReviewQueue
from traceguard.review import AlreadyResolved, EscalationFilter, EscalationStore
from traceguard.review._schema import SCHEMA_VERSION

from ._helpers import escalated, png_bytes, trace


def filed(path: Path, *records: object, **options: object) -> EscalationStore:
    queue = ReviewQueue(path, **options)  # type: ignore[arg-type]
    for record in records:
        queue.emit(record)  # type: ignore[arg-type]
    queue.close()
    return EscalationStore(path)


# -- content -------------------------------------------------------------------------------------


def test_an_escalation_keeps_what_a_reviewer_needs(tmp_path: Path) -> None:
    record = escalated(
        trace(
            1,
            metadata={"integration": "langgraph", "thread_id": "th-1", "run_id": "r-1"},
            images=(ImageRef.from_bytes(png_bytes()),),
        )
    )
    store = filed(tmp_path / "q.sqlite", record)
    item = store.get(record.decision.escalation_id or "")
    assert item.escalation_id == record.decision.escalation_id
    assert item.content is not None and item.content_stored
    assert (item.content.query, item.content.thinking, item.content.response) == (
        "question 1",
        "step 1: plan",
        "answer 1",
    )
    assert item.content.tool_calls == ({"name": "search", "arguments": '{"q": "x"}', "id": "c1"},)
    assert item.analysis == "the thinking plans harm"
    assert item.probabilities == {"0": 0.1, "0.5": 0.2, "1": 0.7}
    assert item.reason.startswith("risk 1 (harmful)") and "escalate" in item.reason
    assert (item.risk, item.label, item.categories, item.auditor) == (
        1.0,
        "harmful",
        ("violence",),
        "guardtrace-test",
    )
    assert (item.integration, item.model, item.thread_id, item.run_id, item.trace_id) == (
        "langgraph",
        "m-1",
        "th-1",
        "r-1",
        "t1",
    )
    assert item.excerpt == "answer 1"
    [image] = item.images
    assert image.stored and image.mime == "image/jpeg" and image.identity.startswith("sha256:")
    stored = store.image(item.escalation_id, 0)
    assert stored is not None and stored.data[:3] == b"\xff\xd8\xff"  # re-encoded JPEG
    store.close()


def test_offline_source_is_kept(tmp_path: Path) -> None:
    new_style = escalated(
        trace(1, metadata={"source": {"path": "logs/a.jsonl", "line": 7, "turn": 3}})
    )
    old_style = escalated(trace(2, metadata={"source": "logs/b.jsonl", "line": 9}))
    store = filed(tmp_path / "q.sqlite", new_style, old_style)
    first = store.get(new_style.decision.escalation_id or "")
    second = store.get(old_style.decision.escalation_id or "")
    assert first.integration == second.integration == "offline"
    assert str(first.source) == "logs/a.jsonl:7 (turn 3)"
    assert str(second.source) == "logs/b.jsonl:9"
    store.close()


def test_store_content_false_keeps_hashes_only(tmp_path: Path) -> None:
    record = escalated(trace(1, images=(ImageRef.from_bytes(png_bytes()),)))
    path = tmp_path / "q.sqlite"
    store = filed(path, record, store_content=False)
    item = store.get(record.decision.escalation_id or "")
    assert not item.content_stored and item.content is None and item.excerpt is None
    assert item.content_hash == record.content_hash
    assert [i.stored for i in item.images] == [False]
    store.close()
    raw = path.read_bytes() + b"".join(p.read_bytes() for p in tmp_path.glob("q.sqlite*"))
    assert b"question 1" not in raw and b"step 1: plan" not in raw


def test_images_are_reencoded_and_active_content_never_stored(tmp_path: Path) -> None:
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    from PIL import Image

    rgba = io.BytesIO()
    Image.new("RGBA", (2000, 1000), (0, 0, 255, 128)).save(rgba, format="PNG")
    images = (
        ImageRef.from_bytes(svg),
        ImageRef.from_data_uri("data:image/svg+xml;base64," + base64.b64encode(svg).decode()),
        ImageRef.from_bytes(rgba.getvalue()),
        ImageRef.from_url("https://user:secret@example.com/cat.png?sig=abc123"),
        ImageRef.from_path(tmp_path / "not-allowed.png"),
    )
    record = escalated(trace(1, images=images))
    store = filed(tmp_path / "q.sqlite", record)
    item = store.get(record.decision.escalation_id or "")
    svg_bytes, svg_uri, big, url, path = item.images
    assert not svg_bytes.stored and not svg_uri.stored
    assert big.stored and big.mime == "image/png" and max(big.width or 0, big.height or 0) == 768
    assert not url.stored and "not fetched" in (url.note or "")
    assert "secret" not in url.identity and "sig=" not in url.identity
    assert not path.stored and "not read" in (path.note or "")
    assert store.image(item.escalation_id, 0) is None
    big_image = store.image(item.escalation_id, 2)
    assert big_image is not None and big_image.data.startswith(b"\x89PNG")
    store.close()
    db = sqlite3.connect(tmp_path / "q.sqlite")
    blobs = [row[0] for row in db.execute("SELECT data FROM escalation_images") if row[0]]
    db.close()
    assert all(b"<svg" not in bytes(blob) and b"script" not in bytes(blob) for blob in blobs)


def test_image_files_are_read_only_with_access(tmp_path: Path) -> None:
    (tmp_path / "img.png").write_bytes(png_bytes())
    record = escalated(trace(1, images=(ImageRef.from_path(tmp_path / "img.png"),)))
    store = filed(tmp_path / "q.sqlite", record, image_access=ImageAccess(root=tmp_path))
    assert store.get(record.decision.escalation_id or "").images[0].stored
    store.close()


def test_long_and_hostile_text_is_capped_and_storable(tmp_path: Path) -> None:
    from traceguard import Trace

    huge = "x" * 150_000
    record = escalated(Trace(query="q\ud800", thinking=huge, response="<script>r</script>"))
    store = filed(tmp_path / "q.sqlite", record)
    item = store.get(record.decision.escalation_id or "")
    assert item.content is not None
    assert item.content.query == "q\\ud800"
    assert item.content.thinking is not None and len(item.content.thinking) < 101_000
    assert item.content.thinking.endswith("[50000 more characters not kept]")
    assert item.content.response == "<script>r</script>"  # kept as data; the app escapes it
    store.close()


# -- listing ---------------------------------------------------------------------------------------


@pytest.fixture
def listed(tmp_path: Path) -> EscalationStore:
    records = []
    for n in range(30):
        meta = {"integration": "openai" if n % 2 else "langchain"}
        categories = ("violence",) if n % 3 == 0 else ("fraud", "privacy")
        records.append(
            escalated(
                trace(n, metadata=meta),
                risk=[1.0, 0.5, None][n % 3] if n % 5 else 0.5,
                categories=categories,
            )
        )
    return filed(tmp_path / "q.sqlite", *records)


def test_pages_walk_newest_first_both_ways(listed: EscalationStore) -> None:
    first = listed.page(limit=12)
    assert first.total == 30 and first.newer is None and first.older is not None
    assert [i.trace_id for i in first.items][:2] == ["t29", "t28"]
    second = listed.page(limit=12, before=first.older)
    third = listed.page(limit=12, before=second.older)
    assert len(third.items) == 6 and third.older is None
    seen = [i.trace_id for page in (first, second, third) for i in page.items]
    assert seen == [f"t{n}" for n in range(29, -1, -1)]
    back = listed.page(limit=12, after=third.newer)
    assert [i.trace_id for i in back.items] == [i.trace_id for i in second.items]
    assert back.newer is not None and back.older is not None
    assert listed.page(limit=12, after=back.newer).newer is None


def test_filters_and_counts(listed: EscalationStore) -> None:
    openai_items = listed.page(EscalationFilter(integration="openai"), limit=100)
    assert openai_items.total == 15
    assert {i.integration for i in openai_items.items} == {"openai"}
    fraud = listed.page(EscalationFilter(category="fraud"), limit=100).items
    assert fraud and all("fraud" in i.categories for i in fraud)
    failed = listed.page(EscalationFilter(risk="failed"), limit=100).items
    assert failed and all(i.audit_status == "auditor_error" for i in failed)
    harmful = listed.page(EscalationFilter(risk="harmful"), limit=100).items
    assert harmful and all(i.label == "harmful" for i in harmful)
    first = listed.page(limit=1).items[0]
    listed.resolve(first.escalation_id, "approved", reviewer="ana", note="ok")
    assert listed.counts() == {"pending": 29, "approved": 1, "rejected": 0}
    assert listed.counts(EscalationFilter(integration="openai")) == {
        "pending": 14,
        "approved": 1,
        "rejected": 0,
    }
    approved = listed.page(EscalationFilter(state="approved")).items
    assert [i.escalation_id for i in approved] == [first.escalation_id]
    assert listed.page(EscalationFilter(state="pending")).total == 29
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    assert listed.page(EscalationFilter(since=today, until=today)).total == 30
    assert listed.page(EscalationFilter(until="2000-01-01")).total == 0
    facets = listed.facets()
    assert facets["integration"] == ["langchain", "openai"]
    assert facets["category"] == ["fraud", "privacy", "violence"]
    newer, older = listed.neighbours(first.id)
    assert newer is None and older is not None


def test_bad_filters_are_refused() -> None:
    with pytest.raises(ValueError, match="state"):
        EscalationFilter(state="done")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ISO"):
        EscalationFilter(since="last tuesday")


def test_second_reviewer_learns_who_won(listed: EscalationStore) -> None:
    item = listed.page(limit=1).items[0]
    other = EscalationStore(listed.path)  # another reviewer, another connection
    listed.resolve(item.escalation_id, "rejected", reviewer="ana", note="harmful plan")
    with pytest.raises(AlreadyResolved) as info:
        other.resolve(item.escalation_id, "approved", reviewer="bo")
    assert info.value.escalation.reviewer == "ana"
    assert info.value.escalation.resolution == "rejected"
    assert isinstance(info.value, ValueError)
    other.close()


# -- migrations --------------------------------------------------------------------------------

_V1_SCHEMA = """
CREATE TABLE escalations (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    record_id     TEXT NOT NULL UNIQUE,
    created_at    TEXT NOT NULL,
    trace_id      TEXT,
    content_hash  TEXT NOT NULL,
    action        TEXT NOT NULL,
    disposition   TEXT NOT NULL,
    reason        TEXT NOT NULL,
    verdict_json  TEXT NOT NULL,
    status        TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'resolved')),
    resolution    TEXT CHECK (resolution IS NULL OR resolution IN ('approved', 'rejected')),
    reviewer      TEXT,
    note          TEXT,
    resolved_at   TEXT
);
CREATE INDEX escalations_by_status ON escalations (status, id);
"""


def test_a_queue_file_of_the_first_version_opens_and_reads(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(_V1_SCHEMA)
    verdict = {
        "status": "ok",
        "auditor": "gt",
        "risk": 1.0,
        "label": "harmful",
        "categories": ["weapons"],
        "analysis": "old analysis",
        "probabilities": None,
    }
    db.execute(
        "INSERT INTO escalations (record_id, created_at, trace_id, content_hash, action,"
        " disposition, reason, verdict_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            "rec1",
            "2025-01-02T03:04:05.000+00:00",
            "old-t",
            "ab" * 32,
            "escalate",
            "block",
            "risk 1 (harmful) → escalate, held as block",
            json.dumps(verdict),
        ),
    )
    db.execute(
        "INSERT INTO escalations (record_id, created_at, trace_id, content_hash, action,"
        " disposition, reason, verdict_json, status, resolution, reviewer, note, resolved_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'resolved', 'approved', 'ana', 'fine', ?)",
        (
            "rec2",
            "2025-01-02T03:05:05.000+00:00",
            "old-u",
            "cd" * 32,
            "escalate",
            "block",
            "auditor error",
            json.dumps({"status": "auditor_error", "auditor": "gt"}),
            "2025-01-03T00:00:00.000+00:00",
        ),
    )
    db.commit()
    db.close()

    queue = ReviewQueue(path)  # migrates in place
    assert queue.counts() == {"pending": 1, "approved": 1, "rejected": 0}
    old = queue.get("rec1")  # old rows take their record id as escalation id
    assert (old.trace_id, old.label, old.auditor, old.categories) == (
        "old-t",
        "harmful",
        "gt",
        ("weapons",),
    )
    assert not old.content_stored and old.content is None and old.analysis == "old analysis"
    assert queue.get(1).escalation_id == "rec1"
    assert queue.store.page(EscalationFilter(category="weapons")).total == 1
    assert queue.store.page(EscalationFilter(risk="failed")).items[0].trace_id == "old-u"
    queue.resolve("rec1", "rejected", reviewer="bo")
    queue.emit(escalated(trace(5)))  # new rows beside the old ones
    assert queue.counts() == {"pending": 1, "approved": 1, "rejected": 1}
    queue.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()
    EscalationStore(path).close()  # a second open finds it current


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.sqlite"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    from traceguard import ConfigurationError

    with pytest.raises(ConfigurationError, match="newer"):
        EscalationStore(path)


# -- retention and delivery marks ------------------------------------------------------------


def test_purge_removes_old_resolved_items_and_their_content(tmp_path: Path) -> None:
    records = [escalated(trace(n, images=(ImageRef.from_bytes(png_bytes()),))) for n in range(3)]
    store = filed(tmp_path / "q.sqlite", *records)
    ids = [r.decision.escalation_id or "" for r in records]
    store.resolve(ids[0], "approved", reviewer="ana")
    store.resolve(ids[1], "rejected", reviewer="ana")
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=31)
    assert store.purge("30d", now=dt.datetime.now(dt.timezone.utc)) == 0
    assert store.purge("30d", now=later) == 2
    assert [i.escalation_id for i in store.pending()] == [ids[2]]  # pending is kept
    assert store.purge("30d", now=later, include_pending=True) == 1
    db = sqlite3.connect(store.path)
    assert db.execute("SELECT count(*) FROM escalation_images").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM escalation_categories").fetchone()[0] == 0
    db.close()
    store.close()
    assert b"question 0" not in store.path.read_bytes()


def test_retention_on_the_queue(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    store = filed(path, escalated(trace(1)))
    store.resolve(1, "approved", reviewer="ana")
    store.close()
    queue = ReviewQueue(path, max_age=0)  # purges on open, in the writer
    queue.flush(10)
    queue.close()
    assert EscalationStore(path).counts() == {"pending": 0, "approved": 0, "rejected": 0}
    with pytest.raises(ValueError, match="age"):
        ReviewQueue(path, max_age="forever")


def test_delivery_is_claimed_once(tmp_path: Path) -> None:
    record = escalated(trace(1, metadata={"integration": "langgraph", "thread_id": "th"}))
    store = filed(tmp_path / "q.sqlite", record)
    eid = record.decision.escalation_id or ""
    assert store.undelivered() == [] and not store.claim_delivery(eid, "a")  # still pending
    store.resolve(eid, "approved", reviewer="ana")
    assert [i.escalation_id for i in store.undelivered(integration="langgraph")] == [eid]
    other = EscalationStore(store.path)
    assert store.claim_delivery(eid, "a") and not other.claim_delivery(eid, "b")
    store.release_delivery(eid, "a")  # the resume failed: try again
    assert other.claim_delivery(eid, "b")
    assert store.undelivered() == []
    assert store.get(eid).delivered_to == "b"
    other.close()
    store.close()


def test_counts_from_tallies_match_the_rows(listed: EscalationStore) -> None:
    items = listed.page(limit=100).items
    listed.resolve(items[0].escalation_id, "approved", reviewer="ana")
    listed.resolve(items[1].escalation_id, "rejected", reviewer="ana")
    filters = [
        EscalationFilter(),
        EscalationFilter(integration="openai"),
        EscalationFilter(risk="failed"),
        EscalationFilter(risk="potentially_harmful", auditor="guardtrace-test"),
        EscalationFilter(category="fraud"),
        EscalationFilter(category="violence", state="approved"),
    ]
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2)
    for step in range(2):
        for where in filters:
            expected = {"pending": 0, "approved": 0, "rejected": 0}
            for item in listed.items(dataclasses.replace(where, state="all")):
                expected[item.state] += 1
            assert listed.counts(where) == expected, where
            page = listed.page(where)
            assert page.exact
            assert page.total == sum(
                n for state, n in expected.items() if where.state in ("all", state)
            )
        if step == 0:
            assert listed.purge("1d", now=later) == 2  # the tallies follow deletions too


def test_counts_that_need_a_scan_stop_at_the_cap(listed: EscalationStore) -> None:
    listed.count_cap = 5
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    where = EscalationFilter(since=today, integration="openai")
    page = listed.page(where)
    assert not page.exact and page.total == 6  # "more than 5"
    assert listed.counts(where)["pending"] == 6
    assert listed.page(EscalationFilter(since=today, until="2000-01-01")).exact
