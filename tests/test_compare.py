"""`chatrlhf compare` on the tiny config: every method trained and judged against SFT, one table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from chatrlhf.config import load_config


def test_compare_trains_and_judges_every_method_on_the_tiny_world(tmp_path):
    from chatrlhf.lm.modeling import read_meta
    from chatrlhf.stages.compare import run_compare

    cfg = load_config(Path(__file__).parents[1] / "configs" / "tiny.yaml",
                      [f"run.out_dir={tmp_path}", "compare.kl_prompts=8", "dpo.epochs=1"])
    res = run_compare(cfg, ["sft", "ppo", "dpo", "grpo", "rloo", "bon4", "fewshot"])
    rows = {r["method"]: r for r in res["rows"]}
    assert list(rows) == ["sft", "ppo", "dpo", "grpo", "rloo", "bon4", "fewshot"]
    assert rows["sft"]["win_rate_greedy"] is None and rows["sft"]["kl_to_sft"] == 0.0
    for m in ("ppo", "dpo", "grpo", "rloo", "bon4", "fewshot"):
        w = rows[m]["win_rate_greedy"]
        assert 0.0 <= w["low"] <= w["estimate"] <= w["high"] <= 1.0, m
        assert rows[m]["gold_greedy"] is not None
    for m in ("ppo", "dpo", "grpo", "rloo"):
        assert read_meta(tmp_path / "compare" / m)["complete"], m
        assert rows[m]["kl_to_sft"] is not None and rows[m]["train_seconds"] > 0
    assert rows["ppo"]["critic"] and not rows["grpo"]["critic"] and not rows["rloo"]["critic"]  # no value/ saved
    assert not (tmp_path / "compare" / "grpo" / "value").exists()
    assert read_meta(tmp_path / "compare" / "grpo")["config"]["advantage"]["estimator"] == "grpo"
    assert rows["ppo"]["train_tokens_generated"] > 0 and rows["dpo"]["train_tokens_generated"] == 0
    # best-of-4 generated 4 answers per slot where SFT generated one
    assert rows["bon4"]["eval_tokens_generated"] > 2 * rows["sft"]["eval_tokens_generated"]
    assert rows["bon4"]["kl_is_bound"] and rows["bon4"]["kl_to_sft"] == pytest.approx(1.386294 - 0.75, abs=1e-5)
    assert rows["fewshot"]["labeler_rankings"] == 0 and rows["dpo"]["labeler_rankings"] == rows["ppo"]["labeler_rankings"] > 0
    table = (tmp_path / "compare" / "table.md").read_text()
    assert "| bon4 |" in table and "| dpo |" in table
    assert json.loads((tmp_path / "compare" / "table.json").read_text())["rows"][0]["method"] == "sft"
    dpo_eval = json.loads((tmp_path / "compare" / "dpo" / "eval.json").read_text())
    assert dpo_eval["before"]["acc_held_out_prompts"] == pytest.approx(0.5)

    # online DPO on the same run: round 2 ranks fresh samples of the round-1 policy
    from chatrlhf.stages.dpo import run_dpo

    online = run_dpo(cfg.model_copy(update={"dpo": cfg.dpo.model_copy(update={"rounds": 2})}), out_dir=tmp_path / "dpo_online")
    meta = read_meta(online)
    assert meta["complete"] and [r["round"] for r in meta["eval"]["rounds"]] == [1, 2]
    fresh = (online / "round_2" / "comparisons.jsonl").read_text().splitlines()
    assert len(fresh) == cfg.iterate.prompts_per_round and json.loads(fresh[0])["rankings"]

    # the same with LoRA: adapters on q and v only, the reference the policy with them off, a plain merged stage
    from safetensors.torch import load_file

    lora = cfg.dpo.lora.model_copy(update={"enabled": True, "r": 4, "target_modules": ["q_proj", "v_proj"]})
    lcfg = cfg.model_copy(update={"dpo": cfg.dpo.model_copy(update={"rounds": 2, "learning_rate": 1e-2, "lora": lora})})
    online = run_dpo(lcfg, out_dir=tmp_path / "dpo_lora")
    meta = read_meta(online)
    assert meta["complete"] and meta["lora"]["r"] == 4 and (online / "adapter" / "adapter_config.json").is_file()
    merged, sft = load_file(online / "model.safetensors"), load_file(tmp_path / "sft" / "model.safetensors")
    assert merged.keys() == sft.keys()  # a plain checkpoint: no lora_ weights
    changed = {k for k in sft if not torch.equal(merged[k], sft[k])}
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed), changed
    assert meta["eval"]["before"]["acc_held_out_prompts"] == pytest.approx(0.5)

    # IPO as a method of its own: DPO's stage with dpo.loss_type=ipo, judged in the same table
    res = run_compare(cfg, ["ipo"])
    assert [r["method"] for r in res["rows"]] == ["sft", "ipo"] and res["rows"][1]["train_tokens_generated"] == 0
    assert read_meta(tmp_path / "compare" / "ipo")["config"]["loss_type"] == "ipo"
    assert read_meta(tmp_path / "compare" / "dpo")["config"]["loss_type"] == "sigmoid"


def test_compare_rejects_unknown_methods():
    from chatrlhf.stages.compare import check_methods

    with pytest.raises(ValueError, match="unknown method"):
        check_methods(["ppo", "sac"])
    assert check_methods(["dpo", "bon16"]) == ["sft", "dpo", "bon16"]


def test_fewshot_prefix_uses_short_single_turn_demonstrations_one_per_task():
    from chatrlhf.evaluate.methods import fewshot_prefix

    demos = [{"task": t, "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
             for t, q, a in [("fact", "Where is X?", "In Y."), ("fact", "Who is Z?", "A baker."),
                             ("list", "List two.", "a, b"), ("chat", "Hi " * 300, "Hello")]]
    p = fewshot_prefix(demos, 2)
    assert p == "User: List two.\nAssistant: a, b\nUser: Where is X?\nAssistant: In Y.\n"
