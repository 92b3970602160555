"""Images in traces: :class:`ImageRef` (lazy, identified by hash) and :class:`ImageAccess` (limits).

An :class:`ImageRef` names an image without reading it. Auditors turn it into a validated,
bytes-backed ref with :meth:`ImageRef.load` under their :class:`ImageAccess`, which decides which
files and hosts may be read and how large an image may be. Local sources (files, data URIs,
in-memory bytes and PIL images) are read here; remote ones by :mod:`traceguard._image_fetch`;
every loaded image is checked by :mod:`traceguard._image_headers` before anything decodes it.
Reprs and error messages never contain image bytes, base64 or URL secrets.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from traceguard._exceptions import (
    ConfigurationError,
    ImageAccessDenied,
    ImageError,
    TraceguardError,
)
from traceguard._image_access import ImageAccess
from traceguard._image_fetch import afetch, fetch
from traceguard._image_headers import ImageInfo, sniff, validate
from traceguard._urls import redact_url, url_selector
from traceguard._version import install_hint

if TYPE_CHECKING:
    from PIL import Image as PILImage

__all__ = ["ImageAccess", "ImageRef"]

ImageSourceKind = Literal["path", "bytes", "data_uri", "url", "pil"]

_PILLOW_HINT = f"Pillow is required for this; install it with: {install_hint('images')}"


class ImageRef:
    """An image named in a trace; loaded only when an auditor needs its bytes.

    Build one with :meth:`from_path`, :meth:`from_bytes`, :meth:`from_data_uri`,
    :meth:`from_url`, :meth:`from_pil` or :meth:`parse`. Two refs are equal when their
    :meth:`identity` is. Treat refs as immutable (a PIL image is copied when wrapped).
    """

    __slots__ = ("_cache", "_info", "kind", "source")

    kind: ImageSourceKind
    source: Any

    def __init__(
        self, kind: ImageSourceKind, source: Any, *, _info: ImageInfo | None = None
    ) -> None:
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
        as given, ``url:<url>`` for URLs. The identity is written out (``Trace.summary()``, sink
        records, the review queue), so a URL shows redacted (:func:`~traceguard._urls.redact_url`).
        A query may select the image (``?id=2``), so when there is one a digest of the URL with
        its query is appended (``url:<redacted>#sha256=<16 hex>``) and signed URLs stay distinct.
        Credentials never enter the digest: they do not change which image a URL names, and a
        digest of a weak password could be guessed offline.
        """
        if self.kind == "path":
            return f"path:{self.source}"
        if self.kind == "url":
            shown = redact_url(self.source)
            selector = url_selector(self.source)
            if selector == shown:
                return f"url:{shown}"
            return f"url:{shown}#sha256={hashlib.sha256(selector.encode()).hexdigest()[:16]}"
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
            return f"ImageRef(kind='url', url={redact_url(self.source)!r})"
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
                return self._validated(fetch(self.source, access), access)
            return self._validated(self._read_local(access), access)

    async def aload(self, access: ImageAccess) -> ImageRef:
        """Async :meth:`load`: remote fetches use ``httpx.AsyncClient``, file reads a thread."""
        if self.kind == "url":
            with _contained(self._label()):
                return self._validated(await afetch(self.source, access), access)
        return await asyncio.to_thread(self.load, access)

    def load_bytes(self, access: ImageAccess) -> bytes:
        """The validated encoded bytes (shorthand for ``load(access).data``)."""
        return self.load(access).data

    # -- internals ----------------------------------------------------------------------------

    def _validated(self, data: bytes, access: ImageAccess) -> ImageRef:
        return ImageRef("bytes", data, _info=validate(data, access, self._label()))

    def _label(self) -> str:
        if self.kind == "path":
            return f"image file {str(self.source)!r}"
        if self.kind == "url":
            return f"image URL {redact_url(self.source)!r}"
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

    def _known_info(self) -> ImageInfo | None:
        if self._info is not None:
            return self._info
        if self.kind == "pil":
            return ImageInfo("image/png", *self.source.size)
        if "info" not in self._cache:
            data = self._in_memory_bytes()
            try:
                self._cache["info"] = None if data is None else sniff(data)
            except ImageError:
                self._cache["info"] = None
        info: ImageInfo | None = self._cache["info"]
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
