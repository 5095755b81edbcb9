"""The rollout's old log-probs (taken from the logits the engine sampled from) and hidden states
(read by a shared value head) equal a full forward."""

from __future__ import annotations

import pytest
import torch

from chatrlhf.lm.modeling import load_causal_lm, load_tokenizer
from chatrlhf.rl.experience import response_forward, rollout
from chatrlhf.rl.losses import token_logprobs
from tests.conftest import ppo_cfg

PROMPTS = [{"messages": [{"role": "user", "content": c}]} for c in
           ["Hi", "What is two plus two?", "Who is Zorbel Quint, the baker who lives in Varnok and likes teal?",
            "List three fruits.", "Thank you.", "Reverse: plum, pear, apple, and tell me the count."]]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_rollout_logprobs_equal_a_full_forward(tiny_model_dir, temperature):
    tok = load_tokenizer(tiny_model_dir)
    model = load_causal_lm(tiny_model_dir)
    def eos_likely(module, inputs, logits):  # so rows finish early and leave the decoding batch
        logits[..., tok.eos_token_id] += 3.0

    model.lm_head.register_forward_hook(eos_likely)
    cfg = ppo_cfg(max_new_tokens=16, temperature=temperature)
    ro = rollout(model, tok, PROMPTS, cfg, seed=3, keep_hidden=True)
    P = ro.prompt_len
    lengths = ro.attention_mask[:, :P].sum(1)
    assert len(set(lengths.tolist())) > 2  # left padding of different widths
    assert 0 < int(ro.finished.sum()) < len(PROMPTS)  # some rows stopped early, some ran to the limit
    with torch.no_grad():
        logits, hidden = response_forward(model, ro.input_ids, ro.attention_mask, ro.position_ids, P, temperature,
                                          hidden=True)
        full = token_logprobs(logits, ro.input_ids[:, P:]) * ro.mask
    assert (ro.logprobs * (1 - ro.mask)).abs().max() == 0  # nothing outside the response
    torch.testing.assert_close(ro.logprobs * ro.mask, full, atol=1e-4, rtol=0)
    m = ro.mask[..., None]
    assert ro.hidden.shape == hidden.shape and (ro.hidden * (1 - m)).abs().max() == 0
    torch.testing.assert_close(ro.hidden * m, hidden * m, atol=1e-4, rtol=1e-4)
