"""ppo.reward.source: the RM by default and in every shipped config; `gold` pays the scaled gold
rubric (a diagnostic upper bound) and refuses to run where there is no world to score with;
ppo.top_up_prompts adds RM prompts to PPO's training prompts, off by default."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from chatrlhf.config import PPOConfig, load_config
from chatrlhf.rl.ppo import explained_variance


class FakeRM:
    def score(self, messages, texts):
        return torch.tensor([10.0 + len(t) for t in texts])


class FakeGold:
    def __init__(self, total: float):
        self.total = total


class FakeWorld:
    def gold(self, prompt, text):
        return FakeGold(0.25 if text == "a" else 0.5)


PROMPTS = [{"messages": [{"role": "user", "content": "q"}]}] * 2


def test_every_shipped_config_pays_the_reward_model():
    assert PPOConfig().reward.source == "rm"
    for p in sorted(Path("configs").glob("*.yaml")):
        assert load_config(p, []).ppo.reward.source == "rm", p


def test_default_source_scores_with_the_rm_and_logs_gold():
    from chatrlhf.stages.ppo import _reward_fns

    reward_fn, gold_fn = _reward_fns(FakeRM(), FakeWorld(), PPOConfig())
    assert reward_fn(PROMPTS, ["a", "bbb"]).tolist() == [11.0, 13.0]
    assert gold_fn(PROMPTS[0], "a") == 0.25


def test_gold_source_pays_gold_scale_times_the_rubric():
    from chatrlhf.stages.ppo import _reward_fns

    pc = PPOConfig.model_validate({"reward": {"source": "gold", "gold_scale": 4.0}})
    reward_fn, gold_fn = _reward_fns(FakeRM(), FakeWorld(), pc)
    assert reward_fn(PROMPTS, ["a", "bbb"]).tolist() == [1.0, 2.0]
    assert gold_fn(PROMPTS[0], "bbb") == 0.5


def test_gold_source_needs_the_world():
    from chatrlhf.stages.ppo import _reward_fns

    pc = PPOConfig.model_validate({"reward": {"source": "gold"}})
    with pytest.raises(ValueError, match="embedded world"):
        _reward_fns(FakeRM(), None, pc)
    with pytest.raises(ValueError, match="embedded world"):
        _reward_fns(FakeRM(), FakeWorld(), pc.model_copy(update={"data": "my_prompts.jsonl"}))


def test_explained_variance_by_hand():
    returns = torch.tensor([[1.0, 3.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the third token is padding
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(returns, 2.0), returns, mask) == pytest.approx(0.0)
    # values 1, 1: errors 0, 2 (variance 1) against returns' variance 1 -> 0
    assert explained_variance(torch.tensor([[1.0, 1.0, 5.0]]), returns, mask) == pytest.approx(0.0)
    # values 3, 1: errors -2, 2 (variance 4) -> 1 - 4/1
    assert explained_variance(torch.tensor([[3.0, 1.0, 0.0]]), returns, mask) == pytest.approx(-3.0)


class PromptWorld:
    def prompts(self, split):
        return [{"id": f"{split}{i}"} for i in range(5)]


def test_top_up_puts_rm_prompts_first_and_is_off_by_default():
    from chatrlhf.stages.ppo import _topped_up

    own = PromptWorld().prompts("ppo")
    assert _topped_up(load_config(None, []), PromptWorld(), own) == own
    cfg = load_config(None, ["ppo.top_up_prompts=3"])
    ids = [p["id"] for p in _topped_up(cfg, PromptWorld(), own)]
    assert ids == ["rm0", "rm1", "rm2", "ppo0", "ppo1", "ppo2", "ppo3", "ppo4"]  # the guard's tail unchanged
    assert _topped_up(cfg, None, own) == own


def test_group_normalised_scores_give_every_group_the_pooled_mean_and_spread(tmp_path):
    """ppo.reward.group_normalise: on the reference answers each group's scores take the pooled mean and
    spread; a group the reference lacks, or a prompt asking for none, keeps its score; the statistics
    come from the conditioned RM's validation comparisons, and any other RM is a clear error."""
    import json

    from chatrlhf.rl.experience import group_normalised
    from chatrlhf.stages.ppo import _normalised

    def score(ps, texts):  # brief's answers score on a wide scale around 3, cautious's on a narrow one around 0
        return torch.tensor([float(len(t)) * (3.0 if p.get("group") == "brief" else 0.5) for p, t in zip(ps, texts)])

    texts = ["a" * n for n in range(1, 9)]
    ps = [{"messages": [], "group": "brief" if i % 2 else "cautious"} for i in range(len(texts))]
    pooled = score(ps, texts)
    fn = group_normalised(score, ps, texts)
    out = fn(ps, texts)
    for g in ("brief", "cautious"):
        own = out[torch.tensor([p["group"] == g for p in ps])]
        assert own.mean().item() == pytest.approx(pooled.mean().item(), abs=1e-5)
        assert own.std().item() == pytest.approx(pooled.std().item(), rel=1e-5)
    other = [{"messages": [], "group": "thorough"}, {"messages": []}]
    assert fn(other, ["aa", "aaa"]).tolist() == score(other, ["aa", "aaa"]).tolist()

    cfg = load_config(None, [f"run.out_dir={tmp_path}", "rm.conditioned=true", "ppo.reward.group_normalise=true"])
    with pytest.raises(ValueError, match="group_normalise needs the RM's validation comparisons"):
        _normalised(cfg, score, tmp_path)
    (tmp_path / "val_comparisons.jsonl").write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": "q"}], "responses": texts[i: i + 2], "group": g,
                    "rankings": [{"labeler": "L1", "ranks": [1, 2]}]}) + "\n"
        for i, g in ((0, "cautious"), (2, "brief"), (4, "cautious"), (6, "brief"))))
    wired = _normalised(cfg, score, tmp_path)
    asked = [{"messages": [], "group": "brief"}, {"messages": [], "group": "cautious"}]
    assert wired(asked, ["aaa", "aaa"])[0] < score(asked, ["aaa", "aaa"])[0]  # brief's wide scale shrunk
    with pytest.raises(ValueError, match="group_normalise needs a group-conditioned RM"):
        _normalised(load_config(None, [f"run.out_dir={tmp_path}", "ppo.reward.group_normalise=true"]), score, tmp_path)
    assert _normalised(load_config(None, [f"run.out_dir={tmp_path}"]), score, tmp_path) is score  # off: untouched


