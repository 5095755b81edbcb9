"""A Llama-family trunk's forward (and, through autograd, backward) on a padded batch with the
per-token work done on the real tokens only.

RL batches are [left-padded prompt | right-padded response]: a PPO mini-batch of 8 rollouts is
about a fifth padding. The transformers forward runs every projection, norm and MLP on the pads as
well; here the tokens are gathered into one (N, H) matrix first, so the matmuls, norms and MLP see N
real tokens, and only attention, which needs each row's own layout, runs on a (B, L) grid of the
rows' real tokens (L: the longest row).
The arithmetic is the model's own (its modules are called; RoPE from its rotary module), so the
hidden states at real tokens equal `model(...).last_hidden_state` to float rounding and so do the
gradients (tests/test_ppo.py checks both). Pad positions are returned as zeros.
"""

from __future__ import annotations

import functools
import shutil

import torch
import torch.nn.functional as F

from chatrlhf.lm.engine_fast import unsupported


def why_not_unpadded(model) -> str | None:
    """Why `unpadded_hidden_states` cannot run this model, a *ForCausalLM / *ForSequenceClassification
    around a Llama-family trunk at `model.model` (None: it can)."""
    if not hasattr(model, "config"):
        return f"{type(model).__name__} wraps the model (the wrapper's own forward must run)"
    if model.training and getattr(model.config, "attention_dropout", 0.0):
        return "attention dropout in training mode"
    return unsupported(model)


def unpadded_hidden_states(trunk, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                           position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the final-normed hidden states of the real tokens, (N, H) in row-major order; their flat
    indices into the (B, T) batch, (N,)) for a LlamaModel-like `trunk`. Scatter a per-token result
    back with `scatter_rows`."""
    B = input_ids.shape[0]
    keep = attention_mask.bool()
    flat = keep.reshape(-1).nonzero().squeeze(1)  # (N,)
    x = trunk.embed_tokens(input_ids.reshape(-1)[flat])  # (N, H)
    cos, sin = trunk.rotary_emb(x, position_ids.reshape(-1)[flat][None])
    cos, sin = cos[0, :, None, :], sin[0, :, None, :]  # (N, 1, head_dim), broadcast over heads
    # attention runs on a grid with each row's real tokens from column 0 (RoPE reads position_ids, not
    # columns): the pads come after every real token, so plain causal attention sees exactly each
    # row's real keys, with no mask and the upper triangle skipped
    L = int(keep.sum(1).max())
    cell = (torch.arange(B, device=x.device)[:, None] * L + keep.cumsum(1) - 1)[keep]  # (N,) in the (B, L) grid
    layers = _compiled_layers() if getattr(trunk, "unpadded_compiled", False) else _layers
    return layers(trunk, x, cos, sin, cell, B, L), flat


def _layers(trunk, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cell: torch.Tensor, B: int,
            L: int) -> torch.Tensor:
    """The decoder layers and the final norm on the (N, H) real tokens; attention on the (B, L) grid."""
    for layer in trunk.layers:
        attn = layer.self_attn
        h = layer.input_layernorm(x)
        q, k, v = (proj(h).view(x.shape[0], -1, attn.head_dim) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
        nq, nk = q.shape[1], k.shape[1]
        qk = torch.cat([q, k], 1)
        qk = qk * cos + _rotate_half(qk) * sin  # RoPE on queries and keys at once
        # zeros, not empty: garbage in a pad query could be NaN, and 0 x NaN in the backward reaches real keys
        grid = scatter_rows(torch.cat([qk, v], 1), cell, B, L).transpose(1, 2)  # (B, nq+2nk, L, d)
        o = F.scaled_dot_product_attention(grid[:, :nq], grid[:, nq:nq + nk], grid[:, nq + nk:], is_causal=True,
                                           scale=attn.scaling, enable_gqa=nq != nk)
        x = x + attn.o_proj(o.transpose(1, 2).reshape(B * L, -1)[cell])
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return trunk.norm(x)


@functools.cache
def _compiled_layers():
    # one compiled function for every trunk: modules are inlined, so a trunk of the same shape reuses its
    # graphs; N and L are symbolic, so new batch shapes do not recompile
    return torch.compile(_layers, dynamic=True)


def compile_unpadded(model) -> bool:
    """Run the layer stack of each Llama-family trunk inside `model` (a causal LM, a sequence
    classifier, a value model, a PEFT wrapper) compiled by torch.compile whenever
    `unpadded_hidden_states` runs it: inductor fuses the norms, RoPE and MLP activations of the
    forward and the backward. The first passes compile (seconds to tens of seconds; inductor caches on
    disk), later ones reuse the graphs. Float rounding differs from the eager stack. Returns False,
    with a message, where no C++ compiler is installed (inductor's CPU backend needs one)."""
    if not torch.cuda.is_available() and not (shutil.which("g++") or shutil.which("c++")):
        print("compile: no C++ compiler (g++) found; the layer stacks stay eager")
        return False
    for m in model.modules():
        if hasattr(m, "layers") and hasattr(m, "embed_tokens"):
            m.unpadded_compiled = True
    return True


def scatter_rows(x: torch.Tensor, flat: torch.Tensor, B: int, T: int) -> torch.Tensor:
    """(N, ...) per-token values -> (B, T, ...), zeros at the pads."""
    return x.new_zeros(B * T, *x.shape[1:]).index_copy(0, flat, x).view(B, T, *x.shape[1:])


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], -1)
