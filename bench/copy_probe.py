"""Can a model copy from its context? Next-token probes of in-context copying.

    python bench/copy_probe.py MODEL_DIR [MODEL_DIR ...] [--n 200] [--json out.json]
    python bench/copy_probe.py --synthetic runs/default/pretrain --lr 0.005 0.001 0.0003 [--steps 1500]
        [--batch 4] [--task marker|induction] [--heads H] [--seed S] [--weight-decay W] [--every N]
    python bench/copy_probe.py --chat runs/default/world runs/default/sft [MODEL_DIR ...]

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

`--chat WORLD_DIR` asks the same of a chat model on the world's own eval prompts: its greedy answers
(24 new tokens) to the prompts of the tasks answered by reading the prompt (list_first, list_last,
count, repeat), each scored by the rule-based verifier (`chatrlhf.lm.verifiers.check`, 0-1).

`--synthetic` asks whether the architecture can learn to copy at all: a freshly initialised model of
MODEL_DIR's config trains on nothing but copying (a run of 5-15 random tokens, a marker, the same run
again), at pre-training's batch (4 x 128 tokens), AdamW with weight decay 0.1, for each learning rate.
Half the tokens are random (ln 190 = 5.25 nats) and half can be copied (0 nats once learnt): the
loss falls from about 5 towards 2.6 as the copying circuit forms. The marker makes a positional
shortcut possible (copy the token as far after the marker as this one is after the run's start);
`--task induction` takes it away: earlier stretches recur at random places with no marker, and only
the recurring tokens are scored (5.25 nats until the model finds the earlier occurrence, near 0 once
it does), which is the copying a list item or a quoted line needs. `--heads H` gives the fresh
model H attention heads of hidden_size / H dimensions each instead of MODEL_DIR's.
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


@torch.no_grad()
def chat_probe(model_dir: str, world_dir: str) -> dict[str, float]:
    """Mean verifier score of greedy answers to the world's eval prompts that need reading the prompt."""
    from chatrlhf.evaluate.headline import CONTEXT_TASKS
    from chatrlhf.lm.verifiers import check

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    scores: dict[str, list[float]] = {}
    for line in Path(world_dir, "prompts_eval.jsonl").read_text().splitlines():
        p = json.loads(line)
        if p["task"] not in CONTEXT_TASKS or not p.get("ground_truth"):
            continue
        ids = tok.apply_chat_template(p["messages"], add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)["input_ids"]
        out = model.generate(ids, max_new_tokens=24, do_sample=False)
        answer = tok.decode(out[0][ids.shape[1]:], skip_special_tokens=True)
        scores.setdefault(p["task"], []).append(check(p["ground_truth"], answer))
    return {t: sum(v) / len(v) for t, v in sorted(scores.items())}


def synthetic_row(rng: random.Random, task: str, low: int = 10, high: int = 200) -> tuple[list[int], list[int]]:
    """129 tokens of a copying task and the targets that count (-100: not scored).

    `marker`: runs of 5-15 random tokens, each followed by a marker and the same run again; every
    next token is scored. `induction`: random tokens in which, now and then, an earlier stretch of
    3-10 tokens comes again, with no marker; only the repeated tokens after a stretch's first are
    scored, so the loss is ln 190 = 5.25 until the model finds the earlier occurrence (an induction
    head) and near 0 once it does. The random tokens are ids in [low, high)."""
    seq: list[int] = []
    scored: list[bool] = []
    while len(seq) < 129:
        if task == "marker":
            run = [rng.randrange(low, high) for _ in range(rng.randint(5, 15))]
            seq += [1, *run, 2, *run]
            scored += [True] * (2 * len(run) + 2)
        elif len(seq) > 12 and rng.random() < 0.5:
            n = rng.randint(3, 10)
            start = rng.randrange(0, len(seq) - n)
            seq += seq[start:start + n]
            scored += [False] + [True] * (n - 1)
        else:
            n = rng.randint(3, 10)
            seq += [rng.randrange(low, high) for _ in range(n)]
            scored += [False] * n
    return seq[:129], [t if ok else -100 for t, ok in zip(seq[1:129], scored[1:129])]


