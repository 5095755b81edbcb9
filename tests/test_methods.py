"""The methods weighed against PPO: DPO's loss and trainer, RLOO/GRPO advantages, no critic for them."""

from __future__ import annotations

import math

import pytest
import torch

from chatrlhf.config import DPOConfig
from chatrlhf.lm.rankings import expand_pairs, make_batch
from chatrlhf.lm.training import read_metrics
from chatrlhf.rl.losses import dpo_loss, group_normalized_advantages, k3_kl, leave_one_out_baseline, ranking_loss
from tests.conftest import interrupted_on_call, ppo_cfg

# --- DPO loss ---------------------------------------------------------------------------------


def test_dpo_loss_matches_a_hand_computed_pair_and_its_gradient_pushes_chosen_up():
    pc = torch.tensor([-10.0], requires_grad=True)
    pr = torch.tensor([-12.0], requires_grad=True)
    rc, rr = torch.tensor([-11.0]), torch.tensor([-11.5])
    beta = 0.5
    # margin = beta * ((-10 + 11) - (-12 + 11.5)) = 0.5 * (1 + 0.5) = 0.75
    loss, stats = dpo_loss(pc, pr, rc, rr, beta)
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.75))), abs=1e-6)
    assert loss.item() == pytest.approx(0.386871, abs=1e-5)  # log(1 + e^-0.75)
    assert stats["rewards/chosen"].item() == pytest.approx(0.5)
    assert stats["rewards/rejected"].item() == pytest.approx(-0.25)
    assert stats["rewards/margins"].item() == pytest.approx(0.75)
    assert stats["rewards/accuracies"].item() == 1.0
    loss.backward()
    # d loss / d pi_c = -beta * sigmoid(-margin) < 0: descending raises the chosen log-prob,
    # and lowers the rejected one by the same amount
    g = beta * (1 / (1 + math.exp(0.75)))
    assert pc.grad.item() == pytest.approx(-g, abs=1e-6)
    assert pr.grad.item() == pytest.approx(g, abs=1e-6)


def test_dpo_loss_at_the_reference_is_log_2_and_weights_like_the_ranking_loss():
    z = torch.zeros(3)
    loss, stats = dpo_loss(z, z, z, z, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2))
    # per-pair weights and n_groups act as in the RM's ranking loss: DPO with beta = 1 and a zero
    # reference *is* the ranking loss on the rewards log pi
    chosen, rejected = torch.tensor([1.0, 0.2, -0.3]), torch.tensor([0.0, 0.5, -1.0])
    w = torch.tensor([1 / 3, 1 / 3, 1 / 3])
    dpo, _ = dpo_loss(chosen, rejected, z, z, beta=1.0, weight=w, n_groups=1)
    assert dpo.item() == pytest.approx(ranking_loss(chosen, rejected, w, 1).item())


def test_ipo_hinge_and_conservative_dpo_losses_on_a_hand_computed_pair():
    pc, pr = torch.tensor([-10.0]), torch.tensor([-12.0])
    rc, rr = torch.tensor([-11.0]), torch.tensor([-11.5])  # h = (-10 + 11) - (-12 + 11.5) = 1.5
    beta = 0.5
    ipo, _ = dpo_loss(pc, pr, rc, rr, beta, loss_type="ipo")
    assert ipo.item() == pytest.approx((1.5 - 1 / (2 * beta)) ** 2)  # 0.25: pulled to the margin 1, not beyond
    at_margin, _ = dpo_loss(torch.tensor([-10.0]), torch.tensor([-11.0]), torch.zeros(1), torch.zeros(1), beta, loss_type="ipo")
    assert at_margin.item() == pytest.approx(0.0)
    hinge, _ = dpo_loss(pc, pr, rc, rr, beta, loss_type="hinge")
    assert hinge.item() == pytest.approx(1 - 0.75)
    eps = 0.1
    cdpo, _ = dpo_loss(pc, pr, rc, rr, beta, loss_type="sigmoid", label_smoothing=eps)
    assert cdpo.item() == pytest.approx((1 - eps) * math.log(1 + math.exp(-0.75)) + eps * math.log(1 + math.exp(0.75)))
    with pytest.raises(ValueError, match="one of sigmoid, ipo, hinge"):
        dpo_loss(pc, pr, rc, rr, beta, loss_type="kto")


