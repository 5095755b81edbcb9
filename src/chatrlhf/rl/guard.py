"""The over-optimisation guard: held-out prompts answered by the policy, compared against SFT
answers by the training labelers; the best checkpoint by that win rate is the one exported.
"""

from __future__ import annotations

import random


# --- the over-optimisation guard -------------------------------------------------------------
class LabelerGuard:
    """Win rate of the policy against fixed SFT answers on held-out prompts, judged by training
    labelers (not the held-out ones, not the gold score): what a real team could afford.

    `labelers`: one pool for every prompt, or one pool per prompt (a group-conditioned policy is
    judged on each prompt by the group that prompt asks for)."""

    def __init__(self, prompts: list[dict], baseline_texts: list[str], labelers: list, seed: int,
                 per_prompt: int = 1):
        pools = labelers if labelers and isinstance(labelers[0], list) else [labelers] * len(prompts)
        if len(pools) != len(prompts):
            raise ValueError(f"LabelerGuard: {len(pools)} labeler pools for {len(prompts)} prompts")
        self.prompts, self.baseline, self.pools, self.seed = prompts, baseline_texts, pools, seed
        self.per_prompt = max(1, per_prompt)

    def win_rate(self, texts: list[str], iteration: int) -> float:
        rng = random.Random(self.seed * 7919 + iteration)
        wins = []
        for i, (p, t, b, pool) in enumerate(zip(self.prompts, texts, self.baseline, self.pools)):
            for j in range(min(self.per_prompt, len(pool))):  # distinct labelers per pair: their noise averages out
                lab = pool[(i * self.per_prompt + j) % len(pool)]
                if rng.random() < 0.5:  # random order: a labeler's position bias favours neither side
                    wins.append(float(lab.compare(p, t, b, rng)))
                else:
                    wins.append(1.0 - float(lab.compare(p, b, t, rng)))
        return sum(wins) / max(1, len(wins))


class ComparisonGuard:
    """The guard without simulated labelers: held-out human comparisons (the RM's validation data,
    never trained on). Each pair scores the policy's implicit reward, log pi(y|x) - log pi_SFT(y|x)
    summed over the reply (DPO's reward), of the preferred reply against the other: 1 when it is
    higher, 0.5 for a tie (the SFT model itself ties every pair), 0 when lower. A policy that drifts
    where people did not want it loses pairs even when the RM keeps paying, and it costs one scoring
    pass, no sampling."""

    def __init__(self, comparisons: list[dict], tokenizer, max_len: int, batch_size: int = 8):
        from chatrlhf.lm.rankings import ranking_pairs

        self.prompts: list[dict] = []  # nothing to sample
        self.batch_size, self.pad_id = batch_size, tokenizer.pad_token_id
        self.examples, self.pairs = [], []
        for c in comparisons:
            ranks = c["rankings"][0]["ranks"] if c.get("rankings") else []
            idx: dict[int, int] = {}
            for i, r in enumerate(c["responses"]):
                ex = _reply_example(tokenizer, [*c["messages"], {"role": "assistant", "content": r}], max_len)
                if ex is not None:
                    idx[i] = len(self.examples)
                    self.examples.append(ex)
            self.pairs += [(idx[i], idx[j]) for i, j in ranking_pairs(ranks) if i in idx and j in idx]
        self._ref: list[float] | None = None

    def __len__(self) -> int:
        return len(self.pairs)

    def _logprobs(self, model) -> list[float]:
        import torch

        from chatrlhf.lm.chat_data import IGNORE, collate_examples

        was_training = model.training
        model.eval()  # no dropout: the numbers are compared with the reference's
        device = next(model.parameters()).device
        out: list[float] = []
        with torch.no_grad():
            for i in range(0, len(self.examples), self.batch_size):
                b = collate_examples(self.examples[i:i + self.batch_size], self.pad_id)
                logits = model(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device),
                               use_cache=False).logits[:, :-1].float()
                labels = b["labels"][:, 1:].to(device)
                keep = labels != IGNORE
                lp = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
                out += (lp * keep).sum(1).tolist()
        model.train(was_training)
        return out

    def evaluate(self, policy, ref_policy) -> float:
        from chatrlhf.rl.experience import reference_model

        if self._ref is None:  # the reference never changes
            with reference_model(policy, ref_policy) as ref:
                self._ref = self._logprobs(ref)
        margin = [p - r for p, r in zip(self._logprobs(policy), self._ref)]
        wins = [1.0 if margin[c] - margin[r] > 1e-3 else 0.0 if margin[r] - margin[c] > 1e-3 else 0.5
                for c, r in self.pairs]
        return sum(wins) / max(1, len(wins))


def _reply_example(tokenizer, conv: list[dict], max_len: int):
    """The conversation with the loss mask on its last reply only, at most max_len tokens: the
    prompt's tail and the reply's head (a long reply is still judged on its start)."""
    from chatrlhf.lm.chat_data import IGNORE, Example, assistant_mask

    ids, mask = assistant_mask(tokenizer, conv)
    if not any(mask):
        return None
    end = max(i for i, m in enumerate(mask) if m) + 1
    start = end - 1
    while start > 0 and mask[start - 1]:
        start -= 1
    lo = max(0, min(start - max_len // 4, end - max_len))
    ids, labels = ids[lo:lo + max_len], [t if lo + k >= start and lo + k < end else IGNORE
                                         for k, t in enumerate(ids[lo:lo + max_len])]
    return Example(ids, labels) if any(t != IGNORE for t in labels[1:]) else None
