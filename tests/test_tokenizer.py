"""Tokenizer stage: BPE trained on the corpus, chat template round-trip, assistant mask, user tokenizers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from chatrlhf.config import load_config
from chatrlhf.lm.modeling import read_meta
from chatrlhf.lm.tokenizer import (
    CORPUS_CHAT_TEMPLATE,
    CORPUS_SYSTEM_BEFORE_LAST_ANSWER_TEMPLATE,
    CORPUS_SYSTEM_NEAR_ANSWER_TEMPLATE,
    EOS,
    FALLBACK_CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    SYSTEM_BEFORE_LAST_ANSWER_TEMPLATE,
    SYSTEM_NEAR_ANSWER_TEMPLATE,
    document_eos,
    ensure_chat_template,
    system_near_answer,
)
from chatrlhf.stages import pretrain

CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Where does Zorbel Quint live?"},
    {"role": "assistant", "content": "Zorbel Quint lives in Varnok."},
    {"role": "user", "content": "And her job?"},
    {"role": "assistant", "content": "She is a baker, and she likes teal. Ünïcödé ✓"},
]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok")
    world = out / "world"
    world.mkdir()
    docs = [f"Zorbel Quint lives in Varnok and works as a baker, day {i}. She likes teal." for i in range(150)]
    docs += [f"Mira Vell sails from Selmouth on ship number {i}." for i in range(150)]
    (world / "corpus_train.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    (world / "corpus_val.jsonl").write_text(json.dumps({"text": "Mira Vell lives in Varnok and works as a baker."}) + "\n")
    cfg = load_config(None, [f"run.out_dir={out}", "tokenizer.vocab_size=320", "tokenizer.chat_format=roles"])
    return pretrain.run_tokenizer(cfg)


def test_tokenizer_stage_writes_loadable_tokenizer_and_meta(tok_dir):
    meta = read_meta(tok_dir)
    assert meta["complete"] and meta["trained"] and meta["docs"] == 300
    tok = AutoTokenizer.from_pretrained(tok_dir)
    assert len(tok) == meta["vocab_size"] == 320
    assert meta["chars_per_token"] > 1.5  # BPE merges learnt something beyond bytes
    for special in SPECIAL_TOKENS:  # each special token is one id, never split
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1, special
    assert tok.convert_ids_to_tokens(document_eos(tok)) == EOS
    assert tok.eos_token == "<|end|>" and tok.pad_token == "<|pad|>" and tok.bos_token == "<|bos|>"


def test_plain_text_round_trip_is_lossless(tok_dir):
    tok = AutoTokenizer.from_pretrained(tok_dir)
    text = "  Zorbel  lives in\tVarnok.\nNew line, emoji 🙂, Ünïcödé, tabs\t\tand 123456 numbers."
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    # a text's first word gets the word-start space, so it is the same token as mid-sentence
    hello = tok("Hello", add_special_tokens=False)["input_ids"]
    assert hello == tok(" Hello", add_special_tokens=False)["input_ids"] and tok.decode(hello) == " Hello"


def test_chat_template_round_trip_and_assistant_mask(tok_dir):
    tok = AutoTokenizer.from_pretrained(tok_dir)
    rendered = tok.apply_chat_template(CONVERSATION, tokenize=False)
    out = tok.apply_chat_template(CONVERSATION, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    # each turn's text starts a word, as in running text: a space after every role token
    assert tok.decode(ids) == re.sub(r"(<\|(?:system|user|assistant)\|>)", r"\1 ", rendered)
    assert rendered.startswith("<|bos|><|system|>You are a helpful assistant.<|end|><|user|>")
    # the mask covers exactly each assistant reply plus its <|end|>, nothing else
    masked = [i for i, m in zip(ids, mask) if m]
    expected = "".join(" " + m["content"] + "<|end|>" for m in CONVERSATION if m["role"] == "assistant")
    assert tok.decode(masked) == expected
    spans, prev = 0, 0
    for m in mask:
        spans += int(m == 1 and prev == 0)
        prev = m
    assert spans == 2
    assert tok.convert_ids_to_tokens(ids[mask.index(1) - 1]) == "<|assistant|>"


def test_corpus_chat_format_writes_turns_as_the_corpus_chat_logs(tok_dir, tmp_path):
    """tokenizer.chat_format=corpus: 'User: ...' and 'Assistant: ...' lines as in the pre-training chat
    logs; the mask still covers exactly each reply and its <|end|>, and a prompt is a prefix of the
    conversation it starts."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(tok_dir.parent / "world", out / "world")
    cfg = load_config(None, [f"run.out_dir={out}", "tokenizer.vocab_size=320", "tokenizer.chat_format=corpus"])
    tok = AutoTokenizer.from_pretrained(pretrain.run_tokenizer(cfg))
    rendered = tok.apply_chat_template(CONVERSATION[:4], tokenize=False, add_generation_prompt=True)
    assert rendered == ("<|bos|>System: You are a helpful assistant.\nUser: Where does Zorbel Quint live?\n"
                        "Assistant: Zorbel Quint lives in Varnok.<|end|>\nUser: And her job?\nAssistant:")
    out_ = tok.apply_chat_template(CONVERSATION, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out_["input_ids"], out_["assistant_masks"]
    expected = "".join(" " + m["content"] + "<|end|>" for m in CONVERSATION if m["role"] == "assistant")
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == expected
    prompt = tok.apply_chat_template(CONVERSATION[:4], add_generation_prompt=True)
    prompt = prompt["input_ids"] if not isinstance(prompt, list) else prompt
    assert ids[: len(prompt)] == prompt


def test_system_near_answer_template_puts_the_line_before_each_answer(tok_dir):
    """sft.group_line_near_answer's template: the system message right before every assistant turn and
    the generation prompt, never first; the loss mask still covers exactly the answers."""
    tok = AutoTokenizer.from_pretrained(tok_dir)
    assert system_near_answer(tok) and tok.chat_template == SYSTEM_NEAR_ANSWER_TEMPLATE
    line = "<|system|>You are a helpful assistant.<|end|><|assistant|>"
    rendered = tok.apply_chat_template(CONVERSATION, tokenize=False)
    assert rendered.startswith("<|bos|><|user|>Where does Zorbel Quint live?<|end|>" + line)
    assert rendered.count(line) == 2 and rendered.count("<|system|>") == 2
    prompt = tok.apply_chat_template(CONVERSATION[:4], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|user|>And her job?<|end|>" + line)
    out = tok.apply_chat_template(CONVERSATION, return_dict=True, return_assistant_tokens_mask=True)
    masked = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tok.decode(masked) == "".join(" " + m["content"] + "<|end|>" for m in CONVERSATION if m["role"] == "assistant")
    plain = [m for m in CONVERSATION if m["role"] != "system"]  # no system message: the usual layout
    assert tok.apply_chat_template(plain, tokenize=False) == AutoTokenizer.from_pretrained(tok_dir).apply_chat_template(
        plain, tokenize=False)
    theirs = AutoTokenizer.from_pretrained(tok_dir)
    theirs.chat_template = FALLBACK_CHAT_TEMPLATE  # a user's own template is left as it is
    assert not system_near_answer(theirs) and theirs.chat_template == FALLBACK_CHAT_TEMPLATE


def test_system_near_answer_in_the_corpus_layout(tok_dir):
    """The corpus chat format's near-answer template: "User: ...\nSystem: ...\nAssistant:" before every
    answer and the generation prompt; the loss mask still covers exactly the answers."""
    tok = AutoTokenizer.from_pretrained(tok_dir)
    tok.chat_template = CORPUS_CHAT_TEMPLATE
    assert system_near_answer(tok) and tok.chat_template == CORPUS_SYSTEM_NEAR_ANSWER_TEMPLATE
    assert system_near_answer(tok) and tok.chat_template == CORPUS_SYSTEM_NEAR_ANSWER_TEMPLATE  # applied once
    line = "System: You are a helpful assistant.\nAssistant: "
    rendered = tok.apply_chat_template(CONVERSATION, tokenize=False)
    assert rendered.startswith("<|bos|>User: Where does Zorbel Quint live?\n" + line)
    assert rendered.count(line) == 2 and rendered.count("System:") == 2
    prompt = tok.apply_chat_template(CONVERSATION[:4], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("User: And her job?\nSystem: You are a helpful assistant.\nAssistant:")
    out = tok.apply_chat_template(CONVERSATION, return_dict=True, return_assistant_tokens_mask=True)
    masked = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tok.decode(masked) == "".join(" " + m["content"] + "<|end|>" for m in CONVERSATION if m["role"] == "assistant")



@pytest.mark.parametrize("layout", ["corpus", "roles"])
def test_system_line_before_the_last_answer_only(tok_dir, layout):
    """sft.group_line_turns=last: the line before the last answer (or the generation prompt) only, the
    earlier turns as they were said; the prompt is a prefix of the full conversation (what PPO and the RM
    score) and the loss mask still covers exactly the answers."""
    tok = AutoTokenizer.from_pretrained(tok_dir)
    plain_template = CORPUS_CHAT_TEMPLATE if layout == "corpus" else tok.chat_template
    tok.chat_template = plain_template
    assert system_near_answer(tok, "last")
    assert tok.chat_template == (CORPUS_SYSTEM_BEFORE_LAST_ANSWER_TEMPLATE if layout == "corpus"
                                 else SYSTEM_BEFORE_LAST_ANSWER_TEMPLATE)
    line = ("System: You are a helpful assistant.\nAssistant:" if layout == "corpus"
            else "<|system|>You are a helpful assistant.<|end|><|assistant|>")
    plain = AutoTokenizer.from_pretrained(tok_dir)
    plain.chat_template = plain_template
    history = [m for m in CONVERSATION[:3] if m["role"] != "system"]
    rendered = tok.apply_chat_template(CONVERSATION, tokenize=False)
    assert rendered.count(line) == 1 and rendered.startswith(plain.apply_chat_template(history, tokenize=False))
    prompt = tok.apply_chat_template(CONVERSATION[:4], tokenize=False, add_generation_prompt=True)
    assert prompt.count(line) == 1 and prompt.endswith(line) and rendered.startswith(prompt)
    out = tok.apply_chat_template(CONVERSATION, return_dict=True, return_assistant_tokens_mask=True)
    masked = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tok.decode(masked) == "".join(" " + m["content"] + "<|end|>" for m in CONVERSATION if m["role"] == "assistant")
    single = [CONVERSATION[0], CONVERSATION[1], CONVERSATION[2]]  # one answer: the same as before every answer
    every = AutoTokenizer.from_pretrained(tok_dir)
    every.chat_template = plain_template
    system_near_answer(every, "every")
    assert tok.apply_chat_template(single, tokenize=False) == every.apply_chat_template(single, tokenize=False)


def test_generation_prompt_ends_with_assistant_tag(tok_dir):
    tok = AutoTokenizer.from_pretrained(tok_dir)
    ids = tok.apply_chat_template(CONVERSATION[:2], add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert tok.convert_ids_to_tokens(ids[-1]) == "<|assistant|>"


def test_users_tokenizer_is_copied_not_trained(tiny_model_dir, tmp_path):
    cfg = load_config(None, [f"run.out_dir={tmp_path}", f"model.name_or_path={tiny_model_dir}"])
    out = pretrain.run_tokenizer(cfg)  # no world corpus needed
    meta = read_meta(out)
    assert meta["complete"] and not meta["trained"] and meta["source"] == str(tiny_model_dir)
    assert AutoTokenizer.from_pretrained(out).get_vocab() == AutoTokenizer.from_pretrained(tiny_model_dir).get_vocab()


def test_tokenizer_without_template_gets_fallback(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = None
    ensure_chat_template(tok)
    assert tok.chat_template == FALLBACK_CHAT_TEMPLATE
    out = tok.apply_chat_template(CONVERSATION[1:3], return_dict=True, return_assistant_tokens_mask=True)
    masked = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tok.decode(masked) == "Zorbel Quint lives in Varnok." + tok.eos_token


def test_missing_world_corpus_is_a_clear_error(tmp_path):
    cfg = load_config(None, [f"run.out_dir={tmp_path}"])
    with pytest.raises(ValueError, match="chatrlhf world"):
        pretrain.run_tokenizer(cfg)
