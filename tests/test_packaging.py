"""The wheel: `integrations/` and `prompts/` must ship inside it as `traceguard.*`.

Mapping bugs only show in a built wheel, never in the editable install the other tests use.
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHECK = """
import importlib.resources, pkgutil, sys
import traceguard, traceguard.integrations, traceguard.prompts
assert traceguard.__file__.startswith(sys.prefix), traceguard.__file__
text = importlib.resources.files("traceguard.prompts").joinpath("guardtrace_system.txt").read_text()
assert "Judgment" in text
mods = sorted(m.name for m in pkgutil.iter_modules(traceguard.integrations.__path__))
assert "openai" in mods and "langchain" in mods, mods
assert importlib.resources.files("traceguard").joinpath("py.typed").is_file()
review = importlib.resources.files("traceguard.review")
for name in ("templates/base.html", "templates/detail.html", "static/app.js", "static/app.css"):
    assert review.joinpath(name).is_file(), name
from importlib.metadata import distribution
assert distribution("traceguard-vl").metadata["Name"] == "traceguard-vl"
print("ok", traceguard.__version__)
"""


@pytest.mark.slow
def test_wheel_installs_and_ships_integrations_and_prompts(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dist), str(ROOT)],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = dist.glob("traceguard_vl-*.whl")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "-c",
            str(ROOT / "constraints.txt"),
            str(wheel),
        ],
        check=True,
    )
    result = subprocess.run(
        [str(python), "-c", CHECK], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")


def test_distribution_name_is_the_documented_one() -> None:
    """``traceguard`` on PyPI is someone else's project: every hint must name ours."""
    import re

    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    from traceguard._version import DISTRIBUTION, install_hint

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert meta["project"]["name"] == DISTRIBUTION == "traceguard-vl"
    assert install_hint("local") == "pip install 'traceguard-vl[local]'"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "pip install traceguard-vl" in readme or "pip install 'traceguard-vl" in readme
    # A bare `traceguard[extra]` would send users to the unrelated package.
    wrong = re.compile(r"(?<![\w-])traceguard\[")
    offenders = []
    for folder in ("traceguard", "integrations", "docs", "examples", "bench", "prompts"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in {".py", ".md", ".txt", ".toml", ".yaml", ".html"} and path.is_file():
                text = path.read_text(encoding="utf-8", errors="replace")
                offenders += [f"{path.relative_to(ROOT)}" for _ in wrong.finditer(text)]
    for name in ("README.md", "pyproject.toml", "Makefile"):
        offenders += [name for _ in wrong.finditer((ROOT / name).read_text(encoding="utf-8"))]
    assert not offenders, offenders
