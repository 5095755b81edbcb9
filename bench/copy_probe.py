"""Can a model copy from its context? Next-token probes of in-context copying.

    python bench/copy_probe.py MODEL_DIR [MODEL_DIR ...] [--n 200] [--json out.json]

Four probes in the pre-training corpus's own formats (`chatrlhf.world.corpus`), each the share of
n random cases where the model's most likely next token is the word to copy; every word is drawn
at random, so only reading the context predicts it (chance: one in `len(LIST_ITEMS)` or
`len(REPEAT_WORDS)`):

- `list_first`, `list_last`: "Shopping list: fig, kiwi, plum. That is 3 things. The first one is
  [fig] and the last one is [plum]": the item at a position that depends on the list's length (what
  the world's list_first / list_last prompts ask);
- `quote`: the third word of a line quoted in a forum reply ("> fig kiwi [plum]"), an induction
  copy: find the earlier occurrence of the last word and copy what followed it;
- `sing`: "The children sang the word [W] 3 times: [W]": a word a fixed number of tokens back.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from chatrlhf.world import vocab  # noqa: E402


def cases(rng: random.Random) -> dict:
    """One draw of each probe: (prefix, word to copy)."""
    items = rng.sample(vocab.LIST_ITEMS, rng.randint(2, 5))
    listing = ", ".join(items)
    shop = f"Shopping list: {listing}. That is {len(items)} things. The first one is"
    line = rng.sample(vocab.LIST_ITEMS, 4)
    word, n = rng.choice(vocab.REPEAT_WORDS), rng.randint(2, 4)
    return {"list_first": (shop, items[0]),
            "list_last": (f"{shop} {items[0]} and the last one is", items[-1]),
            "quote": (f"Thread: What is on the list?\nlumpy: {' '.join(line)}\nsunny_d: > {' '.join(line[:2])}", line[2]),
            "sing": (f"The children sang the word {word} {n} times:", word)}


@torch.no_grad()
def probe(model_dir: str, n: int) -> dict[str, float]:
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    rng, hits = random.Random(0), {}
    for _ in range(n):
        for name, (prefix, word) in cases(rng).items():
            ids = tok(prefix, return_tensors="pt", add_special_tokens=False).input_ids
            target = tok(" " + word, add_special_tokens=False).input_ids[0]
            hits[name] = hits.get(name, 0) + int(model(ids).logits[0, -1].argmax().item() == target)
    return {k: v / n for k, v in hits.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    out = {"chance": {"list": 1 / len(vocab.LIST_ITEMS), "sing": 1 / len(vocab.REPEAT_WORDS)}, "n": args.n, "models": {}}
    for m in args.models:
        out["models"][m] = probe(m, args.n)
        print(m, "  ".join(f"{k} {v:.3f}" for k, v in out["models"][m].items()), flush=True)
    print(f"chance: a list item {out['chance']['list']:.3f}, a repeated word {out['chance']['sing']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
