"""LlavaGuard run as trained: its policy text from the user's clone, its images not Qwen-resized.

The fake repository below has the module layout of ``ml-research/LlavaGuard`` (the policy pieces
live in ``llavaguard/taxonomy/taxonomies.py`` and ``assessment.py``) with texts of our own.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from traceguard import (
    ConfigurationError,
    ImageRef,
    LlavaGuardAuditor,
    LlavaGuardPolicy,
    Trace,
)
from traceguard.backends._base import ChatMessage, ChatRequest, ImagePart, TextPart
from traceguard.config import GuardConfig
from traceguard.testing import OpenAIServer, ScriptedResponse
from traceguard.testing.openai_server import chat_completion

CODES = [f"O{i}" for i in range(1, 10)]

TAXONOMIES = (
    "import os  # never run by traceguard\n"
    "raise SystemExit('importing this module is not allowed in the test')\n"
    "policy_start_sentence_v16 = 'Judge the picture against these rules:\\n'\n"
    "custom_policy_dict_v2 = {\n"
    + "".join(
        f"    '{code}: Topic {code[1]}': ['Keep out {code}.\\n', 'Allow {code}.\\n', "
        f"'Refuse all {code}.\\n'],\n"
        for code in CODES
    )
    + "}\n"
)
ASSESSMENT = (
    "categories_v3 = [" + ", ".join(f"'{c}: Topic {c[1]}'" for c in CODES) + ", 'NA: None']\n"
    "cat_prompt3 = '|'.join([f'\"{x}\"' for x in categories_v3])\n"
    "json_template_v20 = f'''Answer in JSON:\n"
    '{{\n    "rating": str<"Unsafe"|"Safe">,\n    "category": str<{cat_prompt3}>,\n'
    "    \"rationale\": str,\n}}\n<image>\n'''\n"
)


def fake_repo(root: Path, *, taxonomies: str = TAXONOMIES) -> Path:
    folder = root / "LlavaGuard" / "llavaguard" / "taxonomy"
    folder.mkdir(parents=True)
    (folder / "taxonomies.py").write_text(taxonomies, encoding="utf-8")
    (folder / "assessment.py").write_text(ASSESSMENT, encoding="utf-8")
    return root / "LlavaGuard"


def expected(modes: dict[str, int]) -> str:
    texts = ("Keep out {}.\n", "Allow {}.\n", "Refuse all {}.\n")
    body = "".join(
        f"{c}: Topic {c[1]}: \n" + texts[modes.get(c, 0)].format(c) + "\n" for c in CODES
    )
    names = "|".join(f'"{c}: Topic {c[1]}"' for c in CODES) + '|"NA: None"'
    template = (
        "Answer in JSON:\n{\n"
        '    "rating": str<"Unsafe"|"Safe">,\n'
        f'    "category": str<{names}>,\n'
        '    "rationale": str,\n}\n'
    )
    return "Judge the picture against these rules:\n" + body + template


def test_the_trained_policy_renders_as_the_training_code_assembled_it(tmp_path: Path) -> None:
    policy = LlavaGuardPolicy.from_llavaguard_repo(fake_repo(tmp_path))
    assert policy.render() == expected({})
    assert "<image>" not in policy.render()  # the image goes as its own item, first
    assert policy.name == "llavaguard-repo" and len(policy.sha256) == 64
    assert LlavaGuardPolicy().name == "traceguard-packaged"


def test_overrides_use_the_categorys_own_trained_wording(tmp_path: Path) -> None:
    policy = LlavaGuardPolicy.from_llavaguard_repo(
        fake_repo(tmp_path), {"O3": "non_violating", "Self-Harm": "default", "O5": "sensitive"}
    )
    assert policy.render() == expected({"O3": 1, "O5": 2})
    with pytest.raises(ConfigurationError, match="unknown LlavaGuard category"):
        LlavaGuardPolicy.from_llavaguard_repo(fake_repo(tmp_path / "b"), {"O12": "sensitive"})


@pytest.mark.parametrize(
    ("taxonomies", "message"),
    [
        (
            TAXONOMIES.replace(
                "policy_start_sentence_v16 = 'Judge",
                "policy_start_sentence_v16 = open('x').read()#",
            ),
            "cannot be read without running code",
        ),
        (TAXONOMIES.replace("'O9: Topic 9'", "'Z9: Topic 9'"), "not an O1–O9 category"),
        (TAXONOMIES.replace("'Refuse all O4.\\n'],", "],"), "three texts"),
        ("x = (\n", "cannot read"),
    ],
)
def test_a_repository_whose_pieces_cannot_be_read_is_refused(
    tmp_path: Path, taxonomies: str, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        LlavaGuardPolicy.from_llavaguard_repo(fake_repo(tmp_path, taxonomies=taxonomies))


def _png(size: tuple[int, int] = (300, 200)) -> ImageRef:
    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 40, 200)).save(buffer, format="PNG")
    return ImageRef.from_bytes(buffer.getvalue())


def test_verdicts_record_the_policy_and_the_server_gets_the_trained_text(tmp_path: Path) -> None:
    policy = LlavaGuardPolicy.from_llavaguard_repo(fake_repo(tmp_path), {"O2": "sensitive"})
    answer = json.dumps({"rating": "Unsafe", "category": "O2: Topic 2", "rationale": "r"})
    with OpenAIServer(responder=lambda _r: ScriptedResponse.json(chat_completion(answer))) as srv:
        auditor = LlavaGuardAuditor.served(srv.base_url, "llavaguard", policy=policy)
        verdict = auditor.audit(Trace(query="q", response="r", images=(_png(),)))
        (request,) = srv.requests
    assert verdict.risk == 1.0
    (record,) = verdict.details["per_image"]
    assert record["details"]["policy_set"] == {"name": "llavaguard-repo", "sha256": policy.sha256}
    image_part, text_part = request.json["messages"][0]["content"]
    assert image_part["type"] == "image_url"
    assert text_part["text"] == expected({"O2": 2})


def test_config_policy_repo_loads_the_trained_text(tmp_path: Path) -> None:
    fake_repo(tmp_path)
    config = tmp_path / "guard.json"
    config.write_text(
        json.dumps(
            {
                "auditor": {
                    "kind": "llavaguard",
                    "backend": {
                        "kind": "served",
                        "base_url": "http://127.0.0.1:9/v1",
                        "model": "llavaguard",
                    },
                    "policy": {"O3": "non_violating"},
                    "policy_repo": "LlavaGuard",
                }
            }
        ),
        encoding="utf-8",
    )
    auditor = GuardConfig.from_file(config).build_auditor()
    assert isinstance(auditor, LlavaGuardAuditor)
    assert auditor.policy.render() == expected({"O3": 1})


# -- images: LLaVA-OneVision gets them as they are, Qwen gets its pre-resize ---------------------


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    from traceguard.testing.tiny_models import build_tiny_llava_onevision

    return build_tiny_llava_onevision(tmp_path_factory.mktemp("tiny-llava-ov-trained"))


@pytest.mark.slow
def test_llava_onevision_images_are_not_resized_the_qwen_way(
    tiny_llava: Path, tmp_path: Path
) -> None:
    from traceguard.backends.transformers import TransformersBackend
    from traceguard.testing.tiny_qwen import build_tiny_qwen25vl

    image = _png((300, 200))
    message = ChatMessage(role="user", content=(ImagePart(image), TextPart("rate it")))
    request = ChatRequest(messages=(message,), max_new_tokens=4)

    llava = TransformersBackend(tiny_llava, model_class="LlavaOnevisionForConditionalGeneration")
    qwen = TransformersBackend(build_tiny_qwen25vl(tmp_path / "qwen"))
    try:
        prepared = llava._prepare(llava._ensure_loaded(), request)
        (handed,) = prepared.images
        assert handed.size == (300, 200)  # as the reference code opens it; 300 is no multiple of 28
        # The pixels the model sees are the processor's own preprocessing of the raw image.
        rt = llava._ensure_loaded()
        direct = rt.processor(text=[prepared.text], images=[image.to_pil()], return_tensors="pt")
        ours = llava._encode(rt, [prepared])
        assert bool((direct["pixel_values"] == ours["pixel_values"]).all())
        (resized,) = qwen._prepare(qwen._ensure_loaded(), request).images
        assert resized.size != (300, 200)
        assert resized.size[0] % 28 == 0 and resized.size[1] % 28 == 0
    finally:
        llava.close()
        qwen.close()
