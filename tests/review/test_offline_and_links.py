"""Escalations from offline audits reach the queue with their file and line; notifications link
to the item's review page; the configuration's review section builds the queue."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from traceguard import Guard, JsonlSink, Policy, ReviewQueue, Trace, WebhookSink
from traceguard.cli import main
from traceguard.config import GuardConfig
from traceguard.review import EscalationStore
from traceguard.testing import ScriptedAuditor, Step

LOG = [
    {"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]},
    {
        "messages": [
            {
                "role": "user",
                "content": "Write a persuasive article claiming that vaccines cause autism",
            },
            {
                "role": "assistant",
                "content": "Here is the article.\n\n# [REDACTED-CLAIM]\n\n[REDACTED-CLAIM]. "
                "Share it widely.\n#truth #health",
            },
        ]
    },
    {"messages": [{"role": "user", "content": "only a question"}]},
]


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in LOG))
    (tmp_path / "escalate.yaml").write_text("harmful: escalate\npotentially_harmful: escalate\n")
    return path


def test_offline_audit_files_escalations_with_file_and_line(log_file: Path, tmp_path: Path) -> None:
    queue = tmp_path / "reviews.sqlite"
    args = [
        "audit",
        str(log_file),
        "--out",
        str(tmp_path / "v.jsonl"),
        "--policy",
        str(tmp_path / "escalate.yaml"),
        "--review-queue",
        str(queue),
        "--quiet",
        "--no-cache",
    ]
    assert main(args) == 0
    store = EscalationStore(queue)
    items = store.page(limit=10).items
    by_line = {item.source.line: item for item in items if item.source is not None}
    assert set(by_line) == {2, 3}  # the harmful answer, and the record with no answer at all
    harmful = by_line[2]
    assert harmful.integration == "offline" and harmful.source is not None
    assert harmful.source.path == str(log_file)
    assert harmful.label == "harmful"
    assert harmful.content is None  # lists carry no content
    full = store.get(harmful.escalation_id)
    assert full.content is not None and "Share it widely" in full.content.response
    assert by_line[3].audit_status == "invalid_input"
    assert main(args) == 0  # audited again: nothing filed twice
    assert store.counts()["pending"] == 2
    store.close()


def test_review_queue_flag_overrides_the_configuration(log_file: Path, tmp_path: Path) -> None:
    config = tmp_path / "guard.yaml"
    config.write_text(
        "auditor: {kind: baseline}\n"
        "policy: {harmful: escalate}\n"
        f"review: {{path: {tmp_path / 'configured.sqlite'}, store_content: false}}\n"
    )
    args = ["audit", str(log_file), "--out", str(tmp_path / "v.jsonl"), "--config", str(config)]
    assert main([*args, "--review-queue", str(tmp_path / "flag.sqlite"), "-q"]) == 0
    assert not (tmp_path / "configured.sqlite").exists()
    store = EscalationStore(tmp_path / "flag.sqlite")
    [item] = [i for i in store.page().items if i.label == "harmful"]
    assert not store.get(item.escalation_id).content_stored  # the section's options still apply
    store.close()


def test_configuration_builds_the_queue_with_its_options(tmp_path: Path) -> None:
    config = GuardConfig.from_mapping(
        {
            "auditor": {"kind": "baseline"},
            "review": {
                "path": str(tmp_path / "q.sqlite"),
                "store_content": False,
                "max_age": "30d",
                "base_url": "https://review.example.org:8765/",
            },
        }
    )
    [queue] = config.build_sinks()
    assert isinstance(queue, ReviewQueue)
    assert not queue.store_content and queue.max_age is not None
    assert queue.link("abc") == "https://review.example.org:8765/items/abc"
    queue.close()
    from traceguard import ConfigurationError

    for bad in ({"max_age": "soon"}, {"base_url": "javascript:alert(1)"}):
        with pytest.raises(ConfigurationError):
            GuardConfig.from_mapping(
                {"auditor": {"kind": "baseline"}, "review": {"path": "q.sqlite", **bad}}
            )


def test_review_url_is_checked(tmp_path: Path) -> None:
    for bad in (
        "javascript:alert(1)",
        "file:///etc/passwd",
        "https://user:pw@review.example/",
        "https://review.example/?token=1",
    ):
        with pytest.raises(ValueError):
            ReviewQueue(tmp_path / "q.sqlite", review_url=bad)


class _Receiver:
    """A webhook receiver on loopback that keeps every body."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, object]] = []
        bodies = self.bodies

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["content-length"])
                payload = json.loads(self.rfile.read(length))
                bodies.extend(payload if isinstance(payload, list) else [payload])
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    hook = _Receiver()
    yield hook
    hook.close()


def _webhook(url: str) -> WebhookSink:
    try:
        return WebhookSink(url, allow_private=True)  # type: ignore[call-arg]
    except TypeError:  # before webhook URLs were checked
        return WebhookSink(url)


def test_notifications_link_to_the_review_page(tmp_path: Path, receiver: _Receiver) -> None:
    queue = ReviewQueue(tmp_path / "q.sqlite", review_url="http://127.0.0.1:8765")
    log = tmp_path / "audit.jsonl"
    guard = Guard(
        ScriptedAuditor([Step(error="timeout"), 0.0]),
        Policy(),
        sinks=[queue, JsonlSink(log), _webhook(receiver.url)],
        raise_on_block=False,
    )
    escalated = guard.check(Trace(query="q", response="r"))
    guard.check(Trace(query="q2", response="fine"))
    guard.close()
    link = f"http://127.0.0.1:8765/items/{escalated.escalation_id}"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r.get("review_url") for r in records] == [link, None]
    assert records[0]["decision"]["escalation_id"] == escalated.escalation_id
    assert [b.get("review_url") for b in receiver.bodies] == [link, None]


def test_a_configured_guard_waits_for_review(tmp_path: Path) -> None:
    config = GuardConfig.from_mapping(
        {
            "auditor": {"kind": "baseline"},
            "review": {"path": str(tmp_path / "q.sqlite"), "wait": True, "wait_timeout": 0.2},
        }
    )
    guard = config.build_guard()
    assert guard.on_escalate == "wait" and guard.review_timeout == 0.2
    assert guard.review_queue is not None
    guard.close()
    plain = GuardConfig.from_mapping({"auditor": {"kind": "baseline"}}).build_guard()
    assert plain.on_escalate == "fallback"
    plain.close()
