"""Reward model: learns a preference, saves an AutoModelForSequenceClassification dir with the
demonstration bias, resumes exactly, stops on NaN, exposes per-token values, evaluates honestly."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

import chatrlhf.stages.reward as reward
from chatrlhf.config import Config
from chatrlhf.lm.modeling import load_tokenizer, read_meta, save_stage
from chatrlhf.lm.reward_model import (
    RewardModel,
    build_reward_model,
    output_embeddings,
    response_length,
    response_lm_loss,
    reward_backbone_and_head,
    rewards_and_hidden,
    top_ranked,
)
from chatrlhf.lm.training import NonFiniteLossError, read_metrics
from chatrlhf.lm.rankings import calibration, pairwise_accuracy
from chatrlhf.stages.reward import ceiling_gap, train_reward_model
from tests.conftest import interrupted_on_call

GOOD = ["Her favourite colour is teal.", "The capital of Varnok is Selmouth.", "Thank you, that is kind."]
BAD = ["I cannot help with that.", "plum pear apple", "four four four"]


def comparisons(n: int = 48, seed: int = 0, held_out_reversed: bool = False) -> list[dict]:
    """A learnable preference: GOOD texts beat BAD ones; an optional held-out labeler says the opposite."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        rs = [rng.choice(GOOD), rng.choice(BAD), rng.choice(BAD), rng.choice(GOOD)]
        rankings = [{"labeler": "L0", "ranks": [1, 3, 3, 1]}]
        if held_out_reversed:
            rankings.append({"labeler": "H1", "ranks": [3, 1, 1, 3]})
        out.append({"id": f"c{i}", "prompt_id": f"p{i}", "messages": [{"role": "user", "content": f"question {i}?"}],
                    "responses": rs, "rankings": rankings})
    return out


def cfg_for(tmp: Path, **rm) -> Config:
    rm = {"epochs": 3, "batch_prompts": 8, "learning_rate": 3e-3, "warmup_steps": 2, "log_every": 1, **rm}
    return Config.model_validate({"run": {"out_dir": str(tmp), "tensorboard": False}, "rm": rm})


class FakeWorld:
    """The parts of chatrlhf.world.World the RM uses: labelers, demonstrations, gold."""

    def labelers(self, held_out=None):
        return [SimpleNamespace(id="H1")] if held_out else [SimpleNamespace(id="L0")]

    def demonstrations(self):
        return [{"messages": [{"role": "user", "content": "q?"}, {"role": "assistant", "content": g}]} for g in GOOD]

    def gold(self, prompt, response):
        return SimpleNamespace(total=1.0 if response in GOOD else 0.0)


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("rm")
    comps = [dict(c, reference={}, task="fact") for c in comparisons(held_out_reversed=True)]
    metrics = train_reward_model(cfg_for(out), comps, tiny_model_dir, out / "rm", world=FakeWorld())
    return out / "rm", metrics


def test_rm_learns_the_preference_and_reports_held_out_accuracy(trained):
    rm_dir, m = trained
    losses = [r["rm/loss"] for r in read_metrics(rm_dir)]
    assert losses[-1] < 0.5 * losses[0]
    assert m["acc_held_out_prompts"] > 0.9 and m["pairs_held_out_prompts"] > 0
    # the held-out labeler (who reverses every preference) was not trained on: the RM disagrees with them
    assert m["acc_held_out_labelers"] < 0.1 and m["held_out_labeler_agreement"] != m["held_out_labeler_agreement"]  # nan: one held-out labeler
    assert set(m["ceiling_gap"]) == {"estimate", "low", "high"}  # nan with no agreement to measure
    # the noise-free rubric scored as the reward on the same pairs: it agrees with the training labelers, so it
    # disagrees with the reversing one too, and the per-task table holds the RM's and the rubric's accuracy
    assert m["gold_acc_held_out_labelers"] < 0.1
    fact = m["acc_held_out_labelers_by_task"]["fact"]
    assert fact["pairs"] == m["pairs_held_out_labelers"] and fact["rm"] == m["acc_held_out_labelers"]
    assert fact["gold"] == m["gold_acc_held_out_labelers"]
    assert m["gold_spearman"] > 0.8
    assert 0.0 <= m["calibration"]["ece"] <= 0.5


