"""modeling.llama_hidden (PPO's lean forward) computes what the transformers forward computes, on
the positions PPO reads: logits, values and their gradients, with left and right padding."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification, LlamaConfig, LlamaForCausalLM

from chatrlhf.modeling import fast_llama_supported, llama_hidden
from chatrlhf.ppo import response_logits, response_values
from chatrlhf.value import ValueModel


def _config(kv_heads: int = 4) -> LlamaConfig:
    return LlamaConfig(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                       num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=128,
                       tie_word_embeddings=True, pad_token_id=0, rope_theta=10000.0)


def _batch(B: int = 5, P: int = 9, R: int = 11, seed: int = 0):
    """[left-padded prompt (P) | right-padded response (R)], as PPO lays out a rollout."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 97, (B, P + R), generator=g)
    attn = torch.ones(B, P + R, dtype=torch.long)
    for i in range(B):
        attn[i, : i % 4] = 0  # prompts of different lengths
        attn[i, P + R - (2 * i) % 7:] = 0  # responses of different lengths (row 0 runs to the end)
    ids[attn == 0] = 0
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    mask = attn[:, P:].float()  # response tokens
    return ids, attn, pos, P, mask


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_llama_hidden_equals_the_transformers_forward(kv_heads):
    torch.manual_seed(0)
    model = LlamaForCausalLM(_config(kv_heads)).eval()
    ids, attn, pos, P, _ = _batch()
    assert fast_llama_supported(model.model)
    with torch.no_grad():
        full = model.model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False).last_hidden_state
        for keep in (slice(0, ids.shape[1]), slice(P - 1, ids.shape[1] - 1)):
            lean = llama_hidden(model.model, ids, attn, pos, keep)
            real = attn[:, keep].bool()
            torch.testing.assert_close(lean[real], full[:, keep][real], atol=1e-5, rtol=0)


def test_response_logits_and_grads_equal_the_full_forward():
    torch.manual_seed(1)
    model = LlamaForCausalLM(_config()).train()
    ids, attn, pos, P, mask = _batch(seed=1)
    out = {}
    for fast in (True, False):
        model.zero_grad(set_to_none=True)
        logits = response_logits(model, ids, attn, pos, P, temperature=0.7, fast=fast)
        logp = torch.log_softmax(logits, -1).gather(2, ids[:, P:].unsqueeze(-1)).squeeze(-1)
        ((logp * mask).sum() / mask.sum()).backward()
        out[fast] = (logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    (fast_logits, fast_grads), (hf_logits, hf_grads) = out[True], out[False]
    assert fast_logits.shape == hf_logits.shape == (ids.shape[0], ids.shape[1] - P, 97)
    real = mask.bool()
    torch.testing.assert_close(fast_logits[real], hf_logits[real], atol=1e-5, rtol=0)
    for name, g in hf_grads.items():
        torch.testing.assert_close(fast_grads[name], g, atol=1e-5, rtol=1e-4, msg=name)


def test_response_values_and_grads_equal_the_full_forward(tmp_path):
    torch.manual_seed(2)
    LlamaForCausalLM(_config()).save_pretrained(tmp_path)
    seqcls = AutoModelForSequenceClassification.from_pretrained(str(tmp_path), num_labels=1)
    value = ValueModel(seqcls).train()
    ids, attn, pos, P, mask = _batch(seed=2)
    out = {}
    for fast in (True, False):
        value.zero_grad(set_to_none=True)
        v = response_values(value, ids, attn, pos, P, fast=fast)
        ((v * mask).sum() / mask.sum()).backward()
        out[fast] = (v.detach(), {n: p.grad.clone() for n, p in value.named_parameters()})
    real = mask.bool()
    torch.testing.assert_close(out[True][0][real], out[False][0][real], atol=1e-5, rtol=0)
    for name, g in out[False][1].items():
        torch.testing.assert_close(out[True][1][name], g, atol=1e-5, rtol=1e-4, msg=name)
    full = value(ids, attn, pos)  # no `keep`: every position, the transformers forward
    torch.testing.assert_close(out[False][0], full[:, P - 1:-1].detach())


def test_fast_path_only_where_it_is_exact():
    model = LlamaForCausalLM(_config())
    assert fast_llama_supported(model.model)
    assert not fast_llama_supported(LlamaForCausalLM(_config()).to(torch.bfloat16).model)
    scaled = _config()
    scaled.rope_parameters = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    assert not fast_llama_supported(LlamaForCausalLM(scaled).model)
    biased = _config()
    biased.attention_bias = True
    assert not fast_llama_supported(LlamaForCausalLM(biased).model)
    assert not fast_llama_supported(model)  # the CausalLM wrapper, not its backbone
