"""Batching per image for the image guards: load each trace's images, then regroup the flat
per-image results into one verdict per trace. Shared by the chat image guards and HoliSafe."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeAlias, TypeVar

from traceguard._exceptions import ImageError
from traceguard._images import ImageAccess, ImageRef
from traceguard._trace import Trace
from traceguard._verdict import AuditStatus, Verdict

__all__ = ["LoadedImages", "aload_images", "load_images", "regroup"]

LoadedImages: TypeAlias = list[ImageRef] | ImageError
"""A trace's images loaded under the auditor's access, or why they could not be."""

_Result = TypeVar("_Result")


def load_images(trace: Trace, access: ImageAccess) -> LoadedImages:
    """Every image of ``trace`` loaded and validated, or the first image's error."""
    try:
        return [image.load(access) for image in trace.images]
    except ImageError as exc:
        return exc


async def aload_images(trace: Trace, access: ImageAccess) -> LoadedImages:
    """Async :func:`load_images`."""
    try:
        return [await image.aload(access) for image in trace.images]
    except ImageError as exc:
        return exc


def regroup(
    auditor: str,
    loaded: Sequence[LoadedImages],
    flat: Sequence[_Result],
    *,
    empty: Callable[[], Verdict],
    merge: Callable[[list[ImageRef], Sequence[_Result]], Verdict],
) -> list[Verdict]:
    """One verdict per trace from ``flat`` (one result per loaded image, in order).

    A trace whose images failed to load is ``INVALID_INPUT``; one without images gets
    ``empty()``; the others get ``merge(images, their results)``.
    """
    verdicts: list[Verdict] = []
    cursor = 0
    for images in loaded:
        if isinstance(images, ImageError):
            verdicts.append(
                Verdict.failed(AuditStatus.INVALID_INPUT, auditor=auditor, error=images)
            )
        elif not images:
            verdicts.append(empty())
        else:
            verdicts.append(merge(images, flat[cursor : cursor + len(images)]))
            cursor += len(images)
    return verdicts
