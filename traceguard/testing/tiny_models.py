"""Tiny random-weight checkpoints of the image-guard architectures, built offline for tests.

- :func:`build_tiny_llava_onevision`: LLaVA-OneVision (Qwen2 LM + SigLIP), the LlavaGuard v1.2
  ``-hf`` architecture.
- :func:`build_tiny_gemma3`: Gemma-3 (the SafeGem base).
- :func:`build_tiny_holisafe`: a Qwen2.5-VL or Gemma-3 checkpoint with a HoliSafe guard head
  (``img_safety_head.mlp.*`` weights and ``safety_categories`` in ``config.json``), laid out like
  SafeQwen2.5-VL / SafeGem.

Every folder has what a real checkpoint has (tokenizer files, chat template, processor configs,
``config.json``, safetensors) and loads with ``from_pretrained``; the weights are noise. The
tokenizer is the byte-level BPE of :mod:`traceguard.testing.tiny_qwen` plus each architecture's
own control tokens. Needs the ``local`` extra and ``tokenizers``; nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import importlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from traceguard.testing import tiny_qwen
from traceguard.testing.tiny_qwen import build_tiny_qwen25vl

__all__ = [
    "GEMMA3_CHAT_TEMPLATE",
    "LLAVA_ONEVISION_CHAT_TEMPLATE",
    "build_tiny_gemma3",
    "build_tiny_holisafe",
    "build_tiny_llava_onevision",
    "forced_output",
    "write_holisafe_head",
]

LLAVA_ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n{% endif %}"
    "{% endfor %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}"
    "{% endif %}{% endfor %}"
    "{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""LLaVA-OneVision's layout: ChatML turns, every image of a turn first, then its text."""

GEMMA3_CHAT_TEMPLATE = (
    "<bos>"
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{% if role == 'system' %}{% set role = 'user' %}{% endif %}"
    "<start_of_turn>{{ role }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<start_of_image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}"
    "{% endif %}<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
"""Gemma-3's layout, simplified: system text becomes its own user turn."""

_GEMMA3_TOKENS = (
    "<pad>",
    "<eos>",
    "<bos>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
)

_LLAVA_TOKENS = ("<image>", "<video>")


def build_tiny_llava_onevision(path: Path, *, seed: int = 0, init_std: float = 0.3) -> Path:
    """Write a tiny random LLaVA-OneVision checkpoint to ``path`` and return ``path``.

    SigLIP tower with 28-pixel tiles of 2×2 patches (4 features per tile), a 2-layer Qwen2 LM
    with hidden size 64, any-res grid up to 2×2 tiles. Loads with
    ``LlavaOnevisionForConditionalGeneration`` and ``AutoProcessor``.
    """
    import torch

    transformers: Any = importlib.import_module("transformers")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    ids = _write_extended_tokenizer(
        path, _LLAVA_TOKENS, chat_template=LLAVA_ONEVISION_CHAT_TEMPLATE, updates={}
    )
    grid = [[28, 28], [28, 56], [56, 28], [56, 56]]
    _write_json(
        path / "preprocessor_config.json",
        {
            "image_processor_type": "LlavaOnevisionImageProcessor",
            "processor_class": "LlavaOnevisionProcessor",
            "do_resize": True,
            "do_rescale": True,
            "do_normalize": True,
            "do_pad": True,
            "do_convert_rgb": True,
            "rescale_factor": 1 / 255,
            "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.5, 0.5, 0.5],
            "resample": 3,
            "size": {"height": 28, "width": 28},
            "image_grid_pinpoints": grid,
        },
    )
    _write_json(
        path / "processor_config.json",
        {
            "processor_class": "LlavaOnevisionProcessor",
            "num_image_tokens": 4,
            "vision_feature_select_strategy": "full",
            "vision_aspect_ratio": "anyres_max_9",
        },
    )
    _write_json(path / "chat_template.json", {"chat_template": LLAVA_ONEVISION_CHAT_TEMPLATE})
    vocab_size = _round_up(max(ids.values()) + 1, 32)
    config = transformers.LlavaOnevisionConfig(
        text_config=_qwen2_text_config(transformers, ids, vocab_size),
        vision_config=transformers.SiglipVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
        ),
        image_token_index=ids["<image>"],
        video_token_index=ids["<video>"],
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        vision_aspect_ratio="anyres_max_9",
        image_grid_pinpoints=grid,
        tie_word_embeddings=True,
    )
    model = transformers.LlavaOnevisionForConditionalGeneration(config)
    _save_random(model, path, seed=seed, std=init_std, torch=torch)
    _write_generation_config(path, eos=ids["<|im_end|>"], pad=ids["<|endoftext|>"])
    return path


