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
    (wheel,) = dist.glob("traceguard-*.whl")
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
