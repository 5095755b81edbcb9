"""Engine throughput vs `model.generate` with the same settings (sampling, KV cache, same batch).

    .venv/bin/python bench/bench_engine.py [--model DIR] [--batch 16] [--new 48] [--repeats 3] [--n 8 --n-prompts 32]

`--n`: n samples per prompt as best-of-n draws them: `Engine.generate(prompts, n=8)` (one prefill per
prompt) against `model.generate(num_return_sequences=8)` and against the engine given each prompt
n times, all with the same n-prompts x n rows in one batch.

Without --model it uses the run's newest policy, else an embedded-size random Llama (the speed of a
forward pass does not depend on the weights). Writes bench/results/engine.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from chatrlhf.lm.engine import Engine, SamplingParams

RESULTS = Path(__file__).resolve().parent / "results"
PROMPTS = ["Who is the baker of Varnok?", "Tell me about Selmouth.", "What is two plus two?",
           "List three fruits.", "Hello! How are you today?", "Reverse: plum, pear, apple."]


def bench_model(model_dir: str | None = None):
    """(model, tokenizer, source): the given dir, the run's newest policy, or a random embedded-size Llama."""
    from chatrlhf.config import Config, ModelConfig
    from chatrlhf.layout import resolve_model
    from chatrlhf.lm.modeling import build_tiny_llama, load_causal_lm, load_tokenizer

    try:
        path = resolve_model(Config(), model_dir)
        return load_causal_lm(path), load_tokenizer(path), str(path)
    except FileNotFoundError:
        if model_dir:
            raise
    from chatrlhf.lm.tokenizer import train_tokenizer

    torch.manual_seed(0)
    tok = train_tokenizer([p * 3 for p in PROMPTS] * 50, vocab_size=600)
    return build_tiny_llama(ModelConfig(), tok).eval(), tok, "random embedded-size Llama (no run found)"


def prompt_ids(tok, n: int) -> list[list[int]]:
    msgs = [[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}] for i in range(n)]
    return [tok(tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False), add_special_tokens=False)["input_ids"]
            for m in msgs]


def run_hf(model, tok, prompts: list[list[int]], new: int, seed: int, n: int = 1) -> int:
    """model.generate on the same left-padded batch; returns generated tokens (pads after eos excluded)."""
    enc = tok.pad({"input_ids": prompts}, return_tensors="pt", padding_side="left")
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=new,
                             num_return_sequences=n, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    resp = out[:, enc["input_ids"].shape[1]:]
    n = 0
    for row in resp.tolist():
        n += row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
    return n


def run_engine(eng: Engine, prompts: list[list[int]], new: int, seed: int, n: int = 1) -> int:
    gens = eng.generate(prompts, SamplingParams(max_new_tokens=new, temperature=1.0, seed=seed), n)
    return sum(len(g.token_ids) for g in gens)


def timed_pair(fns: dict, repeats: int) -> dict[str, dict[str, float]]:
    """Time each function `repeats` times, alternating them so a busy machine slows both alike."""
    for fn in fns.values():
        fn(0)  # warm-up
    acc = {k: [0, 0.0] for k in fns}
    for r in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            acc[k][0] += fn(r + 1)
            acc[k][1] += time.perf_counter() - t0
    return {k: {"tokens": n, "seconds": round(t, 3), "tokens_per_s": round(n / t, 1)} for k, (n, t) in acc.items()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--new", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = auto: 1 on a busy CPU).")
    ap.add_argument("--n", type=int, default=8, help="samples per prompt for the best-of-n row (0 = skip it).")
    ap.add_argument("--n-prompts", type=int, default=32)
    args = ap.parse_args(argv)
    from chatrlhf.lm.training import configure_threads

    threads = configure_threads(args.threads)
    model, tok, source = bench_model(args.model)
    eng = Engine(model, tok)
    rows = []
    for b in args.batch:
        ps = prompt_ids(tok, b)
        t = timed_pair({"engine": lambda s: run_engine(eng, ps, args.new, s),
                        "hf": lambda s: run_hf(model, tok, ps, args.new, s)}, args.repeats)
        ours, hf = t["engine"], t["hf"]
        rows.append({f"b{b}_engine_tokens_per_s": ours["tokens_per_s"], f"b{b}_generate_tokens_per_s": hf["tokens_per_s"],
                     f"b{b}_speedup": round(ours["tokens_per_s"] / hf["tokens_per_s"], 2)})
        print(f"batch {b:3d}: engine {ours['tokens_per_s']:8.1f} tok/s   model.generate {hf['tokens_per_s']:8.1f} tok/s"
              f"   x{rows[-1][f'b{b}_speedup']}", file=sys.stderr)
    if args.n > 1:
        ps, n = prompt_ids(tok, args.n_prompts), args.n
        eng.max_batch = len(ps) * n  # every row in one batch, as model.generate has them
        t = timed_pair({"engine": lambda s: run_engine(eng, ps, args.new, s, n),
                        "repeated": lambda s: run_engine(eng, [p for p in ps for _ in range(n)], args.new, s),
                        "hf": lambda s: run_hf(model, tok, ps, args.new, s, n)}, args.repeats)
        ours, rep, hf = (t[k]["tokens_per_s"] for k in ("engine", "repeated", "hf"))
        rows.append({f"n{n}_engine_tokens_per_s": ours, f"n{n}_engine_prompt_repeated_tokens_per_s": rep,
                     f"n{n}_generate_tokens_per_s": hf, f"n{n}_speedup": round(ours / hf, 2),
                     f"n{n}_speedup_vs_repeated": round(ours / rep, 2)})
        print(f"{args.n_prompts} prompts x n={n}: engine {ours:8.1f} tok/s   prompts repeated {rep:8.1f}   "
              f"model.generate(num_return_sequences) {hf:8.1f}   x{rows[-1][f'n{n}_speedup']}", file=sys.stderr)
    # one flat object (bench/run_all.py contract)
    result = {"model": source, "max_new_tokens": args.new, "threads": threads,
              "load_avg_1m": round(os.getloadavg()[0], 2)}
    for r in rows:
        result.update(r)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "engine.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
