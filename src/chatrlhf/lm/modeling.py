"""Build or load models: the embedded tiny Llama, any AutoModelForCausalLM, tokenizers, LoRA.

One code path for the embedded default and a user's model: both are transformers models saved
with `save_pretrained` (safetensors) and loaded with `from_pretrained`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from chatrlhf.config import ModelConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_tiny_llama(cfg: ModelConfig, tokenizer) -> LlamaForCausalLM:
    """A small LlamaForCausalLM from config, sized by `cfg`, with the tokenizer's special ids."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rope_theta=10000.0,
        attention_dropout=0.0,
    )
    return LlamaForCausalLM(config)


def load_tokenizer(name_or_path: str | Path):
    """AutoTokenizer with a pad token and left padding (decoder-only generation)."""
    tok = AutoTokenizer.from_pretrained(str(name_or_path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_causal_lm(name_or_path: str | Path, dtype: str = "float32"):
    path = Path(name_or_path)
    if path.exists() and not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a model checkpoint (no config.json); did that stage finish?")
    return AutoModelForCausalLM.from_pretrained(str(name_or_path), dtype=DTYPES[dtype])


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_stage(model, tokenizer, out_dir: str | Path, meta: dict[str, Any],
               state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Save weights (safetensors), tokenizer and meta.json; meta.json is written last and marks
    the stage complete, so a crash mid-save never looks like a finished stage. `state_dict`: the
    weights to save when the model object does not hold them all (sharded by FSDP or ZeRO-3)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True, state_dict=state_dict)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    write_meta(out, {**meta, "complete": True})
    return out


def write_meta(out_dir: str | Path, meta: dict[str, Any]) -> None:
    out = Path(out_dir)
    tmp = out / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2, default=str))
    tmp.replace(out / "meta.json")


def read_meta(stage_dir: str | Path) -> dict[str, Any]:
    p = Path(stage_dir) / "meta.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def stage_complete(stage_dir: str | Path) -> bool:
    return bool(read_meta(stage_dir).get("complete"))
