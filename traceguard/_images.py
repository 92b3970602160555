"""Images in traces: :class:`ImageRef` (lazy, identified by hash) and :class:`ImageAccess` (limits).

An :class:`ImageRef` names an image without reading it. Auditors turn it into a validated,
bytes-backed ref with :meth:`ImageRef.load` under their :class:`ImageAccess`, which decides which
files and hosts may be read and how large an image may be. Validation reads the pixel size from
the file header *before* anything decodes the image (a decompression-bomb guard), and works
without Pillow for PNG, JPEG, GIF, WebP and BMP; when Pillow is installed it also verifies the
file. Reprs and error messages never contain image bytes, base64 or URL secrets.

Known limit of the remote checks: the host is resolved and checked, then httpx resolves it again
to connect, so a DNS server answering differently within that window (DNS rebinding) could still
reach a private address. Keep ``allow_remote`` off for untrusted traces where that matters, or
fetch through an egress proxy that enforces the same rule.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import ipaddress
import os
import socket
import stat
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple
from urllib.parse import urlsplit, urlunsplit

import httpx

from traceguard._exceptions import (
    ConfigurationError,
    ImageAccessDenied,
    ImageError,
    TraceguardError,
)
from traceguard._version import __version__

if TYPE_CHECKING:
    from PIL import Image as PILImage

__all__ = ["ImageAccess", "ImageRef"]

ImageSourceKind = Literal["path", "bytes", "data_uri", "url", "pil"]

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_PILLOW_HINT = "Pillow is required for this; install it with: pip install 'traceguard-vl[images]'"


@dataclass(frozen=True, kw_only=True)
class ImageAccess:
    """What an image may be loaded from, and how big it may be.

    The defaults read nothing from disk or network: only in-memory images (bytes, data URIs, PIL
    images) load. Grant access explicitly with ``root`` / ``allow_any_path`` / ``allow_remote``.
    """

    root: Path | None = None
    """File paths must resolve (after symlinks) under this directory; relative paths are taken
    relative to it. None refuses every path unless ``allow_any_path`` is set."""
    allow_any_path: bool = False
    """Read any path the process can read (only for trusted traces)."""
    allow_remote: bool = False
    """Fetch ``http(s)://`` URLs."""
    allow_private_hosts: bool = False
    """Also fetch from hosts resolving to loopback, private, link-local or reserved addresses.
    Off by default: audited traces are untrusted and would otherwise reach internal services."""
    max_bytes: int = 20 * 1024 * 1024
    """Largest encoded image, enforced while reading so oversized sources are never buffered."""
    max_pixels: int = 40_000_000
    """Largest width × height, checked from the header before decoding."""
    timeout_s: float = 10.0
    """Deadline for a whole remote fetch, redirects included."""
    max_redirects: int = 3

    def __post_init__(self) -> None:
        root: object = self.root
        if isinstance(root, str):
            # Accept str for convenience; the dataclass is frozen, hence object.__setattr__.
            object.__setattr__(self, "root", Path(root))
        for name in ("max_bytes", "max_pixels"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"ImageAccess.{name} must be positive")
        if self.timeout_s <= 0:
            raise ConfigurationError("ImageAccess.timeout_s must be positive")
        if self.max_redirects < 0:
            raise ConfigurationError("ImageAccess.max_redirects must be >= 0")


class _Info(NamedTuple):
    mime: str
    width: int
    height: int


