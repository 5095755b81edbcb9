"""A warm-up on word drills whose loss counts only the words that reading the context predicts.

    python bench/induction_warmup.py MODEL_DIR WORLD_DIR OUT_DIR [--steps 2000] [--lr 0.001] [--batch 16]
        [--seed 0] [--random-tokens]

A freshly initialised model of MODEL_DIR's config, with MODEL_DIR's tokenizer, reads drills of the
world's corpus words (`bench/induction_drills.py`: stretches of 3-10 words recur at random places)
in rows of 128 tokens. Only the tokens of a recurring word after its stretch's first are scored,
as in `bench/copy_probe.py --synthetic --task induction`: the loss is that of guessing among the
corpus's words until the model finds the stretch's earlier occurrence (an induction head), and
near 0 once it does. Pre-training on `drills.jsonl` as plain text scores every token instead,
most of them random words no model can predict. With --random-tokens the rows are instead
`bench/copy_probe.py --synthetic --task induction`'s own, over every ordinary token of MODEL_DIR's
tokenizer rather than 190 ids: random tokens in which earlier stretches recur, only the recurring
tokens scored (WORLD_DIR unused).

Prints the loss every 250 steps and saves the model with its tokenizer to OUT_DIR (a
`model.name_or_path` for pre-training on the corpus), its curve in OUT_DIR/curve.json.
`python bench/copy_probe.py OUT_DIR` then says whether it copies (the quoted-line probe).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from copy_probe import synthetic_batch, train_copying  # noqa: E402
from induction_drills import corpus_docs, corpus_words, drill_words  # noqa: E402

ROW = 129  # 128 inputs and the next token


def drill_tokens(tok, rng: random.Random, words: list[str]) -> tuple[list[int], list[bool]]:
    """One drill's token ids and, per token, whether it is scored (part of a predictable word)."""
    seq, known = drill_words(rng, words)
    text = " ".join(seq)
    ends, pos = [], 0
    for w in seq:
        pos += len(w)
        ends.append(pos)
        pos += 1
    enc = tok(text, return_offsets_mapping=True, add_special_tokens=False)
    scored, j = [], 0
    for _, end in enc["offset_mapping"]:
        while end > ends[j]:
            j += 1
        scored.append(known[j])
    return enc["input_ids"], scored


class DrillRows:
    """Rows of ROW tokens cut from drills joined by the end-of-text token, with their targets."""

    def __init__(self, tok, words: list[str], seed: int):
        self.tok, self.words, self.rng = tok, words, random.Random(seed)
        self.ids: list[int] = []
        self.scored: list[bool] = []

    def row(self) -> tuple[list[int], list[int]]:
        while len(self.ids) < ROW:
            ids, scored = drill_tokens(self.tok, self.rng, self.words)
            self.ids += [*ids, self.tok.eos_token_id]
            self.scored += [*scored, False]
        ids, scored = self.ids[:ROW], self.scored[:ROW]
        self.ids, self.scored = self.ids[ROW:], self.scored[ROW:]
        return ids, [t if s else -100 for t, s in zip(ids[1:], scored[1:])]

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.row() for _ in range(n)]
        return torch.tensor([r[0][:-1] for r in rows]), torch.tensor([r[1] for r in rows])


class TokenRows:
    """`copy_probe.synthetic_batch`'s induction rows over the tokenizer's ordinary tokens."""

    def __init__(self, tok, seed: int):
        self.rng, self.low, self.high = random.Random(seed), len(tok.all_special_ids), len(tok)

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return synthetic_batch(self.rng, "induction", n, self.low, self.high)


def warm_up(model_dir: str, world_dir: Path, out_dir: Path, steps: int, lr: float, batch: int,
            seed: int, every: int = 250, random_tokens: bool = False) -> list[tuple[int, float]]:
    tok = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    data = TokenRows(tok, seed) if random_tokens else DrillRows(tok, corpus_words(corpus_docs(world_dir)), seed)
    curve = train_copying(model, lambda: data.batch(batch), lr, steps, every, log=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    (out_dir / "curve.json").write_text(json.dumps({"model": model_dir, "world": str(world_dir), "lr": lr,
                                                    "batch": batch, "seed": seed, "random_tokens": random_tokens,
                                                    "curve": curve}, indent=2) + "\n")
    return curve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("world_dir", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=0.001)
    ap.add_argument("--batch", type=int, default=16, help="rows of 128 tokens a step")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--random-tokens", action="store_true", help="random-token induction rows instead of word drills")
    args = ap.parse_args()
    warm_up(args.model_dir, args.world_dir, args.out_dir, args.steps, args.lr, args.batch, args.seed,
            random_tokens=args.random_tokens)


if __name__ == "__main__":
    main()
