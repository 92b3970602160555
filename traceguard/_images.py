"""Images in traces: :class:`ImageRef` (lazy, identified by hash) and :class:`ImageAccess` (limits).

INTERIM VERSION written by the lead to fix the public API; the images helper completes it
(header sniffing, decode limits, decompression-bomb guard, SSRF checks, PIL conversion).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = ["ImageAccess", "ImageRef"]

ImageSourceKind = Literal["path", "bytes", "data_uri", "url", "pil"]


@dataclass(frozen=True)
class ImageAccess:
    """What an image may be loaded from, and how big it may be."""

    allow_remote: bool = False
    allow_private_hosts: bool = False
    root: Path | None = None
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    timeout_s: float = 10.0


@dataclass(frozen=True, eq=False)
class ImageRef:
    """An image named in a trace; loaded only when an auditor needs its bytes."""

    kind: ImageSourceKind
    source: Any = field(repr=False)

    @classmethod
    def from_path(cls, path: str | Path) -> ImageRef:
        return cls("path", Path(path))

    @classmethod
    def from_bytes(cls, data: bytes) -> ImageRef:
        return cls("bytes", bytes(data))

    @classmethod
    def from_data_uri(cls, uri: str) -> ImageRef:
        return cls("data_uri", uri)

    @classmethod
    def from_url(cls, url: str) -> ImageRef:
        return cls("url", url)

    @classmethod
    def parse(cls, value: str) -> ImageRef:
        if value.startswith("data:"):
            return cls.from_data_uri(value)
        if value.startswith(("http://", "https://")):
            return cls.from_url(value)
        return cls.from_path(value)

    def load_bytes(self, access: ImageAccess) -> bytes:
        if self.kind == "bytes":
            return bytes(self.source)
        if self.kind == "data_uri":
            return base64.b64decode(str(self.source).split(",", 1)[1])
        if self.kind == "path":
            return Path(self.source).read_bytes()
        raise NotImplementedError(self.kind)

    def identity(self) -> str:
        if self.kind in ("bytes", "data_uri"):
            return "sha256:" + hashlib.sha256(self.load_bytes(ImageAccess())).hexdigest()
        return f"{self.kind}:{self.source}"
