"""Build a tiny, random-weight Qwen2.5-VL checkpoint on disk, for tests that need a real model.

The checkpoint has every piece a real Qwen2.5-VL folder has (byte-level BPE tokenizer with the
Qwen2.5 special tokens, chat template, image processor, flat ``config.json``, safetensors weights),
at ~0.8 MB, so the whole ``from_pretrained`` → chat template → vision → ``generate`` path runs in
milliseconds on a CPU. Its output is noise: tests assert on plumbing, not on verdicts.

Needs the ``local`` extra (torch, transformers) and ``tokenizers``. Nothing is downloaded.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

__all__ = ["QWEN25_SPECIAL_TOKENS", "TINY_CHAT_TEMPLATE", "build_tiny_qwen25vl"]

QWEN25_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
"""The 22 added tokens of Qwen2.5, in vocabulary order."""

# Qwen flags the tool-call / fill-in-the-middle tokens as ordinary added tokens, not special ones.
_FIRST_NON_SPECIAL = QWEN25_SPECIAL_TOKENS.index("<tool_call>")

# How Qwen2 splits text before BPE: contractions, letter runs, single digits, punctuation runs.
_QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Written as one line with explicit newlines and no whitespace control, so every "\n" is kept.
TINY_CHAT_TEMPLATE = (
    "{% set ns = namespace(images=0, videos=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}"
    "{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' or 'image' in item or 'image_url' in item %}"
    "{% set ns.images = ns.images + 1 %}"
    "{% if add_vision_id %}Picture {{ ns.images }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'video' or 'video' in item %}"
    "{% set ns.videos = ns.videos + 1 %}"
    "{% if add_vision_id %}Video {{ ns.videos }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in item %}"
    "{{ item['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""A Qwen2.5-VL style chat template (system default, content lists, vision placeholders)."""

# Text the BPE is trained on: the auditor's own vocabulary must come out as short token runs so a
# test can force the model to emit a GuardTrace verdict token by token.
_CORPUS = (
    "\u201cAnalysis\u201d: The reasoning stays benign and the answer refuses the request.\n"
    "\u201cJudgment\u201d: 0\n\u201cJudgment\u201d: 0.5\n\u201cJudgment\u201d: 1\n"
    '"Analysis": the thinking leaks harmful details. "Judgment": 1.0 Judgment: 0.0\n'
    "Current Task Query: How do I bake bread? No question provided\n"
    "Current Task Thinking: The user asks about cooking. No thinking provided\n"
    "Current Task Cleaned Response: Mix flour, water and yeast. No response provided\n"
    "Image missing or unavailable. You are a helpful assistant. system user assistant\n"
    "Safe potentially harmful harmful risk auditor reasoning process image query answer\n"
    "0 1 2 3 4 5 6 7 8 9 . , : ; ! ? ( ) [ ] { } - _ / \\ ' \" \n"
    "The quick brown fox jumps over the lazy dog. Picture Video\n"
)