def test_dpo_pairs_come_from_the_rm_pair_expansion():
    """K-way rankings become DPO pairs through rankings.make_batch, the RM's own function: same pairs,
    same 1/C(K,2) weights, held-out labelers excluded."""
    import inspect

    from chatrlhf.rl import dpo
    from chatrlhf.stages import reward

    assert dpo.make_batch is make_batch and reward.make_batch is make_batch
    assert "make_batch(" in inspect.getsource(dpo.train_dpo)
    c = {"messages": [{"role": "user", "content": "q"}], "responses": ["a", "b", "c"],
         "rankings": [{"labeler": "L1", "ranks": [1, 2, 3]}, {"labeler": "H", "ranks": [3, 2, 1]}]}
    pairs = expand_pairs(c, 0, {"H"})
    assert [(p.chosen, p.rejected) for p in pairs] == [(0, 1), (0, 2), (1, 2)]
    assert all(p.weight == pytest.approx(1 / 3) for p in pairs)
    pb = make_batch([c], {"H"})
    assert pb.n_groups == 1 and pb.weight == [pytest.approx(1 / 3)] * 3


# --- RLOO / GRPO ------------------------------------------------------------------------------


def test_rloo_and_grpo_advantages_on_hand_computed_groups():
    scores = torch.tensor([1.0, 2.0, 3.0, 6.0, 0.0, 0.0, 0.0, 4.0])  # two prompts, k = 4
    # RLOO: 1 - (2+3+6)/3 = -2.6667, 2 - 10/3 = -1.3333, 3 - 3 = 0, 6 - 2 = 4
    loo = leave_one_out_baseline(scores, 4)
    assert loo.tolist() == pytest.approx([-8 / 3, -4 / 3, 0.0, 4.0, -4 / 3, -4 / 3, -4 / 3, 4.0])
    # GRPO: group 1 mean 3, unbiased std sqrt((4 + 1 + 0 + 9) / 3) = 2.1602
    grpo = group_normalized_advantages(scores, 4, eps=0.0)
    s1 = math.sqrt(14 / 3)
    assert grpo[:4].tolist() == pytest.approx([-2 / s1, -1 / s1, 0.0, 3 / s1], abs=1e-5)
    # group 2 mean 1, std sqrt((1 + 1 + 1 + 9) / 3) = 2
    assert grpo[4:].tolist() == pytest.approx([-0.5, -0.5, -0.5, 1.5], abs=1e-5)
    same = group_normalized_advantages(torch.full((4,), 7.0), 4)
    assert same.abs().max().item() == 0.0  # nothing to prefer in a group of equal scores


def test_k3_kl_is_zero_at_the_reference_and_positive_elsewhere():
    lp = torch.tensor([-1.0, -2.0, -0.5])
    ref = torch.tensor([-1.0, -1.0, -1.5])
    k3 = k3_kl(lp, ref)
    d = ref - lp
    assert k3.tolist() == pytest.approx((torch.exp(d) - d - 1).tolist())
    assert k3[0].item() == 0.0 and (k3[1:] > 0).all()


def _rollout_stub(scores, logprobs, ref_logprobs, k):
    from chatrlhf.rl.experience import Rollout

    B, R = logprobs.shape
    return Rollout(prompts=[{}] * B, texts=[""] * B, input_ids=torch.zeros(B, R + 1, dtype=torch.long),
                   attention_mask=torch.ones(B, R + 1), position_ids=torch.zeros(B, R + 1, dtype=torch.long),
                   prompt_len=1, mask=torch.ones(B, R), finished=torch.ones(B, dtype=torch.bool), logprobs=logprobs,
                   scores=scores, ref_logprobs=ref_logprobs, values=torch.zeros(B, R))


def test_rloo_puts_the_kl_in_the_reward_and_grpo_leaves_it_out():
    from chatrlhf.rl.ppo import compute_advantages

    scores = torch.tensor([1.0, 1.0, 2.0, 0.0])  # one prompt, k = 4
    lp = torch.tensor([[-1.0, -1.0], [-0.5, -0.5], [-1.0, -1.0], [-1.0, -1.0]])
    ref = torch.full((4, 2), -1.0)  # sample 1 drifted: KL 1.0 nat over its two tokens
    kw = dict(samples_per_prompt=4, rollout_batch_size=4, sft_loglik_coef=0.0)
    ro = _rollout_stub(scores.clone(), lp, ref, 4)
    compute_advantages(ro, 0.5, ppo_cfg(advantage_estimator="rloo", **kw))
    seq = scores - 0.5 * torch.tensor([0.0, 1.0, 0.0, 0.0])  # 1, 0.5, 2, 0
    loo = leave_one_out_baseline(seq, 4)
    per_token = loo[:, None].expand(4, 2)
    white = (per_token - per_token.mean()) / per_token.std(unbiased=False)
    assert ro.advantages.tolist() == [pytest.approx(r, abs=1e-3) for r in white.tolist()]
    assert ro.stats["kl"] == pytest.approx(0.25)  # nats per sequence, mean over the batch
    ro = _rollout_stub(scores.clone(), lp, ref, 4)
    compute_advantages(ro, 0.5, ppo_cfg(advantage_estimator="grpo", **kw))
    g = group_normalized_advantages(scores, 4)  # the KL does not enter GRPO's advantage
    assert ro.advantages[:, 0].tolist() == pytest.approx(g.tolist()) and torch.equal(ro.advantages[:, 0], ro.advantages[:, 1])


