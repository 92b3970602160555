"""Adversarial tests of image loading: SSRF through IPv6 forms, hostile paths and URLs.

Every failure to load must be an :class:`ImageError` (so the auditor fails that one trace as
invalid input), and no address that reaches a private IPv4 host may be fetched.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from traceguard import ImageAccess, ImageAccessDenied, ImageError, ImageRef, Trace
from traceguard._verdict import AuditStatus
from traceguard.auditors.guardtrace import GuardTraceAuditor
from traceguard.backends.http import OpenAICompatibleBackend
from traceguard.testing.openai_server import OpenAIServer

REMOTE = ImageAccess(allow_remote=True)


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, "PNG")
    return buffer.getvalue()


# -- SSRF: IPv6 spellings of private IPv4 hosts --------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "[64:ff9b::7f00:1]",  # NAT64 well-known prefix → 127.0.0.1
        "[64:ff9b::a9fe:a9fe]",  # NAT64 → 169.254.169.254 (cloud metadata)
        "[64:ff9b:1::a00:1]",  # NAT64 local-use prefix → 10.0.0.1
        "[::7f00:1]",  # IPv4-compatible ::127.0.0.1
        "[2002:7f00:1::1]",  # 6to4 of 127.0.0.1
        "[2002:a9fe:a9fe::1]",  # 6to4 of 169.254.169.254
        "[fec0::1]",  # deprecated site-local
    ],
)
def test_ipv6_forms_of_private_hosts_are_refused_before_connecting(host: str) -> None:
    # Without the check these reach the connect step (ImageError: ConnectError in this sandbox,
    # a private service behind a NAT64 gateway in production).
    with pytest.raises(ImageAccessDenied, match="non-public"):
        ImageRef.from_url(f"http://{host}/x.png").load(REMOTE)


@pytest.mark.parametrize(
    "host",
    ["2130706433", "0x7f.1", "127.1", "0", "[::ffff:127.0.0.1]", "[::1]", "[fe80::1]"],
)
def test_numeric_spellings_of_loopback_are_refused(host: str) -> None:
    with pytest.raises(ImageAccessDenied):
        ImageRef.from_url(f"http://{host}/x.png").load(REMOTE)


async def test_ipv6_private_forms_are_refused_async_too() -> None:
    with pytest.raises(ImageAccessDenied):
        await ImageRef.from_url("http://[64:ff9b::7f00:1]/x.png").aload(REMOTE)


# -- every failure is an ImageError -------------------------------------------------------------


def test_overlong_dns_label_is_an_image_error() -> None:
    # socket.getaddrinfo raises UnicodeError (not OSError) for a label over 63 bytes.
    url = "http://" + "a" * 64 + ".example.com/x.png"
    with pytest.raises(ImageError, match="did not resolve"):
        ImageRef.from_url(url).load(REMOTE)


def test_nul_byte_in_a_path_is_an_image_error(tmp_path: Path) -> None:
    with pytest.raises(ImageError):
        ImageRef.from_path("a\x00b.png").load(ImageAccess(root=tmp_path))


class _Redirect(BaseHTTPRequestHandler):
    location = ""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("Location", self.location)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def redirector() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Redirect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_redirect_to_an_unencodable_host_is_an_image_error_without_secrets(
    redirector: ThreadingHTTPServer,
) -> None:
    _Redirect.location = "http://" + "b" * 64 + ".example.com/?token=SECRET"
    access = ImageAccess(allow_remote=True, allow_private_hosts=True)
    url = f"http://127.0.0.1:{redirector.server_port}/x.png?sig=SIGNED"
    with pytest.raises(ImageError) as caught:
        ImageRef.from_url(url).load(access)
    assert "SECRET" not in str(caught.value) and "SIGNED" not in str(caught.value)


def test_one_bad_image_url_does_not_sink_the_batch() -> None:
    # Before the fix the UnicodeError escaped audit_batch, failing every trace in the batch.
    good = Trace(query="ok", response="fine", images=(ImageRef.from_bytes(_png()),))
    bad = Trace(query="x", response="y", images=(ImageRef.from_url("http://" + "c" * 64 + "/"),))
    with OpenAIServer() as server:
        from traceguard.testing._openai_payloads import guardtrace_output
        from traceguard.testing.openai_server import ScriptedResponse, chat_completion

        server.enqueue(ScriptedResponse.json(chat_completion(guardtrace_output("1"))))
        auditor = GuardTraceAuditor(
            OpenAICompatibleBackend(server.base_url, "m", max_retries=0), image_access=REMOTE
        )
        try:
            first, second = auditor.audit_batch([good, bad])
        finally:
            auditor.close()
    assert first.status is AuditStatus.OK and first.risk == 1.0
    assert second.status is AuditStatus.INVALID_INPUT
