"""What an image may be loaded from, and how big it may be: :class:`ImageAccess`.

A value type at the bottom of the image rooms: local reads (``_images``), header validation
(``_image_headers``) and remote fetching (``_image_fetch``) all read their limits from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from traceguard._exceptions import ConfigurationError

__all__ = ["ImageAccess"]


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