def test_kl_estimator_setting_reaches_the_rewards_of_gae_and_rloo():
    """ppo.reward.kl_estimator=k3: the KL charged in GAE's per-token rewards and in RLOO's sequence
    reward is k3's, never negative, where k1 (the default) credits the tokens SFT finds likelier."""
    from chatrlhf.rl.ppo import compute_advantages

    lp = torch.tensor([[-1.0, -2.0], [-0.5, -0.5], [-1.0, -1.0], [-1.0, -1.0]])
    ref = torch.full((4, 2), -1.0)
    k3 = k3_kl(lp, ref).sum(1).mean().item()
    kw = {"samples_per_prompt": 4, "rollout_batch_size": 4, "sft_loglik_coef": 0.0}
    for est in ("gae", "rloo"):
        for name, want in (("k1", (lp - ref).sum(1).mean().item()), ("k3", k3)):
            ro = _rollout_stub(torch.zeros(4), lp, ref, 4)
            compute_advantages(ro, 0.5, ppo_cfg(advantage_estimator=est, **kw, **{"reward.kl_estimator": name}))
            assert ro.stats["kl"] == pytest.approx(want)
    assert (lp - ref)[0].sum() < 0 < k3_kl(lp, ref)[0].sum()  # k1 reads row 0's less likely token as a bonus


def test_grpo_update_carries_a_k3_kl_loss_term(tiny_model_dir, tmp_path):
    from chatrlhf.rl.experience import evaluate_rollout, rollout, score_rollout
    from chatrlhf.rl.ppo import compute_advantages, ppo_update
    from tests.test_ppo import make_trainer, toy_cfg

    cfg = toy_cfg(samples_per_prompt=4, advantage_estimator="grpo", kl_coef=0.1)
    t = make_trainer(tiny_model_dir, tmp_path, cfg)
    ro = rollout(t.policy, t.tokenizer, t._batch_prompts(0), cfg, seed=1)
    score_rollout(ro, t.reward_fn, cfg)
    evaluate_rollout(ro, t.policy, t.ref_policy, t.value_model, cfg, cfg.update.mini_batch_size)
    compute_advantages(ro, 0.1, cfg)
    stats = ppo_update(ro, t.policy, t.value_model, t.optimizer, t.accelerator, cfg, seed=0, kl_coef=0.1)
    assert "kl_loss" in stats and stats["kl_loss"] >= 0 and "vf_loss" not in stats


@pytest.mark.parametrize("estimator", ["rloo", "grpo"])
def test_critic_free_estimators_build_no_critic(tiny_model_dir, tmp_path, estimator):
    """The trainer refuses a critic for them (and GAE without one), and trains the policy alone.
    The stage builds none either: tests/test_compare.py finds no value/ in their stage directories."""
    from chatrlhf.lm.modeling import load_causal_lm, load_tokenizer
    from chatrlhf.lm.training import make_accelerator
    from chatrlhf.rl.critic import load_critic
    from chatrlhf.rl.ppo import PPOTrainer
    from tests.test_ppo import PROMPTS, fifth_token_reward, toy_cfg

    cfg = toy_cfg(samples_per_prompt=4, advantage_estimator=estimator, total_iterations=2)
    tok, policy = load_tokenizer(tiny_model_dir), load_causal_lm(tiny_model_dir)
    args = (tok, fifth_token_reward(tok), PROMPTS)
    with pytest.raises(TypeError, match="trains no critic"):
        PPOTrainer(cfg, policy, load_causal_lm(tiny_model_dir), load_critic(tiny_model_dir, "shared", policy), *args,
                   tmp_path / "x", make_accelerator(0, device="cpu"))
    with pytest.raises(TypeError, match="needs a critic"):
        PPOTrainer(toy_cfg(), policy, load_causal_lm(tiny_model_dir), None, *args, tmp_path / "y",
                   make_accelerator(0, device="cpu"))
    t = PPOTrainer(cfg, policy, load_causal_lm(tiny_model_dir), None, *args, tmp_path / "z",
                   make_accelerator(0, device="cpu"))
    hist = t.train(resume=False)
    assert t.value_model is None and len(hist) == 2 and "vf_loss" not in hist[-1]
    n_params = sum(p.numel() for g in t.optimizer.param_groups for p in g["params"])
    assert n_params == sum(p.numel() for p in policy.parameters())  # the optimizer holds the policy only


