"""From an audit record to the row the review queue stores: :class:`NewEscalation`.

Building an entry is pure and cheap (text is capped, nothing is read from disk or network), so
it can run on the caller's thread. Thumbnails are made later, on the queue's writer thread, by
:func:`make_thumbnails`. An entry serialises to one line of ASCII JSON for the spill file; the
line keeps everything but the image sources, so a replayed entry lists its images without
thumbnails.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from traceguard._images import ImageAccess, ImageRef
from traceguard._sinks import AuditRecord
from traceguard._trace import Trace

__all__ = [
    "MAX_IMAGES",
    "MAX_TEXT_CHARS",
    "ImageSlot",
    "NewEscalation",
    "offline_escalation_id",
    "make_thumbnails",
    "storable",
]

MAX_TEXT_CHARS = 100_000
"""Longest query, thinking or response kept per escalation; the rest is cut with a marker."""
MAX_TOOL_ARGUMENT_CHARS = 20_000
MAX_HISTORY_TURNS = 6
MAX_HISTORY_CHARS = 4_000
MAX_IMAGES = 8
"""Images kept per escalation (the rest are counted in the last image's note)."""
THUMBNAIL_SIDE = 768
"""Longest side of a stored thumbnail, in pixels."""
MAX_THUMBNAIL_BYTES = 400_000
MAX_FIELD_CHARS = 512
"""Longest metadata value kept (ids, model names, source paths)."""
EXCERPT_CHARS = 200

_ORIGIN_KEYS = ("integration", "thread_id", "session_id", "run_id")
_RASTER_FORMATS = ["PNG", "JPEG", "GIF", "WEBP", "BMP"]


def storable(text: str | None) -> str | None:
    """``text`` as SQLite and JSON can store it: a lone surrogate (hostile input) becomes
    ``\\udXXX`` instead of failing the insert and losing the escalation."""
    if text is None:
        return None
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _capped(text: str | None, limit: int = MAX_TEXT_CHARS) -> str | None:
    if text is None:
        return None
    if len(text) > limit:
        text = f"{text[:limit]}\n… [{len(text) - limit} more characters not kept]"
    return storable(text)


def _field(value: Any) -> str | None:
    """A metadata value as a short string (ids may be UUIDs or ints); None when absent."""
    if value is None or isinstance(value, Mapping | list | tuple | bytes):
        return None
    text = str(value).strip()
    return _capped(text, MAX_FIELD_CHARS) if text else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _source(metadata: Mapping[str, Any]) -> tuple[str | None, int | None, int | None]:
    """``(path, line, turn)`` from ``metadata["source"]``: the contract's ``{"path", "line",
    "turn"}`` mapping, or (older readers) a path string with ``line``/``turn`` beside it."""
    source = metadata.get("source")
    if isinstance(source, Mapping):
        return _field(source.get("path")), _int(source.get("line")), _int(source.get("turn"))
    if isinstance(source, str):
        return _field(source), _int(metadata.get("line")), _int(metadata.get("turn"))
    return None, None, None


def offline_escalation_id(path: str, line: int | None, turn: int | None, content_hash: str) -> str:
    """The escalation id of an offline audit's trace: the same input line and content give the
    same id, so auditing a file again (or resuming) does not file its escalations twice."""
    key = f"offline\0{path}\0{line}\0{turn}\0{content_hash}".encode("utf-8", "surrogatepass")
    return hashlib.sha256(key).hexdigest()[:32]


@dataclass
class ImageSlot:
    """One image of an entry: what is known now, and its thumbnail once made."""

    position: int
    identity: str
    ref: ImageRef | None = field(default=None, repr=False)
    """The source, kept in memory only until the thumbnail is made (never serialised)."""
    mime: str | None = None
    width: int | None = None
    height: int | None = None
    data: bytes | None = field(default=None, repr=False)
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"position": self.position, "identity": self.identity, "note": self.note}