def synthetic_batch(rng: random.Random, task: str, n: int, low: int = 10, high: int = 200
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """n synthetic rows as (inputs, targets) tensors of 128 tokens each."""
    rows = [synthetic_row(rng, task, low, high) for _ in range(n)]
    return torch.tensor([r[0][:-1] for r in rows]), torch.tensor([r[1] for r in rows])


def synthetic(model_dir: str, lr: float, steps: int, every: int = 250, batch: int = 4,
              task: str = "marker", heads: int = 0, seed: int = 0, weight_decay: float = 0.1) -> list[tuple[int, float]]:
    """(step, mean training loss of the last `every` steps) of a fresh model trained only to copy."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    config.vocab_size = 200
    if heads:
        config.num_attention_heads = config.num_key_value_heads = heads
        config.head_dim = config.hidden_size // heads
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    rng = random.Random(seed)
    return train_copying(model, lambda: synthetic_batch(rng, task, batch), lr, steps, every, weight_decay=weight_decay)


def train_copying(model, batch_fn, lr: float, steps: int, every: int = 250,
                  log: bool = False, weight_decay: float = 0.1) -> list[tuple[int, float]]:
    """AdamW (weight decay 0.1 unless given, clip 1.0) on `batch_fn()`'s (inputs, targets; -100
    unscored) for `steps` steps; (step, mean loss of the last `every` steps)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    curve, window = [], []
    for step in range(1, steps + 1):
        x, y = batch_fn()
        loss = torch.nn.functional.cross_entropy(model(input_ids=x).logits.flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        window.append(loss.item())
        if step % every == 0:
            curve.append((step, sum(window) / len(window)))
            window = []
            if log:
                print(f"step {step} loss {curve[-1][1]:.2f}", flush=True)
    return curve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--json", default=None)
    ap.add_argument("--synthetic", action="store_true", help="train fresh models of the first MODEL_DIR's config to copy")
    ap.add_argument("--lr", type=float, nargs="+", default=[0.005, 0.001, 0.0003])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=4, help="--synthetic: sequences of 128 tokens per step")
    ap.add_argument("--task", choices=["marker", "induction"], default="marker", help="--synthetic: what to copy")
    ap.add_argument("--heads", type=int, default=0, help="--synthetic: attention heads (0: MODEL_DIR's)")
    ap.add_argument("--seed", type=int, default=0, help="--synthetic: the fresh model's initialisation and data seed")
    ap.add_argument("--weight-decay", type=float, default=0.1, help="--synthetic: AdamW weight decay")
    ap.add_argument("--every", type=int, default=250, help="--synthetic: steps per point of the loss curve")
    ap.add_argument("--chat", action="store_true", help="the first argument is a world directory; probe chat models on its eval prompts")
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.chat:
        world_dir, models = args.models[0], args.models[1:]
        res = {m: chat_probe(m, world_dir) for m in models}
        for m, r in res.items():
            print(m, "  ".join(f"{k} {v:.3f}" for k, v in r.items()), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({"world": world_dir, "models": res}, indent=2) + "\n")
        return
    if args.synthetic:
        curves = {}
        for lr in args.lr:
            curves[f"{lr:g}"] = synthetic(args.models[0], lr, args.steps, every=args.every, batch=args.batch,
                                           task=args.task, heads=args.heads, seed=args.seed,
                                           weight_decay=args.weight_decay)
            print(f"lr {lr:g}: " + ", ".join(f"step {s} loss {v:.2f}" for s, v in curves[f"{lr:g}"]), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({"model": args.models[0], "task": args.task, "batch": args.batch,
                                                   "heads": args.heads or None, "seed": args.seed,
                                                   "weight_decay": args.weight_decay, "curves": curves}, indent=2) + "\n")
        return
    out = {"chance": {"list": 1 / len(vocab.LIST_ITEMS), "sing": 1 / len(vocab.REPEAT_WORDS)}, "n": args.n, "models": {}}
    for m in args.models:
        out["models"][m] = probe(m, args.n)
        print(m, "  ".join(f"{k} {v:.3f}" for k, v in out["models"][m].items()), flush=True)
    print(f"chance: a list item {out['chance']['list']:.3f}, a repeated word {out['chance']['sing']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
