"""The building blocks of every configuration section: the frozen :class:`Spec` base, paths
resolved against the configuration file's folder, and the no-secrets rules (no credentials in
URLs, keys and headers read from environment variables the file names)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo

from traceguard._exceptions import ConfigurationError

__all__ = [
    "DEFAULT_API_KEY_ENV",
    "DirectoryPath",
    "EnvName",
    "FilePath",
    "ModelRef",
    "ResolvedPath",
    "Spec",
    "env_headers",
    "refuse_inline_secret",
    "resolve_path",
    "url_without_secrets",
]

DEFAULT_API_KEY_ENV = "TRACEGUARD_AUDITOR_API_KEY"
"""The environment variable a served backend reads its API key from unless told otherwise."""


class Spec(BaseModel):
    """Base of every configuration section.

    Frozen, so a spec shared by threads (or shipped to workers) cannot change under them; extra
    keys are refused, so a typo (``max_new_token: 50``) is an error, never a setting silently
    ignored.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


def _base_dir(info: ValidationInfo) -> Path:
    context = info.context if isinstance(info.context, dict) else {}
    base = context.get("base_dir")
    return Path(base) if base is not None else Path.cwd()


def resolve_path(value: Path, info: ValidationInfo) -> Path:
    """Relative paths are taken relative to the configuration file's folder; ``~`` expands."""
    path = value.expanduser()
    return path if path.is_absolute() else (_base_dir(info) / path).resolve()


def _existing_file(value: Path, info: ValidationInfo) -> Path:
    path = resolve_path(value, info)
    if not path.is_file():
        raise ValueError(f"file not found: {path}")
    return path


def _model_ref(value: str, info: ValidationInfo) -> str:
    """A checkpoint folder becomes absolute; a hub id (``org/name``) stays as written."""
    if not value.strip():
        raise ValueError("the model must not be empty")
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    candidate = _base_dir(info) / path
    if value.startswith((".", "~")) or candidate.exists():
        return str(candidate.resolve())
    return value


def _existing_dir(value: Path, info: ValidationInfo) -> Path:
    path = resolve_path(value, info)
    if not path.is_dir():
        raise ValueError(f"folder not found: {path}")
    return path


FilePath = Annotated[Path, AfterValidator(_existing_file)]
"""A file that must exist when the configuration is loaded."""
DirectoryPath = Annotated[Path, AfterValidator(_existing_dir)]
"""A folder that must exist when the configuration is loaded."""
ResolvedPath = Annotated[Path, AfterValidator(resolve_path)]
"""A path made absolute against the configuration file's folder."""
ModelRef = Annotated[str, AfterValidator(_model_ref)]
"""A local checkpoint folder (made absolute) or a model hub id."""
EnvName = Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
"""The name of an environment variable."""


def url_without_secrets(url: str, *, where: str) -> str:
    """Refuse URLs carrying credentials: a configuration file is not a place for secrets."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an http(s) URL, not {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            f"the {where} URL carries credentials; put them in an environment variable instead"
        )
    if parts.query:
        raise ValueError(
            f"the {where} URL has a query string, which often carries a token; "
            "put the URL in an environment variable instead"
        )
    return url


def env_headers(names: dict[str, str], *, what: str) -> dict[str, str]:
    """Header values read from the environment variables ``names`` maps header names to."""
    headers = {}
    for header, variable in names.items():
        value = os.environ.get(variable)
        if not value:
            raise ConfigurationError(
                f"{what}: header {header!r} reads the environment variable {variable}, "
                "which is not set"
            )
        headers[header] = value
    return headers


def refuse_inline_secret(field: str, instead: str) -> ValueError:
    """The error for a credential-bearing key written into the file."""
    return ValueError(
        f"{field} may hold credentials and is never read from the file: {instead} "
        "(the configuration is shipped to workers and shown in logs)"
    )