# --- DPO training -----------------------------------------------------------------------------

GOOD, BAD = "Zorbel lives in Varnok, thank you.", "I cannot help with that request."
QUESTIONS = ["Where does Zorbel live?", "Who is Zorbel Quint?", "Tell me about Varnok.", "Hello!",
             "What is two plus two?", "List three fruits.", "Thank you.", "Reverse: plum, pear.",
             "Tell me about teal.", "What is the capital of Varnok?", "Where is Selmouth?", "Who bakes bread?"]


def _toy_comparisons():
    """Every prompt: three answers ranked good > middling > bad by one labeler, plus a held-out
    labeler on the last four prompts (the validation split)."""
    out = []
    for i, q in enumerate(QUESTIONS):
        c = {"id": f"c{i}", "messages": [{"role": "user", "content": q}], "responses": [BAD, GOOD, "Hello!"],
             "rankings": [{"labeler": "L1", "ranks": [3, 1, 2]}], "split": "val" if i >= 8 else "train"}
        if i >= 8:
            c["rankings"].append({"labeler": "H1", "ranks": [3, 1, 2]})
        out.append(c)
    return out


def test_short_dpo_run_raises_held_out_preference_accuracy(tiny_model_dir, tmp_path):
    from chatrlhf.lm.modeling import load_causal_lm, load_tokenizer
    from chatrlhf.lm.rankings import split_by_prompt
    from chatrlhf.lm.training import make_accelerator
    from chatrlhf.rl.dpo import train_dpo

    torch.manual_seed(0)
    data = _toy_comparisons()
    train, val = split_by_prompt(data, 0.0, 0)
    assert len(train) == 8 and len(val) == 4
    cfg = DPOConfig(beta=0.1, epochs=6, batch_prompts=4, learning_rate=3e-3, warmup_steps=0, log_every=1,
                    save_every=0)
    res = train_dpo(load_causal_lm(tiny_model_dir), load_causal_lm(tiny_model_dir), load_tokenizer(tiny_model_dir),
                    train, val, cfg, tmp_path, make_accelerator(0, device="cpu"), held_out={"H1"})
    before, after = res["before"], res["after"]
    assert before["acc_held_out_prompts"] == pytest.approx(0.5)  # policy = reference: every pair ties
    assert after["acc_held_out_prompts"] > 0.9 and after["acc_held_out_labelers"] > 0.9, res
    assert before["pairs_held_out_prompts"] == 12 and before["pairs_held_out_labelers"] == 12
    assert res["steps"] == 12 and res["last"]["loss"] < math.log(2)
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 12