def test_saved_rm_loads_as_sequence_classification_and_score_applies_the_demo_bias(trained):
    rm_dir, m = trained
    meta = read_meta(rm_dir)
    assert meta["complete"] and meta["reward_bias"] == pytest.approx(m["reward_bias"])
    assert meta["bias_reference"] == "world demonstrations" and meta["held_out_labelers"] == ["H1"]
    hf = AutoModelForSequenceClassification.from_pretrained(str(rm_dir))
    assert hf.config.num_labels == 1 and hf.config.pad_token_id is not None
    rm = RewardModel.load(rm_dir)
    demos = [[{"role": "user", "content": "q?"}]] * len(GOOD)
    scores = rm.score(demos, GOOD)
    assert scores.shape == (3,)
    assert scores.mean().item() == pytest.approx(0.0, abs=1e-4)  # InstructGPT normalisation
    assert torch.allclose(scores, rm.score(demos, GOOD, raw=True) + meta["reward_bias"])
    assert (rm.score(demos, BAD) < scores.min()).all()


def test_backbone_and_head_give_per_token_values_ending_in_the_reward(trained):
    rm = RewardModel.load(trained[0])
    backbone, head = reward_backbone_and_head(rm.model)
    ids = reward.encode_response(rm.tokenizer, [{"role": "user", "content": "q?"}], GOOD[0], 256)
    batch = reward.collate_sequences([ids], rm.tokenizer.pad_token_id)
    with torch.no_grad():
        values = head(backbone(**batch).last_hidden_state).squeeze(-1)  # (1, T)
    assert values.shape == (1, len(ids))
    assert values[0, -1].item() == pytest.approx(rm.score([[{"role": "user", "content": "q?"}]], [GOOD[0]], raw=True).item(), abs=1e-5)


