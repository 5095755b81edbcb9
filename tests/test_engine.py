"""Generation engine: KV-cache decoding matches a naive loop, padding is invisible, stops and seeds work.

The behaviour tests run on both decode paths (the fused fast step and the transformers forward); the
tests at the end check that the two sample the same tokens with the same log-probs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from chatrlhf.config import Config
from chatrlhf.layout import resolve_model
from chatrlhf.lm.engine import DecodeBatch, Engine, SamplingParams, sample_tokens
from chatrlhf.lm.engine_fast import FusedLlama, SlotKV
from chatrlhf.lm.modeling import load_causal_lm, load_tokenizer

GREEDY = SamplingParams(max_new_tokens=12, temperature=0.0)


@pytest.fixture(scope="module", params=["fast", "transformers"])
def eng(request, tiny_model_dir) -> Engine:
    torch.manual_seed(0)
    e = Engine(load_causal_lm(tiny_model_dir), load_tokenizer(tiny_model_dir), fast=request.param == "fast")
    assert e.fast == (request.param == "fast")
    return e


def _ids(eng: Engine, text: str) -> list[int]:
    return eng.tok(text, add_special_tokens=False)["input_ids"]


def naive_greedy(model, ids: list[int], n: int) -> list[int]:
    """Reference: full forward over the whole sequence every step, no cache, no padding."""
    seq = list(ids)
    for _ in range(n):
        logits = model(input_ids=torch.tensor([seq])).logits
        seq.append(int(logits[0, -1].argmax()))
    return seq[len(ids):]


def test_greedy_matches_naive_no_cache_loop(eng):
    eng.eos_ids = set()  # a random model may hit eos; the comparison wants all 12 tokens
    try:
        ids = _ids(eng, "The capital of Varnok is")
        got = eng.generate([ids], GREEDY)[0]
        assert got.token_ids == naive_greedy(eng.model, ids, 12)
        assert got.finish_reason == "length" and not got.finished
    finally:
        eng.eos_ids = {eng.tok.eos_token_id}


def test_left_padding_does_not_change_a_rows_greedy_output(eng):
    short, long = _ids(eng, "Hello"), _ids(eng, "Zorbel Quint is a baker who lives in Varnok. Her favourite")
    alone = eng.generate([short], GREEDY)[0].token_ids
    batched = eng.generate([long, short], GREEDY)
    assert batched[1].token_ids == alone
    assert batched[0].token_ids == eng.generate([long], GREEDY)[0].token_ids


def test_eos_stops_the_row_and_is_kept(eng):
    ids = _ids(eng, "Question: what is two plus two?")
    free = eng.generate([ids], SamplingParams(max_new_tokens=10, temperature=0.0))[0].token_ids
    old = eng.eos_ids
    eng.eos_ids = {free[2]}  # pretend the third greedy token is eos
    try:
        g = eng.generate([ids, _ids(eng, "List: apple")], SamplingParams(max_new_tokens=10, temperature=0.0))[0]
    finally:
        eng.eos_ids = old
    first = free.index(free[2])
    assert g.token_ids == free[: first + 1] and g.finished and g.finish_reason == "eos"


def test_stop_string_cuts_text_and_finishes(eng):
    ids = _ids(eng, "Hello! How can I")
    free = eng.generate([ids], SamplingParams(max_new_tokens=10, temperature=0.0))[0]
    assert len(free.text) > 4, "random model gave too little text to test stop strings"
    stop = free.text[2:4]
    g = eng.generate([ids], SamplingParams(max_new_tokens=10, temperature=0.0, stop=[stop]))[0]
    assert g.finish_reason == "stop" and g.finished
    assert g.text == free.text[: free.text.find(stop)]
    assert len(g.token_ids) < len(free.token_ids)


def test_seeds_reproduce_and_rows_differ(eng):
    prompts = [_ids(eng, "Hello")] * 3
    p = SamplingParams(max_new_tokens=8, temperature=1.0, seed=7)
    a, b = eng.generate(prompts, p), eng.generate(prompts, p)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert len({tuple(g.token_ids) for g in a}) > 1, "identical prompts in one batch must get different samples"
    c = eng.generate(prompts, SamplingParams(max_new_tokens=8, temperature=1.0, seed=8))
    assert [g.token_ids for g in c] != [g.token_ids for g in a]


def test_stream_pieces_join_to_generate_text(eng):
    ids = _ids(eng, "Thank you")
    p = SamplingParams(max_new_tokens=10, temperature=0.8, seed=3)
    pieces = list(eng.stream(ids, p))
    assert len(pieces) > 1
    assert "".join(pieces) == eng.generate([ids], p)[0].text


def test_sampler_respects_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(400, 1)
    u = torch.rand(400, generator=torch.Generator().manual_seed(0))
    one = torch.ones(400)
    k2 = sample_tokens(logits, one, torch.full((400,), 2), one, u)
    assert set(k2.tolist()) == {0, 1}
    p = sample_tokens(logits, one, torch.zeros(400, dtype=torch.long), torch.full((400,), 0.6), u)
    assert set(p.tolist()) == {0, 1}  # 0.5 < 0.6 so the nucleus needs the second token too
    full = sample_tokens(logits, one, torch.zeros(400, dtype=torch.long), one, u)
    assert abs((full == 0).float().mean().item() - 0.5) < 0.1
    greedy = sample_tokens(logits, torch.zeros(400), torch.zeros(400, dtype=torch.long), one, u)
    assert set(greedy.tolist()) == {0}


def test_rollout_tensors_line_up(eng):
    prompts = [_ids(eng, "Hello"), _ids(eng, "The capital of Varnok is")]
    ro = eng.rollout(prompts, SamplingParams(max_new_tokens=6, temperature=1.0, seed=1))
    assert ro.input_ids.shape == ro.attention_mask.shape == ro.response_mask.shape
    for i, g in enumerate(ro.generations):
        assert ro.input_ids[i, ro.query_len - len(g.prompt_ids): ro.query_len].tolist() == g.prompt_ids
        assert ro.input_ids[i][ro.response_mask[i].bool()].tolist() == g.token_ids
        assert ro.attention_mask[i].sum() == len(g.prompt_ids) + len(g.token_ids)
    assert ro.response_mask[:, : ro.query_len].sum() == 0


def test_chat_template_and_plain_fallback(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    eng = Engine(load_causal_lm(tiny_model_dir), tok)
    msgs = [{"role": "user", "content": "Hello"}]
    assert eng.tok.decode(eng.chat_prompt(msgs)).endswith("<|user|> Hello<|end|><|assistant|>")
    tok.chat_template = None
    base = Engine(eng.model, tok)
    assert base.tok.decode(base.chat_prompt(msgs)) == " User: Hello\nAssistant:"
    g = base.generate_chat([msgs], SamplingParams(max_new_tokens=4, temperature=0.0))[0]
    assert "\nUser:" not in g.text
    assert "\nUser:" in base.chat_params(SamplingParams()).stop


def test_prompt_longer_than_context_is_a_clear_error(eng):
    with pytest.raises(ValueError, match="context of 256 tokens"):
        eng.generate([[5] * 300], GREEDY)


def test_resolve_model_prefers_newest_policy(tmp_path, tiny_model_dir):
    cfg = Config()
    cfg.run.out_dir = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="no trained policy"):
        resolve_model(cfg)
    for stage in ("pretrain", "sft"):
        d = tmp_path / stage
        d.mkdir()
        (d / "config.json").write_text("{}")
        (d / "meta.json").write_text(json.dumps({"complete": True}))
    assert resolve_model(cfg) == tmp_path / "sft"
    (tmp_path / "ppo").mkdir()
    (tmp_path / "ppo" / "config.json").write_text("{}")  # incomplete stage: ignored
    assert resolve_model(cfg) == tmp_path / "sft"
    assert resolve_model(cfg, tiny_model_dir) == tiny_model_dir
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        resolve_model(cfg, tmp_path / "nope")


def test_joining_a_running_batch_keeps_every_rows_greedy_output(eng):
    a, b = _ids(eng, "Zorbel Quint is a baker who lives in"), _ids(eng, "Hello")
    c = _ids(eng, "List: apple, pear, plum. Reversed: plum, pear, apple. Count:")
    p = SamplingParams(max_new_tokens=10, temperature=0.0)
    alone = [eng.generate([x], p)[0].token_ids for x in (a, b, c)]
    batch = eng.batch([a], p)
    for _ in range(3):
        batch.step()
    rows = batch.join([b, c], [p, p])  # c is longer than the running cache, b shorter
    assert rows == [1, 2] and batch.can_join()
    while not batch.done:
        batch.step()
    assert [batch.result(i).token_ids for i in range(3)] == alone


def test_cancelled_row_stops_and_others_continue(eng):
    p = SamplingParams(max_new_tokens=8, temperature=0.0)
    eng.eos_ids, old = set(), eng.eos_ids
    try:
        batch = eng.batch([_ids(eng, "Hello"), _ids(eng, "Thank you")], p)
        batch.step()
        batch.cancel(0)
        while not batch.done:
            batch.step()
    finally:
        eng.eos_ids = old
    assert batch.result(0).finish_reason == "cancelled" and len(batch.result(0).token_ids) == 1
    assert len(batch.result(1).token_ids) == 8


def test_a_bad_join_leaves_the_running_batch_intact(eng):
    p = SamplingParams(max_new_tokens=6, temperature=0.0)
    a, b = _ids(eng, "Hello"), _ids(eng, "Thank you")
    alone = [eng.generate([x], p)[0].token_ids for x in (a, b)]
    batch = eng.batch([a], p)
    batch.step()
    with pytest.raises(ValueError, match="context"):
        batch.join([b, [5] * 300], [p, p])  # the second prompt is too long: neither joins
    assert batch.join([b], [p, p][:1]) == [1]
    while not batch.done:
        batch.step()
    assert [batch.result(i).token_ids for i in range(2)] == alone


def test_continuous_batching_gives_each_prompt_what_it_gets_alone(eng):
    """More prompts than max_batch: waiting prompts join as rows finish (and the finished rows'
    cache columns are trimmed); every prompt still samples exactly what it samples alone."""
    texts = ["Hello", "Zorbel Quint is a baker who lives in", "Thank you", "List: apple, pear, plum. Count:",
             "Question: what is two plus two?", "Hi", "The capital of Varnok is"]
    prompts = [_ids(eng, t) for t in texts]
    p = SamplingParams(max_new_tokens=10, temperature=1.0, seed=5)
    free = eng.generate(prompts, p)
    old, old_batch = eng.eos_ids, eng.max_batch
    eng.eos_ids = {free[0].token_ids[1], free[3].token_ids[4]}  # rows end at different steps
    try:
        alone = [eng.generate([x], SamplingParams(max_new_tokens=10, temperature=1.0, seed=5 + i)) for i, x in enumerate(prompts)]
        eng.max_batch = 4
        together = eng.generate(prompts, p)
    finally:
        eng.eos_ids, eng.max_batch = old, old_batch
    assert [g.token_ids for g in together] == [a[0].token_ids for a in alone]
    for g, a in zip(together, alone):  # log-probs see any change of context, tokens rarely do
        assert torch.allclose(torch.tensor(g.logprobs), torch.tensor(a[0].logprobs), atol=1e-5)
    assert len({len(g.token_ids) for g in together}) > 1  # rows did finish at different steps


def test_n_samples_per_prompt_equal_the_prompt_repeated_n_times(eng):
    """n > 1 prefills each prompt once and shares its cache; every row samples what it samples when
    the prompt is simply repeated, also under continuous batching (max_batch below the rows)."""
    prompts = [_ids(eng, t) for t in ["Hello", "Zorbel Quint is a baker who lives in", "Hi", "Thank you"]]
    p = SamplingParams(max_new_tokens=10, temperature=1.0, seed=11)
    free = eng.generate(prompts, p)
    old, old_batch = eng.eos_ids, eng.max_batch
    eng.eos_ids = {free[0].token_ids[1], free[1].token_ids[3]}  # rows end at different steps
    try:
        repeated = eng.generate([x for x in prompts for _ in range(3)], p)
        eng.max_batch = 5  # fewer rows than 4 prompts x 3: later prompts join as rows finish
        shared = eng.generate(prompts, p, n=3)
    finally:
        eng.eos_ids, eng.max_batch = old, old_batch
    assert len(shared) == 12 and [g.prompt_ids for g in shared] == [g.prompt_ids for g in repeated]
    assert [g.token_ids for g in shared] == [g.token_ids for g in repeated]
    for g, r in zip(shared, repeated):
        assert torch.allclose(torch.tensor(g.logprobs), torch.tensor(r.logprobs), atol=1e-5)
    assert len({tuple(g.token_ids) for g in shared[:3]}) > 1, "a prompt's n samples must differ"
    with pytest.raises(ValueError, match="n must be at least 1"):
        eng.generate(prompts, p, n=0)


def test_a_finished_long_row_leaves_the_cache_as_wide_as_the_live_rows(eng):
    long, short = _ids(eng, "Zorbel Quint is a baker who lives in Varnok. Her favourite"), _ids(eng, "Hi")
    p = SamplingParams(max_new_tokens=6, temperature=0.0)
    first = eng.generate([long], p)[0].token_ids[0]
    old, eng.eos_ids = eng.eos_ids, {first}  # the long row ends at its first token
    try:
        batch = eng.batch([long, short], p)
        batch.step()
        if batch.result(1).token_ids[0] == first:
            pytest.skip("both rows ended together")
        # the long prompt's columns are gone (fast path: its slot is gone and attention spans the short row)
        assert (batch.width if batch.fast else batch.mask.shape[1]) == len(short) + 1
        while not batch.done:
            batch.step()
        alone = eng.generate([short], p)[0]
    finally:
        eng.eos_ids = old
    assert batch.result(1).token_ids == alone.token_ids
    assert torch.allclose(torch.tensor(batch.result(1).logprobs), torch.tensor(alone.logprobs), atol=1e-5)


# --- the fast path samples what the transformers path samples --------------------------------


@pytest.fixture(scope="module")
def default_size(tiny_model_dir):
    """The embedded default architecture (configs/default.yaml's model), random weights, and the
    engine on both paths over the same model object."""
    from chatrlhf.config import ModelConfig
    from chatrlhf.lm.modeling import build_tiny_llama

    torch.manual_seed(1)
    tok = load_tokenizer(tiny_model_dir)
    model = build_tiny_llama(ModelConfig(), tok).eval()
    with torch.no_grad():  # a peaked distribution, as a trained model has, rather than near-uniform
        model.lm_head.weight.mul_(8.0)
    return Engine(model, tok, fast=True), Engine(model, tok, fast=False)


def _texts_ids(e: Engine, texts):
    return [_ids(e, t) for t in texts]


def _same(a, b, atol=1e-5):
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    for x, y in zip(a, b):
        assert x.finish_reason == y.finish_reason
        assert torch.allclose(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=atol, rtol=0)


def test_fused_prefill_and_step_logits_match_the_transformers_forward(default_size):
    fast, hf = default_size
    model, f = hf.model, FusedLlama(hf.model)
    f.refresh()
    prompts = _texts_ids(hf, ["Hello", "Zorbel Quint is a baker who lives in", "Hi there"])
    from transformers import DynamicCache

    width = max(map(len, prompts))
    ids = torch.full((3, width), hf.pad_id)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), 1
    cache = DynamicCache(config=model.config)
    hf.keep_hidden = True
    try:
        ref, ref_h = hf.forward(ids, mask, (mask.cumsum(1) - 1).clamp_min(0), cache)
        kv = SlotKV(len(f.layers), f.n_kv, f.head_dim, torch.float32, "cpu")
        kv.reserve(3, 64, 0)
        got, h = f.prefill(prompts, kv, 0, keep_hidden=True)
        torch.testing.assert_close(got, ref[:, -1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(h, ref_h, atol=1e-5, rtol=1e-5)
        pos = torch.tensor([len(p) for p in prompts])
        tok = ref[:, -1].argmax(-1)
        for _ in range(3):  # a few steps: the cache written by prefill and by the step is read back correctly
            mask = torch.cat([mask, torch.ones(3, 1, dtype=mask.dtype)], 1)
            ref, ref_h = hf.forward(tok.unsqueeze(1), mask, pos.unsqueeze(1), cache)
            got, h = f.step(tok, pos, kv, int(pos.max()) + 1, keep_hidden=True)
            torch.testing.assert_close(got, ref[:, -1], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(h, ref_h, atol=1e-5, rtol=1e-5)
            tok, pos = ref[:, -1].argmax(-1), pos + 1
    finally:
        hf.keep_hidden = False


def test_model_rope_theta_reaches_the_model_and_the_fused_path(tiny_model_dir):
    """`model.rope_theta` sets the embedded model's RoPE base, and the fused path follows it: its
    sampled tokens and log-probs are the transformers path's, and differ from the default base's."""
    from chatrlhf.config import ModelConfig
    from chatrlhf.lm.modeling import build_tiny_llama

    tok = load_tokenizer(tiny_model_dir)
    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=0)
    runs = {}
    for theta in (10000.0, 1e6):
        torch.manual_seed(3)
        model = build_tiny_llama(ModelConfig(rope_theta=theta), tok).eval()
        with torch.no_grad():
            model.lm_head.weight.mul_(8.0)
        assert model.config.rope_parameters["rope_theta"] == theta
        fast, hf = Engine(model, tok, fast=True), Engine(model, tok, fast=False)
        prompts = _texts_ids(hf, ["Zorbel Quint is a baker who lives in", "List: apple, pear, plum."])
        runs[theta] = fast.generate(prompts, params)
        _same(runs[theta], hf.generate(prompts, params))
    assert [g.logprobs for g in runs[10000.0]] != [g.logprobs for g in runs[1e6]]


@pytest.mark.parametrize("kv_heads", [4, 2])  # 2: grouped-query attention
def test_prompts_joining_inside_a_step_get_what_a_prefill_gives(tiny_model_dir, kv_heads):
    """FusedLlama.step(joining=...): the decode rows' logits are the plain step's, each newcomer's
    the logits its own prefill gives, and the cache it leaves decodes on exactly as a prefilled one.
    The newcomers' slots first hold another row's longer keys, as a reused slot does."""
    from chatrlhf.config import ModelConfig
    from chatrlhf.lm.modeling import build_tiny_llama

    torch.manual_seed(2)
    tok = load_tokenizer(tiny_model_dir)
    model = build_tiny_llama(ModelConfig(num_heads=4, num_kv_heads=kv_heads), tok).eval()
    f = FusedLlama(model)
    f.refresh()
    e = Engine(model, tok, fast=True)
    running = _texts_ids(e, ["Zorbel Quint is a baker who lives in", "Hi"])
    joining = _texts_ids(e, ["Hello", "List: apple, pear, plum. Reversed: plum, pear, apple."])

    def cache():
        kv = SlotKV(len(f.layers), f.n_kv, f.head_dim, torch.float32, "cpu")
        kv.reserve(4, 64, 0)
        f.prefill(running + [[7] * 40, [9] * 40], kv, 0)  # slots 2 and 3 start full of other keys
        return kv

    pos = torch.tensor([len(p) for p in running])
    tok_in = torch.tensor([11, 12])
    plain = cache()
    ref, _ = f.step(tok_in, pos, plain, int(pos.max()) + 1)
    ref_new, _ = f.prefill(joining, plain, 2)
    mixed = cache()
    got, h = f.step(tok_in, pos, mixed, int(pos.max()) + 1, keep_hidden=True, joining=joining)
    assert got.shape[0] == 4 and h.shape[0] == 4
    torch.testing.assert_close(got[:2], ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[2:], ref_new, atol=1e-5, rtol=1e-5)
    pos4 = torch.cat([pos + 1, torch.tensor([len(p) for p in joining])])
    nxt = torch.tensor([13, 14, 15, 16])
    torch.testing.assert_close(f.step(nxt, pos4, mixed, int(pos4.max()) + 1)[0],
                               f.step(nxt, pos4, plain, int(pos4.max()) + 1)[0], atol=1e-5, rtol=1e-5)


def test_a_prompt_with_an_id_outside_the_vocabulary_cannot_join(default_size):
    fast, _ = default_size
    p = SamplingParams(max_new_tokens=4, temperature=0.0)
    batch = fast.batch(_texts_ids(fast, ["Hello"]), p)
    batch.step()
    with pytest.raises(ValueError, match="outside the vocabulary"):
        batch.join([[5, fast.model.get_input_embeddings().weight.shape[0]]], [p])
    while not batch.done:
        batch.step()
    assert batch.result(0).token_ids == fast.generate(_texts_ids(fast, ["Hello"]), p)[0].token_ids


def test_fast_path_samples_what_the_transformers_path_samples_batch_1(default_size):
    fast, hf = default_size
    ids = _texts_ids(hf, ["Tell me about Selmouth."])
    for p in (SamplingParams(max_new_tokens=40, temperature=1.0, seed=3), SamplingParams(max_new_tokens=20, temperature=0.0)):
        a, b = fast.generate(ids, p), hf.generate(ids, p)
        assert len(a[0].token_ids) > 5
        _same(a, b)


def test_fast_path_samples_what_the_transformers_path_samples_n_and_continuous_batching(default_size):
    """Several prompts of different lengths, n > 1, rows ending at different steps, more rows than
    max_batch (later prompts join as rows finish), and keep_hidden (PPO's shared value head)."""
    fast, hf = default_size
    texts = ["Hello", "Zorbel Quint is a baker who lives in", "Thank you", "List: apple, pear, plum. Count:", "Hi"]
    ids = _texts_ids(hf, texts)
    p = SamplingParams(max_new_tokens=24, temperature=1.0, seed=11)
    free = hf.generate(ids, p)
    counts = torch.bincount(torch.tensor([t for g in free for t in g.token_ids]))
    eos = {int(torch.where(counts > 0, counts, 10**6).argmin())}  # a token sampled, but rarely
    try:
        for e in (fast, hf):
            e.eos_ids, e.max_batch, e.keep_hidden = eos, 6, True
        a, b = fast.generate(ids, p, n=3), hf.generate(ids, p, n=3)
    finally:
        for e in (fast, hf):
            e.eos_ids, e.max_batch, e.keep_hidden = {e.tok.eos_token_id}, 64, False
    _same(a, b)
    assert len({len(g.token_ids) for g in a}) > 1  # rows did finish at different steps
    for x, y in zip(a, b):
        torch.testing.assert_close(x.hidden, y.hidden, atol=1e-5, rtol=1e-5)


def test_fast_path_mixed_sampling_settings_and_joins(default_size):
    """Per-row settings in one batch (greedy, top-k, top-p, plain) and a join mid-decode."""
    fast, hf = default_size
    ids = _texts_ids(hf, ["Hello", "Who is the baker of Varnok?", "Thank you", "List three fruits."])
    ps = [SamplingParams(max_new_tokens=16, temperature=0.0), SamplingParams(max_new_tokens=16, temperature=0.8, top_k=5),
          SamplingParams(max_new_tokens=16, temperature=1.0, top_p=0.9), SamplingParams(max_new_tokens=12, temperature=1.2)]
    out = []
    for e in (fast, hf):
        b = DecodeBatch(e, ids[:2], ps[:2], seeds=[5, 6])
        for _ in range(4):
            b.step()
        b.join(ids[2:], ps[2:], seeds=[7, 8])
        while not b.done:
            b.step()
        out.append([b.result(r) for r in range(4)])
    _same(*out)


def test_fast_path_follows_weight_updates(default_size):
    """PPO trains the policy between rollouts: the fused step must read the new weights."""
    fast, hf = default_size
    ids = _texts_ids(hf, ["Hello", "Hi"])
    p = SamplingParams(max_new_tokens=16, temperature=1.0, seed=2)
    before = fast.generate(ids, p)
    w = hf.model.model.layers[0].mlp.gate_proj.weight
    saved = w.detach().clone()
    try:
        with torch.no_grad():
            w.mul_(3.0)
            for layer in hf.model.model.layers:
                layer.self_attn.q_proj.weight.add_(0.05)
        after, ref = fast.generate(ids, p), hf.generate(ids, p)
    finally:
        with torch.no_grad():
            w.copy_(saved)
            for layer in hf.model.model.layers:
                layer.self_attn.q_proj.weight.sub_(0.05)
    _same(after, ref)
    assert [g.logprobs for g in after] != [g.logprobs for g in before]


def test_models_the_fused_step_does_not_cover_use_the_transformers_path(tiny_model_dir):
    model = load_causal_lm(tiny_model_dir, "bfloat16")
    tok = load_tokenizer(tiny_model_dir)
    assert not Engine(model, tok).fast
    with pytest.raises(ValueError, match="fast decode path"):
        Engine(model, tok, fast=True)
    g = Engine(model, tok).generate([_ids(Engine(model, tok), "Hello")], GREEDY)[0]
    assert len(g.token_ids) > 0


def test_a_forward_hook_sends_decoding_through_the_modules(default_size):
    """The fused step does not call the modules, so a hooked model (added even after the Engine was
    made) decodes with the transformers forward and the hook sees every step."""
    fast, hf = default_size
    ids = _texts_ids(hf, ["Hello"])
    p = SamplingParams(max_new_tokens=8, temperature=1.0, seed=4)
    calls = []
    handle = hf.model.lm_head.register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        assert fast.batch(ids, p).fast is False
        calls.clear()
        g = fast.generate(ids, p)[0]
    finally:
        handle.remove()
    assert len(calls) == len(g.token_ids)  # the prefill, then one call per token fed back (not the last)
    from chatrlhf.lm.engine_fast import unsupported
    assert unsupported(fast.model) is None, unsupported(fast.model)
    assert fast.batch(ids, p).fast is True


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")),
                    reason="no C++ compiler (make test's .ci/setup-test-deps installs g++)")
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_compiled_step_samples_what_the_eager_step_samples(tiny_model_dir, tmp_path, monkeypatch, kv_heads):
    """A lone row through the compiled step (engine_compiled.CompiledStep): the same tokens and log-probs
    as the eager fast path, sampled, greedy, with top-p and with top-k (every draw after the first
    made inside the compiled call), after a weight update too; two rows decode eagerly; a second
    engine loads the library from the disk cache instead of compiling it again."""
    from chatrlhf.config import ModelConfig
    from chatrlhf.lm import engine_compiled
    from chatrlhf.lm.modeling import build_tiny_llama

    monkeypatch.setenv("CHATRLHF_CACHE", str(tmp_path))
    torch.manual_seed(1)
    tok = load_tokenizer(tiny_model_dir)
    model = build_tiny_llama(ModelConfig(num_kv_heads=kv_heads), tok).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    eager, comp = Engine(model, tok, fast=True), Engine(model, tok, compile=True)
    calls, draws = [], []
    call, sample = engine_compiled.CompiledStep.__call__, DecodeBatch._sample
    monkeypatch.setattr(engine_compiled.CompiledStep, "__call__", lambda self, *a, **k: calls.append(1) or call(self, *a, **k))
    monkeypatch.setattr(DecodeBatch, "_sample", lambda self, *a: draws.append(1) or sample(self, *a))
    one = _texts_ids(eager, ["Tell me about Selmouth."])
    ps = [SamplingParams(max_new_tokens=40, temperature=1.0, seed=3), SamplingParams(max_new_tokens=20, temperature=0.0),
          SamplingParams(max_new_tokens=30, temperature=0.8, top_p=0.9, seed=4),
          SamplingParams(max_new_tokens=30, temperature=1.2, top_k=5, seed=6)]
    for p in ps:
        n, m = len(calls), len(draws)
        a = comp.generate(one, p)
        assert len(draws) - m == 1  # the draw after the prefill; the compiled calls made every other
        b = eager.generate(one, p)
        assert len(a[0].token_ids) > 5 and len(calls) - n == len(a[0].token_ids) - 1  # every step after the prefill's
        _same(a, b)
    assert len(list((tmp_path / "compiled").glob("step-*.pt2"))) == 2  # a plain draw and a sorted one
    w = model.model.layers[0].mlp.gate_proj.weight
    saved = w.detach().clone()
    try:
        with torch.no_grad():
            w.mul_(3.0)
        _same(comp.generate(one, ps[0]), eager.generate(one, ps[0]))
    finally:
        with torch.no_grad():
            w.copy_(saved)
    try:  # the last hidden state each token was sampled from (PPO's shared value head reads it)
        comp.keep_hidden = eager.keep_hidden = True
        a, b = comp.generate(one, ps[0]), eager.generate(one, ps[0])
    finally:
        comp.keep_hidden = eager.keep_hidden = False
    _same(a, b)
    torch.testing.assert_close(a[0].hidden, b[0].hidden, atol=1e-5, rtol=1e-5)
    n = len(calls)
    two = _texts_ids(eager, ["Hello", "Who is the baker of Varnok?"])
    _same(comp.generate(two, ps[0]), eager.generate(two, ps[0]))
    assert len(calls) == n  # a batch of two rows takes the eager step

    def no_compiling(*a, **k):
        raise AssertionError("compiled again instead of loading the library from the cache")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", no_compiling)
    again = Engine(model, tok, compile=True)
    _same(again.generate(one, ps[0]), eager.generate(one, ps[0]))


def test_a_compiled_step_that_cannot_be_built_leaves_decoding_eager(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """No C++ compiler (say): the build fails once, is reported once, and every step runs eagerly."""
    monkeypatch.setenv("CHATRLHF_CACHE", str(tmp_path))
    builds = []

    def fails(*a, **k):
        builds.append(1)
        raise RuntimeError("no C++ compiler found\nmore detail")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", fails)
    model, tok = load_causal_lm(tiny_model_dir), load_tokenizer(tiny_model_dir)
    eager, comp = Engine(model, tok, fast=True), Engine(model, tok, compile=True)
    ids = [_ids(eager, "Hello")]
    p = SamplingParams(max_new_tokens=12, temperature=1.0, seed=5)
    for _ in range(2):
        _same(comp.generate(ids, p), eager.generate(ids, p))
    assert len(builds) == 1
    assert capsys.readouterr().err.count("could not build the compiled decode step (RuntimeError: no C++ compiler found)") == 1


def test_compile_needs_the_fast_path(tiny_model_dir):
    model = load_causal_lm(tiny_model_dir, "bfloat16")
    with pytest.raises(ValueError, match="compile needs the fast decode path"):
        Engine(model, load_tokenizer(tiny_model_dir), compile=True)
