"""The HTML report: hostile text stays text, charts render in a real headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from traceguard.audit import run_audit, write_report
from traceguard.testing import ScriptedAuditor, Step

from ._helpers import write_jsonl

HOSTILE = "<script>document.title='pwned'</script><img src=x onerror=alert(1)>"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _audited(tmp_path: Path, png: Path) -> tuple[Path, Path]:
    log = write_jsonl(
        tmp_path / "log.jsonl",
        [
            {
                "id": f"t{i}",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": f"question {i} {HOSTILE}"},
                            {"type": "image_url", "image_url": {"url": png.name}},
                        ],
                    },
                    {"role": "assistant", "content": f"<think>{HOSTILE}</think>answer {HOSTILE}"},
                ],
            }
            for i in range(6)
        ],
    )
    steps = [
        Step(risk=1.0, categories=("cybersecurity",), analysis=f"bad {HOSTILE}"),
        Step(risk=0.5, categories=("data_privacy", "cybersecurity")),
        Step(risk=0.0),
        Step(error="timeout"),
        Step(risk=1.0, categories=("extremism",)),
        Step(risk=0.0, categories=(f"x{HOSTILE}",)),
    ]
    out = tmp_path / "out.jsonl"
    run_audit(log, out, auditor=ScriptedAuditor(steps), concurrency=1)
    report = write_report(out, tmp_path / "report.html", image_root=tmp_path)
    return out, report


def test_hostile_text_is_escaped_everywhere(tmp_path: Path, png: Path) -> None:
    _, report = _audited(tmp_path, png)
    html = report.read_text()
    assert "<script" not in html.lower()
    assert "onerror=alert" not in html.replace("onerror=alert(1)&gt;", "")
    assert "&lt;script&gt;" in html
    assert "Content-Security-Policy" in html and "http://" not in html.replace(
        'xmlns="http://www.w3.org/2000/svg"', ""
    )
    # One thumbnail per listed trace: three flagged, one failed.
    assert html.count('src="data:image/jpeg;base64,') == 4
    assert "Flagged traces (3)" in html and "could not be audited (1)" in html


def test_report_without_image_root_shows_names_not_images(tmp_path: Path, png: Path) -> None:
    out, _ = _audited(tmp_path, png)
    html = write_report(out, tmp_path / "plain.html").read_text()
    assert "data:image" not in html and png.name in html


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_renders_in_headless_chromium(tmp_path: Path, png: Path) -> None:
    _, report = _audited(tmp_path, png)
    assert CHROMIUM is not None
    flags = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1200,2000",
    ]
    shot = tmp_path / "shot.png"
    subprocess.run(
        [*flags, f"--screenshot={shot}", report.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.stat().st_size > 10_000
    dom = subprocess.run(
        [*flags, "--dump-dom", report.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    # The scripts in the audited text did not run (title unchanged) and the charts are there.
    assert "<title>traceguard audit report</title>" in dom and "pwned" not in dom.split("<body")[0]
    for chart in ("risk-chart", "action-chart", "category-chart"):
        section = dom.split(f'id="{chart}"', 1)[1].split("</section>", 1)[0]
        assert "<svg" in section and "<rect" in section, chart
    from PIL import Image

    with Image.open(shot) as picture:
        assert picture.size == (1200, 2000)
        colours = picture.convert("RGB").getcolors(1_000_000) or []
    assert len(colours) > 50  # not a blank page