def build_tiny_qwen25vl(path: Path, *, seed: int = 0, init_std: float = 0.3) -> Path:
    """Write a tiny random Qwen2.5-VL checkpoint to ``path`` and return ``path``.

    Args:
        path: target folder (created if missing; existing files are overwritten).
        seed: seed of the weight initialisation; the same seed gives the same weights.
        init_std: standard deviation of the random weights. The default init (0.02) makes a
            random model repeat one token whatever the input; ~0.3 makes its output depend on it.

    The folder loads with ``Qwen2_5_VLForConditionalGeneration.from_pretrained`` and
    ``AutoProcessor.from_pretrained`` on transformers 4.57 and 5.x.
    """
    import torch

    # transformers is only partly typed: its classes are used as untyped (Any) here.
    transformers: Any = importlib.import_module("transformers")

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    ids = _write_tokenizer(path)
    _write_processor_files(path)

    vocab_size = _round_up(max(ids.values()) + 1, 32)
    flat = _flat_config(ids, vocab_size)
    config = transformers.Qwen2_5_VLConfig(**json.loads(json.dumps(flat)))
    torch.manual_seed(seed)
    model = transformers.Qwen2_5_VLForConditionalGeneration(config)
    _randomise(model, seed=seed, std=init_std)
    model.eval()
    model.save_pretrained(path, safe_serialization=True)
    # save_pretrained writes the nested 5.x layout; real checkpoints (and 4.57) use the flat one.
    (path / "config.json").write_text(json.dumps(flat, indent=2), encoding="utf-8")
    return path


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _write_tokenizer(path: Path) -> dict[str, int]:
    """Train the BPE, add the Qwen tokens, write tokenizer files; return the special token ids."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=480,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tokenizer.train_from_iterator(_CORPUS.splitlines(keepends=True) * 4, trainer=trainer)
    tokenizer.add_tokens(
        [
            AddedToken(tok, special=i < _FIRST_NON_SPECIAL, normalized=False)
            for i, tok in enumerate(QWEN25_SPECIAL_TOKENS)
        ]
    )
    tokenizer.save(str(path / "tokenizer.json"))
    ids: dict[str, int] = {}
    for tok in QWEN25_SPECIAL_TOKENS:
        token_id = tokenizer.token_to_id(tok)
        if token_id is None:  # pragma: no cover - add_tokens just registered it
            raise RuntimeError(f"tokenizer lost {tok}")
        ids[tok] = token_id

    added_decoder = {
        str(ids[tok]): {
            "content": tok,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": i < _FIRST_NON_SPECIAL,
        }
        for i, tok in enumerate(QWEN25_SPECIAL_TOKENS)
    }
    tokenizer_config: dict[str, Any] = {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": added_decoder,
        # 4.57 rejects `extra_special_tokens`; both versions read this key.
        "additional_special_tokens": list(QWEN25_SPECIAL_TOKENS[1:_FIRST_NON_SPECIAL]),
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "padding_side": "left",
        "model_max_length": 32768,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "errors": "replace",
        "chat_template": TINY_CHAT_TEMPLATE,
    }
    _write_json(path / "tokenizer_config.json", tokenizer_config)
    _write_json(
        path / "special_tokens_map.json",
        {
            "additional_special_tokens": tokenizer_config["additional_special_tokens"],
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
        },
    )
    return ids


def _write_processor_files(path: Path) -> None:
    # min/max pixels must be written as such: 4.57 ignores a `size` written by 5.x and would fall
    # back to its ~1M-pixel default.
    _write_json(
        path / "preprocessor_config.json",
        {
            "image_processor_type": "Qwen2VLImageProcessor",
            "processor_class": "Qwen2_5_VLProcessor",
            "do_resize": True,
            "do_rescale": True,
            "do_normalize": True,
            "do_convert_rgb": True,
            "rescale_factor": 1 / 255,
            "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711],
            "min_pixels": 3136,
            "max_pixels": 12544,
            "size": {"shortest_edge": 3136, "longest_edge": 12544},
            "patch_size": 14,
            "temporal_patch_size": 2,
            "merge_size": 2,
        },
    )
    _write_json(path / "chat_template.json", {"chat_template": TINY_CHAT_TEMPLATE})


def _flat_config(ids: dict[str, int], vocab_size: int) -> dict[str, Any]:
    """The config in the flat layout of published Qwen2.5-VL checkpoints (text keys at top)."""
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "max_window_layers": 2,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        # head_dim 16: the three M-RoPE sections (time, height, width) must sum to head_dim / 2.
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "sliding_window": 4096,
        "use_sliding_window": False,
        "use_cache": True,
        "tie_word_embeddings": True,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "torch_dtype": "float32",
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"],
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_config": {
            "model_type": "qwen2_5_vl_vision",
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "in_chans": 3,
            "in_channels": 3,
            "out_hidden_size": 64,
            "hidden_act": "silu",
            "patch_size": 14,
            "spatial_patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [1],
            "tokens_per_second": 2,
        },
    }


def _randomise(model: Any, *, seed: int, std: float) -> None:
    """Re-draw every weight matrix from N(0, std) with a private generator (reproducible)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters(), key=lambda item: item[0]):
            if param.ndim >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) * std)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