def test_packed_batches_give_the_padded_rewards_and_gradients_with_fewer_tokens(trained):
    rm = RewardModel.load(trained[0])
    rng = random.Random(0)
    seqs = [[rng.randrange(5, 200) for _ in range(rng.randrange(3, 40))] for _ in range(24)]
    padded, packed = reward.collate_sequences(seqs, rm.tokenizer.pad_token_id), reward.collate_packed_sequences(seqs, rm.tokenizer.pad_token_id)
    assert packed["input_ids"].numel() < 0.8 * padded["input_ids"].numel()
    grads = []
    for batch in (padded, packed):
        rm.model.zero_grad()
        r = reward.raw_rewards(rm.model, batch)
        (r * torch.arange(len(seqs))).sum().backward()  # a different weight per sequence: order matters
        grads.append((r.detach(), [p.grad.clone() for p in rm.model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-4)
    assert all(torch.allclose(a, b, atol=1e-4, rtol=1e-3) for a, b in zip(grads[0][1], grads[1][1]))
    assert reward._packing_matches_padding(rm.model, seqs, rm.tokenizer.pad_token_id, "cpu")


def test_rm_training_falls_back_to_padding_where_packed_rows_disagree(tiny_model_dir, tmp_path, monkeypatch, caplog):
    """A model whose attention ignored the restarting position ids would score packed rows wrongly."""
    real = reward.collate_packed_sequences

    def leaky(seqs, pad_id):  # as if sequences saw each other: every reward read one token early
        batch = real(seqs, pad_id)
        return batch | {"last_token": (batch["last_token"] - 1).clamp(min=0)}

    monkeypatch.setattr(reward, "collate_packed_sequences", leaky)
    comps = [dict(c, reference={}, task="fact") for c in comparisons(held_out_reversed=True)]
    m = train_reward_model(cfg_for(tmp_path, epochs=1), comps, tiny_model_dir, tmp_path / "rm", world=FakeWorld())
    assert "training with padded batches instead" in caplog.text
    assert m["acc_held_out_prompts"] > 0.5


def test_score_is_independent_of_batch_padding(trained):
    rm = RewardModel.load(trained[0])
    msgs = [[{"role": "user", "content": "q?"}], [{"role": "user", "content": "a much longer question, is it not?"}]]
    both = rm.score(msgs, [GOOD[0], BAD[1]])
    alone = torch.stack([rm.score([m], [r])[0] for m, r in zip(msgs, [GOOD[0], BAD[1]])])
    assert torch.allclose(both, alone, atol=1e-5)
    # scored on the real tokens only, the same as the model's own forward on the padded batch
    from chatrlhf.lm.reward_model import collate_sequences, encode_response, raw_rewards

    seqs = [encode_response(rm.tokenizer, m, r, rm.max_len) for m, r in zip(msgs, [GOOD[0], BAD[1]])]
    padded = raw_rewards(rm.model, collate_sequences(seqs, rm.tokenizer.pad_token_id)) + rm.bias
    assert torch.allclose(both, padded, atol=1e-5)


@pytest.mark.slow
def test_a_compiled_rm_scores_as_the_eager_one(trained):
    """compile_reward (with ppo.update.compile) runs the RM's trunk through the compiled layer stacks:
    the same rewards to float rounding."""
    from chatrlhf.lm.reward_model import compile_reward

    rm = RewardModel.load(trained[0])
    msgs = [[{"role": "user", "content": "q?"}], [{"role": "user", "content": "a much longer question, is it not?"}]]
    eager = rm.score(msgs, [GOOD[0], BAD[1]])
    assert compile_reward(rm) and rm.model.model.unpadded_compiled
    assert torch.allclose(rm.score(msgs, [GOOD[0], BAD[1]]), eager, atol=1e-5)


def test_resumed_run_continues_where_it_stopped(tiny_model_dir, tmp_path, monkeypatch):
    comps = comparisons(32)
    full = tmp_path / "full"
    train_reward_model(cfg_for(full, save_every=3), comps, tiny_model_dir, full / "rm", world=None)

    part = tmp_path / "part"
    real_loss = interrupted_on_call(monkeypatch, reward, "ranking_loss", 5)  # the laptop lid closes in step 5
    with pytest.raises(KeyboardInterrupt):
        train_reward_model(cfg_for(part, save_every=3), comps, tiny_model_dir, part / "rm", world=None)
    monkeypatch.setattr(reward, "ranking_loss", real_loss)
    m = train_reward_model(cfg_for(part, save_every=3), comps, tiny_model_dir, part / "rm", world=None)
    assert m["resumed_from"] == 3
    a = AutoModelForSequenceClassification.from_pretrained(str(full / "rm")).state_dict()
    b = AutoModelForSequenceClassification.from_pretrained(str(part / "rm")).state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_a_checkpoint_of_other_settings_is_refused_naming_them(tiny_model_dir, tmp_path, monkeypatch):
    from chatrlhf.lm.training import SettingsMismatchError

    comps = comparisons(32)
    real_loss, calls = reward.ranking_loss, {"n": 0}

    def crash_at_step_4(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_loss(*a, **k)

    monkeypatch.setattr(reward, "ranking_loss", crash_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        train_reward_model(cfg_for(tmp_path, save_every=2), comps, tiny_model_dir, tmp_path / "rm", world=None)
    monkeypatch.setattr(reward, "ranking_loss", real_loss)
    with pytest.raises(SettingsMismatchError, match=r"rm\.learning_rate: 0\.003 -> 0\.001.*--resume-anyway"):
        train_reward_model(cfg_for(tmp_path, save_every=2, learning_rate=1e-3), comps, tiny_model_dir,
                           tmp_path / "rm", world=None)
    anyway = cfg_for(tmp_path, save_every=2, learning_rate=1e-3)
    anyway.run.resume_anyway = True
    assert train_reward_model(anyway, comps, tiny_model_dir, tmp_path / "rm", world=None)["resumed_from"] == 2


def test_nan_loss_stops_with_a_clear_error(tiny_model_dir, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_loss = reward.ranking_loss

    def nan_at_step_4(*a, **k):
        calls["n"] += 1
        loss = real_loss(*a, **k)
        return loss * float("nan") if calls["n"] == 4 else loss

    monkeypatch.setattr(reward, "ranking_loss", nan_at_step_4)
    with pytest.raises(NonFiniteLossError, match=r"rm: loss became nan at step 3.*checkpoints/step_000002"):
        train_reward_model(cfg_for(tmp_path, save_every=2), comparisons(32), tiny_model_dir, tmp_path / "rm", world=None)


def test_accuracy_and_calibration_by_hand():
    comps = [{"responses": ["a", "b", "c"], "rankings": [{"labeler": "L0", "ranks": [1, 2, 3]},
                                                         {"labeler": "H1", "ranks": [3, 2, 1]}]}]
    rewards = [[2.0, 1.0, 1.0]]
    assert pairwise_accuracy(comps, rewards, lambda lab: lab == "L0") == (pytest.approx(2.5 / 3), 3)  # tie = half
    assert pairwise_accuracy(comps, rewards, lambda lab: lab == "H1") == (pytest.approx(0.5 / 3), 3)
    pair = [{"responses": ["a", "b"], "rankings": [{"ranks": [1, 2]}]}]
    wrong = calibration(pair, [[0.0, 3.0]], lambda lab: True)  # confidently wrong: P(a > b) = sigmoid(-3)
    assert wrong["ece"] == pytest.approx(1 / (1 + math.exp(-3)), rel=1e-6)
    assert calibration(pair * 3 + [{"responses": ["a", "b"], "rankings": [{"ranks": [2, 1]}]}],
                       [[math.log(3), 0.0]] * 4, lambda lab: True)["ece"] == pytest.approx(0.0, abs=1e-9)  # 3:1 at p=0.75


def test_ceiling_gap_is_agreement_minus_accuracy_with_an_interval_over_content_clusters():
    # two held-out labelers agree on 3 of 4 fact prompts about two entities; the RM matches H1 everywhere
    def comp(entity: str, h2: list[int]) -> dict:
        return {"task": "fact", "reference": {"entity": entity}, "responses": ["a", "b"],
                "rankings": [{"labeler": "H1", "ranks": [1, 2]}, {"labeler": "H2", "ranks": h2},
                             {"labeler": "L0", "ranks": [2, 1]}]}
    val = [comp("x", [1, 2]), comp("x", [1, 2]), comp("y", [1, 2]), comp("y", [2, 1])]
    gap = ceiling_gap(val, [[1.0, 0.0]] * 4, {"H1", "H2"})
    # agreement 3/4; accuracy with H1 and H2 7/8 (the training labeler L0 is not counted)
    assert gap["estimate"] == pytest.approx(0.75 - 7 / 8)
    assert gap["low"] <= gap["estimate"] <= gap["high"] and gap["low"] < gap["high"]
    # one content cluster: no interval to draw
    one = ceiling_gap([comp("x", [1, 2]), comp("x", [2, 1])], [[1.0, 0.0]] * 2, {"H1", "H2"})
    assert one["low"] == one["estimate"] == one["high"] == pytest.approx(0.5 - 0.75)


def test_init_dir_and_out_dir_must_differ(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="init_dir and out_dir"):
        train_reward_model(cfg_for(tmp_path), comparisons(8), tiny_model_dir, tiny_model_dir, world=None)


def test_run_rm_on_a_rankings_file_and_a_clear_error_on_a_bad_one(tiny_model_dir, tmp_path):
    import json

    from chatrlhf.lm.rankings import RankingError
    from chatrlhf.stages.reward import run_rm

    good = tmp_path / "ranked.jsonl"
    good.write_text("".join(json.dumps(c) + "\n" for c in comparisons(16)))
    cfg = Config.model_validate({"run": {"out_dir": str(tmp_path / "run"), "tensorboard": False},
                                 "model": {"name_or_path": str(tiny_model_dir)},
                                 "rm": {"data": str(good), "epochs": 1, "batch_prompts": 8, "init_from": "pretrain"}})
    out = run_rm(cfg)
    assert read_meta(out)["complete"] and read_meta(out)["bias_reference"] == "top-ranked training responses"
    bad = tmp_path / "bad.jsonl"
    rows = comparisons(3)
    rows[2]["rankings"][0]["ranks"] = [1, 2, 3]  # 3 ranks for 4 responses
    bad.write_text("".join(json.dumps(c) + "\n" for c in rows))
    cfg.rm.data = str(bad)
    with pytest.raises(RankingError, match=rf"{bad}:3: field 'rankings\[0\].ranks': needs one rank per response \(4\)"):
        run_rm(cfg)


def test_rm_epoch_batches_cover_every_comparison_once_shuffled():
    from chatrlhf.stages.reward import _epoch_batches

    plain = _epoch_batches(200, 8, seed=3)
    assert sorted(i for b in plain for i in b) == list(range(200)) and len(plain) == 25
    assert plain == _epoch_batches(200, 8, seed=3)  # resume-exact
    assert plain != _epoch_batches(200, 8, seed=4)


def test_an_ensemble_scores_the_mean_of_its_members_and_evaluates_that_mean(tiny_model_dir, tmp_path, monkeypatch):
    from chatrlhf.lm.reward_model import RewardEnsemble, load_reward
    from chatrlhf.stages.reward import member_dir, reward_complete, train_reward_ensemble

    comps = [dict(c, reference={}, task="fact") for c in comparisons(n=24, held_out_reversed=True)]
    cfg = cfg_for(tmp_path, epochs=1, ensemble=2)
    out = tmp_path / "rm"
    m = train_reward_ensemble(cfg, comps, lambda i: tiny_model_dir, out, world=FakeWorld())
    assert reward_complete(out, 2) and not reward_complete(out, 1) and not reward_complete(out, 3)
    assert read_meta(out)["ensemble"] == ["ensemble/1"] and read_meta(member_dir(out, 1))["ensemble_member"] == 1
    first, second, both = RewardModel.load(out), RewardModel.load(member_dir(out, 1)), load_reward(out)
    assert isinstance(both, RewardEnsemble) and isinstance(load_reward(member_dir(out, 1)), RewardModel)
    msgs, texts = [[{"role": "user", "content": "question 1?"}]] * 3, [GOOD[0], BAD[1], GOOD[2]]
    a, b = first.score(msgs, texts), second.score(msgs, texts)
    assert not torch.allclose(a, b)  # another seed: another head and data order, another model
    assert torch.allclose(both.score(msgs, texts), (a + b) / 2)
    cautious = load_reward(out, penalty=1.0)  # the mean minus one std across members: |a - b| / 2 for two
    assert torch.allclose(cautious.score(msgs, texts), (a + b) / 2 - (a - b).abs() / 2, atol=1e-6)
    # eval.json and meta.json evaluate the mean reward, and list each member's own accuracy
    val = reward.load_comparisons(out / "val_comparisons.jsonl")
    mean = [[(x + y) / 2 for x, y in zip(r1, r2)] for r1, r2 in
            zip(reward.score_comparisons(first, val), reward.score_comparisons(second, val))]
    assert m["acc_held_out_prompts"] == pairwise_accuracy(val, mean, lambda lab: lab != "H1")[0]
    assert read_meta(out)["eval"]["acc_held_out_prompts"] == m["acc_held_out_prompts"] and len(m["members"]) == 2
    # resumed: finished members are kept, not retrained
    monkeypatch.setattr(reward, "train_reward_model", lambda *a, **k: pytest.fail("a finished member was retrained"))
    again = train_reward_ensemble(cfg, comps, lambda i: tiny_model_dir, out, world=FakeWorld(), keep_done=True)
    assert again["acc_held_out_prompts"] == m["acc_held_out_prompts"]
    # resumed with one member: member 0 is kept and gets its own evaluation back, not the ensemble's
    alone = train_reward_ensemble(cfg_for(tmp_path, epochs=1), comps, lambda i: tiny_model_dir, out, world=FakeWorld(),
                                  keep_done=True)
    assert alone["acc_held_out_prompts"] == m["members"][0]["acc_held_out_prompts"] == read_meta(out)["eval"]["acc_held_out_prompts"]
    assert "member_eval" not in read_meta(out) and reward_complete(out, 1)
    assert "members" not in alone and "members" not in json.loads((out / "eval.json").read_text())
    # one member again: the ensemble's other members are gone, and the reward is the RM alone
    monkeypatch.undo()
    train_reward_ensemble(cfg_for(tmp_path, epochs=1), comps, lambda i: tiny_model_dir, out, world=FakeWorld())
    assert reward_complete(out, 1) and isinstance(load_reward(out), RewardModel) and not (out / "ensemble").exists()


def _untied_copy(tiny_model_dir: Path, out: Path) -> Path:
    """The tiny model with an output layer of its own (as Mistral or Qwen2-7B have), saved like a stage."""
    lm = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), tie_word_embeddings=False)
    with torch.no_grad():
        lm.lm_head.weight.copy_(torch.randn_like(lm.lm_head.weight) * 0.1)
    save_stage(lm, load_tokenizer(tiny_model_dir), out, {"stage": "test"})
    return out


@pytest.mark.parametrize("tied", [True, False])
def test_the_rm_language_model_term_is_the_causal_lms_own_loss_on_the_responses(tiny_model_dir, tmp_path, tied):
    init = tiny_model_dir if tied else _untied_copy(tiny_model_dir, tmp_path / "untied")
    tok = load_tokenizer(init)
    rm, lm = build_reward_model(init, tok), AutoModelForCausalLM.from_pretrained(str(init))
    assert lm.config.tie_word_embeddings is tied
    convs = [([{"role": "user", "content": f"question {i}?"}], r) for i, r in enumerate(GOOD + BAD)]
    seqs = [reward.encode_response(tok, m, r, 256) for m, r in convs]
    lengths = [response_length(tok, m, r, 256) for m, r in convs]
    for (_, r), s, n in zip(convs, seqs, lengths):  # the last n tokens are the reply (and its end of turn)
        assert r in tok.decode(s[-n:]) and r not in tok.decode(s[-n + 1:])
    with torch.no_grad():  # the causal LM's cross-entropy summed over each reply's tokens
        ce = [torch.nn.functional.cross_entropy(lm(input_ids=torch.tensor([s])).logits[0, len(s) - n - 1: -1], torch.tensor(s[-n:]),
                                                reduction="sum") for s, n in zip(seqs, lengths)]
    expected = (sum(c / n for c, n in zip(ce, lengths)) / len(ce)).item()  # per reply, then over the replies
    embed = output_embeddings(rm, init)
    for collate in (reward.collate_sequences, reward.collate_packed_sequences):
        batch = collate(seqs, tok.pad_token_id)
        with torch.no_grad():
            rewards, hidden, last = rewards_and_hidden(rm, batch)
            assert torch.allclose(rewards, reward.raw_rewards(rm, batch), atol=1e-5)
            assert response_lm_loss(hidden, batch["input_ids"], last, lengths, embed).item() == pytest.approx(expected, rel=1e-4)


def test_the_top_ranked_response_is_the_training_labelers_best_mean_rank():
    c = {"responses": ["a", "b", "c"], "rankings": [{"labeler": "L0", "ranks": [2, 1, 3]},
                                                    {"labeler": "L1", "ranks": [1, 2, None]},
                                                    {"labeler": "H1", "ranks": [1, 3, 2]}]}
    assert top_ranked(c, {"H1"}) == 0  # mean ranks 1.5, 1.5, 3: the tie goes to the first
    assert top_ranked(c, {"H1", "L1"}) == 1 and top_ranked(c, {"L0", "L1"}) == 0
    assert top_ranked(c, {"L0", "L1", "H1"}) is None


def test_an_rm_with_the_language_model_term_ranks_as_well_and_keeps_modelling_the_best_answers(tiny_model_dir, tmp_path):
    tok = load_tokenizer(tiny_model_dir)
    convs = [([{"role": "user", "content": f"question {i}?"}], g) for i, g in enumerate(GOOD)]
    seqs = [reward.encode_response(tok, m, r, 256) for m, r in convs]
    lengths = [response_length(tok, m, r, 256) for m, r in convs]
    batch = reward.collate_sequences(seqs, tok.pad_token_id)

    def lm_loss(rm_dir: Path) -> float:  # how well the RM's hidden states still model the preferred answers
        model = RewardModel.load(rm_dir).model
        with torch.no_grad():
            _, hidden, last = rewards_and_hidden(model, batch)
            return response_lm_loss(hidden, batch["input_ids"], last, lengths, output_embeddings(model, rm_dir)).item()

    trained = {}
    for coef in (0.0, 0.1):
        out = tmp_path / f"rm{coef}"
        m = train_reward_model(cfg_for(out, lm_coef=coef), comparisons(), tiny_model_dir, out / "rm", world=None)
        assert m["acc_held_out_prompts"] > 0.9
        trained[coef] = lm_loss(out / "rm")
    logged = [r["rm/lm_loss"] for r in read_metrics(tmp_path / "rm0.1" / "rm")]
    assert len(logged) == m["steps"] and logged[-1] < logged[0] - 0.5
    assert trained[0.1] < trained[0.0] - 0.5


def test_a_lora_rm_trains_adapters_and_its_head_and_saves_a_plain_checkpoint(tiny_model_dir, tmp_path):
    """rm.lora: adapters on q and v and the new head learn the preference; the saved RM is the merged
    weights (no lora_ keys), whose backbone differs from the causal LM's only where adapters were."""
    from safetensors.torch import load_file

    cfg = cfg_for(tmp_path, lora={"enabled": True, "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    m = train_reward_model(cfg, comparisons(), tiny_model_dir, tmp_path / "rm", world=None)
    assert m["acc_held_out_prompts"] > 0.9
    saved, lm = load_file(tmp_path / "rm" / "model.safetensors"), load_file(Path(tiny_model_dir) / "model.safetensors")
    assert not any("lora" in k for k in saved) and "score.weight" in saved
    changed = {k for k in saved if k in lm and not torch.equal(saved[k], lm[k])}
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed), changed
    rm = RewardModel.load(tmp_path / "rm")  # an ordinary sequence-classification RM, scoring as it trained
    good, bad = rm.score([[{"role": "user", "content": "question 1?"}]] * 2, [GOOD[0], BAD[0]]).tolist()
    assert good > bad