class ImageRef:
    """An image named in a trace; loaded only when an auditor needs its bytes.

    Build one with :meth:`from_path`, :meth:`from_bytes`, :meth:`from_data_uri`,
    :meth:`from_url`, :meth:`from_pil` or :meth:`parse`. Two refs are equal when their
    :meth:`identity` is. Treat refs as immutable (a PIL image is copied when wrapped).
    """

    __slots__ = ("_cache", "_info", "kind", "source")

    kind: ImageSourceKind
    source: Any

    def __init__(self, kind: ImageSourceKind, source: Any, *, _info: _Info | None = None) -> None:
        expected: dict[str, type | tuple[type, ...]] = {
            "path": (str, Path),
            "bytes": (bytes, bytearray, memoryview),
            "data_uri": str,
            "url": str,
        }
        if kind == "pil":
            _require_pil()
        elif kind not in expected:
            raise ValueError(f"unknown image source kind {kind!r}")
        elif not isinstance(source, expected[kind]):
            raise TypeError(f"an ImageRef of kind {kind!r} needs {expected[kind]}")
        if kind == "bytes":
            source = bytes(source)
        elif kind == "path":
            source = Path(source)
        self.kind = kind
        self.source = source
        self._info = _info
        # Lazily computed derived values (decoded bytes, PNG encoding, digest).
        self._cache: dict[str, Any] = {}

    # -- constructors -------------------------------------------------------------------------

    @classmethod
    def from_path(cls, path: str | os.PathLike[str]) -> ImageRef:
        """An image file; read only by :meth:`load` under an ``ImageAccess`` that allows it."""
        return cls("path", Path(path))

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> ImageRef:
        """An encoded image (PNG, JPEG, GIF, WebP or BMP) held in memory."""
        return cls("bytes", bytes(data))

    @classmethod
    def from_data_uri(cls, uri: str) -> ImageRef:
        """A ``data:image/...;base64,...`` URI; decoded and validated by :meth:`load`."""
        return cls("data_uri", uri)

    @classmethod
    def from_url(cls, url: str) -> ImageRef:
        """A remote image; fetched only by :meth:`load` when ``allow_remote`` is set."""
        return cls("url", url)

    @classmethod
    def from_pil(cls, image: PILImage.Image) -> ImageRef:
        """A Pillow image; copied so later edits to ``image`` do not change this ref."""
        return cls("pil", image.copy())

    @classmethod
    def parse(cls, value: str) -> ImageRef:
        """Pick the source kind from a string: ``data:`` URI, ``scheme://`` URL, else a path.

        Any ``scheme://`` string becomes a URL (not a path), so that ``file://`` or ``ftp://``
        sources are refused by :meth:`load` rather than read from disk.
        """
        if value[:5].lower() == "data:":
            return cls.from_data_uri(value)
        scheme, sep, _ = value.partition("://")
        if sep and scheme and scheme.replace("+", "").replace(".", "").replace("-", "").isalnum():
            return cls.from_url(value)
        return cls.from_path(value)

    # -- identity, equality, repr -------------------------------------------------------------

    def identity(self) -> str:
        """A stable id for content hashes; never reads files or the network.

        ``sha256:<hex>`` for in-memory images (PIL images: of their PNG encoding), ``path:<path>``
        as given, ``url:<url>`` with query and userinfo replaced by a digest of them so that
        signed URLs stay distinct without their secrets showing.
        """
        if self.kind == "path":
            return f"path:{self.source}"
        if self.kind == "url":
            shown = _redact_url(self.source)
            if shown == self.source:
                return f"url:{shown}"
            return f"url:{shown}#sha256={hashlib.sha256(self.source.encode()).hexdigest()[:16]}"
        if self.kind == "data_uri" and self._in_memory_bytes() is None:
            # Undecodable: still a stable identity; load() reports the error.
            raw = hashlib.sha256(self.source.encode("utf-8", "replace")).hexdigest()
            return f"data-uri-invalid:sha256:{raw}"
        return f"sha256:{self.sha256}"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ImageRef):
            return NotImplemented
        return self.identity() == other.identity()

    def __hash__(self) -> int:
        return hash(self.identity())

    def __repr__(self) -> str:
        if self.kind == "path":
            return f"ImageRef(kind='path', path={str(self.source)!r})"
        if self.kind == "url":
            return f"ImageRef(kind='url', url={_redact_url(self.source)!r})"
        data = self._in_memory_bytes()
        if data is None:
            return "ImageRef(kind='data_uri', invalid)"
        digest = self.sha256 or ""
        fields = [f"kind={self.kind!r}", f"sha256={digest[:12]!r}", f"size={len(data)}"]
        info = self._known_info()
        if info is not None:
            fields.append(f"pixels='{info.width}x{info.height}'")
            fields.append(f"mime={info.mime!r}")
        return f"ImageRef({', '.join(fields)})"

    __str__ = __repr__

    # -- properties ---------------------------------------------------------------------------

    @property
    def data(self) -> bytes:
        """The encoded image bytes; only for bytes-backed refs (call :meth:`load` first)."""
        if self.kind != "bytes":
            raise ImageError(
                f"{self!r} is not loaded: call ref.load(access) to get a bytes-backed ImageRef"
            )
        data: bytes = self.source
        return data

    @property
    def sha256(self) -> str | None:
        """Hex sha256 of the encoded bytes; None for path and URL sources (not read yet)."""
        data = self._in_memory_bytes()
        if data is None:
            return None
        if "sha256" not in self._cache:
            self._cache["sha256"] = hashlib.sha256(data).hexdigest()
        digest: str = self._cache["sha256"]
        return digest

    @property
    def size(self) -> int | None:
        """Encoded size in bytes, when the bytes are in memory."""
        data = self._in_memory_bytes()
        return None if data is None else len(data)

    @property
    def mime(self) -> str | None:
        """MIME type read from the header, when the bytes are in memory and recognised."""
        info = self._known_info()
        return None if info is None else info.mime

    @property
    def width(self) -> int | None:
        """Pixel width read from the header, when known."""
        info = self._known_info()
        return None if info is None else info.width

    @property
    def height(self) -> int | None:
        """Pixel height read from the header, when known."""
        info = self._known_info()
        return None if info is None else info.height

    # -- conversion ---------------------------------------------------------------------------

    def to_data_uri(self) -> str:
        """A ``data:<mime>;base64,...`` URI of a bytes-backed ref (for OpenAI-style requests)."""
        data = self.data
        mime = self.mime or "application/octet-stream"
        return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"

    def to_pil(self) -> PILImage.Image:
        """The decoded Pillow image (needs ``traceguard-vl[images]``); bytes-backed or PIL refs."""
        pil = _require_pil()
        if self.kind == "pil":
            copied: PILImage.Image = self.source.copy()
            return copied
        data = self.data
        try:
            image: PILImage.Image = pil.open(io.BytesIO(data))
            image.load()
        except (OSError, SyntaxError, ValueError, EOFError, pil.DecompressionBombError) as exc:
            raise ImageError(f"cannot decode {self!r}: {exc}") from None
        return image

    # -- loading ------------------------------------------------------------------------------

    def load(self, access: ImageAccess) -> ImageRef:
        """A validated, bytes-backed copy of this image, read under ``access``.

        Raises:
            ImageAccessDenied: the path or URL is not allowed by ``access``.
            ImageError: unreadable, too large, not a supported image, or corrupt.
        """
        with _contained(self._label()):
            if self.kind == "url":
                return _validated(_fetch(self.source, access), access, self._label())
            return _validated(self._read_local(access), access, self._label())

    async def aload(self, access: ImageAccess) -> ImageRef:
        """Async :meth:`load`: remote fetches use ``httpx.AsyncClient``, file reads a thread."""
        if self.kind == "url":
            with _contained(self._label()):
                return _validated(await _afetch(self.source, access), access, self._label())
        return await asyncio.to_thread(self.load, access)

    def load_bytes(self, access: ImageAccess) -> bytes:
        """The validated encoded bytes (shorthand for ``load(access).data``)."""
        return self.load(access).data

    # -- internals ----------------------------------------------------------------------------

    def _label(self) -> str:
        if self.kind == "path":
            return f"image file {str(self.source)!r}"
        if self.kind == "url":
            return f"image URL {_redact_url(self.source)!r}"
        return f"{self.kind} image"

    def _in_memory_bytes(self) -> bytes | None:
        """Encoded bytes for in-memory kinds (no limits: they are already in memory)."""
        if self.kind == "bytes":
            data: bytes = self.source
            return data
        if self.kind not in ("data_uri", "pil"):
            return None
        if "bytes" not in self._cache:
            if self.kind == "pil":
                self._cache["bytes"] = _encode_png(self.source)
            else:
                try:
                    self._cache["bytes"] = _decode_data_uri(self.source, max_bytes=None)
                except ImageError:
                    self._cache["bytes"] = None
        cached: bytes | None = self._cache["bytes"]
        return cached

    def _known_info(self) -> _Info | None:
        if self._info is not None:
            return self._info
        if self.kind == "pil":
            return _Info("image/png", *self.source.size)
        if "info" not in self._cache:
            data = self._in_memory_bytes()
            try:
                self._cache["info"] = None if data is None else _sniff(data)
            except ImageError:
                self._cache["info"] = None
        info: _Info | None = self._cache["info"]
        return info

    def _read_local(self, access: ImageAccess) -> bytes:
        if self.kind == "path":
            return _read_file(self.source, access)
        if self.kind == "data_uri":
            return _decode_data_uri(self.source, max_bytes=access.max_bytes)
        data = self._in_memory_bytes()
        assert data is not None  # bytes and pil kinds
        return data


