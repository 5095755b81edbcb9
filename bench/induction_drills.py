"""Word drills that teach in-context copying: pre-training text in which stretches of words recur.

    python bench/induction_drills.py runs/default/world runs/drills [--drills 40000] [--mix-drills 23000]
        [--corpus-copies 12] [--words N] [--repeat P]
        [--stretch MIN MAX]

Writes two `pretrain.data` files (JSON lines, a `text` field) into OUT_DIR:

- `drills.jsonl`: `--drills` documents of about 90 words drawn at random from the words of the
  world's pre-training corpus, in which, half the time, a stretch of 3-10 words already written
  recurs, at a random place and with no marker. Only a model that finds the stretch's earlier
  occurrence and copies what followed it (an induction head) predicts the recurring words: this is
  `bench/copy_probe.py --synthetic --task induction` on the model's own vocabulary.
- `mix.jsonl`: the world's corpus `--corpus-copies` times, then `--mix-drills` drills (each file
  written from the same seed), for pre-training on the corpus while the drills keep the copying.

`--words N` draws the drills' words from the corpus's N most frequent words only (0: every word);
`--repeat P` is the chance that the next stretch recurs (0.5); `--stretch MIN MAX` its length in
words (3 10).

`docs/RESULTS.md` ("How far the headline could go") gives the pre-training commands that read them.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter
from pathlib import Path


def corpus_docs(world_dir: Path) -> list[str]:
    with open(world_dir / "corpus_train.jsonl") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def drill_words(rng: random.Random, words: list[str], n_words: int = 90, repeat: float = 0.5,
                stretch: tuple[int, int] = (3, 10)) -> tuple[list[str], list[bool]]:
    """About n_words random words; with chance `repeat` the next stretch repeats an earlier one.
    Also, per word, whether reading the context predicts it: a recurring word after its stretch's first."""
    seq: list[str] = []
    known: list[bool] = []
    while len(seq) < n_words:
        n = rng.randint(*stretch)
        if len(seq) > max(12, n) and rng.random() < repeat:
            start = rng.randrange(0, len(seq) - n)
            seq += seq[start:start + n]
            known += [False] + [True] * (n - 1)
        else:
            seq += [rng.choice(words) for _ in range(n)]
            known += [False] * n
    return seq, known


def drill(rng: random.Random, words: list[str], n_words: int = 90, repeat: float = 0.5,
          stretch: tuple[int, int] = (3, 10)) -> str:
    """A drill as text (`drill_words`, joined)."""
    return " ".join(drill_words(rng, words, n_words, repeat, stretch)[0])


def write(path: Path, docs: list[str], words: list[str], n_drills: int, corpus_copies: int,
          repeat: float = 0.5, stretch: tuple[int, int] = (3, 10)) -> None:
    rng = random.Random(0)
    with open(path, "w") as f:
        for _ in range(corpus_copies):
            for d in docs:
                f.write(json.dumps({"text": d}) + "\n")
        for _ in range(n_drills):
            f.write(json.dumps({"text": drill(rng, words, repeat=repeat, stretch=stretch)}) + "\n")


def corpus_words(docs: list[str], most_common: int = 0) -> list[str]:
    """The words of a pre-training corpus (its `most_common` most frequent, 0: all)."""
    counts = Counter(w for d in docs for w in re.findall(r"[A-Za-z]+", d))
    return sorted(counts) if not most_common else sorted(w for w, _ in counts.most_common(most_common))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("world_dir", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--drills", type=int, default=40000, help="documents in drills.jsonl")
    ap.add_argument("--mix-drills", type=int, default=23000, help="drills after the corpus in mix.jsonl")
    ap.add_argument("--corpus-copies", type=int, default=12, help="copies of the corpus in mix.jsonl")
    ap.add_argument("--words", type=int, default=0, help="draw from the N most frequent words (0: all)")
    ap.add_argument("--repeat", type=float, default=0.5, help="chance that the next stretch recurs")
    ap.add_argument("--stretch", type=int, nargs=2, default=[3, 10], help="a stretch's length in words")
    args = ap.parse_args()
    docs = corpus_docs(args.world_dir)
    words = corpus_words(docs, args.words)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write(args.out_dir / "drills.jsonl", docs, words, args.drills, 0, args.repeat, tuple(args.stretch))
    write(args.out_dir / "mix.jsonl", docs, words, args.mix_drills, args.corpus_copies, args.repeat,
          tuple(args.stretch))
    print(f"{len(words)} words; {args.out_dir / 'drills.jsonl'} ({args.drills} drills), "
          f"{args.out_dir / 'mix.jsonl'} ({args.corpus_copies} x {len(docs)} documents + {args.mix_drills} drills)")


if __name__ == "__main__":
    main()