def build_tiny_gemma3(path: Path, *, seed: int = 0, init_std: float = 0.3) -> Path:
    """Write a tiny random Gemma-3 checkpoint to ``path`` and return ``path``.

    SigLIP tower on 28-pixel images (4×4 patches pooled to 4 soft tokens per image), a 2-layer
    Gemma-3 LM with hidden size 64. Loads with ``Gemma3ForConditionalGeneration`` and
    ``AutoProcessor``.
    """
    import torch

    transformers: Any = importlib.import_module("transformers")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    special = {
        "boi_token": "<start_of_image>",
        "eoi_token": "<end_of_image>",
        "image_token": "<image_soft_token>",
    }
    ids = _write_extended_tokenizer(
        path,
        _GEMMA3_TOKENS,
        chat_template=GEMMA3_CHAT_TEMPLATE,
        updates={
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<bos>",
            "eos_token": "<end_of_turn>",
            "pad_token": "<pad>",
            "extra_special_tokens": special,
        },
    )
    _write_json(
        path / "preprocessor_config.json",
        {
            "image_processor_type": "Gemma3ImageProcessor",
            "processor_class": "Gemma3Processor",
            "do_resize": True,
            "do_rescale": True,
            "do_normalize": True,
            "do_convert_rgb": True,
            "do_pan_and_scan": False,
            "rescale_factor": 1 / 255,
            "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.5, 0.5, 0.5],
            "resample": 2,
            "size": {"height": 28, "width": 28},
        },
    )
    _write_json(
        path / "processor_config.json",
        {"processor_class": "Gemma3Processor", "image_seq_length": 4},
    )
    _write_json(path / "chat_template.json", {"chat_template": GEMMA3_CHAT_TEMPLATE})
    vocab_size = _round_up(max(ids.values()) + 1, 32)
    config = transformers.Gemma3Config(
        text_config=transformers.Gemma3TextConfig(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=4096,
            sliding_window=64,
            pad_token_id=ids["<pad>"],
            bos_token_id=ids["<bos>"],
            eos_token_id=ids["<end_of_turn>"],
        ),
        vision_config=transformers.SiglipVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=28,
            patch_size=7,
            vision_use_head=False,
        ),
        mm_tokens_per_image=4,
        boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"],
    )
    model = transformers.Gemma3ForConditionalGeneration(config)
    _save_random(model, path, seed=seed, std=init_std, torch=torch)
    _write_generation_config(path, eos=ids["<end_of_turn>"], pad=ids["<pad>"])
    return path


def build_tiny_holisafe(
    path: Path,
    *,
    base: Literal["qwen2_5_vl", "gemma3"] = "qwen2_5_vl",
    categories: Sequence[str] | None = None,
    seed: int = 0,
    init_std: float = 0.3,
    head_hidden_layers: int = 1,
) -> Path:
    """A tiny base checkpoint plus a random HoliSafe guard head, like SafeQwen2.5-VL / SafeGem.

    Args:
        path: target folder.
        base: ``"qwen2_5_vl"`` (SafeQwen2.5-VL) or ``"gemma3"`` (SafeGem).
        categories: ``config.safety_categories``; the twenty HoliSafe classes by default.
        seed, init_std: as for the base builders (the head uses ``seed + 1``).
        head_hidden_layers: hidden layers of the head's MLP (``safety_num_hidden_layers``).
    """
    from traceguard.taxonomy import HOLISAFE_CATEGORIES

    path = Path(path)
    if base == "qwen2_5_vl":
        build_tiny_qwen25vl(path, seed=seed, init_std=init_std)
        hidden = json.loads((path / "config.json").read_text(encoding="utf-8"))["hidden_size"]
    elif base == "gemma3":
        build_tiny_gemma3(path, seed=seed, init_std=init_std)
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        hidden = config["text_config"]["hidden_size"]
    else:
        raise ValueError(f"unknown base {base!r}")
    names = list(categories) if categories is not None else list(HOLISAFE_CATEGORIES)
    write_holisafe_head(
        path,
        hidden_size=int(hidden),
        num_categories=len(names),
        hidden_layers=head_hidden_layers,
        seed=seed + 1,
        std=init_std,
    )
    config_path = path / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.update(
        safety_categories=names,
        num_safety_categories=len(names),
        safety_head_hidden_scale=0.5,
        safety_num_hidden_layers=head_hidden_layers,
    )
    _write_json(config_path, config)
    return path


