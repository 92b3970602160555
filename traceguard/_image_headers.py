"""Image validation from the file header: format, pixel size, then Pillow's check if present.

:func:`validate` is what every loaded image passes through. It reads the pixel size from the
header *before* anything decodes the image (a decompression-bomb guard), and :func:`sniff` works
without Pillow for PNG, JPEG, GIF, WebP and BMP; when Pillow is installed it also verifies the file.
"""

from __future__ import annotations

import io
from typing import NamedTuple

from traceguard._exceptions import ImageError
from traceguard._image_access import ImageAccess

__all__ = ["ImageInfo", "sniff", "validate"]


class ImageInfo(NamedTuple):
    """What the header says: MIME type and pixel size."""

    mime: str
    width: int
    height: int


def validate(data: bytes, access: ImageAccess, label: str) -> ImageInfo:
    """Check size, format and pixel count (header only), then let Pillow verify if present.

    ``label`` names the image in error messages and must already be free of URL secrets.
    """
    if len(data) > access.max_bytes:
        raise ImageError(f"{label} is {len(data)} bytes, over max_bytes={access.max_bytes}")
    try:
        info = sniff(data)
    except ImageError as exc:
        raise ImageError(f"{label}: {exc}") from None
    _check_pixels(info.width, info.height, access, label)
    _pillow_verify(data, access, label)
    return info


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


# -- header sniffing (no Pillow) --------------------------------------------------------------


def sniff(data: bytes) -> ImageInfo:
    """Format and pixel size from the first bytes of an encoded image, without decoding it."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ImageError("truncated PNG header")
        return ImageInfo("image/png", _be(data, 16, 4), _be(data, 20, 4))
    if data.startswith(b"\xff\xd8"):
        return _sniff_jpeg(data)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        if len(data) < 10:
            raise ImageError("truncated GIF header")
        return ImageInfo("image/gif", _le(data, 6, 2), _le(data, 8, 2))
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


def _sniff_jpeg(data: bytes) -> ImageInfo:
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
            return ImageInfo("image/jpeg", _be(data, pos + 5, 2), _be(data, pos + 3, 2))
        pos += length
    raise ImageError("truncated JPEG header")


def _sniff_webp(data: bytes) -> ImageInfo:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        return ImageInfo("image/webp", 1 + _le(data, 24, 3), 1 + _le(data, 27, 3))
    if chunk == b"VP8L" and len(data) >= 25:
        if data[20] != 0x2F:
            raise ImageError("corrupt WebP: bad lossless signature")
        bits = _le(data, 21, 4)
        return ImageInfo("image/webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8 " and len(data) >= 30:
        if data[23:26] != b"\x9d\x01\x2a":
            raise ImageError("corrupt WebP: bad lossy frame start code")
        return ImageInfo("image/webp", _le(data, 26, 2) & 0x3FFF, _le(data, 28, 2) & 0x3FFF)
    raise ImageError("truncated or unsupported WebP header")


def _sniff_bmp(data: bytes) -> ImageInfo:
    if len(data) < 26:
        raise ImageError("truncated BMP header")
    header_size = _le(data, 14, 4)
    if header_size == 12:  # OS/2 BITMAPCOREHEADER: unsigned 16-bit sizes
        return ImageInfo("image/bmp", _le(data, 18, 2), _le(data, 20, 2))
    if header_size < 16:
        raise ImageError("corrupt BMP: unknown header")
    width = int.from_bytes(data[18:22], "little", signed=True)
    height = int.from_bytes(data[22:26], "little", signed=True)
    # A negative height marks a top-down bitmap, not a negative size.
    return ImageInfo("image/bmp", width, abs(height))