@dataclass
class NewEscalation:
    """One escalation on its way into the store."""

    escalation_id: str
    row: dict[str, Any]
    """Column name → value for the ``escalations`` table."""
    categories: tuple[str, ...] = ()
    images: list[ImageSlot] = field(default_factory=list)
    thumbnails_done: bool = False

    @classmethod
    def from_record(cls, record: AuditRecord, *, store_content: bool = True) -> NewEscalation:
        """The entry for ``record``; with ``store_content`` False only hashes and ids are kept."""
        decision = record.decision
        verdict = decision.verdict
        trace: Trace | None = getattr(record, "trace", None)
        metadata = trace.metadata if trace is not None else None
        if not isinstance(metadata, Mapping):  # metadata is the caller's: trust no shape
            metadata = {}
        path, line, turn = _source(metadata)
        integration = _field(metadata.get("integration")) or ("offline" if path else None)
        escalation_id = decision.escalation_id
        if escalation_id is None and path is not None:
            escalation_id = offline_escalation_id(path, line, turn, record.content_hash)
        escalation_id = escalation_id or uuid.uuid4().hex
        model = (trace.model if trace is not None else None) or metadata.get("model")
        row: dict[str, Any] = {
            "escalation_id": _field(escalation_id),
            "record_id": record.record_id,
            "created_at": record.iso_time,
            "trace_id": _field(record.trace_id),
            "content_hash": record.content_hash,
            "action": decision.action.value,
            "disposition": decision.disposition.value,
            "reason": storable(decision.reason),
            "verdict_json": json.dumps(verdict.to_dict(), ensure_ascii=True, default=str),
            "audit_status": verdict.status.value,
            "risk": verdict.risk,
            "label": verdict.label.value if verdict.label is not None else None,
            "auditor": _field(verdict.auditor),
            "categories": ",".join(verdict.categories) or None,
            "integration": integration,
            "model": _field(model),
            "thread_id": _field(metadata.get("thread_id")),
            "session_id": _field(metadata.get("session_id")),
            "run_id": _field(metadata.get("run_id")),
            "source_path": path,
            "source_line": line,
            "source_turn": turn,
            "content_stored": 0,
        }
        entry = cls(
            escalation_id=row["escalation_id"] or uuid.uuid4().hex,
            row=row,
            categories=tuple(c for c in dict.fromkeys(_field(c) for c in verdict.categories) if c),
        )
        if trace is not None:
            entry.images = _slots(trace, keep_refs=store_content)
        if store_content and trace is not None:
            row.update(_content_columns(trace))
        return entry

    # -- the spill file --------------------------------------------------------------------

    def to_line(self) -> bytes:
        """One line of ASCII JSON (no image bytes), newline included."""
        payload = {
            "v": 1,
            "row": self.row,
            "categories": list(self.categories),
            "images": [slot.to_json() for slot in self.images],
        }
        return (json.dumps(payload, ensure_ascii=True, separators=(",", ":")) + "\n").encode()

    @classmethod
    def from_line(
        cls,
        line: bytes,
        *,
        image_note: str = "thumbnail not kept: the process stopped before the queue stored it",
    ) -> NewEscalation:
        """Read back :meth:`to_line`; raises ``ValueError`` for a damaged line.

        The images come back without thumbnails; ``image_note`` says why.
        """
        payload = json.loads(line)
        if not isinstance(payload, dict) or payload.get("v") != 1:
            raise ValueError("not a review queue spill line")
        row = payload["row"]
        if not isinstance(row, dict) or not isinstance(row.get("escalation_id"), str):
            raise ValueError("spill line without an escalation id")
        images = [
            ImageSlot(
                position=int(image["position"]),
                identity=str(image["identity"]),
                note=image.get("note") or image_note,
            )
            for image in payload.get("images", [])
        ]
        return cls(
            escalation_id=row["escalation_id"],
            row=row,
            categories=tuple(str(c) for c in payload.get("categories", [])),
            images=images,
            thumbnails_done=True,
        )


