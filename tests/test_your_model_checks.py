"""The checks at the door when a user brings their own model and data: each ordinary mistake is one
paragraph naming the path, key or limit (no traceback unless --debug), and the data defects that
used to pass silently are handled and reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner
from user_models import build_model, save_user_model, train_bpe

from chatrlhf.cli import app
from chatrlhf.lm import chat_data
from chatrlhf.lm.data import DataError
from tests.conftest import ppo_cfg

SYSTEM_CONV = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a fruit."},
               {"role": "assistant", "content": "A pear."}]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def friendly(r, *needles: str) -> str:
    """An exit-1 error of one paragraph with no traceback, containing every needle."""
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output and "error:" in r.output
    text = " ".join(r.output.split())
    for n in needles:
        assert n in text, f"{n!r} not in {text!r}"
    return text


def pairs_file(path: Path, n: int = 12, tag: str = "") -> Path:
    rows = [{"prompt": f"{tag}question {i}?", "chosen": f"a helpful answer {i}", "rejected": "no"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --- tokenizer, paths, limits -------------------------------------------------------------------


def test_model_without_tokenizer_files_is_refused(tmp_path):
    model = save_user_model(tmp_path / "m", "gpt2", "chatml", with_tokenizer=False)
    (tmp_path / "d.jsonl").write_text(json.dumps({"prompt": "hi", "response": "hello"}) + "\n")
    r = invoke("sft", "--set", f"run.out_dir={tmp_path / 'run'}", "--set", f"model.name_or_path={model}",
               "--set", f"sft.data={tmp_path / 'd.jsonl'}")
    friendly(r, f"{model} has no tokenizer files", "tokenizer.save_pretrained")
    assert not (tmp_path / "run" / "sft" / "meta.json").exists()


def test_missing_model_path_names_the_path_not_the_internet(tmp_path):
    r = invoke("sft", "--set", f"run.out_dir={tmp_path}", "--set", f"model.name_or_path={tmp_path / 'typo'}",
               "--set", "sft.data=x.jsonl")
    text = friendly(r, str(tmp_path / "typo"), "model.name_or_path", "not a directory")
    assert "internet" not in text.lower() and "Repo id" not in text


def test_ppo_before_sft_in_a_new_folder(tmp_path):
    friendly(invoke("ppo", "--set", f"run.out_dir={tmp_path}"), f"{tmp_path / 'sft'}", "chatrlhf sft")


def test_max_len_beyond_the_context(tmp_path):
    model = save_user_model(tmp_path / "m", "gpt2", None)
    rows = [{"prompt": "hi", "response": "hello"}, {"prompt": "tell me more " * 300, "response": "no"}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    friendly(invoke("sft", "--set", f"run.out_dir={tmp_path / 'run'}", "--set", f"model.name_or_path={model}",
                    "--set", f"sft.data={tmp_path / 'd.jsonl'}", "--set", "sft.max_len=4096"),
             "sft.max_len=4096", "context of 512 positions")


def test_rm_data_typo_is_a_missing_file(tmp_path):
    from chatrlhf.lm.rankings import load_comparisons

    with pytest.raises(DataError, match=r"comparison file not found: .*data/pairs\.jsnol"):
        load_comparisons(str(tmp_path / "data" / "pairs.jsnol"))
    with pytest.raises(DataError, match="comparison file not found"):
        load_comparisons("my_data/pairs.csv")


def test_unknown_mapping_keys_are_errors(tmp_path):
    from chatrlhf.lm.conversations import load_conversations
    from chatrlhf.lm.rankings import load_comparisons

    with pytest.raises(DataError, match=r"sft.columns: unknown mapping key 'respnse' \(did you mean 'response'\?\)"):
        load_conversations("x.jsonl", columns={"prompt": "q", "respnse": "a"})
    with pytest.raises(DataError, match=r"rm.columns: unknown mapping key 'choosen'"):
        load_comparisons(pairs_file(tmp_path / "p.jsonl"), columns={"choosen": "a"})


def test_debug_flag_shows_the_traceback(tmp_path):
    r = invoke("--debug", "ppo", "--set", f"run.out_dir={tmp_path}")
    assert r.exit_code == 1 and isinstance(r.exception, FileNotFoundError)


# --- data -----------------------------------------------------------------------------------------


def test_long_prompt_is_cut_from_the_left_and_the_reply_kept():
    tok = train_bpe("chatml")
    post = " ".join(f"word{i}" for i in range(300))
    conv = [{"role": "user", "content": f"Summarise: {post}"}, {"role": "assistant", "content": "A short summary."}]
    stats: dict[str, int] = {}
    ex = chat_data.encode_conversation(tok, conv, 64, stats)
    assert ex is not None and len(ex) == 64 and stats == {"prompt_truncated": 1}
    reply = tok.decode([t for t in ex.labels if t != chat_data.IGNORE])
    assert reply.startswith("A short summary.")  # the whole reply survives
    assert "word299" in tok.decode(ex.input_ids) and "Summarise" not in tok.decode(ex.input_ids)
    long_reply = [conv[0], {"role": "assistant", "content": post}]
    assert chat_data.encode_conversation(tok, long_reply, 64, stats) is None and stats["reply_too_long"] == 1


def test_sft_reports_truncation_and_train_val_duplicates(tmp_path):
    from chatrlhf.config import load_config
    from chatrlhf.stages.sft import load_split

    rows = [{"prompt": f"q{i % 10}", "response": f"answer {i}"} for i in range(40)]
    rows.append({"prompt": "long " * 400, "response": "ok"})
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, [f"sft.data={tmp_path / 'd.jsonl'}", "sft.max_len=64", "sft.val_fraction=0.25"])
    train, val, stats = load_split(cfg, train_bpe("chatml"))
    assert stats["prompt_truncated"] == 1 and stats["truncated_away"] == 0
    assert stats["val_prompts_in_train"] > 0 and len(train) + len(val) == 41


def test_csv_rankings_with_a_column_mapping(tmp_path):
    import pandas as pd

    from chatrlhf.lm.rankings import load_comparisons

    pd.DataFrame({"question": ["Why?", "How?"], "better": ["Because.", "Like so."], "worse": ["No.", "?"]}).to_csv(
        tmp_path / "pairs.csv", index=False)
    cols = {"prompt": "question", "chosen": "better", "rejected": "worse"}
    a, b = load_comparisons(tmp_path / "pairs.csv", columns=cols)
    assert a["messages"] == [{"role": "user", "content": "Why?"}] and a["responses"] == ["Because.", "No."]
    assert a["rankings"][0]["ranks"] == [1, 2] and a["id"] != b["id"]
    with pytest.raises(DataError, match=r"pairs.csv:2: column 'q' \(rm.columns.prompt\) is not in the data"):
        load_comparisons(tmp_path / "pairs.csv", columns={**cols, "prompt": "q"})


def test_prompts_from_any_format(tmp_path):
    from chatrlhf.lm.conversations import load_prompts

    hh = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help me\n\nAssistant: sure"
    rows = [json.dumps("Plain string prompt"), json.dumps({"chosen": hh, "rejected": hh + "!"}),
            json.dumps({"prompt": "Plain string prompt"})]  # a duplicate: kept once
    (tmp_path / "p.jsonl").write_text("\n".join(rows) + "\n")
    ps = load_prompts(tmp_path / "p.jsonl")
    assert [p["messages"][-1]["content"] for p in ps] == ["Plain string prompt", "help me"]
    assert ps[1]["messages"][0] == {"role": "user", "content": "hi"} and len(ps[1]["messages"]) == 3
    (tmp_path / "q.csv").write_text('question,gt\n"How many?","{""type"": ""number"", ""answer"": 3}"\n')
    [p] = load_prompts(tmp_path / "q.csv", columns={"prompt": "question", "ground_truth": "gt"})
    assert p["ground_truth"] == {"type": "number", "answer": 3}


# --- the reward model's resume ------------------------------------------------------------------


def test_interrupted_rm_run_is_not_resumed_for_other_data(tmp_path, monkeypatch):
    from chatrlhf.config import load_config
    from chatrlhf.lm.training import Checkpoints
    from chatrlhf.stages.reward import train_reward_model

    model = save_user_model(tmp_path / "m", "llama", "chatml")
    cfg = load_config(None, [f"run.out_dir={tmp_path / 'run'}", "rm.save_every=1", "rm.batch_prompts=4",
                             "rm.epochs=1", "rm.max_len=64", "run.tensorboard=false"])
    real_save = Checkpoints.save

    def save_then_crash(self, *a, **k):
        real_save(self, *a, **k)
        raise KeyboardInterrupt  # the run is interrupted right after its first checkpoint

    monkeypatch.setattr(Checkpoints, "save", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train_reward_model(cfg, pairs_file(tmp_path / "hh.jsonl", tag="hh "), model, tmp_path / "run" / "rm", world=None)
    monkeypatch.setattr(Checkpoints, "save", real_save)
    with pytest.raises(ValueError, match=r"interrupted RM run whose comparisons .*differ.*not resumed.*Delete"):
        train_reward_model(cfg, pairs_file(tmp_path / "oasst.jsonl", tag="oasst "), model, tmp_path / "run" / "rm",
                           world=None)
    # the same data and settings resume and finish
    m = train_reward_model(cfg, tmp_path / "hh.jsonl", model, tmp_path / "run" / "rm", world=None)
    assert m["resumed_from"] == 1


# --- dropout, system messages, serve ------------------------------------------------------------


def test_ppo_passes_run_without_dropout(tmp_path):
    """GPT-2 with dropout 0.1: before any update the update's log-probs equal the rollout's (approx-KL
    ~0) and the reference's (KL ~0)."""
    from chatrlhf.lm.training import make_accelerator
    from chatrlhf.rl.critic import ValueHead
    from chatrlhf.rl.ppo import PPOTrainer

    tok = train_bpe("chatml")
    tok.pad_token = tok.eos_token if tok.pad_token is None else tok.pad_token
    policy, ref = build_model("gpt2", tok, dropout=0.1), build_model("gpt2", tok, dropout=0.1)
    assert policy.config.resid_pdrop == 0.1
    cfg = ppo_cfg(rollout_batch_size=8, mini_batch_size=8, ppo_epochs=1, max_new_tokens=8, learning_rate=1e-9,
                    early_stop="none", rejection_sampling={"n": 0})
    prompts = [{"id": str(i), "messages": [{"role": "user", "content": f"Say {w}."}]}
               for i, w in enumerate("one two three four five six seven eight".split())]
    trainer = PPOTrainer(cfg, policy, ref, ValueHead(32), tok, lambda ps, ts: torch.zeros(len(ts)), prompts,
                         tmp_path, make_accelerator(0, device="cpu"))
    stats = trainer.step()
    assert stats["approx_kl"] < 1e-8 and abs(stats["kl"]) < 1e-4


