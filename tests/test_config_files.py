"""Reading configuration files: YAML, TOML and JSON, with the line of every key."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from traceguard import ConfigurationError
from traceguard._config_files import (
    describe_validation_error,
    format_key_path,
    read_document,
    read_mapping,
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


YAML = """\
# a comment
auditor:
  kind: staged
  stages:
    - kind: baseline
    - kind: guardtrace
      backend:
        timeout: 3
"""

TOML = """\
[auditor]
kind = "staged"

[[auditor.stages]]
kind = "baseline"

[[auditor.stages]]
kind = "guardtrace"

[auditor.stages.backend]
timeout = 3
"""

JSON = """\
{
  "auditor": {
    "kind": "staged",
    "stages": [
      {"kind": "baseline"},
      {
        "kind": "guardtrace",
        "backend": {
          "timeout": 3
        }
      }
    ]
  }
}
"""

DATA = {
    "auditor": {
        "kind": "staged",
        "stages": [{"kind": "baseline"}, {"kind": "guardtrace", "backend": {"timeout": 3}}],
    }
}


@pytest.mark.parametrize(
    ("name", "text", "timeout_line"),
    [("c.yaml", YAML, 8), ("c.yml", YAML, 8), ("c.toml", TOML, 11), ("c.json", JSON, 9)],
)
def test_three_formats_same_data_and_the_line_of_a_nested_key(
    tmp_path: Path, name: str, text: str, timeout_line: int
) -> None:
    path = write(tmp_path, name, text)
    assert read_mapping(path) == DATA
    document = read_document(path)
    assert document.line_of(("auditor", "stages", 1, "backend", "timeout")) == timeout_line
    assert document.line_of(("auditor", "stages", 1, "kind")) == {8: 6, 11: 8, 9: 7}[timeout_line]
    # An unknown key gets its parent's line.
    assert document.line_of(("auditor", "stages", 1, "nope")) == document.line_of(
        ("auditor", "stages", 1)
    )


def test_yaml_knows_the_line_of_list_items(tmp_path: Path) -> None:
    document = read_document(write(tmp_path, "c.yaml", YAML))
    assert document.line_of(("auditor", "stages", 0)) == 5
    assert document.line_of(("auditor", "stages", 1)) == 6
    assert document.line_of(("auditor", "stages", 1, "nope")) == 6
    assert document.line_of(("auditor",)) == 2


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        (
            "d.yaml",
            "a: 1\nb:\n  c: 1\n  c: 2\n",
            r"d\.yaml:4: b\.c: duplicate key \(first on line 3\)",
        ),
        ("d.json", '{"a": 1, "a": 2}', r"d\.json: duplicate key 'a'"),
        ("d.toml", "a = 1\na = 2\n", r"d\.toml: invalid TOML: .*line 2"),
    ],
)
def test_duplicate_keys_are_errors(tmp_path: Path, name: str, text: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        read_mapping(write(tmp_path, name, text))


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("s.yaml", "a: [unclosed\n", r"s\.yaml: invalid YAML: .*line 2"),
        ("s.toml", "a = \n", r"s\.toml: invalid TOML: .*line 1"),
        ("s.json", '{\n  "a": 1,\n}', r"s\.json: invalid JSON: .*line 3"),
        ("s.ini", "a=1", r"unknown configuration format '\.ini'"),
        ("s.yaml", "- a\n- b\n", "must hold a mapping at the top level"),
        ("s.json", "[1]", "must hold a mapping at the top level"),
    ],
)
def test_syntax_errors_name_the_file_and_the_position(
    tmp_path: Path, name: str, text: str, match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match):
        read_mapping(write(tmp_path, name, text))


def test_empty_yaml_is_an_empty_mapping(tmp_path: Path) -> None:
    assert read_mapping(write(tmp_path, "e.yaml", "# only a comment\n")) == {}


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read configuration"):
        read_mapping(tmp_path / "absent.yaml")


def test_yaml_without_pyyaml_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "c.yaml", "a: 1\n")
    monkeypatch.setitem(sys.modules, "yaml", None)  # makes `import yaml` raise ImportError
    with pytest.raises(ConfigurationError, match=r"pip install 'traceguard-vl\[yaml\]'"):
        read_mapping(path)
    # TOML and JSON need nothing extra.
    assert read_mapping(write(tmp_path, "c.json", '{"a": 1}')) == {"a": 1}


def test_yaml_merge_keys_still_work(tmp_path: Path) -> None:
    text = "base: &b {timeout: 3}\nserved:\n  <<: *b\n  model: m\n"
    document = read_document(write(tmp_path, "m.yaml", text))
    assert document.data["served"] == {"timeout": 3, "model": "m"}
    assert document.line_of(("served", "model")) == 4


class _Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    timeout: float


class _Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[_Inner]


def test_validation_errors_name_line_and_key_path(tmp_path: Path) -> None:
    path = write(tmp_path, "v.yaml", "items:\n  - timeout: 1\n  - timeout: soon\n    extra: 1\n")
    document = read_document(path)
    with pytest.raises(ValidationError) as info:
        _Outer.model_validate(document.data)
    message = describe_validation_error(
        info.value, source=str(path), data=document.data, document=document
    )
    assert f"{path}:3: items[1].timeout: Input should be a valid number" in message
    assert f"{path}:4: items[1].extra: unknown key" in message


def test_format_key_path() -> None:
    assert format_key_path(("auditor", "stages", 1, 0, "model")) == "auditor.stages[1][0].model"
    assert format_key_path(()) == "<top level>"
