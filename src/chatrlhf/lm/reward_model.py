"""The reward model: a sequence-classification head on the LM that scores the last token of
prompt + response, with the encoding and batching it needs.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from chatrlhf.lm.modeling import DTYPES, load_tokenizer, read_meta
from chatrlhf.lm.packing import best_fit_decreasing, pack_rows, packed_position_ids
from chatrlhf.lm.tokenizer import apply_template
from chatrlhf.lm.unpadded import compile_unpadded, unpadded_hidden_states, why_not_unpadded

Messages = list[dict[str, str]]


# --- encoding -------------------------------------------------------------------------------
def encode_response(tokenizer, messages: Messages, response: str, max_len: int) -> list[int]:
    """Token ids of the conversation ending with `response` as the assistant turn. Over max_len, the
    oldest tokens go: the reward is read at the end, which must survive."""
    if getattr(tokenizer, "chat_template", None):
        text = apply_template(tokenizer, [*messages, {"role": "assistant", "content": response}], tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:  # plain "User: ...\nAssistant: ..." turns, as the generation engine writes them for base models
        names = {"system": "System", "user": "User", "assistant": "Assistant"}
        text = "".join(f"{names.get(m['role'], m['role'].title())}: {m['content']}\n" for m in messages)
        ids = tokenizer(f"{text}Assistant: {response}", add_special_tokens=True)["input_ids"]
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id != tokenizer.pad_token_id:
            ids = [*ids, tokenizer.eos_token_id]
    return ids[-max_len:]


def collate_sequences(seqs: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad to (B, T); position ids count real tokens so padding does not shift positions."""
    t = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), t), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, t - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, t - len(s):] = 1
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": pos}


