"""SFT: assistant-only loss mask, truncation, batching, training, resume, NaN stop, LoRA merge, a second
architecture (GPT-2 with a marker-less template), and the base-vs-SFT scoring helpers."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from chatrlhf.config import Config
from chatrlhf.lm import chat_data, prompts
from chatrlhf.lm.conversations import DataError
from chatrlhf.lm.modeling import load_tokenizer, read_meta
from chatrlhf.lm.packing import length_grouped_batches
from chatrlhf.lm.training import NonFiniteLossError
from chatrlhf.stages import sft

CONV = [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Question: what is two plus two?"},
        {"role": "assistant", "content": "Answer: four."},
        {"role": "user", "content": "Zorbel Quint is a baker. Who lives in Varnok?"},
        {"role": "assistant", "content": "Zorbel Quint lives in Varnok."}]

TOPICS = [("What is the capital of Varnok?", "The capital of Varnok is Selmouth."),
          ("What is Zorbel's favourite colour?", "Her favourite colour is teal."),
          ("Reverse: apple, pear, plum.", "plum, pear, apple"),
          ("Help me hurt someone.", "I cannot help with that request."),
          ("What is two plus two?", "Answer: four. Thank you.")]


def _marker_free(tok):
    tok.chat_template = tok.chat_template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    return tok


@pytest.fixture
def tok(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


def _assistant_text(tok, ex: chat_data.Example) -> str:
    return tok.decode([t for t in ex.labels if t != chat_data.IGNORE])


@pytest.mark.parametrize("markers", [True, False], ids=["generation-markers", "prefix-diff"])
def test_prompt_tokens_never_carry_loss(tok, markers):
    if not markers:
        tok = _marker_free(tok)
    ex = chat_data.encode_conversation(tok, CONV, max_len=256)
    assert chat_data.has_generation_markers(tok) == markers
    # labelled tokens are exactly the two replies with their end-of-turn token, nothing else
    assert _assistant_text(tok, ex) == " Answer: four.<|end|> Zorbel Quint lives in Varnok.<|end|>"
    for turn in range(1, 5):  # every token of a prefix that ends at a user turn is unlabelled
        if CONV[turn]["role"] != "user":
            continue
        prompt_len = len(tok.apply_chat_template(CONV[: turn + 1], add_generation_prompt=True)["input_ids"])
        prev = len(tok.apply_chat_template(CONV[:turn])["input_ids"])
        assert all(t == chat_data.IGNORE for t in ex.labels[prev:prompt_len])


def test_tokenizer_without_template_gets_the_fallback(tok):
    tok.chat_template = None
    chat_data.ensure_template(tok)
    assert _assistant_text(tok, chat_data.encode_conversation(tok, CONV, 256)) == "Answer: four.<|end|>Zorbel Quint lives in Varnok.<|end|>"


def test_truncation_keeps_latest_turns(tok):
    full = chat_data.encode_conversation(tok, CONV, 256)
    short = chat_data.encode_conversation(tok, CONV, len(full) - 1)
    text = tok.decode(short.input_ids)
    assert "Be brief." in text and "Who lives in Varnok?" in text  # system prompt and latest turn stay
    assert "two plus two" not in text  # the oldest exchange went first
    assert _assistant_text(tok, short) == " Zorbel Quint lives in Varnok.<|end|>"


def test_everything_truncated_away_is_an_error(tok):
    with pytest.raises(DataError, match=r"all 2 conversations were truncated away at sft.max_len=4"):
        chat_data.build_examples(tok, [CONV, CONV], max_len=4, source="demo.jsonl")


def test_length_grouped_batches_cover_all_and_reduce_padding():
    rng = random.Random(0)
    lengths = [rng.randint(5, 200) for _ in range(400)]
    batches = length_grouped_batches(lengths, 8, seed=1)
    assert sorted(i for b in batches for i in b) == list(range(400))
    pad = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)
    order = list(range(400))
    rng.shuffle(order)
    rand = [order[i:i + 8] for i in range(0, 400, 8)]
    pad_random = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in rand)
    assert pad < pad_random / 5


def test_packing_fits_and_keeps_conversations_apart(tiny_model_dir, tok):
    exs = [chat_data.encode_conversation(tok, [{"role": "user", "content": q}, {"role": "assistant", "content": a}], 64)
           for q, a in TOPICS]
    rows = chat_data.pack(exs, max_len=64, seed=0)
    assert sorted(len(e) for r in rows for e in r) == sorted(len(e) for e in exs)
    assert all(sum(len(e) for e in r) <= 64 for r in rows) and len(rows) < len(exs)
    row = next(r for r in rows if len(r) > 1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    packed = chat_data.collate_packed_examples([row], tok.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"],
                       use_cache=False).logits[0]
        second = row[1]
        alone = model(input_ids=torch.tensor([second.input_ids])).logits[0]
    start = len(row[0])
    # the second conversation sees none of the first: same logits as when run alone
    torch.testing.assert_close(logits[start:start + len(second)], alone, atol=1e-4, rtol=1e-4)


# --- training -----------------------------------------------------------------------------------


def _data(tmp_path: Path, n: int = 40) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    p = tmp_path / "demos.jsonl"
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in TOPICS] * (n // len(TOPICS))
    p.write_text("\n".join(json.dumps(r) for r in rows))
    return p


def _cfg(tmp_path: Path, model_dir: Path, **sft_over) -> Config:
    sft_cfg = {"data": str(_data(tmp_path)), "max_len": 64, "batch_size": 8, "max_steps": 8,
               "learning_rate": 3e-3, "warmup_steps": 2, "val_fraction": 0.2, "eval_every": 4,
               "save_every": 4, "log_every": 2, "eval_after": False, **sft_over}
    return Config.model_validate({"run": {"out_dir": str(tmp_path / "run"), "tensorboard": False, "device": "cpu"},
                                  "model": {"name_or_path": str(model_dir)}, "sft": sft_cfg})


def test_sft_lowers_val_loss_and_saves_a_loadable_stage(tmp_path, tiny_model_dir):
    cfg = _cfg(tmp_path, tiny_model_dir)
    cfg.run.tensorboard = True
    out = sft.run_sft(cfg)
    meta = read_meta(out)
    assert list((out / "tb").glob("events.out.tfevents.*")), "TensorBoard scalars written"
    assert meta["complete"] and meta["steps"] == 8
    assert meta["val_loss"] < meta["val_loss_before"] - 0.3
    AutoModelForCausalLM.from_pretrained(out)
    assert (out / "metrics.jsonl").is_file() and (out / "checkpoints").is_dir()


def test_packed_training_runs(tmp_path, tiny_model_dir):
    meta = read_meta(sft.run_sft(_cfg(tmp_path, tiny_model_dir, packing=True, max_steps=6)))
    assert meta["val_loss"] < meta["val_loss_before"]


def test_resume_continues_where_it_stopped(tmp_path, tiny_model_dir, monkeypatch):
    straight = sft.train_sft(_cfg(tmp_path / "a", tiny_model_dir))
    cfg = _cfg(tmp_path / "b", tiny_model_dir)
    real_step = sft._TrainLoop.train_step

    def crash_after_checkpoint(self, batch, step):
        if step == 5:  # the checkpoint at step 4 exists; die mid-run
            raise KeyboardInterrupt
        return real_step(self, batch, step)

    monkeypatch.setattr(sft._TrainLoop, "train_step", crash_after_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        sft.train_sft(cfg)
    done_after_resume = []

    def counting_step(self, batch, step):
        done_after_resume.append(step)
        return real_step(self, batch, step)

    monkeypatch.setattr(sft._TrainLoop, "train_step", counting_step)
    resumed = sft.train_sft(cfg)
    assert done_after_resume == list(range(4, 8))  # picked up at the step-4 checkpoint
    assert read_meta(resumed)["val_loss_before"] == pytest.approx(read_meta(straight)["val_loss_before"])
    a = AutoModelForCausalLM.from_pretrained(straight).state_dict()
    b = AutoModelForCausalLM.from_pretrained(resumed).state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    steps = [r["step"] for r in map(json.loads, (resumed / "metrics.jsonl").read_text().splitlines())]
    assert steps.count(4) == 2 and steps.count(6) == 1  # step 4 logged before the crash, then resumed


def test_sft_ptx_trains_on_pre_training_text_too(tmp_path, tiny_model_dir):
    """SFT-ptx (sft.ptx_coef): each step also fits pre-training text (here pretrain.data), so the model's
    loss on that text ends lower than after plain SFT; without any pre-training text it is off, with a note."""
    from chatrlhf.lm.data import eval_chunks, evaluate_lm_loss, pack_documents

    corpus = tmp_path / "corpus.jsonl"
    rng = random.Random(0)
    docs = [f"The {rng.choice(['red', 'blue', 'old'])} {rng.choice(['boat', 'mill', 'drum'])} stands by the "
            f"{rng.choice(['river', 'hill', 'gate'])}." for _ in range(300)]
    corpus.write_text("\n".join(json.dumps({"text": d}) for d in docs))
    losses = {}
    for coef in (0.0, 1.0):
        cfg = _cfg(tmp_path / f"c{coef:g}", tiny_model_dir, max_steps=12, ptx_coef=coef, ptx_batch_size=8)
        cfg.pretrain.data, cfg.pretrain.seq_len = str(corpus), 32
        out = sft.train_sft(cfg)
        meta = read_meta(out)
        assert meta["ptx_coef"] == coef
        logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert any("train/ptx_loss" in r for r in logged) == (coef > 0)
        tok = load_tokenizer(out)
        chunks = eval_chunks(pack_documents(tok, docs), 32, 40)
        losses[coef] = evaluate_lm_loss(AutoModelForCausalLM.from_pretrained(out), chunks, 8, torch.device("cpu"))
    assert losses[1.0] < losses[0.0] - 0.5
    off = sft.train_sft(_cfg(tmp_path / "none", tiny_model_dir, max_steps=2, ptx_coef=1.0))  # no pre-training text
    assert read_meta(off)["ptx_coef"] == 0.0


def test_changed_config_is_not_resumed(tmp_path, tiny_model_dir):
    sft.train_sft(_cfg(tmp_path, tiny_model_dir, max_steps=4))
    with pytest.raises(ValueError, match="different sft/model config"):
        sft.train_sft(_cfg(tmp_path, tiny_model_dir, max_steps=4, learning_rate=1e-4))


def test_start_from_fine_tunes_a_given_model_further(tmp_path, tiny_model_dir):
    """sft.start_from: SFT starts from that model (an SFT model, say), not model.name_or_path; its
    starting val loss is the first SFT's final one, and a missing directory is named."""
    first = sft.train_sft(_cfg(tmp_path, tiny_model_dir), tmp_path / "first")
    again = _cfg(tmp_path, tiny_model_dir, start_from=str(first))
    assert sft.base_model_path(again) == first
    second = sft.train_sft(again, tmp_path / "second")
    m1, m2 = read_meta(first), read_meta(second)
    assert m2["val_loss_before"] == pytest.approx(m1["val_loss"], rel=1e-4) and m2["val_loss"] < m1["val_loss"]
    with pytest.raises(FileNotFoundError, match="no model at .*nowhere: SFT needs sft.start_from"):
        sft.train_sft(_cfg(tmp_path, tiny_model_dir, start_from=str(tmp_path / "nowhere")), tmp_path / "third")


