"""Models under evaluation: resolve names to directories, format prompts, score and generate.

A model is named by a stage ("base" = pretrain, "sft", "ppo", "round_N") under cfg.run.out_dir, or
given as NAME=DIR (any AutoModelForCausalLM directory or hub name already in the local cache).
The base model never saw the chat template tokens, so it is prompted in plain text
("User: ...\\nAssistant:"), the chat-log format of the pre-training corpus.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from chatrlhf.config import Config
from chatrlhf.layout import rounds_on_disk, stage_path
from chatrlhf.lm.prompts import PLAIN_STOPS, plain_prompt
from chatrlhf.lm.tokenizer import apply_template


@dataclass
class ModelHandle:
    name: str
    path: str
    model: Any
    tokenizer: Any
    chat: bool  # True: apply the chat template; False: plain "User: ...\nAssistant:" prompt
    prefix: str = ""  # text before every plain prompt (few-shot demonstrations, evaluate/methods.py)
    # (prompts, max_new_tokens, temperature, seed) -> {"greedy", "sample"}: an evaluation-time method's
    # own answers (best-of-n) instead of plain decoding
    answer_fn: Callable[[list[dict], int, float, int], dict[str, list[str]]] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def max_len(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048) or 2048)


# evaluation-time methods (evaluate/methods.py) are named like models: bonN, fewshot
BON = re.compile(r"bon(\d+)")


def is_method(name: str) -> bool:
    return bool(BON.fullmatch(name)) or name == "fewshot"


def default_model(name: str) -> str:
    """The stage a method is built on: best-of-n samples SFT, few-shot prompts the base model."""
    return "base" if name == "fewshot" else "sft"


def resolve_models(cfg: Config, specs: list[str]) -> list[tuple[str, str]]:
    """[(name, path)] from NAME=DIR or stage names; [] -> every finished stage in pipeline order: base,
    sft, best_of_n (round 1's rejection-sampling fine-tune, PPO's start), ppo, then each later round's
    round_N_best_of_n and round_N (what stage attribution compares)."""
    if not specs:
        names = ["base", "sft", "best_of_n", "ppo"]
        for r in rounds_on_disk(cfg):
            names += [f"round_{r}_best_of_n", f"round_{r}"]
        return [(n, str(stage_path(cfg, n))) for n in names if (stage_path(cfg, n) / "config.json").is_file()]
    out = []
    for spec in specs:
        if "=" in spec:
            name, path = spec.split("=", 1)
        else:  # an evaluation-time method (bon16, fewshot) runs on the stage it is built on
            name, path = spec, str(stage_path(cfg, default_model(spec) if is_method(spec) else spec))
            if not Path(path).is_dir():
                raise FileNotFoundError(f"--model {spec}: no such stage output {path}; run that stage first "
                                        "or pass NAME=DIR")
        out.append((name.strip(), path.strip()))
    return out


def load_handle(name: str, path: str, dtype: str = "float32") -> ModelHandle:
    from chatrlhf.lm.modeling import load_causal_lm, load_tokenizer

    model = load_causal_lm(path, dtype).eval()
    tok = load_tokenizer(path)
    chat = name != "base" and bool(getattr(tok, "chat_template", None))
    return ModelHandle(name, path, model, tok, chat)


# --- prompts ----------------------------------------------------------------------------------


def prompt_text(h: ModelHandle, messages: list[dict[str, str]]) -> str:
    """The text the model continues to answer the last user turn."""
    if h.chat:
        return apply_template(h.tokenizer, messages, tokenize=False, add_generation_prompt=True)
    return h.prefix + plain_prompt(messages)


def encode_text(h: ModelHandle, text: str) -> list[int]:
    """Ids of a piece of text (a continuation), without bos/eos."""
    return h.tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_prompt(h: ModelHandle, text: str) -> list[int]:
    """Ids of a whole prompt: a rendered chat template already holds its bos as text; a plain
    prompt gets whatever the tokenizer adds by default (bos for most HF models, nothing for ours)."""
    return h.tokenizer(text, add_special_tokens=not h.chat)["input_ids"]


def bos_ids(h: ModelHandle) -> list[int]:
    bos = h.tokenizer.bos_token_id
    return [bos] if bos is not None else []


# --- log-likelihood -------------------------------------------------------------------------


@torch.no_grad()
def continuation_logprobs(h: ModelHandle, pairs: list[tuple[list[int], list[int]]],
                          batch_size: int = 16) -> list[float]:
    """Sum of log p(continuation tokens | context) for each (context_ids, continuation_ids).

    Right-padded batches; the context is cut from the left when the pair exceeds the context window.
    """
    out: list[float] = []
    dev = next(h.model.parameters()).device
    pad = h.tokenizer.pad_token_id if h.tokenizer.pad_token_id is not None else 0
    for i in range(0, len(pairs), batch_size):
        chunk = []
        for ctx, cont in pairs[i:i + batch_size]:
            cont = cont[: h.max_len - 1]
            ctx = ctx[-(h.max_len - len(cont)):] if ctx else []
            chunk.append((ctx, cont))
        T = max(len(c) + len(x) for c, x in chunk)
        ids = torch.full((len(chunk), T), pad, dtype=torch.long)
        attn = torch.zeros((len(chunk), T), dtype=torch.long)
        target = torch.zeros((len(chunk), T), dtype=torch.bool)
        for b, (ctx, cont) in enumerate(chunk):
            seq = ctx + cont
            ids[b, : len(seq)] = torch.tensor(seq)
            attn[b, : len(seq)] = 1
            target[b, max(1, len(ctx)): len(seq)] = True  # first token has no prediction
        logits = h.model(input_ids=ids.to(dev), attention_mask=attn.to(dev)).logits.float()  # (B, T, V)
        logp = torch.log_softmax(logits[:, :-1], dim=-1)  # predicts tokens 1..T-1
        tok_lp = logp.gather(-1, ids[:, 1:].to(dev).unsqueeze(-1)).squeeze(-1)  # (B, T-1)
        out.extend((tok_lp * target[:, 1:].to(dev)).sum(-1).tolist())
    return out


def answer_logprobs(h: ModelHandle, message_lists: list[list[dict[str, str]]], answers: list[str],
                    mean: bool = False) -> list[float]:
    """Sum of each answer's token log-probs after its conversation, the answer encoded as the RM and PPO
    encode it (`lm.reward_model.encode_response`: the chat template's end of turn included); `mean`:
    per token, as ppo.reward.sft_loglik_coef pays it."""
    from chatrlhf.lm.reward_model import encode_response

    ctx = [encode_prompt(h, prompt_text(h, m)) for m in message_lists]
    full = [encode_response(h.tokenizer, m, a, h.max_len) for m, a in zip(message_lists, answers)]
    sums = continuation_logprobs(h, [(c, f[len(c):]) for c, f in zip(ctx, full)])
    return [x / max(1, len(f) - len(c)) for x, c, f in zip(sums, ctx, full)] if mean else sums


# --- generation -------------------------------------------------------------------------------


def generate(h: ModelHandle, texts: list[str], max_new_tokens: int, temperature: float, seed: int = 0,
             batch_size: int = 16) -> list[str]:
    """Responses to prompt texts (greedy when temperature == 0), cut at the end of the turn."""
    ids = [encode_prompt(h, t)[-(h.max_len - max_new_tokens):] for t in texts]
    from chatrlhf.lm.engine import Engine, SamplingParams

    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=1.0, top_k=0,
                            stop=[] if h.chat else PLAIN_STOPS, seed=seed)
    # the engine batches (and drops finished rows) itself; row i samples with seed + i
    outs = [_text(h, g.token_ids, g.text) for g in Engine(h.model, h.tokenizer).generate(ids, params)]
    return [_cut(o, h.chat) for o in outs]


def _text(h: ModelHandle, token_ids: list[int], text: str | None) -> str:
    """A base model runs on past its answer into the next pre-training document; the document
    separator is a special token that decoding would silently drop, so cut there first."""
    if not h.chat:
        from chatrlhf.lm.tokenizer import document_eos

        sep = document_eos(h.tokenizer)
        if sep in token_ids:
            return h.tokenizer.decode(token_ids[: token_ids.index(sep)], skip_special_tokens=True).lstrip()
    return text if text is not None else h.tokenizer.decode(token_ids, skip_special_tokens=True).lstrip()


def _cut(text: str, chat: bool) -> str:
    if not chat:
        for s in PLAIN_STOPS:
            text = text.split(s)[0]
    return text.strip()