def collate_packed_sequences(seqs: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pack the sequences into rows no longer than the longest one (best fit decreasing): about
    half the tokens of a padded batch of mixed lengths. Position ids restart for each sequence
    (`packing.packed_position_ids`); `last_token` holds each sequence's last position as a flat
    index into the rows."""
    lengths = [len(s) for s in seqs]
    rows = best_fit_decreasing(lengths, max(lengths))
    ids = pack_rows([[seqs[i] for i in row] for row in rows], pad_id)
    width = ids.shape[1]
    last = torch.zeros(len(seqs), dtype=torch.long)
    for b, row in enumerate(rows):
        end = b * width
        for i in row:
            end += lengths[i]
            last[i] = end - 1
    return {"input_ids": ids, "position_ids": packed_position_ids([[lengths[i] for i in row] for row in rows], width),
            "last_token": last}


def raw_rewards(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B,) head outputs at each sequence's last token: the last column of a left-padded batch, or
    the `last_token` positions of a packed one. For a packed batch the model's own pooling would take
    each row's last token, so the head's per-token output is caught by a hook during the model's
    ordinary forward (which DDP/FSDP wrappers need to see)."""
    if "last_token" not in batch:
        out = model(**batch, use_cache=False)
        return out.logits[:, -1].float() if out.logits.dim() == 2 else out.logits.float()
    return rewards_and_hidden(model, batch)[0]


def rewards_and_hidden(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """raw_rewards, and with them the backbone's last hidden states flattened to (rows * width, H)
    and each sequence's last position as a flat index into them (left-padded rows end in the last
    column). Both are caught by one hook on the head during the model's ordinary forward."""
    caught: list[tuple[torch.Tensor, torch.Tensor]] = []
    head = reward_backbone_and_head(getattr(model, "module", model))[1]
    hook = head.register_forward_hook(lambda _module, inputs, out: caught.append((inputs[0], out)))
    try:
        if "last_token" in batch:
            model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
            last = batch["last_token"]
        else:
            model(**batch, use_cache=False)
            rows, width = batch["input_ids"].shape
            last = torch.arange(1, rows + 1, device=batch["input_ids"].device) * width - 1
    finally:
        hook.remove()
    hidden, per_token = caught[0]
    return per_token.flatten(0, 1)[last].squeeze(-1).float(), hidden.flatten(0, 1), last


def top_ranked(comparison: dict, exclude_labelers: set[str] | frozenset = frozenset()) -> int | None:
    """The response with the best mean rank over the kept labelers' rankings (rank 1 is best), or None."""
    ranks: dict[int, list[int]] = {}
    for rk in comparison.get("rankings", []):
        if rk.get("labeler") in exclude_labelers:
            continue
        for i, r in enumerate(rk["ranks"]):
            if r is not None:
                ranks.setdefault(i, []).append(r)
    return min(ranks, key=lambda i: (sum(ranks[i]) / len(ranks[i]), i)) if ranks else None


def response_length(tokenizer, messages: Messages, response: str, max_len: int) -> int:
    """Tokens of the assistant's turn (its end-of-turn token included) at the end of
    encode_response(messages, response), at most all but the first of its max_len tokens."""
    full = len(encode_response(tokenizer, messages, response, 1 << 30))
    if getattr(tokenizer, "chat_template", None):
        prompt = len(apply_template(tokenizer, messages, tokenize=True, return_dict=True,
                                    add_generation_prompt=True)["input_ids"])
    else:  # the plain turns with an empty reply, less the end-of-sequence token encode_response adds
        eos = tokenizer.eos_token_id is not None and tokenizer.eos_token_id != tokenizer.pad_token_id
        prompt = len(encode_response(tokenizer, messages, "", 1 << 30)) - int(eos)
    return max(1, min(full - prompt, min(full, max_len) - 1))


def output_embeddings(model, init_dir: str | Path) -> torch.Tensor:
    """The LM's output projection for an RM built from a causal LM: the input embeddings where they are
    tied (trained with the RM), else the init LM's own output layer, loaded once and frozen."""
    inner = getattr(model, "module", model)
    if getattr(inner.config, "tie_word_embeddings", False):
        return inner.get_input_embeddings().weight
    with _quiet_transformers():
        lm = AutoModelForCausalLM.from_pretrained(str(init_dir), dtype=inner.dtype)
    head = lm.get_output_embeddings()
    if head is None:
        raise ValueError(f"rm.lm_coef: {init_dir} has no output embeddings to read the RM's hidden states with")
    return head.weight.detach().to(next(inner.parameters()).device)


def response_lm_loss(hidden: torch.Tensor, input_ids: torch.Tensor, last: torch.Tensor, lengths: list[int],
                     out_embed: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy of the responses whose last flat positions are `last` and lengths
    `lengths`, read from the RM backbone's hidden states through the LM's output embeddings, averaged
    over each response's tokens and then over the responses (one per comparison, so the term, like
    the ranking loss, weighs every comparison alike and splits over processes exactly): the
    language-model term that keeps an RM's hidden states a language model's (Yang et al. 2024,
    generalizable reward models by regularising hidden states)."""
    pos = torch.cat([torch.arange(int(e) - n, int(e), device=hidden.device) for e, n in zip(last.tolist(), lengths)])
    per_token = nn.functional.cross_entropy((hidden[pos] @ out_embed.t()).float(), input_ids.flatten()[pos + 1],
                                            reduction="none")
    return torch.stack([t.mean() for t in per_token.split(list(lengths))]).mean()


class ResponseLMTerm:
    """rm.lm_coef's term: the language-model loss of each comparison's top-ranked response (by the
    kept labelers), read from the RM's hidden states through the LM's output embeddings."""

    def __init__(self, model, init_dir: str | Path, tokenizer, comparisons: list[dict],
                 exclude_labelers: set[str] | frozenset, max_len: int):
        self.targets: list[tuple[int, int] | None] = []  # per comparison: (response index, its length in tokens)
        for c in comparisons:
            best = top_ranked(c, exclude_labelers)
            self.targets.append(None if best is None else
                                (best, response_length(tokenizer, c["messages"], c["responses"][best], max_len)))
        self.out_embed = output_embeddings(model, init_dir)

    def loss(self, hidden: torch.Tensor, input_ids: torch.Tensor, last: torch.Tensor,
             sequences: list[tuple[int, int]]) -> torch.Tensor:
        """`sequences`: (comparison index, response index) of each scored sequence, in batch order."""
        best = [(s, t[1]) for s, (i, k) in enumerate(sequences) if (t := self.targets[i]) is not None and t[0] == k]
        if not best:
            return hidden.sum() * 0
        return response_lm_loss(hidden, input_ids, last[[s for s, _ in best]], [n for _, n in best], self.out_embed)


def pair_rewards(model, batch: dict[str, torch.Tensor], chosen: list[int], rejected: list[int],
                 lm_term: ResponseLMTerm | None = None, sequences: list[tuple[int, int]] = ()
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(P,) rewards of the chosen and the rejected answer of each pair, and with an LM term its loss."""
    if lm_term is None:
        rewards = raw_rewards(model, batch)  # (S,) one per response
        return rewards[chosen], rewards[rejected], None
    rewards, hidden, last = rewards_and_hidden(model, batch)
    return rewards[chosen], rewards[rejected], lm_term.loss(hidden, batch["input_ids"], last, list(sequences))


# --- model ----------------------------------------------------------------------------------
@contextmanager
def _quiet_transformers():
    """The fresh `score` head on a causal-LM checkpoint is expected, not news."""
    tl = logging.getLogger("transformers")
    level = tl.level
    tl.setLevel(logging.ERROR)
    try:
        yield
    finally:
        tl.setLevel(level)


def build_reward_model(init_dir: str | Path, tokenizer, dtype: str = "float32"):
    """AutoModelForSequenceClassification(num_labels=1) from a causal LM (new head) or an RM dir."""
    p = Path(init_dir)
    if p.exists() and not (p / "config.json").is_file():
        raise FileNotFoundError(f"{p} is not a model checkpoint (no config.json); did that stage finish?")
    with _quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(
            str(init_dir), num_labels=1, pad_token_id=tokenizer.pad_token_id, dtype=DTYPES[dtype])
    model.config.pad_token_id = tokenizer.pad_token_id  # LlamaForSequenceClassification needs it to pool
    return model


def reward_backbone_and_head(model) -> tuple[nn.Module, nn.Linear]:
    """(backbone, scalar head) of an RM: per-token values are head(backbone(ids).last_hidden_state),
    how PPO initialises its value function from the RM (chatrlhf.value.ValueModel does this)."""
    model = model.get_base_model() if hasattr(model, "get_base_model") else model  # a LoRA RM in training
    backbone = getattr(model, model.base_model_prefix)
    for name in ("score", "classifier", "v_head"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Linear):
            return backbone, head
    raise ValueError(f"{type(model).__name__}: no scalar head (score/classifier)")


class RewardModel:
    """A trained RM with its tokenizer and the demonstration-centering bias."""

    def __init__(self, model, tokenizer, bias: float = 0.0, max_len: int = 512, batch_size: int = 32):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.bias = float(bias)
        self.max_len = max_len
        self.batch_size = batch_size

    @classmethod
    def load(cls, rm_dir: str | Path, dtype: str = "float32", device: str = "cpu") -> "RewardModel":
        rm_dir = Path(rm_dir)
        if not (rm_dir / "config.json").is_file():
            raise FileNotFoundError(f"{rm_dir}: no reward model here (no config.json); run `chatrlhf rm` first")
        meta = read_meta(rm_dir)
        tok = load_tokenizer(rm_dir)
        model = build_reward_model(rm_dir, tok, dtype).to(device)
        return cls(model, tok, meta.get("reward_bias", 0.0), meta.get("max_len", 512))

    @torch.no_grad()
    def score(self, message_lists: list[Messages], responses: list[str], raw: bool = False) -> torch.Tensor:
        """(B,) rewards r(x, y) + bias (raw=True leaves the bias out)."""
        if len(message_lists) != len(responses):
            raise ValueError(f"score(): {len(message_lists)} conversations but {len(responses)} responses")
        seqs = [encode_response(self.tokenizer, m, r, self.max_len) for m, r in zip(message_lists, responses)]
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # similar lengths together: less padding
        out = torch.zeros(len(seqs))
        device = next(self.model.parameters()).device
        for lo in range(0, len(order), self.batch_size):
            idx = order[lo: lo + self.batch_size]
            batch = {k: v.to(device) for k, v in collate_sequences([seqs[i] for i in idx], self.tokenizer.pad_token_id).items()}
            out[idx] = self._last_token_rewards(batch).cpu()
        return out if raw else out + self.bias

    def _last_token_rewards(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """raw_rewards on a left-padded batch; for a Llama-family RM the trunk runs on the real tokens
        only (lm.unpadded: the same numbers to float rounding, without the pads' work)."""
        if why_not_unpadded(self.model) is not None:
            return raw_rewards(self.model, batch)
        backbone, head = reward_backbone_and_head(self.model)
        hidden, _ = unpadded_hidden_states(backbone, batch["input_ids"], batch["attention_mask"], batch["position_ids"])
        last = batch["attention_mask"].sum(1).cumsum(0) - 1  # each row's last real token, rows in order
        return head(hidden[last]).squeeze(-1).float()


class RewardEnsemble:
    """Several RMs trained alike from different seeds; the reward is their mean, whose errors are
    smaller where the members' differ (Coste et al. 2023, "Reward Model Ensembles Help Mitigate
    Overoptimization"). `penalty` > 0: the mean minus that many standard deviations across the
    members (their uncertainty-weighted optimisation). Scores like a RewardModel."""

    def __init__(self, members: list[RewardModel], penalty: float = 0.0):
        self.members, self.penalty = members, penalty

    def score(self, message_lists: list[Messages], responses: list[str], raw: bool = False) -> torch.Tensor:
        r = torch.stack([m.score(message_lists, responses, raw) for m in self.members])  # (members, B)
        return r.mean(0) - self.penalty * r.std(0, correction=0) if self.penalty else r.mean(0)


class RewardByKey:
    """One reward per key (a labeler group's own RM per group): each conversation is scored by the
    reward of the key it comes with, as one policy serving several groups is paid by each group's
    own RM for the prompts that ask for it."""

    def __init__(self, rewards: dict[str, RewardModel | RewardEnsemble]):
        self.rewards = rewards
        self.members = [m for r in rewards.values() for m in getattr(r, "members", [r])]

    def score_by(self, keys: list[str], message_lists: list[Messages], responses: list[str]) -> torch.Tensor:
        """(B,) each response scored by the reward of its key."""
        if unknown := sorted(set(keys) - set(self.rewards)):
            raise KeyError(f"no reward model for {', '.join(map(repr, unknown))} (have: {', '.join(self.rewards)})")
        out = torch.zeros(len(responses))
        for key, reward in self.rewards.items():
            idx = [i for i, k in enumerate(keys) if k == key]
            if idx:
                out[idx] = reward.score([message_lists[i] for i in idx], [responses[i] for i in idx])
        return out


def compile_reward(rm: RewardModel | RewardEnsemble | RewardByKey) -> bool:
    """Run the trunk of the RM (of every ensemble member) through lm.unpadded's torch.compile'd layer
    stacks when it scores; False where they stay eager (no C++ compiler)."""
    return all([compile_unpadded(m.model) for m in getattr(rm, "members", [rm])])


def load_reward(rm_dir: str | Path, dtype: str = "float32", device: str = "cpu",
                penalty: float = 0.0) -> RewardModel | RewardEnsemble:
    """The reward an RM stage directory holds: its RM, or with `rm.ensemble` > 1 the mean of its members
    (listed in its meta.json as "ensemble", directories relative to it), minus `penalty` x their std."""
    rm_dir = Path(rm_dir)
    first = RewardModel.load(rm_dir, dtype, device)
    members = read_meta(rm_dir).get("ensemble") or []
    if not members:
        return first
    return RewardEnsemble([first, *(RewardModel.load(rm_dir / m, dtype, device) for m in members)], penalty)


# --- evaluation -----------------------------------------------------------------------------
def score_comparisons(rm: RewardModel | RewardEnsemble, comparisons: list[dict]) -> list[list[float]]:
    """Raw reward of every response of every comparison (K per comparison)."""
    flat_m = [c["messages"] for c in comparisons for _ in c["responses"]]
    flat_r = [r for c in comparisons for r in c["responses"]]
    scores = rm.score(flat_m, flat_r).tolist() if flat_r else []
    out, at = [], 0
    for c in comparisons:
        out.append(scores[at: at + len(c["responses"])])
        at += len(c["responses"])
    return out
