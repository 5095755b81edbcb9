"""Pre-training on the corpus with word drills beside it, the drills scored only on the words that
reading the context predicts.

    python bench/induction_mix.py WARMUP_DIR RUN_DIR [--lr 0.002] [--drill-rows 4] [--steps 3000]
        [--config configs/default.yaml] [--set KEY=VALUE ...] [--threads 1]

Each step is the default pre-training's own corpus batch (the same `PackedStream` rows of RUN_DIR's
world corpus, `pretrain.batch_size` x `pretrain.seq_len` tokens, in the same order) plus
`--drill-rows` rows of word drills (`bench/induction_warmup.py`'s `DrillRows`: stretches of the
world's words recur at random places) in which only a recurring word after its stretch's first is
scored. Pre-training on `bench/induction_drills.py`'s `mix.jsonl` scores every drill token instead,
most of them random words no model can predict. The loss is the mean over every scored token of
the step; the optimiser, schedule, clipping and weight decay are the pre-training stage's.

The model starts from WARMUP_DIR (`bench/induction_warmup.py`'s output) and is saved, with RUN_DIR's
tokenizer, as RUN_DIR/pretrain, a complete stage: `chatrlhf run --set run.out_dir=RUN_DIR` goes on
from SFT. The corpus and drill losses every 250 steps are in RUN_DIR/pretrain/meta.json.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from chatrlhf.config import load_config
from chatrlhf.lm.data import PackedStream, eval_chunks, evaluate_lm_loss, load_text_corpus, pack_documents
from chatrlhf.lm.modeling import load_causal_lm, load_tokenizer, save_stage
from chatrlhf.lm.training import cosine_with_warmup
from chatrlhf.stages.pretrain import make_optimizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from induction_drills import corpus_words  # noqa: E402
from induction_warmup import DrillRows  # noqa: E402


def step_losses(model, x: torch.Tensor, y: torch.Tensor, n_corpus: int) -> tuple[torch.Tensor, float, float]:
    """The step's loss (mean over every scored token) and, for the log, the corpus rows' and the
    drill rows' own means."""
    logits = model(input_ids=x, use_cache=False).logits.float()
    per_token = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100, reduction="none").view_as(y)
    scored = y != -100
    corpus, drills = per_token[:n_corpus].sum(), per_token[n_corpus:].sum()
    n_c, n_d = scored[:n_corpus].sum(), scored[n_corpus:].sum()
    return (corpus + drills) / (n_c + n_d), (corpus / n_c).item(), (drills / n_d.clamp(min=1)).item()


def train(warmup_dir: str, run_dir: Path, cfg, lr: float, drill_rows: int, log_every: int = 250) -> dict:
    pc = cfg.pretrain
    world, tokenizer = run_dir / "world", load_tokenizer(run_dir / "tokenizer")
    corpus = load_text_corpus(None, world)
    stream = PackedStream(pack_documents(tokenizer, corpus.train), pc.seq_len, pc.batch_size, cfg.run.seed)
    drills = DrillRows(tokenizer, corpus_words(corpus.train), cfg.run.seed)
    torch.manual_seed(cfg.run.seed)
    model = load_causal_lm(warmup_dir, "float32")
    model.train()
    opt = make_optimizer(model, lr, pc.weight_decay)
    sched = cosine_with_warmup(opt, pc.warmup_steps, pc.max_steps, pc.min_lr_ratio)
    curve, window = [], []
    for step in range(pc.max_steps):
        xc, yc = stream.batch(step)
        xd, yd = drills.batch(drill_rows)
        loss, corpus_loss, drill_loss = step_losses(model, torch.cat([xc, xd]), torch.cat([yc, yd]), len(xc))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), pc.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        window.append((corpus_loss, drill_loss))
        if (step + 1) % log_every == 0:
            c, d = (sum(w[i] for w in window) / len(window) for i in (0, 1))
            curve.append({"step": step + 1, "corpus_loss": round(c, 4), "drill_loss": round(d, 4)})
            print(f"step {step + 1}: corpus loss {c:.3f}, drill loss (recurring words) {d:.3f}", flush=True)
            window = []
    val = eval_chunks(pack_documents(tokenizer, corpus.val), pc.seq_len, 4 * pc.eval_batches * pc.batch_size)
    val_loss = evaluate_lm_loss(model, val, pc.batch_size, torch.device("cpu"))
    meta = {"stage": "pretrain", "data": f"{world} with word drills (bench/induction_mix.py)", "steps": pc.max_steps,
            "warmup_model": warmup_dir, "learning_rate": lr, "corpus_rows": pc.batch_size, "drill_rows": drill_rows,
            "val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50)), "curve": curve}
    save_stage(model, tokenizer, run_dir / "pretrain", meta)
    print(f"val loss {val_loss:.3f} -> {run_dir / 'pretrain'}")
    return meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("warmup_dir")
    ap.add_argument("run_dir", type=Path, help="a run directory with its world and tokenizer")
    ap.add_argument("--lr", type=float, default=0.002)
    ap.add_argument("--drill-rows", type=int, default=4, help="rows of drills beside each step's corpus rows")
    ap.add_argument("--steps", type=int, default=None, help="default: pretrain.max_steps")
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="a config override, KEY=VALUE")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    overrides = args.overrides + ([f"pretrain.max_steps={args.steps}"] if args.steps else [])
    train(args.warmup_dir, args.run_dir, load_config(args.config, overrides), args.lr, args.drill_rows)


if __name__ == "__main__":
    main()
