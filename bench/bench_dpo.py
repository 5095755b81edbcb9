"""DPO throughput: chatrlhf's DPO step against TRL's DPOTrainer, results in bench/results/dpo.json.

    .venv/bin/python bench/bench_dpo.py [--steps 30]

The same model (the run's SFT, else a random embedded-size Llama), the same comparisons, the same
pairs per optimizer step, beta, learning rate, schedule and max length, fp32, one CPU thread, each
trainer in its own subprocess: chatrlhf in .venv, TRL 1.16's DPOTrainer in .venv-bench (built by
bench_sft.ensure_bench_venv: torch==2.13.0, trl, -e .). TRL gets the comparisons as conversational
prompt/chosen/rejected rows and tokenises them with the same chat template.

Two data shapes:
  k4     K = 4 rankings (6 pairs per prompt). chatrlhf scores each response once per prompt (4 forward
         sequences for 6 pairs, rankings.make_batch), TRL scores each pair as two sequences (12).
  pairs  K = 2, one pair per prompt: nothing to share, so the ratio is the step itself (response-only
         LM head, reference log-probs computed once).
Both sides are timed end to end (tokenisation, reference log-probs, the optimizer steps) in CPU
seconds, the fair figure on a shared machine; TRL runs twice, with its defaults (reference forward
every step) and with precompute_ref_log_probs=True (as chatrlhf does).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "dpo.json"
BENCH_PY = ROOT / ".venv-bench" / "bin" / "python"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_rm import init_model, run_side, synthetic_comparisons  # noqa: E402  (same model and data as the RM bench)

LR, BETA, MAX_LEN = 5e-5, 0.1, 256


def side_ours(spec: dict) -> dict:
    import torch

    from chatrlhf.config import DPOConfig
    from chatrlhf.lm.modeling import load_causal_lm, load_tokenizer
    from chatrlhf.lm.training import make_accelerator
    from chatrlhf.rl.dpo import train_dpo

    torch.set_num_threads(1)
    comps = json.loads(Path(spec["comparisons"]).read_text())
    cfg = DPOConfig(beta=BETA, learning_rate=LR, batch_prompts=spec["batch_prompts"], warmup_steps=2,
                    epochs=spec["steps"] * spec["batch_prompts"] / len(comps), max_len=MAX_LEN, save_every=0,
                    log_every=1000, min_lr_ratio=0.0)
    tok, policy, ref = load_tokenizer(spec["init"]), load_causal_lm(spec["init"]), load_causal_lm(spec["init"])
    with tempfile.TemporaryDirectory() as d:
        t0, c0 = time.time(), time.process_time()
        run = train_dpo(policy, ref, tok, comps, [], cfg, Path(d), make_accelerator(0, device="cpu"), seed=0)
        secs, cpu = time.time() - t0, time.process_time() - c0
    n_pairs = spec["steps"] * spec["pairs_per_step"]
    return {"steps": run["steps"], "seconds": secs, "cpu_seconds": cpu, "pairs_per_s": n_pairs / secs,
            "pairs_per_cpu_s": n_pairs / cpu, "loop_seconds": run["train_seconds"],
            "reference_seconds": run["reference_seconds"], "final_loss": run["last"]["loss"]}


def side_trl(spec: dict) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    torch.set_num_threads(1)
    rows = json.loads(Path(spec["pairs"]).read_text())
    tok = AutoTokenizer.from_pretrained(spec["init"])
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(spec["init"])
    ref = AutoModelForCausalLM.from_pretrained(spec["init"])
    args = DPOConfig(output_dir=spec["tmp"], per_device_train_batch_size=spec["pairs_per_step"], max_steps=spec["steps"],
                     learning_rate=LR, beta=BETA, warmup_steps=2, lr_scheduler_type="cosine", logging_steps=1000,
                     save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, dataloader_num_workers=0,
                     seed=0, max_length=MAX_LEN, precompute_ref_log_probs=spec.get("precompute", False),
                     # DPOConfig defaults to bf16 and gradient checkpointing; match chatrlhf (fp32, none)
                     bf16=False, gradient_checkpointing=False)
    t0, c0 = time.time(), time.process_time()
    trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tok)
    t1 = time.time()
    out = trainer.train()
    secs, cpu = time.time() - t0, time.process_time() - c0
    n_pairs = spec["steps"] * spec["pairs_per_step"]
    return {"trl_version": trl.__version__, "steps": spec["steps"], "seconds": secs, "cpu_seconds": cpu,
            "pairs_per_s": n_pairs / secs, "pairs_per_cpu_s": n_pairs / cpu, "train_seconds": time.time() - t1,
            "final_loss": out.training_loss, "precompute_ref_log_probs": spec.get("precompute", False)}


def shape(name: str, k: int, n_prompts: int, batch_prompts: int, steps: int) -> dict:
    from math import comb

    from chatrlhf.lm.rankings import expand_pairs

    comps = synthetic_comparisons(n_prompts, k, seed=1)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        texts = [c["messages"][0]["content"] + " " + r for c in comps for r in c["responses"]] * 3
        init, source = init_model(tmp, texts)
        pairs = [{"prompt": c["messages"], "chosen": [{"role": "assistant", "content": c["responses"][p.chosen]}],
                  "rejected": [{"role": "assistant", "content": c["responses"][p.rejected]}]}
                 for g, c in enumerate(comps) for p in expand_pairs(c, g)]
        random.Random(0).shuffle(pairs)
        (tmp / "comparisons.json").write_text(json.dumps(comps))
        (tmp / "pairs.json").write_text(json.dumps(pairs))
        spec = {"init": str(init), "comparisons": str(tmp / "comparisons.json"), "pairs": str(tmp / "pairs.json"),
                "tmp": str(tmp), "steps": steps, "batch_prompts": batch_prompts,
                "pairs_per_step": batch_prompts * comb(k, 2)}
        ours = run_side(Path(sys.executable), "ours", spec, __file__)
        if BENCH_PY.exists():
            trl = run_side(BENCH_PY, "trl", spec, __file__)
            trl_pre = run_side(BENCH_PY, "trl", spec | {"precompute": True}, __file__, "-precompute")
        else:
            trl = trl_pre = {"error": f"{BENCH_PY} missing (bench_sft.py builds it)"}
    ratio = lambda a, b, key: a[key] / b[key] if key in a and key in b else None  # noqa: E731
    return {f"{name}_ratio_pairs_per_cpu_s": ratio(ours, trl, "pairs_per_cpu_s"),
            f"{name}_ratio_vs_trl_precomputed_ref": ratio(ours, trl_pre, "pairs_per_cpu_s"),
            f"{name}_ratio_pairs_per_wall_s": ratio(ours, trl, "pairs_per_s"),
            f"{name}_detail": {"model": source, "k": k, "prompts": n_prompts, "pairs_per_step": spec["pairs_per_step"],
                               "steps": steps, "chatrlhf": ours, "trl_dpo_trainer": trl,
                               "trl_dpo_trainer_precomputed_ref": trl_pre}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", choices=["ours", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=30, help="Optimizer steps per side.")
    a = ap.parse_args()
    if a.side:
        spec = json.loads(Path(a.spec).read_text())
        print(json.dumps(side_ours(spec) if a.side == "ours" else side_trl(spec)))
        return
    if not BENCH_PY.exists():
        from bench_sft import ensure_bench_venv

        ensure_bench_venv()
    res = {"threads": 1, "beta": BETA, "learning_rate": LR, "max_length": MAX_LEN}
    res |= shape("k4", k=4, n_prompts=8 * a.steps, batch_prompts=8, steps=a.steps)
    res |= shape("pairs", k=2, n_prompts=32 * a.steps, batch_prompts=32, steps=a.steps)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(res, indent=2))
    tmp.replace(RESULTS)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
