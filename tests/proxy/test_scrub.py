"""The proxy's secret scrubber, without I/O: a secret is replaced wherever a body splits it,
and nothing else is held back (an SSE frame's end goes out at once)."""

from __future__ import annotations

from traceguard.proxy._scrub import REDACTED, Scrubber

SECRET = "sk-upstream-0123456789abcdef"


def test_a_secret_split_anywhere_is_replaced() -> None:
    scrubber = Scrubber([SECRET, f"Bearer {SECRET}", "short"])
    body = f'{{"error": "bad key Bearer {SECRET} and {SECRET}{SECRET}"}}'.encode()
    expected = scrubber.scrub(body)
    assert SECRET.encode() not in expected and expected.count(REDACTED) == 3
    assert b"short" not in scrubber.secrets  # too short to scrub without mangling text
    for cut in range(len(body) + 1):
        for second in range(cut, len(body) + 1):
            stream = scrubber.stream()
            out = b"".join(stream.feed(p) for p in (body[:cut], body[cut:second], body[second:]))
            assert out + stream.close() == expected


def test_only_a_possible_start_of_a_secret_is_held() -> None:
    stream = Scrubber([SECRET]).stream()
    assert stream.feed(b'data: {"x": 1}\n\n') == b'data: {"x": 1}\n\n'
    assert stream.feed(b"tail sk-ups") == b"tail "
    assert stream.feed(b"tairs") == b"sk-upstair"  # a final "s" may still start one
    assert stream.close() == b"s"


def test_no_secrets_no_work() -> None:
    scrubber = Scrubber([])
    assert not scrubber
    assert scrubber.stream().feed(b"anything") == b"anything"