def test_lora_dpo_trains_adapters_only_against_the_policy_with_its_adapters_off(tiny_model_dir, tmp_path):
    from chatrlhf.config import LoraConfig
    from chatrlhf.lm.lora import is_lora, wrap_lora
    from chatrlhf.lm.modeling import load_causal_lm, load_tokenizer
    from chatrlhf.lm.rankings import split_by_prompt
    from chatrlhf.lm.training import make_accelerator
    from chatrlhf.rl.dpo import encode_pair_side, reference, sequence_logprobs, train_dpo

    torch.manual_seed(0)
    train, val = split_by_prompt(_toy_comparisons(), 0.0, 0)
    tok, base = load_tokenizer(tiny_model_dir), load_causal_lm(tiny_model_dir)
    policy = wrap_lora(load_causal_lm(tiny_model_dir), LoraConfig(enabled=True, r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    frozen = {k: v.clone() for k, v in policy.state_dict().items() if "lora_" not in k}
    cfg = DPOConfig(beta=0.1, epochs=6, batch_prompts=4, learning_rate=3e-2, warmup_steps=0, save_every=0)
    res = train_dpo(policy, None, tok, train, val, cfg, tmp_path, make_accelerator(0, device="cpu"), held_out={"H1"})
    model = res["model"]
    assert is_lora(model) and res["before"]["acc_held_out_prompts"] == pytest.approx(0.5)  # the reference is the start
    assert res["after"]["acc_held_out_prompts"] > 0.75, res["after"]
    after = model.state_dict()
    assert all(torch.equal(frozen[k], after[k]) for k in frozen)  # only the adapters moved
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in after.items() if "lora_B" in k)
    seqs = [encode_pair_side(tok, [{"role": "user", "content": q}], GOOD, 256) for q in QUESTIONS[:4]]
    with torch.no_grad(), reference(model, None, "cpu") as ref:  # adapters off: the base model, however far it moved
        assert torch.allclose(sequence_logprobs(ref, seqs, tok.pad_token_id, "cpu"),
                              sequence_logprobs(base, seqs, tok.pad_token_id, "cpu"), atol=1e-5)
    with torch.no_grad():
        moved = sequence_logprobs(model, seqs, tok.pad_token_id, "cpu")  # adapters on again
    assert not torch.allclose(moved, sequence_logprobs(base, seqs, tok.pad_token_id, "cpu"), atol=1e-3)
    with pytest.raises(ValueError, match="no LoRA adapters"):
        train_dpo(load_causal_lm(tiny_model_dir), None, tok, train, val, cfg, tmp_path / "x", make_accelerator(0, device="cpu"))


def test_an_interrupted_dpo_run_resumes_from_its_checkpoint_to_the_same_weights(tiny_model_dir, tmp_path, monkeypatch):
    from chatrlhf.lm.modeling import load_causal_lm, load_tokenizer
    from chatrlhf.lm.rankings import split_by_prompt
    from chatrlhf.lm.training import make_accelerator
    from chatrlhf.rl import dpo

    train, val = split_by_prompt(_toy_comparisons(), 0.0, 0)
    cfg = DPOConfig(beta=0.1, epochs=3, batch_prompts=4, learning_rate=3e-3, warmup_steps=2, save_every=2, log_every=1)
    tok = load_tokenizer(tiny_model_dir)

    def run(out):
        return dpo.train_dpo(load_causal_lm(tiny_model_dir), load_causal_lm(tiny_model_dir), tok, train, val, cfg, out,
                             make_accelerator(0, device="cpu"), held_out={"H1"})

    full = run(tmp_path / "full")
    real_loss = interrupted_on_call(monkeypatch, dpo, "dpo_loss", 4)  # in step 4, after the checkpoint of step 2
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "part")
    monkeypatch.setattr(dpo, "dpo_loss", real_loss)
    part = run(tmp_path / "part")
    assert part["resumed_from"] == 2 and part["steps"] == full["steps"] == 6
    a, b = full["model"].state_dict(), part["model"].state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert part["after"] == full["after"]
    steps = [r["step"] for r in read_metrics(tmp_path / "part")]
    assert steps == list(range(1, 7))  # the log picks up where the checkpoint was: no step twice


def test_dpo_encoding_keeps_the_response_and_its_end_of_turn(tiny_model_dir):
    from chatrlhf.lm.modeling import load_tokenizer
    from chatrlhf.rl.dpo import encode_pair_side

    tok = load_tokenizer(tiny_model_dir)
    msgs = [{"role": "user", "content": "Where does Zorbel live? " * 8}]
    prompt, resp = encode_pair_side(tok, msgs, GOOD, 10_000)
    full = tok(tok.apply_chat_template([*msgs, {"role": "assistant", "content": GOOD}], tokenize=False),
               add_special_tokens=False)["input_ids"]
    assert prompt + resp == full
    assert prompt == tok(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False),
                         add_special_tokens=False)["input_ids"]
    short_p, short_r = encode_pair_side(tok, msgs, GOOD, 30)
    assert short_r == resp and len(short_p) + len(short_r) == 30 and short_p == prompt[-len(short_p):]


def test_packed_sequence_logprobs_equal_padded_ones_and_carry_the_same_gradient(tiny_model_dir):
    from chatrlhf.lm.modeling import load_causal_lm, load_tokenizer
    from chatrlhf.rl.dpo import encode_pair_side, packed_sequence_logprobs, sequence_logprobs

    tok, model = load_tokenizer(tiny_model_dir), load_causal_lm(tiny_model_dir)
    seqs = [encode_pair_side(tok, [{"role": "user", "content": q}], r, 256)
            for q in QUESTIONS[:5] for r in (GOOD, BAD, "Hello! " * (len(q) % 4 + 1))]
    padded = sequence_logprobs(model, seqs, tok.pad_token_id, "cpu")
    packed = packed_sequence_logprobs(model, seqs, tok.pad_token_id, "cpu")
    assert torch.allclose(padded, packed, atol=1e-4), (padded - packed).abs().max()
    g_pad = torch.autograd.grad(padded.sum(), model.model.embed_tokens.weight)[0]
    g_pack = torch.autograd.grad(packed.sum(), model.model.embed_tokens.weight)[0]
    assert torch.allclose(g_pad, g_pack, atol=1e-4)