def write_holisafe_head(
    path: Path,
    *,
    hidden_size: int,
    num_categories: int,
    hidden_layers: int = 1,
    seed: int = 1,
    std: float = 0.3,
    prefix: str = "img_safety_head.mlp",
) -> None:
    """Add random guard-head weights (``{prefix}.{0,3,…}.weight/bias``) to ``model.safetensors``.

    The layout is the published head's: ``Linear → GELU → Dropout`` per hidden layer (module
    indices 0, 3, 6, …), then the output ``Linear``; the hidden width is half the model's.
    """
    import torch
    from safetensors.torch import load_file, save_file

    file = Path(path) / "model.safetensors"
    tensors = load_file(str(file))
    generator = torch.Generator().manual_seed(seed)
    width = hidden_size // 2
    sizes = [hidden_size] + [width] * hidden_layers + [num_categories]
    for layer, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:], strict=False)):
        index = 3 * layer
        tensors[f"{prefix}.{index}.weight"] = (
            torch.randn(fan_out, fan_in, generator=generator) * std
        )
        tensors[f"{prefix}.{index}.bias"] = torch.randn(fan_out, generator=generator) * std
    save_file(tensors, str(file), metadata={"format": "pt"})


@contextlib.contextmanager
def forced_output(model: Any, token_ids: Sequence[int], eos_id: int) -> Iterator[None]:
    """Make every ``generate`` of ``model`` emit ``token_ids`` and then ``eos_id``.

    A forward hook rewrites the logits of the last position, so the real generation loop, the
    real decoding and the parser downstream all run unchanged: random weights cannot write a
    valid verdict, this lets a test check the path a real one takes.
    """
    step = [0]

    def before(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids")
        # A prompt-length input is the prefill of a new generate call: restart the script.
        if ids is not None and ids.shape[1] > 1:
            step[0] = 0

    def after(module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> Any:
        target = token_ids[step[0]] if step[0] < len(token_ids) else eos_id
        output.logits[:, -1, :] = -1e4
        output.logits[:, -1, target] = 0.0
        step[0] += 1
        return output

    handles = [
        model.register_forward_pre_hook(before, with_kwargs=True),
        model.register_forward_hook(after, with_kwargs=True),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


# -- helpers ------------------------------------------------------------------------------------


def _write_extended_tokenizer(
    path: Path, extra: Sequence[str], *, chat_template: str, updates: dict[str, Any]
) -> dict[str, int]:
    """The tiny Qwen tokenizer plus ``extra`` special tokens; returns every special token's id."""
    from tokenizers import AddedToken, Tokenizer

    ids = tiny_qwen._write_tokenizer(path)
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    tokenizer.add_tokens([AddedToken(tok, special=True, normalized=False) for tok in extra])
    tokenizer.save(str(path / "tokenizer.json"))
    config_path = path / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    for tok in extra:
        token_id = tokenizer.token_to_id(tok)
        if token_id is None:  # pragma: no cover - add_tokens just registered it
            raise RuntimeError(f"tokenizer lost {tok}")
        ids[tok] = token_id
        config["added_tokens_decoder"][str(token_id)] = {
            "content": tok,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
    config["additional_special_tokens"] = list(config["additional_special_tokens"]) + list(extra)
    config["chat_template"] = chat_template
    config.update(updates)
    _write_json(config_path, config)
    (path / "special_tokens_map.json").unlink(missing_ok=True)
    return ids


def _qwen2_text_config(transformers: Any, ids: dict[str, int], vocab_size: int) -> Any:
    return transformers.Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )


def _save_random(model: Any, path: Path, *, seed: int, std: float, torch: Any) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters(), key=lambda item: item[0]):
            if param.ndim >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    model.eval()
    model.save_pretrained(path, safe_serialization=True)


def _write_generation_config(path: Path, *, eos: int, pad: int) -> None:
    _write_json(path / "generation_config.json", {"eos_token_id": eos, "pad_token_id": pad})


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
