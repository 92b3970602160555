"""A full disk (issue 13, fault 4): a clear message, exit 5, whole lines only, and --resume works.

The real thing runs on a small tmpfs mounted for the test (needs root and a kernel that lets
this process mount; skipped with the reason otherwise). The error path is also driven through
``/dev/full``, whose every write fails with ENOSPC, and through a write that fails halfway.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from traceguard.audit._output import OutputWriter
from traceguard.cli import EXIT_IO_ERROR, EXIT_OK, main

TRACES = 400


def _write_log(path: Path) -> list[str]:
    ids = [f"c{i}" for i in range(TRACES)]
    with path.open("w", encoding="utf-8") as fh:
        for i, trace_id in enumerate(ids):
            messages = [
                {"role": "user", "content": f"question {i} " + "x" * 60},
                {"role": "assistant", "content": "answer " * 30},
            ]
            fh.write(json.dumps({"id": trace_id, "messages": messages}) + "\n")
    return ids


def _ids(path: Path) -> list[str]:
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), "the output ends in a torn line"
    return [json.loads(line)["id"] for line in data.splitlines()]


def _mount(target: Path, size: str) -> str | None:
    """Mount a tmpfs of ``size``; the reason when it cannot be done here."""
    if not sys.platform.startswith("linux"):
        return "tmpfs is Linux only"
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(target)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        return f"cannot mount a tmpfs here: {result.stderr.strip() or result.returncode}"
    return None


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    reason = _mount(disk, "96k")
    if reason is not None:
        pytest.skip(reason)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.parametrize("cache", [True, False], ids=["with-cache", "no-cache"])
@pytest.mark.probe("full disk")
def test_full_disk_exits_5_with_whole_lines_and_resume_finishes(
    tmp_path: Path, small_disk: Path, cache: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "chats.jsonl"
    ids = _write_log(log)
    out = small_disk / "verdicts.jsonl"
    args = ["audit", str(log), "--out", str(out), "-q", *([] if cache else ["--no-cache"])]

    code = main(args)
    err = capsys.readouterr().err
    assert code == EXIT_IO_ERROR
    assert "disk full" in err and "--resume" in err and "Traceback" not in err
    written = _ids(out)
    assert 0 < len(written) < TRACES and written == ids[: len(written)]

    subprocess.run(["mount", "-o", "remount,size=4m", str(small_disk)], check=True)
    assert main([*args, "--resume"]) == EXIT_OK
    assert _ids(out) == ids  # nothing lost, nothing written twice


@pytest.mark.probe("full disk")
def test_every_write_failing_is_exit_5_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    log = tmp_path / "chats.jsonl"
    _write_log(log)
    code = main(["audit", str(log), "--out", "/dev/full", "--no-cache", "-q"])
    err = capsys.readouterr().err
    assert code == EXIT_IO_ERROR
    assert "disk full: cannot write /dev/full" in err and "Traceback" not in err


class _FillsUp:
    """A file that takes ``room`` more bytes, then fails like a full disk (ENOSPC)."""

    def __init__(self, real: Any, room: int) -> None:
        self._real = real
        self.room = room

    def write(self, data: Any) -> int:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        taken = self._real.write(bytes(data)[: self.room])
        self.room -= taken
        return int(taken)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@pytest.mark.probe("full disk")
def test_a_line_cut_by_a_full_disk_is_taken_back(tmp_path: Path) -> None:
    out = tmp_path / "verdicts.jsonl"
    writer = OutputWriter(out, append=False)
    writer.write(b'{"id": "a"}\n')
    writer._fh = _FillsUp(writer._fh, room=5)  # type: ignore[assignment]
    with pytest.raises(OSError) as caught:
        writer.write(b'{"id": "b", "padding": "...................."}\n')
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(out)
    writer.close()
    assert out.read_bytes() == b'{"id": "a"}\n'