def test_normalised_reward_has_mean_zero_and_spread_one_on_the_rm_validation_answers(tmp_path):
    """ppo.reward.normalise (Ziegler et al. 2019): on the answers of the RM's validation comparisons the
    score has mean 0 and spread 1; any other answer moves by the same shift and scale, so the RM's
    order is kept; without validation comparisons, or with no spread, it is a clear error."""
    import json

    from chatrlhf.rl.experience import standardised
    from chatrlhf.stages.ppo import _normalised

    def score(ps, texts):
        return torch.tensor([3.0 * len(t) + 7.0 for t in texts])

    cfg = load_config(None, [f"run.out_dir={tmp_path}", "ppo.reward.normalise=true"])
    with pytest.raises(ValueError, match="normalise needs the RM's validation comparisons"):
        _normalised(cfg, score, tmp_path)
    texts = ["a" * n for n in range(1, 9)]
    (tmp_path / "val_comparisons.jsonl").write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": "q"}], "responses": texts[i: i + 2],
                    "rankings": [{"labeler": "L1", "ranks": [1, 2]}]}) + "\n" for i in range(0, 8, 2)))
    fn = _normalised(cfg, score, tmp_path)
    ref = fn([{"messages": []}] * len(texts), texts)
    assert ref.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert ref.std().item() == pytest.approx(1.0, rel=1e-5)
    new = fn([{"messages": []}] * 2, ["a" * 20, "a" * 10])
    assert new[0] > new[1] > ref.max()
    assert (new[0] - new[1]).item() == pytest.approx(30.0 / score([], texts).std().item(), rel=1e-5)
    with pytest.raises(ValueError, match="distinct scores"):
        standardised(lambda ps, ts: torch.ones(len(ts)), [{"messages": []}] * 3, ["a", "b", "c"])
