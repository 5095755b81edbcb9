"""Engine throughput vs `model.generate` with the same settings (sampling, KV cache, same batch).

    .venv/bin/python bench/bench_engine.py [--model DIR] [--batch 1 16 32] [--new 48] [--repeats 5] [--n 8 --n-prompts 32]

Three generators take turns on the same prompts and seeds, repeat after repeat, so a busy machine
slows them alike: the engine's fast path (the fused decode step, engine_fast.py), the engine on the
transformers forward (`Engine(fast=False)`), and `model.generate`. Each figure is the median over
repeats (with min and max); each speedup is the median of the per-repeat ratios. Also:

- `--n`: n samples per prompt as best-of-n and the RM's K samples draw them (n-prompts x n rows in one
  batch, each prompt prefilled once) against `model.generate(num_return_sequences=n)`;
- the fraction of the CPU's fp32 matmul peak (an n x n matmul on the same threads) the fast path
  reaches at each shape: tokens/s x FLOPs per token (2 x the matmul parameters, lm head included,
  plus attention over the mean context);
- threads: the fast path on 1 and on 2 intra-op threads, alternating;
- exactness: the fast path and the transformers path sample the same tokens for the same seeds, and
  the largest log-prob difference;
- the compiled one-row step (`Engine(compile=True)`, engine_compiled.CompiledStep) as a fourth generator
  at batch 1: its first call (compiling into an empty cache directory), whether it samples the eager
  fast path's tokens, tokens/s; and the four at batch 1 with the chat's sampling settings (`b1chat`:
  chat.temperature and chat.top_p, a sorted draw) (`--no-compiled` skips both);
- `--compile-probe` (off by default: it compiles for a minute or more): the fused decode step against
  the same step compiled by torch.compile (inductor's C++ backend, dynamic shapes, the cache writes
  kept out of the graph), at batch 1 and 32: compile seconds, step speedup, largest logit difference.

Without --model it uses the run's newest policy, else an embedded-size random Llama (the speed of a
forward pass does not depend on the weights). Writes bench/results/engine.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ppo import matmul_peak  # noqa: E402  (the same CPU ceiling as the PPO bench)

from chatrlhf.config_sections import ChatConfig
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


def run_hf(model, tok, prompts: list[list[int]], new: int, seed: int, n: int = 1, temperature: float = 1.0,
           top_p: float = 1.0) -> int:
    """model.generate on the same left-padded batch; returns generated tokens (pads after eos excluded)."""
    enc = tok.pad({"input_ids": prompts}, return_tensors="pt", padding_side="left")
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = model.generate(**enc, do_sample=True, temperature=temperature, top_k=0, top_p=top_p, max_new_tokens=new,
                             num_return_sequences=n, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    resp = out[:, enc["input_ids"].shape[1]:]
    n = 0
    for row in resp.tolist():
        n += row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
    return n


def run_engine(eng: Engine, prompts: list[list[int]], new: int, seed: int, n: int = 1, temperature: float = 1.0,
               top_p: float = 1.0) -> int:
    gens = eng.generate(prompts, SamplingParams(max_new_tokens=new, temperature=temperature, top_p=top_p, seed=seed), n)
    return sum(len(g.token_ids) for g in gens)


def timed(fns: dict, repeats: int, inner: int = 1) -> dict[str, list[float]]:
    """tokens/s of each function per repeat, the functions alternating within each repeat; `inner`
    calls (seeds differ) per function and repeat, so short calls are timed over a longer stretch."""
    for fn in fns.values():
        fn(0)  # warm-up
    rates: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            n = sum(fn(1 + r * inner + i) for i in range(inner))
            rates[k].append(n / (time.perf_counter() - t0))
    return rates


def summary(xs: list[float], nd: int = 1) -> dict[str, float]:
    return {"median": round(statistics.median(xs), nd), "min": round(min(xs), nd), "max": round(max(xs), nd)}


def ratios(a: list[float], b: list[float]) -> dict[str, float]:
    return summary([x / y for x, y in zip(a, b)], 2)


def flat(key: str, s: dict[str, float]) -> dict[str, float]:
    """One flat JSON object (bench/run_all.py contract): key = median, key_min, key_max."""
    return {key: s["median"], f"{key}_min": s["min"], f"{key}_max": s["max"]}


def flops_per_token(model, context: float) -> float:
    """2 x the parameters every token multiplies (projections, MLP, lm head) + attention (q.k and
    p.v over `context` cached positions)."""
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    attn = c.hidden_size * head_dim * (2 * c.num_attention_heads + 2 * c.num_key_value_heads)
    mlp = 3 * c.hidden_size * c.intermediate_size
    matmul = c.num_hidden_layers * (attn + mlp) + c.hidden_size * c.vocab_size
    return 2 * matmul + 4 * c.num_hidden_layers * c.num_attention_heads * head_dim * context


def exactness(fast: Engine, slow: Engine, tok, new: int) -> dict:
    """Same seeds on both paths: are the tokens equal, and how far apart are the log-probs?"""
    ps = prompt_ids(tok, 6)
    same, diff, tokens = True, 0.0, 0
    for prompts, n in (([ps[0]], 1), (ps, 4)):
        for seed in range(3):
            p = SamplingParams(max_new_tokens=new, temperature=1.0, seed=seed)
            a, b = fast.generate(prompts, p, n), slow.generate(prompts, p, n)
            same &= [g.token_ids for g in a] == [g.token_ids for g in b]
            for x, y in zip(a, b):
                if x.token_ids == y.token_ids and x.logprobs:
                    diff = max(diff, (torch.tensor(x.logprobs) - torch.tensor(y.logprobs)).abs().max().item())
                tokens += len(x.token_ids)
    return {"exact_same_tokens": same, "exact_max_logprob_diff": diff, "exact_tokens_compared": tokens}


def compile_probe(model, repeats: int) -> dict:
    """Would torch.compile pay for itself? The fused step (eager) against a mutation-free variant of it
    compiled with inductor: attention over the cached columns plus the new token, the new keys and
    values returned and written after the call (an in-graph cache write made inductor copy the cache)."""
    import torch.nn.functional as F

    from chatrlhf.lm.engine_fast import FusedLlama, SlotKV

    f = FusedLlama(model)
    f.refresh()
    nh, nkv, d = f.n_heads, f.n_kv, f.head_dim
    cos_t, sin_t = f.rope(512, "cpu")

    def pure(tokens, pos, K, V, width: int):
        B, dims, n_qk = tokens.shape[0], (f.embed.shape[1],), nh + nkv
        cos, sin = cos_t[pos].unsqueeze(1), sin_t[pos].unsqueeze(1)
        bias = torch.where(torch.arange(width).unsqueeze(0) < pos.unsqueeze(1), 0.0, float("-inf"))
        bias = bias.unsqueeze(1).expand(B, nh, width).reshape(B * nh, 1, width)
        keys_t = K[:, :B, :, :width].flatten(1, 2).transpose(2, 3)
        vals = V[:, :B, :, :width].flatten(1, 2)
        x = F.embedding(tokens, f.embed)
        ks, vs = [], []
        for i, (w_in, eps_in, w_qkv, w_o, w_post, eps_post, w_gu, w_down) in enumerate(f.w):
            qkv = torch.mm(F.rms_norm(x, dims, w_in, eps_in), w_qkv).view(B, 2 * n_qk + nkv, d)
            qk = torch.addcmul(qkv.narrow(1, 0, n_qk) * cos, qkv.narrow(1, n_qk + nkv, n_qk), sin)
            k, v = qk.narrow(1, nh, nkv), qkv.narrow(1, n_qk, nkv)
            ks.append(k)
            vs.append(v)
            q = qk.narrow(1, 0, nh).reshape(B * nh, 1, d)
            s_old = torch.baddbmm(bias, q, keys_t[i], alpha=f.scaling)
            s_new = (q * k.reshape(B * nh, 1, d)).sum(-1, keepdim=True) * f.scaling
            p = torch.cat([s_old, s_new], -1).softmax(-1)
            a = torch.bmm(p.narrow(2, 0, width), vals[i]) + p.narrow(2, width, 1) * v.reshape(B * nh, 1, d)
            x = torch.addmm(x, a.view(B, nh * d), w_o)
            gate, up = torch.mm(F.rms_norm(x, dims, w_post, eps_post), w_gu).chunk(2, -1)
            x = torch.addmm(x, F.silu(gate) * up, w_down)
        x = F.rms_norm(x, dims, *f.norm)
        return torch.mm(x, f.head), torch.stack(ks), torch.stack(vs)

    compiled = torch.compile(pure, dynamic=True)
    out: dict = {}
    for B in (1, 32):
        kv = SlotKV(len(f.layers), nkv, d, torch.float32, "cpu")
        kv.reserve(B, 128, 0)
        kv.k.normal_()
        kv.v.normal_()
        tok, pos, width = torch.randint(3, f.embed.shape[0], (B,)), torch.full((B,), 60), 61

        def run_compiled():
            logits, k, v = compiled(tok, pos, kv.k, kv.v, width)
            slot = (kv.row_head[:B] + pos.unsqueeze(1)).view(-1)
            kv.k.view(len(f.layers), -1, d).index_copy_(1, slot, k.reshape(len(f.layers), -1, d))
            kv.v.view(len(f.layers), -1, d).index_copy_(1, slot, v.reshape(len(f.layers), -1, d))
            return logits

        with torch.no_grad():
            t0 = time.perf_counter()
            run_compiled()
            out[f"compile_b{B}_compile_s"] = round(time.perf_counter() - t0, 1)
            ref = f.step(tok, pos, kv, width)[0]
            out[f"compile_b{B}_max_logit_diff"] = float((run_compiled() - ref).abs().max())
            times: dict[str, list[float]] = {"eager": [], "compiled": []}
            for _ in range(repeats):
                for k, fn in (("eager", lambda: f.step(tok, pos, kv, width)), ("compiled", run_compiled)):
                    t0 = time.perf_counter()
                    for _ in range(100):
                        fn()
                    times[k].append((time.perf_counter() - t0) / 100)
        out.update(flat(f"compile_b{B}_step_speedup", ratios(times["eager"], times["compiled"])))
        out[f"compile_b{B}_eager_step_us"] = round(statistics.median(times["eager"]) * 1e6)
        print(f"compile probe b{B}: compile {out[f'compile_b{B}_compile_s']} s, step x{out[f'compile_b{B}_step_speedup']} "
              f"over the fused eager step ({out[f'compile_b{B}_eager_step_us']} us), "
              f"logits within {out[f'compile_b{B}_max_logit_diff']:.1e}", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16, 32])
    ap.add_argument("--new", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = auto: 1 on a busy CPU).")
    ap.add_argument("--n", type=int, default=8, help="samples per prompt for the best-of-n row (0 = skip it).")
    ap.add_argument("--n-prompts", type=int, default=32)
    ap.add_argument("--compile-probe", action="store_true", help="also time a torch.compile'd decode step.")
    ap.add_argument("--no-compiled", action="store_true", help="skip the engine with the compiled batch-1 step.")
    args = ap.parse_args(argv)
    from chatrlhf.lm.training import configure_threads

    threads = configure_threads(args.threads)
    model, tok, source = bench_model(args.model)
    fast, slow = Engine(model, tok, fast=True), Engine(model, tok, fast=False)
    result: dict = {"model": source, "max_new_tokens": args.new, "threads": threads,
                    "load_avg_1m_start": round(os.getloadavg()[0], 2), "repeats": args.repeats}
    result.update(exactness(fast, slow, tok, args.new))
    print(f"same tokens on both paths: {result['exact_same_tokens']}, largest log-prob difference "
          f"{result['exact_max_logprob_diff']:.2e}", file=sys.stderr)
    peak = matmul_peak(torch.get_num_threads())
    result["matmul_peak_gflops"] = round(peak, 1)

    def report(key: str, rates: dict[str, list[float]], base: str, prompts: list[list[int]]) -> None:
        mean_prompt = sum(map(len, prompts)) / len(prompts)
        gflops = statistics.median(rates["fast"]) * flops_per_token(model, mean_prompt + args.new / 2) / 1e9
        row: dict = {}
        for k, v in rates.items():
            row.update(flat(f"{key}_{k}_tokens_per_s", summary(v)))
        row.update(flat(f"{key}_speedup_vs_{base}", ratios(rates["fast"], rates[base])))
        row.update(flat(f"{key}_speedup_vs_engine_transformers", ratios(rates["fast"], rates["engine_transformers"])))
        if "compiled" in rates:
            row.update(flat(f"{key}_compiled_speedup_vs_{base}", ratios(rates["compiled"], rates[base])))
            row.update(flat(f"{key}_compiled_speedup_vs_fast", ratios(rates["compiled"], rates["fast"])))
        row[f"{key}_fraction_of_matmul_peak"] = round(gflops / peak, 4)
        result.update(row)
        print(f"{key:>6}: fast {row[f'{key}_fast_tokens_per_s']:9.1f} tok/s   "
              f"engine (transformers forward) {row[f'{key}_engine_transformers_tokens_per_s']:9.1f}   "
              f"{base} {row[f'{key}_{base}_tokens_per_s']:9.1f}   x{row[f'{key}_speedup_vs_{base}']} "
              f"({row[f'{key}_speedup_vs_{base}_min']}-{row[f'{key}_speedup_vs_{base}_max']}) vs {base}   "
              f"{100 * row[f'{key}_fraction_of_matmul_peak']:.1f}% of matmul peak", file=sys.stderr)
        if "compiled" in rates:
            print(f"{key:>6}: compiled step {row[f'{key}_compiled_tokens_per_s']:9.1f} tok/s   "
                  f"x{row[f'{key}_compiled_speedup_vs_{base}']} ({row[f'{key}_compiled_speedup_vs_{base}_min']}-"
                  f"{row[f'{key}_compiled_speedup_vs_{base}_max']}) vs {base}, x{row[f'{key}_compiled_speedup_vs_fast']} "
                  f"vs the eager fast path", file=sys.stderr)

    compiled = None if args.no_compiled else Engine(model, tok, compile=True)
    if compiled is not None:  # build the library of the cache size the runs reach, in an empty cache: a cold start
        import tempfile

        os.environ["CHATRLHF_CACHE"] = tempfile.mkdtemp(prefix="chatrlhf-bench-")
        t0 = time.perf_counter()
        compiled.generate(prompt_ids(tok, 1), SamplingParams(max_new_tokens=args.new, seed=0))
        result["b1_compiled_first_call_s"] = round(time.perf_counter() - t0, 1)
        one = prompt_ids(tok, 1)
        same = [g.token_ids for s in range(3) for g in compiled.generate(one, SamplingParams(max_new_tokens=args.new, seed=s))] == \
            [g.token_ids for s in range(3) for g in fast.generate(one, SamplingParams(max_new_tokens=args.new, seed=s))]
        result["b1_compiled_same_tokens"] = same
        print(f"compiled step: first call {result['b1_compiled_first_call_s']} s (compiling into an empty cache), "
              f"same tokens as the eager fast path: {same}", file=sys.stderr)
    for b in args.batch:
        ps = prompt_ids(tok, b)
        fns = {"fast": lambda s: run_engine(fast, ps, args.new, s),
               "engine_transformers": lambda s: run_engine(slow, ps, args.new, s),
               "generate": lambda s: run_hf(model, tok, ps, args.new, s)}
        if b == 1 and compiled is not None:
            fns["compiled"] = lambda s: run_engine(compiled, ps, args.new, s)
        rates = timed(fns, args.repeats, max(1, 16 // b))
        report(f"b{b}", rates, "generate", ps)
        if b == 1 and compiled is not None:  # the chat's own sampling settings: a sorted (top-p) draw
            c = ChatConfig()
            kw = {"temperature": c.temperature, "top_p": c.top_p}
            rates = timed({"fast": lambda s: run_engine(fast, ps, args.new, s, **kw),
                           "engine_transformers": lambda s: run_engine(slow, ps, args.new, s, **kw),
                           "generate": lambda s: run_hf(model, tok, ps, args.new, s, **kw),
                           "compiled": lambda s: run_engine(compiled, ps, args.new, s, **kw)}, args.repeats, 16)
            report("b1chat", rates, "generate", ps)
    if args.n > 1:
        ps, n = prompt_ids(tok, args.n_prompts), args.n
        fast.max_batch = slow.max_batch = len(ps) * n  # every row in one batch, as model.generate has them
        rates = timed({"fast": lambda s: run_engine(fast, ps, args.new, s, n),
                       "engine_transformers": lambda s: run_engine(slow, ps, args.new, s, n),
                       "generate": lambda s: run_hf(model, tok, ps, args.new, s, n)}, args.repeats)
        report(f"n{n}", rates, "generate", ps)
        fast.max_batch = slow.max_batch = 64
    # intra-op threads: the same fast-path call on 1 and on 2 threads, alternating
    cores = os.cpu_count() or 1
    if cores > 1:
        for key, ps, n in (("b1", prompt_ids(tok, 1), 1), ("b32", prompt_ids(tok, 32), 1),
                           *((("n%d" % args.n, prompt_ids(tok, args.n_prompts), args.n),) if args.n > 1 else ())):
            fast.max_batch = len(ps) * n

            def on(k: int, ps=ps, n=n):
                def fn(s):
                    torch.set_num_threads(k)
                    return run_engine(fast, ps, args.new, s, n)
                return fn

            rates = timed({"1": on(1), "2": on(2)}, args.repeats, max(1, 16 // (len(ps) * n)))
            result.update(flat(f"{key}_fast_2_threads_over_1", ratios(rates["2"], rates["1"])))
            print(f"{key:>6}: fast path 2 threads / 1 thread x{result[f'{key}_fast_2_threads_over_1']}", file=sys.stderr)
        torch.set_num_threads(threads)
        fast.max_batch = 64
    if args.compile_probe:
        result.update(compile_probe(model, args.repeats))
    result["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "engine.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