def _content_columns(trace: Trace) -> dict[str, Any]:
    tool_calls = [
        {
            "name": storable(call.name),
            "arguments": _capped(call.arguments, MAX_TOOL_ARGUMENT_CHARS),
            "id": _field(call.id),
        }
        for call in trace.tool_calls
    ]
    history = [
        {"role": storable(turn.role), "content": _capped(turn.content, MAX_HISTORY_CHARS)}
        for turn in trace.history[-MAX_HISTORY_TURNS:]
    ]
    excerpt_source = trace.response or trace.query or trace.thinking or ""
    excerpt = " ".join(excerpt_source[: EXCERPT_CHARS * 2].split())[:EXCERPT_CHARS]
    return {
        "content_stored": 1,
        "query": _capped(trace.query),
        "thinking": _capped(trace.thinking),
        "response": _capped(trace.response),
        "tool_calls_json": json.dumps(tool_calls, ensure_ascii=True) if tool_calls else None,
        "history_json": json.dumps(history, ensure_ascii=True) if history else None,
        "excerpt": storable(excerpt) or None,
    }


def _slots(trace: Trace, *, keep_refs: bool) -> list[ImageSlot]:
    images = list(trace.images)
    slots = []
    for position, ref in enumerate(images[:MAX_IMAGES]):
        try:
            identity = ref.identity()
        except Exception:  # a hostile or broken ref must not lose the escalation
            identity = "unidentifiable image"
        slot = ImageSlot(position=position, identity=storable(identity) or "", ref=ref)
        if not keep_refs:
            slot.ref = None
            slot.note = "not kept: the queue stores no content (store_content=False)"
        slots.append(slot)
    if len(images) > MAX_IMAGES and slots:
        extra = f"{len(images) - MAX_IMAGES} more image(s) not kept"
        last = slots[-1]
        last.note = f"{last.note}; {extra}" if last.note else extra
    return slots


# -- thumbnails (writer thread) ------------------------------------------------------------------


def make_thumbnails(entry: NewEscalation, access: ImageAccess | None) -> None:
    """Turn each image source of ``entry`` into a re-encoded thumbnail, or a note saying why not.

    Only images already in memory (bytes, data URIs, PIL images) are read, unless ``access``
    allows file paths; URLs are never fetched. Every image is decoded from a raster format
    (PNG, JPEG, GIF, WebP, BMP) and re-encoded, so what is stored and served is a plain PNG or
    JPEG whatever the original held (SVG and other active content never pass).
    """
    if entry.thumbnails_done:
        return
    for slot in entry.images:
        ref, slot.ref = slot.ref, None
        if ref is None:
            continue
        try:
            _thumbnail(slot, ref, access)
        except Exception as exc:  # a bad image must cost its thumbnail, never the escalation
            slot.mime = slot.data = slot.width = slot.height = None
            slot.note = f"no thumbnail: {type(exc).__name__}"
    entry.thumbnails_done = True


def _thumbnail(slot: ImageSlot, ref: ImageRef, access: ImageAccess | None) -> None:
    if ref.kind == "url":
        slot.note = "remote image: not fetched by the review queue"
        return
    if ref.kind == "path" and access is None:
        slot.note = "image file: not read (the queue was given no image access)"
        return
    try:
        from PIL import Image
    except ImportError:
        slot.note = "no thumbnail: Pillow is not installed (pip install 'traceguard-vl[review]')"
        return
    from traceguard._exceptions import ImageError

    try:
        loaded = ref.load(access if access is not None else ImageAccess())
        with Image.open(io.BytesIO(loaded.data), formats=_RASTER_FORMATS) as image:
            image.seek(0)
            image.load()
            has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
            frame = image.convert("RGBA" if has_alpha else "RGB")
    except ImageError as exc:
        slot.note = f"no thumbnail: {exc}"
        return
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
        slot.note = "no thumbnail: not a PNG, JPEG, GIF, WebP or BMP image"
        return
    side = THUMBNAIL_SIDE
    while True:
        copy = frame.copy()
        copy.thumbnail((side, side))
        buffer = io.BytesIO()
        if has_alpha:
            copy.save(buffer, format="PNG", optimize=True)
            mime = "image/png"
        else:
            copy.save(buffer, format="JPEG", quality=85)
            mime = "image/jpeg"
        data = buffer.getvalue()
        if len(data) <= MAX_THUMBNAIL_BYTES or side <= 64:
            break
        side = int(side * 0.7)
    slot.mime, slot.data, slot.width, slot.height = mime, data, copy.width, copy.height
