"""Tiny random-initialised Hugging Face models with real offline-trained tokenizers, saved the way a
user's model directory looks (config.json, safetensors, tokenizer files), for the your-own-model tests."""

from __future__ import annotations

from pathlib import Path

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Mistral-style: no system role, strict user/assistant alternation
INST = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)
TEMPLATES = {"none": None, "chatml": CHATML, "inst": INST}

CORPUS = [
    "Hello! How can I help you today? I am happy to answer your question.",
    "The capital of France is Paris. Water boils at one hundred degrees.",
    "Human: how do I bake bread? Assistant: Mix flour, water, salt and yeast, then bake it.",
    "I cannot help with that request because it could hurt someone.",
    "Write a short poem about the sea. The sea is wide, the sea is blue.",
    "List three fruits: apple, pear, plum. Thank you, that is kind of you.",
] * 30


def train_bpe(template: str | None, texts: list[str] | None = None, vocab_size: int = 320):
    """A byte-level BPE wrapped as PreTrainedTokenizerFast; special tokens follow the template's family."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if template == "chatml":
        specials = {"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
        extra = ["<|im_start|>"]
    elif template == "inst":
        specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
        extra = []
    else:
        specials = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}
        extra = []
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(dict.fromkeys([*specials.values(), *extra])),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts or CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **specials,
                                   additional_special_tokens=extra or None)
    if TEMPLATES[template or "none"]:
        fast.chat_template = TEMPLATES[template]
    return fast


def build_model(arch: str, tok, hidden: int = 32, layers: int = 2, dropout: float | None = None):
    """A randomly initialised causal LM of the given architecture, sized for tests."""
    import torch
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    torch.manual_seed(0)
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    common = dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                  num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512, **ids)
    if arch == "gpt2":
        p = 0.1 if dropout is None else dropout
        cfg = GPT2Config(vocab_size=len(tok), n_positions=512, n_embd=hidden, n_layer=layers, n_head=2,
                         resid_pdrop=p, embd_pdrop=p, attn_pdrop=p, **ids)
        return GPT2LMHeadModel(cfg)
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(**common, attention_dropout=dropout or 0.0))
    if arch == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common, attention_dropout=dropout or 0.0))
    if arch == "mistral":
        return MistralForCausalLM(MistralConfig(**common, attention_dropout=dropout or 0.0, sliding_window=None))
    raise ValueError(arch)


def save_user_model(out: Path, arch: str, template: str | None, with_tokenizer: bool = True,
                    dropout: float | None = None) -> Path:
    """A user's model directory: save_pretrained of the model and (normally) its tokenizer."""
    tok = train_bpe(template)
    model = build_model(arch, tok, dropout=dropout)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    if with_tokenizer:
        tok.save_pretrained(out)
    return out
