"""The trained GuardTrace prompts, loaded from the user's copy of the model's repository.

The fake repository below is laid out like ``xiangyx2020/GuardTrace-VL`` (``prompts/qta_pormpt.txt``
for three levels, as published, and ``prompts/qa_prompt.txt`` for two), with texts of our own.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from traceguard import ConfigurationError, GuardTraceAuditor, PromptSet, Trace
from traceguard.auditors._guardtrace_format import build_guardtrace_request
from traceguard.backends._base import ImagePart, TextPart
from traceguard.cli import main
from traceguard.config import GuardConfig
from traceguard.testing import OpenAIServer, ScriptedResponse
from traceguard.testing.openai_server import chat_completion

THREE = "# Job\nGrade the AI's reasoning.\n\n# Output\n“Analysis”: [notes]\n“Judgment”: [0/0.5/1]\n"
TWO = "# Job\nGrade the AI's answer.\n\n# Output\n“Analysis”: [notes]\n“Judgment”: [0/1]\n"


def fake_repo(root: Path, *, three_name: str = "qta_pormpt.txt") -> Path:
    prompts = root / "GuardTrace-VL" / "prompts"
    prompts.mkdir(parents=True)
    (prompts / three_name).write_text(THREE, encoding="utf-8")
    (prompts / "qa_prompt.txt").write_text(TWO, encoding="utf-8")
    (root / "GuardTrace-VL" / "README.md").write_text("readme", encoding="utf-8")
    return root / "GuardTrace-VL"


def test_the_trained_prompts_load_from_a_repository_folder(tmp_path: Path) -> None:
    prompts = PromptSet.from_guardtrace_repo(fake_repo(tmp_path))
    assert prompts.system == THREE.strip()  # read as the reference code reads it
    assert prompts.system_binary == TWO.strip()
    assert prompts.user == PromptSet.default().user
    assert prompts.name == "guardtrace-repo"
    assert len(prompts.sha256) == 64
    assert prompts.sha256 != PromptSet.default().sha256
    assert prompts.describe() == {
        "name": "guardtrace-repo",
        "sha256": prompts.sha256,
        "version": prompts.version,
    }


def test_either_spelling_of_the_three_level_file_and_the_prompts_folder_itself(
    tmp_path: Path,
) -> None:
    repo = fake_repo(tmp_path, three_name="qta_prompt.txt")
    assert PromptSet.from_guardtrace_repo(repo).system == THREE.strip()
    assert PromptSet.from_guardtrace_repo(repo / "prompts").system == THREE.strip()


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("swap", "offers the levels 0/1, expected 0/0.5/1"),
        ("placeholder", r"holds the placeholder \{response\}"),
        ("no_judgment", "has no judgment line"),
        ("missing", r"no two-level \(qa\) prompt"),
    ],
)
def test_foreign_or_broken_prompt_files_are_refused(
    tmp_path: Path, breakage: str, message: str
) -> None:
    repo = fake_repo(tmp_path)
    three, two = repo / "prompts" / "qta_pormpt.txt", repo / "prompts" / "qa_prompt.txt"
    if breakage == "swap":
        three.write_text(TWO, encoding="utf-8")
    elif breakage == "placeholder":
        three.write_text(THREE + "Response: {response}\n", encoding="utf-8")
    elif breakage == "no_judgment":
        two.write_text("# Job\nGrade it.\n", encoding="utf-8")
    else:
        two.unlink()
    with pytest.raises(ConfigurationError, match=message):
        PromptSet.from_guardtrace_repo(repo)


def test_not_a_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="not a GuardTrace-VL repository"):
        PromptSet.from_guardtrace_repo(tmp_path / "nowhere")


def test_a_text_only_trace_gets_no_image_item(tmp_path: Path) -> None:
    # The reference code adds "Image missing or unavailable" only for a named image it could
    # not load; a record without an image gets the three text lines alone.
    prompts = PromptSet.from_guardtrace_repo(fake_repo(tmp_path))
    request = build_guardtrace_request(
        Trace(query="q", thinking="t", response="r"), prompts, images=[], max_new_tokens=10
    )
    (text,) = request.messages[1].content
    assert isinstance(text, TextPart) and text.text.startswith("Current Task Query: q")
    assert not any(isinstance(part, ImagePart) for part in request.messages[1].content)


def _judge(_request: object) -> ScriptedResponse:
    return ScriptedResponse.json(chat_completion("“Analysis”: fine.\n“Judgment”: 0"))


def test_every_verdict_records_its_prompt_set_and_the_server_gets_the_trained_text(
    tmp_path: Path,
) -> None:
    prompts = PromptSet.from_guardtrace_repo(fake_repo(tmp_path))
    with OpenAIServer(responder=_judge) as server:
        auditor = GuardTraceAuditor.served(server.base_url, "guard", prompts=prompts)
        with_thinking = auditor.audit(Trace(query="q", thinking="t", response="r"))
        without = auditor.audit(Trace(query="q", response="r"))
        systems = [request.json["messages"][0] for request in server.requests]
    for verdict in (with_thinking, without):
        assert verdict.is_ok
        assert verdict.details["prompt_set"]["name"] == "guardtrace-repo"
        assert verdict.details["prompt_set"]["sha256"] == prompts.sha256
    sent = [
        m["content"] if isinstance(m["content"], str) else m["content"][0]["text"] for m in systems
    ]
    assert sent == [THREE.strip(), TWO.strip()]
    default = GuardTraceAuditor.served("http://127.0.0.1:9/v1", "guard")
    assert default.prompts.describe()["name"] == "traceguard-packaged"


def test_cli_prompts_option_audits_with_the_repository_prompts(tmp_path: Path) -> None:
    repo = fake_repo(tmp_path)
    log = tmp_path / "log.jsonl"
    log.write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"},
                ]
            }
        )
        + "\n",
        encoding="utf-8",
    )
    out = tmp_path / "v.jsonl"
    with OpenAIServer(responder=_judge) as server:
        code = main(
            [
                "audit",
                str(log),
                "--out",
                str(out),
                "--auditor-url",
                server.base_url,
                "--auditor-model",
                "guard",
                "--prompts",
                str(repo),
                "--no-cache",
                "-q",
            ]
        )
        system = server.requests[0].json["messages"][0]
    assert code == 0
    text = system["content"] if isinstance(system["content"], str) else system["content"][0]["text"]
    assert text == TWO.strip()  # no thinking in the log: the two-level prompt
    assert main(["audit", str(log), "--out", str(out), "--prompts", str(repo), "-q"]) == 2


def test_config_prompts_key_takes_a_repository_folder(tmp_path: Path) -> None:
    fake_repo(tmp_path)
    config = tmp_path / "guard.json"
    config.write_text(
        json.dumps(
            {
                "auditor": {
                    "kind": "guardtrace",
                    "backend": {
                        "kind": "served",
                        "base_url": "http://127.0.0.1:9/v1",
                        "model": "guard",
                    },
                    "prompts": "GuardTrace-VL",
                }
            }
        ),
        encoding="utf-8",
    )
    auditor = GuardConfig.from_file(config).build_auditor()
    assert isinstance(auditor, GuardTraceAuditor)
    assert auditor.prompts.name == "guardtrace-repo"
    assert auditor.prompts.system == THREE.strip()