def test_system_message_folded_for_templates_without_a_system_role():
    from chatrlhf.lm.engine import Engine
    from chatrlhf.lm.tokenizer import ChatTemplateError, apply_template

    tok = train_bpe("inst")
    with pytest.raises(Exception, match="System role not supported"):
        tok.apply_chat_template(SYSTEM_CONV, tokenize=False)
    text = apply_template(tok, SYSTEM_CONV, tokenize=False)
    assert "[INST] You are terse.\n\nName a fruit. [/INST]" in text
    ex = chat_data.encode_conversation(tok, SYSTEM_CONV, 128)
    assert tok.decode([t for t in ex.labels if t != chat_data.IGNORE]).startswith("A pear.")
    eng = Engine(build_model("mistral", tok), tok)
    assert eng.tok.decode(eng.chat_prompt(SYSTEM_CONV[:2])).endswith("Name a fruit. [/INST]")
    with pytest.raises(ChatTemplateError, match="roles \\[assistant, user\\].*alternate"):
        apply_template(tok, [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}], tokenize=False)


def test_serve_with_a_system_rejecting_template(tmp_path):
    from fastapi.testclient import TestClient

    from chatrlhf.config import ServeConfig
    from chatrlhf.lm.engine import Engine
    from chatrlhf.serve.server import create_app

    tok = train_bpe("inst")
    with TestClient(create_app(Engine(build_model("mistral", tok), tok), ServeConfig(default_max_tokens=4))) as c:
        ok = c.post("/v1/chat/completions", json={"model": "m", "messages": SYSTEM_CONV[:2]})
        assert ok.status_code == 200
        bad = c.post("/v1/chat/completions", json={"model": "m", "messages": [
            {"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]})
        assert bad.status_code == 400
        err = bad.json()["error"]
        assert err["param"] == "messages" and "alternate" in err["message"] and err["type"] == "invalid_request_error"


def test_rounds_take_fresh_prompts_from_ppo_data(tmp_path):
    from chatrlhf.config import load_config
    from chatrlhf.stages.iterate import run_iterate
    from chatrlhf.stages.ppo import fresh_prompts

    (tmp_path / "p.jsonl").write_text("".join(json.dumps(f"prompt {i}") + "\n" for i in range(10)))
    cfg = load_config(None, [f"ppo.data={tmp_path / 'p.jsonl'}", "iterate.prompts_per_round=4",
                             f"run.out_dir={tmp_path / 'run'}"])
    r2, r3 = fresh_prompts(None, cfg, 2), fresh_prompts(None, cfg, 3)
    assert [p["messages"][0]["content"] for p in r2 + r3] == [f"prompt {i}" for i in range(8)]
    from chatrlhf.lm.modeling import write_meta

    (tmp_path / "run" / "ppo").mkdir(parents=True)
    write_meta(tmp_path / "run" / "ppo", {"complete": True})
    with pytest.raises(FileNotFoundError, match="iterate.source=labeling_app"):
        run_iterate(cfg)


def test_no_data_and_no_world_says_what_to_set(tmp_path):
    model = save_user_model(tmp_path / "m", "llama", "chatml")
    base = ["--set", f"run.out_dir={tmp_path / 'run'}", "--set", f"model.name_or_path={model}"]
    friendly(invoke("sft", *base), "sft.data is not set", "no embedded world", "sft.columns")
    friendly(invoke("rm", *base), "rm.data is not set", "rm.columns")


def test_comparison_guard_scores_sft_a_half_and_a_policy_moved_towards_the_preferred_replies_higher():
    import copy

    from chatrlhf.rl.guard import ComparisonGuard

    tok = train_bpe("chatml")
    sft = build_model("llama", tok)
    comps = [{"messages": [{"role": "user", "content": f"Question {i}?"}], "responses": ["Yes, gladly.", "No."],
              "rankings": [{"labeler": "x", "ranks": [1, 2]}]} for i in range(6)]
    guard = ComparisonGuard(comps, tok, 64)
    assert len(guard) == 6 and guard.evaluate(sft, copy.deepcopy(sft)) == 0.5
    policy = copy.deepcopy(sft)
    opt = torch.optim.SGD(policy.parameters(), lr=0.5)
    batch = chat_data.collate_examples([chat_data.encode_conversation(tok, c["messages"] + [{"role": "assistant", "content": "Yes, gladly."}], 64)
                               for c in comps], tok.pad_token_id)
    for _ in range(3):
        chat_data.sft_loss(policy, batch).backward()
        opt.step()
        opt.zero_grad()
    assert guard.evaluate(policy, sft) == 1.0


def test_prompt_rows_without_replies(tmp_path):
    from chatrlhf.lm.conversations import load_prompts

    rows = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]},
            {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [p["messages"] for p in load_prompts(tmp_path / "m.jsonl")] == [rows[0]["messages"], rows[1]["messages"][:1]]
    (tmp_path / "i.jsonl").write_text(json.dumps({"instruction": "Sort these.", "input": "b a"}) + "\n")
    [p] = load_prompts(tmp_path / "i.jsonl")
    assert p["messages"] == [{"role": "user", "content": "Sort these.\n\nb a"}]
