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


def save_stage(model, tokenizer, out_dir: str | Path, meta: dict[str, Any]) -> Path:
    """Save weights (safetensors), tokenizer and meta.json; meta.json is written last and marks
    the stage complete, so a crash mid-save never looks like a finished stage."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
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


# --- a lean forward for PPO's training passes ---------------------------------------------------


def fast_llama_supported(backbone) -> bool:
    """Whether `llama_hidden` computes exactly what this backbone's own forward does: a plain fp32
    LlamaModel (default RoPE, no biases, SiLU MLP, no attention dropout). Anything else -- LoRA
    wrappers, other architectures, bf16 -- keeps the transformers forward."""
    from transformers.models.llama.modeling_llama import LlamaModel

    if type(backbone) is not LlamaModel:
        return False
    c = backbone.config
    rope = backbone.rotary_emb
    return (getattr(rope, "rope_type", None) == "default" and getattr(rope, "attention_scaling", None) == 1.0
            and not c.attention_bias and not getattr(c, "mlp_bias", False) and c.hidden_act == "silu"
            and not c.attention_dropout and getattr(c, "pretraining_tp", 1) in (None, 1)
            and backbone.embed_tokens.weight.dtype == torch.float32)


def llama_hidden(backbone, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                 keep: slice) -> torch.Tensor:
    """Final-norm hidden states of the positions in `keep` (B, len(keep), H), the same numbers as
    `backbone(...).last_hidden_state[:, keep]` (checked in tests), with fewer ops and FLOPs.

    At this model size (hidden 96) the transformers forward spends much of its time outside matmuls.
    Here: q/k/v and gate/up are one matmul each (weights concatenated, so gradients still reach the
    separate parameters), RMSNorm is torch's fused op, RoPE is applied to q and k together, and the
    last layer computes queries, attention output and MLP only for the kept positions -- its other
    positions feed nothing but their keys and values. Padding keys are masked as in transformers;
    a padding query also sees itself, so its (unused) output is finite instead of NaN."""
    B, T = input_ids.shape
    c = backbone.config
    H, KV = c.num_attention_heads, c.num_key_value_heads
    layers = backbone.layers[: c.num_hidden_layers]
    D = layers[0].self_attn.q_proj.out_features // H
    dev = input_ids.device
    x = backbone.embed_tokens(input_ids)
    freqs = position_ids[..., None].float() * backbone.rotary_emb.inv_freq.to(dev)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().unsqueeze(1), emb.sin().unsqueeze(1)  # (B, 1, T, D)
    causal = torch.ones(T, T, dtype=torch.bool, device=dev).tril()
    mask = causal & (attention_mask.bool()[:, None, None, :] | torch.eye(T, dtype=torch.bool, device=dev))
    norm = torch.nn.functional.rms_norm
    for i, layer in enumerate(layers):
        a, mlp = layer.self_attn, layer.mlp
        h = norm(x, (x.shape[-1],), layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon)
        w = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
        qkv = torch.nn.functional.linear(h, w).view(B, T, H + 2 * KV, D).transpose(1, 2)
        qk, v = qkv[:, : H + KV], qkv[:, H + KV:]
        x1, x2 = qk[..., : D // 2], qk[..., D // 2:]
        qk = qk * cos + torch.cat((-x2, x1), dim=-1) * sin
        q, k, m = qk[:, :H], qk[:, H:], mask
        if i == len(layers) - 1:  # the last layer: only the kept queries matter
            q, m, x = q[:, :, keep], m[:, :, keep], x[:, keep]
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=a.scaling,
                                                             enable_gqa=H != KV)
        x = x + a.o_proj(o.transpose(1, 2).reshape(B, q.shape[2], H * D))
        h = norm(x, (x.shape[-1],), layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon)
        gate, up = torch.nn.functional.linear(h, torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])).chunk(2, -1)
        x = x + mlp.down_proj(torch.nn.functional.silu(gate) * up)
    return norm(x, (x.shape[-1],), backbone.norm.weight, backbone.norm.variance_epsilon)
