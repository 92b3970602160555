__version__ = "0.2.0.dev0"

DISTRIBUTION = "traceguard-vl"
"""The name on PyPI. ``traceguard`` there is an unrelated project; the import name stays
``traceguard``."""


def install_hint(extra: str) -> str:
    """The command that installs an optional extra, for error messages."""
    return f"pip install '{DISTRIBUTION}[{extra}]'"
