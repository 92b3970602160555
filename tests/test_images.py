"""ImageRef / ImageAccess: sources, identities, reprs, access control and decoding limits."""

from __future__ import annotations

import base64
import io
import os
import struct
import sys
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from traceguard import ConfigurationError, ImageAccess, ImageAccessDenied, ImageError, ImageRef
from traceguard._image_headers import sniff as _sniff

# -- fixtures -----------------------------------------------------------------------------------


def encode(
    fmt: str, size: tuple[int, int] = (37, 23), mode: str = "RGB", **params: object
) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, (200, 30, 90) if mode == "RGB" else 128).save(buffer, fmt, **params)
    return buffer.getvalue()


PNG = encode("PNG")


def png_header(width: int, height: int) -> bytes:
    """A PNG that is only a valid signature and IHDR chunk (no pixel data)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
    )


class _Handler(BaseHTTPRequestHandler):
    hits: list[str] = []

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output clean

    def do_GET(self) -> None:
        self.hits.append(self.path)
        route = self.path.split("?", 1)[0]
        try:
            if route == "/img.png":
                self._send(200, PNG, {"Content-Type": "image/png"})
            elif route == "/redirect":
                self._send(302, b"", {"Location": "/img.png?sig=abc"})
            elif route == "/loop":
                self._send(302, b"", {"Location": "/loop"})
            elif route == "/to-file":
                self._send(302, b"", {"Location": "file:///etc/passwd"})
            elif route == "/declared-big":
                self._send(200, PNG, {"Content-Length": str(10**9)})
            elif route == "/gzip":
                self._send(200, zlib.compress(PNG), {"Content-Encoding": "gzip"})
            elif route == "/stream":
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                block = b"\0" * 65536
                for _ in range(64):  # 4 MiB unless the client hangs up first
                    self.wfile.write(f"{len(block):x}\r\n".encode() + block + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            else:
                self._send(404, b"missing", {})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading on purpose (max_bytes)

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        headers.setdefault("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


REMOTE_PRIVATE = ImageAccess(allow_remote=True, allow_private_hosts=True)

# -- sources ------------------------------------------------------------------------------------


def test_from_bytes_loads_and_validates() -> None:
    ref = ImageRef.from_bytes(PNG).load(ImageAccess())
    assert (ref.kind, ref.mime, ref.width, ref.height, ref.size) == (
        "bytes",
        "image/png",
        37,
        23,
        len(PNG),
    )
    assert ref.data == PNG
    assert ref.sha256 is not None and len(ref.sha256) == 64
    assert ref.to_pil().size == (37, 23)


def test_from_data_uri() -> None:
    uri = "data:image/png;base64," + base64.b64encode(PNG).decode()
    ref = ImageRef.from_data_uri(uri)
    loaded = ref.load(ImageAccess())
    assert loaded.data == PNG
    assert loaded.to_data_uri() == uri
    assert ref.identity() == ImageRef.from_bytes(PNG).identity() == loaded.identity()
    assert ref == loaded and hash(ref) == hash(loaded)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("data:image/png;base64,iVBO!!!!", "invalid base64"),
        ("data:image/png;base64,iVBO RW0K", "invalid base64"),
        ("data:image/png," + PNG[:8].hex(), "only base64"),
        ("data:text/html;base64," + base64.b64encode(PNG).decode(), "not an image"),
        ("data:image/png;base64", "malformed"),
        (
            "data:image/png;base64," + base64.b64encode(b"plain text here").decode(),
            "not a supported",
        ),
    ],
)
def test_bad_data_uri(uri: str, message: str) -> None:
    ref = ImageRef.from_data_uri(uri)
    with pytest.raises(ImageError, match=message):
        ref.load(ImageAccess())
    assert ref.identity().startswith(("sha256:", "data-uri-invalid:sha256:"))


def test_data_uri_size_checked_before_decoding() -> None:
    uri = "data:image/png;base64," + "A" * 4000
    with pytest.raises(ImageError, match="over max_bytes=1000"):
        ImageRef.from_data_uri(uri).load(ImageAccess(max_bytes=1000))


def test_from_pil_identity_is_canonical_png() -> None:
    image = Image.new("RGB", (8, 8), (1, 2, 3))
    first, second = ImageRef.from_pil(image), ImageRef.from_pil(image.copy())
    assert first.identity() == second.identity()
    image.putpixel((0, 0), (9, 9, 9))  # the ref copied the image: later edits do not leak in
    assert ImageRef.from_pil(image).identity() != first.identity()
    loaded = first.load(ImageAccess())
    assert (loaded.mime, loaded.width, loaded.height) == ("image/png", 8, 8)
    assert loaded.identity() == first.identity()
    assert first.to_pil().getpixel((0, 0)) == (1, 2, 3)


def test_from_pil_converts_modes_png_cannot_store() -> None:
    ref = ImageRef.from_pil(Image.new("CMYK", (4, 4)))
    assert ref.load(ImageAccess()).to_pil().mode == "RGB"


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("data:image/png;base64,AAAA", "data_uri"),
        ("DATA:image/png;base64,AAAA", "data_uri"),
        ("https://example.com/a.png", "url"),
        ("http://example.com/a.png", "url"),
        ("file:///etc/passwd", "url"),
        ("ftp://example.com/a.png", "url"),
        ("images/a.png", "path"),
        ("/abs/a.png", "path"),
        ("C:\\images\\a.png", "path"),
    ],
)
def test_parse_picks_kind(value: str, kind: str) -> None:
    assert ImageRef.parse(value).kind == kind


def test_unloaded_data_raises_clear_error() -> None:
    with pytest.raises(ImageError, match=r"call ref\.load\(access\)"):
        _ = ImageRef.from_path("a.png").data
    with pytest.raises(ImageError, match="not loaded"):
        ImageRef.from_url("https://example.com/a.png").to_pil()


def test_image_access_validates_options() -> None:
    with pytest.raises(ConfigurationError):
        ImageAccess(max_bytes=0)
    with pytest.raises(ConfigurationError):
        ImageAccess(timeout_s=-1)
    assert ImageAccess(root="/tmp").root == Path("/tmp")  # type: ignore[arg-type]


# -- repr never leaks -------------------------------------------------------------------------


def test_repr_shows_hash_and_size_never_bytes() -> None:
    uri = "data:image/png;base64," + base64.b64encode(PNG).decode()
    for ref in (
        ImageRef.from_bytes(PNG),
        ImageRef.from_data_uri(uri),
        ImageRef.from_bytes(PNG).load(ImageAccess()),
    ):
        text = repr(ref)
        assert str(ref) == text
        assert base64.b64encode(PNG).decode()[:16] not in text
        assert "PNG" not in text and "\\x" not in text
        assert f"size={len(PNG)}" in text
        assert "pixels='37x23'" in text
        assert ref.sha256 is not None and ref.sha256[:12] in text and ref.sha256[:13] not in text
    pil_repr = repr(ImageRef.from_pil(Image.new("RGB", (5, 6))))
    assert "pixels='5x6'" in pil_repr and "kind='pil'" in pil_repr
    assert (
        repr(ImageRef.from_data_uri("data:image/png;base64,@@"))
        == "ImageRef(kind='data_uri', invalid)"
    )


def test_url_repr_and_identity_strip_secrets() -> None:
    ref = ImageRef.from_url(
        "https://user:hunter2@cdn.example.com:8443/a/b.png?X-Amz-Signature=s3cr3t#frag"
    )
    for text in (repr(ref), ref.identity(), ref._label()):
        assert "hunter2" not in text and "s3cr3t" not in text and "user" not in text
        assert "https://cdn.example.com:8443/a/b.png" in text
    other = ImageRef.from_url("https://cdn.example.com:8443/a/b.png?X-Amz-Signature=other")
    assert ref.identity() != other.identity()
    plain = ImageRef.from_url("https://cdn.example.com/a.png")
    assert plain.identity() == "url:https://cdn.example.com/a.png"


def test_path_repr_and_identity_as_given() -> None:
    ref = ImageRef.from_path("shots/../a.png")
    assert ref.identity() == "path:shots/../a.png"
    assert repr(ref) == "ImageRef(kind='path', path='shots/../a.png')"
    assert ref.sha256 is None and ref.size is None and ref.mime is None


# -- files --------------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (root / "sub" / "ok.png").write_bytes(PNG)
    (tmp_path / "outside" / "secret.png").write_bytes(PNG)
    (root / "link.png").symlink_to(tmp_path / "outside" / "secret.png")
    (root / "inner-link.png").symlink_to(root / "sub" / "ok.png")
    return root


def test_path_under_root(tree: Path) -> None:
    access = ImageAccess(root=tree)
    assert ImageRef.from_path("sub/ok.png").load(access).data == PNG  # relative to the root
    assert ImageRef.from_path(tree / "sub" / "ok.png").load(access).width == 37
    assert ImageRef.from_path("inner-link.png").load(access).data == PNG


@pytest.mark.parametrize(
    "path", ["../outside/secret.png", "sub/../../outside/secret.png", "link.png"]
)
def test_path_escape_refused(tree: Path, path: str) -> None:
    with pytest.raises(ImageAccessDenied, match="outside the allowed root"):
        ImageRef.from_path(path).load(ImageAccess(root=tree))


def test_absolute_path_outside_root_refused(tree: Path) -> None:
    with pytest.raises(ImageAccessDenied):
        ImageRef.from_path(tree.parent / "outside" / "secret.png").load(ImageAccess(root=tree))


def test_paths_refused_without_root(tree: Path) -> None:
    ref = ImageRef.from_path(tree / "sub" / "ok.png")
    with pytest.raises(ImageAccessDenied, match="not allowed"):
        ref.load(ImageAccess())
    assert ref.load(ImageAccess(allow_any_path=True)).data == PNG


def test_missing_file_and_fifo(tree: Path) -> None:
    access = ImageAccess(root=tree)
    with pytest.raises(ImageError, match="cannot be opened"):
        ImageRef.from_path("nope.png").load(access)
    os.mkfifo(tree / "pipe.png")
    with pytest.raises(ImageError, match="not a regular file"):
        ImageRef.from_path("pipe.png").load(access)


def test_file_over_max_bytes(tree: Path) -> None:
    with pytest.raises(ImageError, match="over max_bytes"):
        ImageRef.from_path("sub/ok.png").load(ImageAccess(root=tree, max_bytes=len(PNG) - 1))


# -- formats and limits -----------------------------------------------------------------------

FORMATS = [
    ("PNG", "image/png", {}),
    ("JPEG", "image/jpeg", {}),
    ("JPEG", "image/jpeg", {"progressive": True, "exif": b"Exif\x00\x00" + b"\x00" * 40}),
    ("GIF", "image/gif", {}),
    ("BMP", "image/bmp", {}),
    ("WEBP", "image/webp", {"lossless": False}),
    ("WEBP", "image/webp", {"lossless": True}),
    ("WEBP", "image/webp", {"exif": b"Exif\x00\x00" + b"\x00" * 40}),  # extended (VP8X)
]


@pytest.mark.parametrize(("fmt", "mime", "params"), FORMATS)
def test_dimensions_sniffed_without_pillow(fmt: str, mime: str, params: dict[str, Any]) -> None:
    data = encode(fmt, (301, 17), **params)
    info = _sniff(data)
    assert (info.mime, info.width, info.height) == (mime, 301, 17)


def test_top_down_bmp_height_is_positive() -> None:
    data = bytearray(encode("BMP", (5, 7)))
    data[22:26] = struct.pack("<i", -7)
    assert _sniff(bytes(data)).height == 7


def test_load_without_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode("WEBP", (9, 4))
    monkeypatch.setitem(sys.modules, "PIL", None)  # makes `import PIL...` raise ImportError
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    ref = ImageRef.from_bytes(data).load(ImageAccess())
    assert (ref.mime, ref.width, ref.height) == ("image/webp", 9, 4)
    with pytest.raises(ConfigurationError, match=r"pip install 'traceguard-vl\[images\]'"):
        ref.to_pil()


def test_decompression_bomb_refused_before_decoding() -> None:
    with pytest.raises(ImageError, match=r"100000x100000 pixels.*refused before decoding"):
        ImageRef.from_bytes(png_header(100_000, 100_000)).load(ImageAccess())


def test_max_pixels_is_configurable() -> None:
    with pytest.raises(ImageError, match="over max_pixels=100"):
        ImageRef.from_bytes(PNG).load(ImageAccess(max_pixels=100))


def test_truncated_png_is_image_error() -> None:
    data = encode("PNG", (64, 64), mode="RGB")
    with pytest.raises(ImageError, match="truncated or corrupt"):
        ImageRef.from_bytes(data[: len(data) // 2]).load(ImageAccess())
    with pytest.raises(ImageError, match="truncated PNG header"):
        ImageRef.from_bytes(data[:20]).load(ImageAccess())


def test_corrupt_png_crc_is_image_error() -> None:
    data = bytearray(PNG)
    data[40] ^= 0xFF  # inside the IDAT payload: the CRC no longer matches
    with pytest.raises(ImageError):
        ImageRef.from_bytes(bytes(data)).load(ImageAccess())


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"GIF8",
        b"\xff\xd8\xff\xda\x00\x02",
        b"RIFF\x00\x00\x00\x00WEBPVP8 ",
        b"BM" + b"\0" * 30,
        b"%PDF-1.7",
    ],
)
def test_unknown_or_broken_headers(data: bytes) -> None:
    with pytest.raises(ImageError):
        ImageRef.from_bytes(data).load(ImageAccess())


def test_zero_sized_image_refused() -> None:
    with pytest.raises(ImageError, match="invalid size"):
        ImageRef.from_bytes(png_header(0, 10)).load(ImageAccess())


# -- remote -------------------------------------------------------------------------------------


def test_remote_refused_by_default(server: str) -> None:
    _Handler.hits.clear()
    with pytest.raises(ImageAccessDenied, match="allow_remote"):
        ImageRef.from_url(f"{server}/img.png").load(ImageAccess())
    assert _Handler.hits == []


def test_private_host_refused_then_allowed(server: str) -> None:
    _Handler.hits.clear()
    ref = ImageRef.from_url(f"{server}/img.png?token=secret")
    with pytest.raises(ImageAccessDenied, match="non-public address") as info:
        ref.load(ImageAccess(allow_remote=True))
    assert "secret" not in str(info.value)
    assert _Handler.hits == []  # refused before connecting
    loaded = ref.load(REMOTE_PRIVATE)
    assert loaded.data == PNG and loaded.kind == "bytes" and loaded.width == 37
    assert _Handler.hits == ["/img.png?token=secret"]


def test_private_name_and_mapped_addresses_refused() -> None:
    access = ImageAccess(allow_remote=True)
    for url in (
        "http://localhost/a.png",
        "http://[::ffff:127.0.0.1]/a.png",
        "http://169.254.169.254/latest",
        "http://10.1.2.3/a.png",
        "http://[::1]/a.png",
        "http://0.0.0.0/a.png",
    ):
        with pytest.raises(ImageAccessDenied):
            ImageRef.from_url(url).load(access)


def test_non_http_scheme_refused() -> None:
    with pytest.raises(ImageAccessDenied, match="only http and https"):
        ImageRef.parse("file:///etc/passwd").load(REMOTE_PRIVATE)


def test_redirects_followed_and_rechecked(server: str) -> None:
    assert ImageRef.from_url(f"{server}/redirect").load(REMOTE_PRIVATE).data == PNG
    with pytest.raises(ImageAccessDenied, match="only http and https"):
        ImageRef.from_url(f"{server}/to-file").load(REMOTE_PRIVATE)
    _Handler.hits.clear()
    with pytest.raises(ImageError, match="more than 3 redirects"):
        ImageRef.from_url(f"{server}/loop").load(REMOTE_PRIVATE)
    assert len(_Handler.hits) == 4


def test_http_errors(server: str) -> None:
    with pytest.raises(ImageError, match="HTTP 404"):
        ImageRef.from_url(f"{server}/missing").load(REMOTE_PRIVATE)
    with pytest.raises(ImageError, match="gzip"):
        ImageRef.from_url(f"{server}/gzip").load(REMOTE_PRIVATE)
    with pytest.raises(ImageError, match="ConnectError"):
        ImageRef.from_url("http://127.0.0.1:1/a.png").load(REMOTE_PRIVATE)


def test_declared_length_over_limit(server: str) -> None:
    with pytest.raises(ImageError, match="1000000000 bytes, over max_bytes"):
        ImageRef.from_url(f"{server}/declared-big").load(REMOTE_PRIVATE)


def test_streamed_body_cut_at_max_bytes(server: str) -> None:
    access = ImageAccess(allow_remote=True, allow_private_hosts=True, max_bytes=100_000)
    with pytest.raises(ImageError, match="over max_bytes=100000"):
        ImageRef.from_url(f"{server}/stream").load(access)


async def test_aload_remote(server: str) -> None:
    ref = ImageRef.from_url(f"{server}/redirect")
    with pytest.raises(ImageAccessDenied, match="non-public"):
        await ref.aload(ImageAccess(allow_remote=True))
    assert (await ref.aload(REMOTE_PRIVATE)).data == PNG
    access = ImageAccess(allow_remote=True, allow_private_hosts=True, max_bytes=100_000)
    with pytest.raises(ImageError, match="over max_bytes"):
        await ImageRef.from_url(f"{server}/stream").aload(access)


async def test_aload_local(tree: Path) -> None:
    assert (await ImageRef.from_path("sub/ok.png").aload(ImageAccess(root=tree))).data == PNG
    with pytest.raises(ImageAccessDenied):
        await ImageRef.from_path("link.png").aload(ImageAccess(root=tree))


def test_to_pil_on_undecodable_bytes_is_image_error() -> None:
    with pytest.raises(ImageError, match="cannot decode"):
        ImageRef.from_bytes(b"not an image at all").to_pil()
    data = encode("PNG", (64, 64))
    with pytest.raises(ImageError, match="cannot decode"):
        ImageRef.from_bytes(data[: len(data) // 2]).to_pil()