@contextmanager
def _contained(label: str) -> Iterator[None]:
    """Make any failure to load an image an :class:`ImageError`.

    The sources are hostile: a path with a NUL byte, a redirect to an unparseable URL or a file
    that trips a decoder bug raise ValueError, httpx.InvalidURL, IndexError... Callers rely on
    ImageError to fail one trace as invalid input rather than the whole batch. Only the type is
    kept: such messages may quote the URL, secrets included.
    """
    try:
        yield
    except TraceguardError:
        raise
    except Exception as exc:
        raise ImageError(f"{label} cannot be loaded ({type(exc).__name__})") from None


# -- validation -------------------------------------------------------------------------------


def _validated(data: bytes, access: ImageAccess, label: str) -> ImageRef:
    """Check size, format and pixel count (header only), then let Pillow verify if present."""
    if len(data) > access.max_bytes:
        raise ImageError(f"{label} is {len(data)} bytes, over max_bytes={access.max_bytes}")
    try:
        info = _sniff(data)
    except ImageError as exc:
        raise ImageError(f"{label}: {exc}") from None
    _check_pixels(info.width, info.height, access, label)
    _pillow_verify(data, access, label)
    return ImageRef("bytes", data, _info=info)


def _check_pixels(width: int, height: int, access: ImageAccess, label: str) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"{label} has an invalid size {width}x{height}")
    if width * height > access.max_pixels:
        raise ImageError(
            f"{label} is {width}x{height} pixels, over max_pixels={access.max_pixels} "
            "(refused before decoding)"
        )