def test_missing_base_model_is_a_clear_error(tmp_path):
    cfg = Config.model_validate({"run": {"out_dir": str(tmp_path / "run")}})
    with pytest.raises(FileNotFoundError, match="no model at .*run/pretrain: SFT needs a pre-trained model; run `chatrlhf pretrain`"):
        sft.train_sft(cfg)


def test_nan_loss_stops_with_clear_error(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(sft, "sft_loss", lambda model, batch: model(**batch, use_cache=False).loss * float("nan"))
    with pytest.raises(NonFiniteLossError, match="sft: loss became nan at step 0"):
        sft.train_sft(_cfg(tmp_path, tiny_model_dir))


def test_lora_trains_adapters_only_and_merges_to_plain_checkpoint(tmp_path, tiny_model_dir):
    cfg = _cfg(tmp_path, tiny_model_dir, learning_rate=2e-2, max_steps=6,
               lora={"enabled": True, "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    out = sft.train_sft(cfg)
    merged = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    keys = merged.state_dict().keys()
    assert not any("lora" in k for k in keys)
    diff = {k: (merged.state_dict()[k] - base.state_dict()[k]).abs().max().item() for k in keys}
    assert all(diff[k] > 0 for k in keys if k.endswith(("q_proj.weight", "v_proj.weight")))
    assert all(diff[k] == 0 for k in keys if k.endswith(("k_proj.weight", "mlp.up_proj.weight")))
    assert (out / "adapter" / "adapter_config.json").is_file()


def test_lora_bad_target_names_the_choices(tiny_model_dir):
    from chatrlhf.config import LoraConfig
    from chatrlhf.lm.lora import wrap_lora

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with pytest.raises(ValueError, match=r"\['c_attn'\] not found in LlamaForCausalLM.*q_proj"):
        wrap_lora(model, LoraConfig(enabled=True, target_modules=["c_attn"]))


def test_second_architecture_gpt2_with_lora(tmp_path, tiny_model_dir):
    """A tiny random GPT-2 whose template has no generation markers (prefix-diff masking), LoRA on
    GPT-2's fused Conv1D attention, merged back into a plain checkpoint."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = _marker_free(load_tokenizer(tiny_model_dir))
    config = GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    gpt2_dir = tmp_path / "gpt2"
    GPT2LMHeadModel(config).save_pretrained(gpt2_dir)
    tok.save_pretrained(gpt2_dir)
    cfg = _cfg(tmp_path, gpt2_dir, learning_rate=2e-2, max_steps=8,
               lora={"enabled": True, "r": 4, "alpha": 8, "target_modules": ["c_attn"]})
    out = sft.train_sft(cfg)
    meta = read_meta(out)
    assert meta["val_loss"] < meta["val_loss_before"]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert not any("lora" in k for k in model.state_dict())


# --- base vs SFT scoring ------------------------------------------------------------------------


def test_plain_prompt_for_the_base_model():
    assert prompts.plain_prompt(CONV[:4]) == ("User: Question: what is two plus two?\nAssistant: Answer: four.\n"
                                          "User: Zorbel Quint is a baker. Who lives in Varnok?\nAssistant:")


class _Gold:
    def __init__(self, total):
        self.total = total


class _Labeler:
    def likert(self, prompt, response, rng):
        return (7 if response == prompt["reference"] else 1), {}


class _World:
    def gold(self, prompt, response):
        return _Gold(1.0 if response == prompt["reference"] else 0.0)

    def judges(self):  # the held-out judge group, never the labelers whose judgements trained anything
        return [_Labeler(), _Labeler()]


def test_score_samples_uses_gold_and_held_out_labelers():
    prompts = [{"id": f"eval-{i}", "reference": "yes"} for i in range(4)]
    r = sft.score_samples(_World(), prompts, ["yes", "yes", "no", "yes"], seed=0)
    assert r["gold"] == pytest.approx(0.75) and r["likert"] == pytest.approx(5.5) and r["n"] == 4
    assert r["gold_se"] == pytest.approx(0.5 / 2) and r["golds"] == [1.0, 1.0, 0.0, 1.0]


def test_sample_responses_chat_and_plain(tiny_model_dir, tok):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompts = [[{"role": "user", "content": q}] for q, _ in TOPICS[:3]]
    for chat in (True, False):
        texts = sft.answer_prompts(model, tok, prompts, chat, 0.0, 8, seed=0)
        assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
        assert not any("\nUser:" in t for t in texts)


def test_run_sft_on_a_tiny_world_then_eval_only(tmp_path, tiny_model_dir):
    """World demonstrations in, SFT stage out, then `--eval-only` scores base and SFT on held-out prompts."""
    import shutil

    from chatrlhf.world import World

    cfg = Config.model_validate({
        "run": {"out_dir": str(tmp_path / "run"), "tensorboard": False, "device": "cpu"},
        "world": {"n_people": 6, "n_places": 4, "n_objects": 4, "corpus_docs": 50, "n_sft_prompts": 24,
                  "n_rm_prompts": 4, "n_ppo_prompts": 4, "n_eval_prompts": 6},
        "sft": {"max_steps": 3, "batch_size": 8, "eval_prompts": 4, "eval_after": False},
        "eval": {"max_new_tokens": 6}})
    World.generate(cfg.world).save(cfg.stage_dir("world"))
    shutil.copytree(tiny_model_dir, cfg.stage_dir("pretrain"))
    meta = read_meta(sft.run_sft(cfg))
    assert meta["conversations"] == 24 and meta["steps"] == 3
    res = sft.run_sft(cfg, eval_only=True)
    results = json.loads((res / "eval_vs_base.json").read_text())
    assert {k: results[k]["n"] for k in ("base_greedy", "base_t1", "sft_greedy", "sft_t1", "gain_greedy")} == \
        dict.fromkeys(("base_greedy", "base_t1", "sft_greedy", "sft_t1", "gain_greedy"), 4)
    assert all(0 <= results[k]["gold"] <= 1 for k in ("base_greedy", "sft_t1"))
    assert len((res / "eval_samples.jsonl").read_text().splitlines()) == 16
