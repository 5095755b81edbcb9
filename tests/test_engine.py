"""Generation engine: KV-cache decoding matches a naive loop, padding is invisible, stops and seeds work."""

from __future__ import annotations

import json

import pytest
import torch

from chatrlhf.config import Config
from chatrlhf.layout import resolve_model
from chatrlhf.lm.engine import Engine, SamplingParams, sample_tokens
from chatrlhf.lm.modeling import load_causal_lm, load_tokenizer

GREEDY = SamplingParams(max_new_tokens=12, temperature=0.0)


@pytest.fixture(scope="module")
def eng(tiny_model_dir) -> Engine:
    torch.manual_seed(0)
    return Engine(load_causal_lm(tiny_model_dir), load_tokenizer(tiny_model_dir))


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
        assert batch.mask.shape[1] == len(short) + 1  # the long prompt's columns are gone
        while not batch.done:
            batch.step()
        alone = eng.generate([short], p)[0]
    finally:
        eng.eos_ids = old
    assert batch.result(1).token_ids == alone.token_ids
    assert torch.allclose(torch.tensor(batch.result(1).logprobs), torch.tensor(alone.logprobs), atol=1e-5)
