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
        rope_theta=cfg.rope_theta,
        attention_dropout=0.0,
    )
    return LlamaForCausalLM(config)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "spiece.model", "vocab.txt")


def looks_local(name_or_path: str | Path) -> bool:
    """A path the user means as a directory (./x, /x, ~/x, a/b/c, or a/b whose parent exists), not a
    hub id such as 'gpt2' or 'org/name': its absence is a wrong path, not a network problem."""
    s = str(name_or_path)
    return (Path(s).exists() or s.startswith((".", "/", "~")) or s.count("/") >= 2
            or (s.count("/") == 1 and Path(s).parent.is_dir() and str(Path(s).parent) != "."))


def _not_found(name_or_path: str | Path, what: str, key: str) -> FileNotFoundError:
    if looks_local(name_or_path):
        return FileNotFoundError(f"{what} not found: {Path(name_or_path).expanduser()} is not a directory ({key}); "
                                 "give the directory that save_pretrained wrote (config.json, weights, tokenizer files)")
    return FileNotFoundError(f"{what} '{name_or_path}' ({key}) is not a local directory and not in the local Hugging "
                             "Face cache; runs are offline (HF_HUB_OFFLINE=1), so download it once on a connected "
                             f"machine (`huggingface-cli download {name_or_path}`) or pass its directory")


def load_tokenizer(name_or_path: str | Path, key: str = "model.tokenizer"):
    """AutoTokenizer with a pad token and left padding (decoder-only generation). A directory without
    tokenizer files is an error: transformers would build an empty tokenizer that trains on nothing."""
    path = Path(name_or_path).expanduser()
    if path.is_dir() and not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise FileNotFoundError(f"{path} has no tokenizer files (none of {', '.join(TOKENIZER_FILES[:4])}): save the "
                                f"model's tokenizer there with tokenizer.save_pretrained('{path}'), or set "
                                "model.tokenizer to a directory or hub id that has one")
    if not path.is_dir() and looks_local(name_or_path):
        raise _not_found(name_or_path, "tokenizer", key)
    try:
        tok = AutoTokenizer.from_pretrained(str(path) if path.is_dir() else str(name_or_path))
    except OSError:
        raise _not_found(name_or_path, "tokenizer", key) from None
    if len(tok) == 0 or not tok.get_vocab():
        raise ValueError(f"the tokenizer in {name_or_path} has an empty vocabulary; save the model's real tokenizer "
                         "there (tokenizer.save_pretrained) or set model.tokenizer")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_causal_lm(name_or_path: str | Path, dtype: str = "float32", key: str = "model.name_or_path"):
    return _from_checkpoint(lambda where: AutoModelForCausalLM.from_pretrained(where, dtype=DTYPES[dtype]),
                            name_or_path, key)


def load_model_config(name_or_path: str | Path, key: str = "model.name_or_path"):
    """The model's config alone, without its weights (what a chat front end needs), with
    load_causal_lm's errors."""
    from transformers import AutoConfig

    return _from_checkpoint(AutoConfig.from_pretrained, name_or_path, key)


def _from_checkpoint(load, name_or_path: str | Path, key: str):
    path = Path(name_or_path).expanduser()
    if path.exists() and not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a model checkpoint (no config.json); did that stage finish?")
    if not path.exists() and looks_local(name_or_path):
        raise _not_found(name_or_path, "model", key)
    try:
        return load(str(path) if path.exists() else str(name_or_path))
    except OSError:
        if path.exists():
            raise
        raise _not_found(name_or_path, "model", key) from None


def context_length(model) -> int | None:
    """Positions the model was built for (learned position tables index out of range beyond it)."""
    config = getattr(model, "config", None)
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        n = getattr(config, attr, None)
        if isinstance(n, int) and n > 0:
            return n
    return None


def check_context(model, max_len: int, key: str, longest: int | None = None) -> None:
    """`key` (a max_len setting) must fit in the model's context; with `longest` (the longest
    sequence the data actually gives) only sequences that do not fit are an error."""
    n = context_length(model)
    if n is not None and (longest if longest is not None else max_len) > n:
        got = f" (the longest example is {longest} tokens)" if longest is not None else ""
        raise ValueError(f"{key}={max_len} is longer than the model's context of {n} positions{got} "
                         f"(config.json max_position_embeddings/n_positions); set {key}={n} or less")


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
