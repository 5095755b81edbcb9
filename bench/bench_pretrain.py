"""Pre-training throughput and model FLOPs utilisation (MFU) of the embedded model on this machine.

    .venv/bin/python bench/bench_pretrain.py [--config configs/default.yaml] [--steps 8] [--set k=v ...]

Peak is measured in the same run (a large fp32 matmul), so MFU is relative to what this CPU
actually delivers now, not a datasheet. FLOPs per token follow nanoGPT's estimate_mfu (PaLM
appendix B): 6 * N for the weight matmuls forward + backward, plus 12 * L * d * T for attention.
Writes bench/results/pretrain.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from chatrlhf.config import load_config
from chatrlhf.lm.data import lm_loss
from chatrlhf.lm.modeling import build_tiny_llama, count_params
from chatrlhf.lm.tokenizer import train_tokenizer
from chatrlhf.lm.training import configure_threads
from chatrlhf.stages.pretrain import make_optimizer

RESULTS = Path(__file__).resolve().parent / "results"


def matmul_peak_flops(n: int = 1024, seconds: float = 1.5) -> float:
    """Sustained fp32 FLOP/s of an n x n matmul (2 n^3 FLOPs each), best of short bursts."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up: thread pool, caches
    best, t_end = 0.0, time.time() + seconds
    while time.time() < t_end:
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t0))
    return best


def flops_per_token(n_params: int, n_layers: int, hidden: int, seq_len: int) -> float:
    """nanoGPT estimate_mfu: 6N (matmuls, fwd + bwd) + 12 L d T (attention scores and values)."""
    return 6 * n_params + 12 * n_layers * hidden * seq_len


def tokenizer_for(cfg):
    """A BPE of the configured size on the world corpus when present, else on generic text."""
    world = cfg.stage_dir("world") / "corpus_train.jsonl"
    if world.is_file():
        texts = [json.loads(line)["text"] for line in world.read_text().splitlines()[:3000]]
    else:
        texts = [f"Document {i}: the baker of town {i % 37} sells {i % 11} loaves to person {i % 53}." for i in range(3000)]
    return train_tokenizer(texts, cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency)


def time_training(cfg, tokenizer, steps: int, autocast_bf16: bool, warmup: int = 2) -> float:
    """Seconds per optimizer step of the pre-training inner loop (forward, backward, clip, AdamW)."""
    torch.manual_seed(0)
    pc = cfg.pretrain
    model = build_tiny_llama(cfg.model, tokenizer)
    opt = make_optimizer(model, pc.learning_rate, pc.weight_decay)
    x = torch.randint(0, len(tokenizer), (pc.batch_size, pc.seq_len + 1))
    times = []
    for i in range(steps + warmup):  # the first steps pay allocation and thread start-up
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast_bf16):
            loss = lm_loss(model, x[:, :-1], x[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), pc.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]  # median: robust to other processes on a shared machine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--set", action="append", default=[], help="dotted override, e.g. pretrain.batch_size=8")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--no-bf16", action="store_true", help="skip the bf16-autocast comparison")
    args = ap.parse_args()
    cfg = load_config(args.config if Path(args.config).is_file() else None, args.set)
    threads = configure_threads(cfg.run.threads)
    tokenizer = tokenizer_for(cfg)
    probe = build_tiny_llama(cfg.model, tokenizer)
    n_params, tokens_per_step = count_params(probe), cfg.pretrain.batch_size * cfg.pretrain.seq_len
    fpt = flops_per_token(n_params, cfg.model.num_layers, cfg.model.hidden_size, cfg.pretrain.seq_len)

    peak = matmul_peak_flops()
    step_s = time_training(cfg, tokenizer, args.steps, autocast_bf16=False)
    tok_s = tokens_per_step / step_s
    result = {
        "bench": "pretrain", "device": "cpu", "cpu": platform.processor() or platform.machine(),
        "threads": threads, "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "params": n_params, "batch_size": cfg.pretrain.batch_size, "seq_len": cfg.pretrain.seq_len,
        "flops_per_token": fpt, "step_s": step_s, "tokens_per_s": tok_s,
        "achieved_gflops": fpt * tok_s / 1e9, "peak_matmul_gflops": peak / 1e9, "mfu": fpt * tok_s / peak,
    }
    if not args.no_bf16:  # the reason pretrain.mixed_precision defaults to "no" on CPU
        bf16_s = time_training(cfg, tokenizer, 2, autocast_bf16=True, warmup=1)  # slow on CPUs without bf16 units
        result.update(bf16_tokens_per_s=tokens_per_step / bf16_s, bf16_speedup=step_s / bf16_s)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pretrain.json").write_text(json.dumps(result, indent=2))
    for k, v in result.items():
        print(f"{k:>20}: {v:,.4g}" if isinstance(v, float) else f"{k:>20}: {v}")


if __name__ == "__main__":
    sys.exit(main())