def _pillow_verify(data: bytes, access: ImageAccess, label: str) -> None:
    try:
        from PIL import Image
    except ImportError:
        return  # the header checks above are the whole validation without the extra
    try:
        with Image.open(io.BytesIO(data)) as image:
            # Pillow may read a different frame header than ours; trust the larger claim.
            _check_pixels(image.width, image.height, access, label)
            image.verify()
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{label} is too large to decode: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"{label} is truncated or corrupt: {exc}") from None


def _require_pil() -> Any:
    try:
        from PIL import Image
    except ImportError as exc:
        raise ConfigurationError(_PILLOW_HINT) from exc
    return Image


def _encode_png(image: PILImage.Image) -> bytes:
    """Deterministic PNG bytes of a Pillow image (same pixels and mode, same bytes)."""
    if image.mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


# -- header sniffing (no Pillow) --------------------------------------------------------------


def _sniff(data: bytes) -> _Info:
    """Format and pixel size from the first bytes of an encoded image, without decoding it."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ImageError("truncated PNG header")
        return _Info("image/png", _be(data, 16, 4), _be(data, 20, 4))
    if data.startswith(b"\xff\xd8"):
        return _sniff_jpeg(data)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        if len(data) < 10:
            raise ImageError("truncated GIF header")
        return _Info("image/gif", _le(data, 6, 2), _le(data, 8, 2))
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _sniff_webp(data)
    if data.startswith(b"BM"):
        return _sniff_bmp(data)
    raise ImageError("not a supported image format (PNG, JPEG, GIF, WebP or BMP)")


def _be(data: bytes, offset: int, size: int) -> int:
    return int.from_bytes(data[offset : offset + size], "big")


def _le(data: bytes, offset: int, size: int) -> int:
    return int.from_bytes(data[offset : offset + size], "little")


# Start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) share the range.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})


def _sniff_jpeg(data: bytes) -> _Info:
    pos, end = 2, len(data)
    while pos < end:
        if data[pos] != 0xFF:
            raise ImageError("corrupt JPEG: expected a segment marker")
        while pos < end and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos + 1 > end:
            break
        marker = data[pos]
        pos += 1
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan, both before any frame size
            raise ImageError("corrupt JPEG: no frame header before the image data")
        if pos + 2 > end:
            break
        length = _be(data, pos, 2)
        if length < 2:
            raise ImageError("corrupt JPEG: bad segment length")
        if marker in _JPEG_SOF:
            if pos + 7 > end:
                break
            return _Info("image/jpeg", _be(data, pos + 5, 2), _be(data, pos + 3, 2))
        pos += length
    raise ImageError("truncated JPEG header")


def _sniff_webp(data: bytes) -> _Info:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        return _Info("image/webp", 1 + _le(data, 24, 3), 1 + _le(data, 27, 3))
    if chunk == b"VP8L" and len(data) >= 25:
        if data[20] != 0x2F:
            raise ImageError("corrupt WebP: bad lossless signature")
        bits = _le(data, 21, 4)
        return _Info("image/webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8 " and len(data) >= 30:
        if data[23:26] != b"\x9d\x01\x2a":
            raise ImageError("corrupt WebP: bad lossy frame start code")
        return _Info("image/webp", _le(data, 26, 2) & 0x3FFF, _le(data, 28, 2) & 0x3FFF)
    raise ImageError("truncated or unsupported WebP header")


def _sniff_bmp(data: bytes) -> _Info:
    if len(data) < 26:
        raise ImageError("truncated BMP header")
    header_size = _le(data, 14, 4)
    if header_size == 12:  # OS/2 BITMAPCOREHEADER: unsigned 16-bit sizes
        return _Info("image/bmp", _le(data, 18, 2), _le(data, 20, 2))
    if header_size < 16:
        raise ImageError("corrupt BMP: unknown header")
    width = int.from_bytes(data[18:22], "little", signed=True)
    height = int.from_bytes(data[22:26], "little", signed=True)
    # A negative height marks a top-down bitmap, not a negative size.
    return _Info("image/bmp", width, abs(height))


# -- data URIs and files ----------------------------------------------------------------------


def _decode_data_uri(uri: str, *, max_bytes: int | None) -> bytes:
    header, sep, payload = uri.partition(",")
    if not sep or header[:5].lower() != "data:":
        raise ImageError("malformed data URI (expected 'data:<mime>;base64,<data>')")
    params = [p.strip().lower() for p in header[5:].split(";")]
    if "base64" not in params[1:]:
        raise ImageError("only base64 data URIs are supported for images")
    if params[0] and not params[0].startswith("image/") and params[0] != "application/octet-stream":
        raise ImageError(f"data URI media type {params[0]!r} is not an image")
    # Bound the decoded size from the encoded length, before allocating the decoded bytes.
    if max_bytes is not None and len(payload) // 4 * 3 > max_bytes + 2:
        raise ImageError(f"data URI image is over max_bytes={max_bytes}")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError("data URI holds invalid base64") from None


def _read_file(path: Path, access: ImageAccess) -> bytes:
    label = f"image file {str(path)!r}"
    if access.root is None and not access.allow_any_path:
        raise ImageAccessDenied(
            f"{label}: reading files is not allowed (set ImageAccess.root or allow_any_path)"
        )
    candidate = path if path.is_absolute() or access.root is None else access.root / path
    try:
        resolved = candidate.resolve(strict=True)
    except (OSError, RuntimeError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise ImageError(f"{label} cannot be opened: {type(exc).__name__}") from None
    if access.root is not None and not access.allow_any_path:
        root = access.root.resolve()
        if not resolved.is_relative_to(root):
            raise ImageAccessDenied(f"{label} resolves outside the allowed root {str(root)!r}")
    # O_NOFOLLOW narrows the window for swapping the checked file for a symlink before open.
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(resolved, flags)
    except OSError as exc:
        raise ImageError(f"{label} cannot be opened: {type(exc).__name__}") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise ImageError(f"{label} is not a regular file")
        data = handle.read(access.max_bytes + 1)
    if len(data) > access.max_bytes:
        raise ImageError(f"{label} is over max_bytes={access.max_bytes}")
    return data


# -- remote fetching: shared checks, thin sync and async drivers ------------------------------


def _redact_url(url: str) -> str:
    """The URL without userinfo, query or fragment (signed URLs carry secrets there)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = host if parts.port is None else f"{host}:{parts.port}"
    except ValueError:
        return "<unparseable URL>"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _checked_target(url: str, access: ImageAccess) -> tuple[httpx.URL, str]:
    """Parse ``url`` and check its scheme; returns it with its loggable form."""
    shown = _redact_url(url)
    if not access.allow_remote:
        raise ImageAccessDenied(
            f"image URL {shown!r}: remote images are not allowed (ImageAccess.allow_remote)"
        )
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        raise ImageError(f"image URL {shown!r} is not a valid URL") from None
    if parsed.scheme not in ("http", "https"):
        raise ImageAccessDenied(f"image URL {shown!r}: only http and https are allowed")
    if not parsed.host:
        raise ImageError(f"image URL {shown!r} has no host")
    return parsed, shown


# IPv6 prefixes that carry an IPv4 address in their last 32 bits and that a gateway may
# translate to it: NAT64 (RFC 6052 well-known and RFC 8215 local-use) and the deprecated
# IPv4-compatible form. Python calls these global, whatever IPv4 address they embed.
_IPV4_EMBEDDING = (
    ipaddress.IPv6Network("64:ff9b::/96"),
    ipaddress.IPv6Network("64:ff9b:1::/48"),
    ipaddress.IPv6Network("::/96"),
)


def _is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for a global unicast address that embeds no private IPv4 address."""
    if not address.is_global or address.is_multicast:
        return False
    if isinstance(address, ipaddress.IPv4Address):
        return True
    if address.is_site_local:  # fec0::/10: deprecated, yet still routed inside some networks
        return False
    embedded = [address.ipv4_mapped, address.sixtofour]
    if address.teredo is not None:
        embedded.extend(address.teredo)
    if any(address in network for network in _IPV4_EMBEDDING):
        embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return all(inner is None or _is_public(inner) for inner in embedded)


def _check_addresses(addresses: Iterable[str], access: ImageAccess, shown: str) -> None:
    """Refuse hosts that resolve to anything but public unicast addresses."""
    if access.allow_private_hosts:
        return
    found = False
    for text in addresses:
        found = True
        address = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id
        if not _is_public(address):
            raise ImageAccessDenied(
                f"image URL {shown!r} resolves to a non-public address "
                "(set ImageAccess.allow_private_hosts to allow it)"
            )
    if not found:
        raise ImageError(f"image URL {shown!r}: host did not resolve")


def _port(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


def _sockaddrs(infos: Iterable[tuple[Any, ...]]) -> list[str]:
    return [str(info[4][0]) for info in infos]


def _next_hop(
    response: httpx.Response, url: httpx.URL, hop: int, access: ImageAccess
) -> str | None:
    """The redirect target to follow, or None when ``response`` carries the image."""
    shown = _redact_url(str(url))
    if response.status_code in _REDIRECT_STATUSES and "location" in response.headers:
        if hop >= access.max_redirects:
            raise ImageError(f"image URL {shown!r}: more than {access.max_redirects} redirects")
        return str(url.join(response.headers["location"]))
    if not 200 <= response.status_code < 300:
        raise ImageError(f"image URL {shown!r} answered HTTP {response.status_code}")
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        # Raw bytes are counted against max_bytes; a compressed body would inflate past it.
        raise ImageError(f"image URL {shown!r} sent a {encoding!r}-encoded body")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > access.max_bytes:
        raise ImageError(f"image URL {shown!r} is {declared} bytes, over max_bytes")
    return None


class _Body:
    """Collects a response body, stopping at ``max_bytes`` or the overall deadline."""

    def __init__(self, access: ImageAccess, shown: str, deadline: float) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self._limit = access.max_bytes
        self._shown = shown
        self._deadline = deadline

    def add(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > self._limit:
            raise ImageError(f"image URL {self._shown!r} is over max_bytes={self._limit}")
        if time.monotonic() > self._deadline:
            raise ImageError(f"image URL {self._shown!r}: download timed out")
        self._parts.append(chunk)

    def value(self) -> bytes:
        return b"".join(self._parts)


def _client_options(access: ImageAccess) -> dict[str, Any]:
    return {
        "timeout": httpx.Timeout(access.timeout_s),
        "follow_redirects": False,  # every hop is re-checked by _fetch / _afetch
        "trust_env": False,  # never send .netrc credentials or route through env proxies
        "headers": {"User-Agent": f"traceguard/{__version__}", "Accept-Encoding": "identity"},
    }


@contextmanager
def _http_errors(url: str) -> Iterator[None]:
    """Turn transport failures into ImageError, naming the URL without its secrets."""
    try:
        yield
    except httpx.TimeoutException:
        raise ImageError(f"image URL {_redact_url(url)!r}: download timed out") from None
    except httpx.HTTPError as exc:
        raise ImageError(f"image URL {_redact_url(url)!r}: {type(exc).__name__}") from None


def _resolve_failed(shown: str) -> ImageError:
    return ImageError(f"image URL {shown!r}: host did not resolve")


def _fetch(url: str, access: ImageAccess) -> bytes:
    deadline = time.monotonic() + access.timeout_s
    target, shown = _checked_target(url, access)
    with _http_errors(url), httpx.Client(**_client_options(access)) as client:
        for hop in range(access.max_redirects + 1):
            target, shown = _checked_target(str(target), access)
            if not access.allow_private_hosts:
                try:
                    infos = socket.getaddrinfo(target.host, _port(target), type=socket.SOCK_STREAM)
                except (OSError, UnicodeError):  # UnicodeError: a DNS label over 63 bytes
                    raise _resolve_failed(shown) from None
                _check_addresses(_sockaddrs(infos), access, shown)
            with client.stream("GET", target) as response:
                redirect = _next_hop(response, target, hop, access)
                if redirect is None:
                    body = _Body(access, shown, deadline)
                    for chunk in response.iter_raw():
                        body.add(chunk)
                    return body.value()
            target = httpx.URL(redirect)
    raise AssertionError("unreachable: the redirect loop returns or raises")  # pragma: no cover


async def _afetch(url: str, access: ImageAccess) -> bytes:
    # Mirrors _fetch step for step; every check is one of the shared helpers above.
    deadline = time.monotonic() + access.timeout_s
    target, shown = _checked_target(url, access)
    loop = asyncio.get_running_loop()
    with _http_errors(url):
        async with httpx.AsyncClient(**_client_options(access)) as client:
            for hop in range(access.max_redirects + 1):
                target, shown = _checked_target(str(target), access)
                if not access.allow_private_hosts:
                    try:
                        infos = await loop.getaddrinfo(
                            target.host, _port(target), type=socket.SOCK_STREAM
                        )
                    except (OSError, UnicodeError):
                        raise _resolve_failed(shown) from None
                    _check_addresses(_sockaddrs(infos), access, shown)
                async with client.stream("GET", target) as response:
                    redirect = _next_hop(response, target, hop, access)
                    if redirect is None:
                        body = _Body(access, shown, deadline)
                        async for chunk in response.aiter_raw():
                            body.add(chunk)
                        return body.value()
                target = httpx.URL(redirect)
    raise AssertionError("unreachable: the redirect loop returns or raises")  # pragma: no cover
