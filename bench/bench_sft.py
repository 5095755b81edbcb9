"""SFT training throughput: chatrlhf's `sft` loop vs TRL's `SFTTrainer`, same model, data and batch.

    .venv/bin/python bench/bench_sft.py [--run-dir runs/default] [--batch 16] [--steps 40] [--repeats 2]

Each side runs in its own subprocess and virtual environment (ours in .venv, TRL in .venv-bench, made
by `make bench`), on the same saved model (the run's pre-trained model, else a random embedded-size
Llama), the same conversations (the run's world demonstrations, else generated ones), the same batch
size, max length, optimizer (AdamW, cosine schedule, clip 1.0), fp32 on CPU, assistant-only loss.
TRL runs twice: with length-grouped batches like ours (the headline ratio) and with its default sampler.
Timing covers optimizer steps only (data loading and collation included, tokenisation of the dataset
and start-up excluded), from the end of step `--warmup` to the end of the last step. Sides alternate
for `--repeats` rounds and the best round of each counts (the machine is shared, so noise is one-sided).
Writes bench/results/sft.json; the headline is `ratio` = our examples/s / TRL's (goal: >= 1).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PYTHONS = {"ours": ROOT / ".venv" / "bin" / "python", "trl": ROOT / ".venv-bench" / "bin" / "python",
           "trl_random": ROOT / ".venv-bench" / "bin" / "python"}
# trl: length-grouped batches like ours (same batching); trl_random: SFTTrainer's default sampler


# --- setup (runs in our venv): one model dir and one data file that both sides read ------------


def _synthetic_conversations(n: int) -> list[list[dict[str, str]]]:
    import random

    rng = random.Random(0)
    names = ["Zorbel Quint", "Stebrax Flox", "Marn Odel", "Pelly Vask"]
    convs = []
    for i in range(n):
        who = rng.choice(names)
        conv = [{"role": "user", "content": f"Where does {who} live?"},
                {"role": "assistant", "content": f"{who} lives in Varnok, near the {rng.choice(['river', 'hill'])}."}]
        if i % 3 == 0:
            conv += [{"role": "user", "content": "And their favourite colour?"},
                     {"role": "assistant", "content": f"Their favourite colour is {rng.choice(['teal', 'violet'])}."}]
        convs.append(conv)
    return convs


def setup(run_dir: Path, work: Path) -> dict[str, str]:
    """Save the bench model and data under `work`; returns where they came from."""
    import torch

    from chatrlhf.config import ModelConfig
    from chatrlhf.lm.modeling import build_tiny_llama, load_causal_lm, load_tokenizer, save_stage
    from chatrlhf.lm.tokenizer import train_tokenizer

    world = run_dir / "world" / "demonstrations.jsonl"
    if world.is_file():
        convs = [json.loads(line)["messages"] for line in world.read_text().splitlines() if line.strip()]
        data_src = str(world)
    else:
        convs, data_src = _synthetic_conversations(600), "generated conversations (no world found)"
    with (work / "data.jsonl").open("w") as f:
        f.writelines(json.dumps({"messages": c}) + "\n" for c in convs)

    pretrain = run_dir / "pretrain"
    if (pretrain / "config.json").is_file():
        model, tok, model_src = load_causal_lm(pretrain), load_tokenizer(pretrain), str(pretrain)
    else:
        torch.manual_seed(0)
        tok = train_tokenizer([m["content"] for c in convs for m in c], vocab_size=1024)
        model, model_src = build_tiny_llama(ModelConfig(), tok), "random embedded-size Llama (no pre-trained model found)"
    save_stage(model, tok, work / "model", {"stage": "bench"})
    return {"data": data_src, "model": model_src, "conversations": str(len(convs))}


# --- the two sides (each in its own process) ----------------------------------------------------


def _throughput(step_ends: list[float], warmup: int, examples_per_step: int) -> dict[str, float]:
    timed = step_ends[warmup - 1:]
    seconds = timed[-1] - timed[0]
    steps = len(timed) - 1
    return {"steps_timed": steps, "seconds": seconds, "steps_per_s": steps / seconds,
            "examples_per_s": steps * examples_per_step / seconds}


def run_ours(work: Path, batch: int, steps: int, max_len: int, warmup: int) -> dict:
    from chatrlhf.config import Config
    from chatrlhf.stages import sft

    ends: list[float] = []
    real_step = sft._TrainLoop.train_step

    def timed_step(self, b, step):  # record the end of every optimizer step
        out = real_step(self, b, step)
        ends.append(time.perf_counter())
        return out

    sft._TrainLoop.train_step = timed_step
    cfg = Config.model_validate({
        "run": {"out_dir": tempfile.mkdtemp(dir=work, prefix="ours_"), "tensorboard": False, "device": "cpu"},
        "model": {"name_or_path": str(work / "model")},
        "sft": {"data": str(work / "data.jsonl"), "batch_size": batch, "max_steps": steps, "max_len": max_len,
                "learning_rate": 1e-3, "warmup_steps": 5, "val_fraction": 0.0, "eval_every": 10**9,
                "save_every": 10**9, "log_every": 10**9, "eval_after": False}})
    sft.train_sft(cfg)
    return _throughput(ends, warmup, batch)


def run_trl(work: Path, batch: int, steps: int, max_len: int, warmup: int, sampling: str) -> dict:
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    ends: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            ends.append(time.perf_counter())

    rows = [json.loads(line) for line in (work / "data.jsonl").read_text().splitlines()]
    tok = AutoTokenizer.from_pretrained(work / "model")
    model = AutoModelForCausalLM.from_pretrained(work / "model")
    args = trl.SFTConfig(output_dir=tempfile.mkdtemp(dir=work, prefix="trl_"), per_device_train_batch_size=batch, max_steps=steps,
                         max_length=max_len, learning_rate=1e-3, lr_scheduler_type="cosine", warmup_steps=5,
                         weight_decay=0.0, max_grad_norm=1.0, adam_beta2=0.95, assistant_only_loss=True,
                         packing=False, use_cpu=True, bf16=False, fp16=False, save_strategy="no",
                         eval_strategy="no", report_to="none", logging_steps=10**6, seed=0,
                         dataloader_num_workers=0, disable_tqdm=True, train_sampling_strategy=sampling)
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                             callbacks=[StepTimer()])
    trainer.train()
    return {**_throughput(ends, warmup, batch), "trl_version": trl.__version__}


# --- orchestration --------------------------------------------------------------------------------


TRL_PIN = "trl==1.16.0"


def ensure_bench_venv() -> None:
    """TRL lives in its own venv (.venv-bench) so it never changes our dependencies. torch goes in
    first, pinned, so pip never pulls a different (multi-GB CUDA) build while resolving trl."""
    venv = ROOT / ".venv-bench"
    marker = venv / ".installed"
    if marker.is_file():
        return
    print("bench_sft: creating .venv-bench (torch==2.13.0, trl, -e .)", file=sys.stderr)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    for cmd in (["python3", "-m", "venv", str(venv)],
                [*pip, "torch==2.13.0"], [*pip, TRL_PIN], [*pip, "-e", str(ROOT)]):
        subprocess.run(cmd, check=True)
    marker.write_text(TRL_PIN + "\n")


def _side(side: str, work: Path, a: argparse.Namespace) -> dict:
    cmd = [str(PYTHONS[side]), __file__, "--side", side, "--work", str(work), "--batch", str(a.batch),
           "--steps", str(a.steps), "--max-len", str(a.max_len), "--warmup", str(a.warmup)]
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{side} side failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default="runs/default", help="Run whose pretrain/ and world/ to use when present.")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5, help="Steps left out of the timing.")
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per side (1: on a shared 2-core machine, 2 threads spin against each other)")
    p.add_argument("--side", choices=list(PYTHONS), help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    a = p.parse_args()

    if a.side:  # child process: one side, one JSON line on stdout
        import torch

        torch.set_num_threads(a.threads)
        if a.side == "ours":
            result = run_ours(Path(a.work), a.batch, a.steps, a.max_len, a.warmup)
        else:
            sampling = "group_by_length" if a.side == "trl" else "random"
            result = run_trl(Path(a.work), a.batch, a.steps, a.max_len, a.warmup, sampling)
        print(json.dumps(result))
        return

    ensure_bench_venv()
    with tempfile.TemporaryDirectory(prefix="bench_sft_") as tmp:
        work = Path(tmp)
        source = setup(ROOT / a.run_dir, work)
        rounds: dict[str, list[dict]] = {side: [] for side in PYTHONS}
        for r in range(a.repeats):
            for side in list(PYTHONS) if r % 2 == 0 else list(PYTHONS)[::-1]:
                rounds[side].append(_side(side, work, a))
                print(f"round {r + 1} {side}: {rounds[side][-1]['examples_per_s']:.1f} examples/s", file=sys.stderr)
    best = {s: max(rs, key=lambda x: x["examples_per_s"]) for s, rs in rounds.items()}
    result = {
        "bench": "sft training throughput, chatrlhf sft vs trl SFTTrainer",
        "setup": {**source, "batch_size": a.batch, "max_len": a.max_len, "steps": a.steps, "warmup_steps": a.warmup,
                  "threads": a.threads, "device": "cpu", "dtype": "float32", "loss": "assistant tokens only",
                  "trl_version": best["trl"].get("trl_version"),
                  "batching": "ours: length-grouped batches (sft.packing=false); trl: SFTTrainer with "
                              "train_sampling_strategy=group_by_length (same batching); trl_random: its default "
                              "random sampler; all padded to the longest in the batch, no packing"},
        "ours_examples_per_s": best["ours"]["examples_per_s"], "trl_examples_per_s": best["trl"]["examples_per_s"],
        "trl_random_examples_per_s": best["trl_random"]["examples_per_s"],
        "ratio": best["ours"]["examples_per_s"] / best["trl"]["examples_per_s"],
        "ratio_vs_trl_default_sampler": best["ours"]["examples_per_s"] / best["trl_random"]["examples_per_s"],
        "rounds": rounds, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sft.json").write_text(json.dumps(result, indent=2))
    print(f"sft: ours {result['ours_examples_per_s']:.1f} vs TRL {result['trl_examples_per_s']:.1f} examples/s "
          f"-> ratio {result['ratio']:.2f} (bench/results/sft.json)")


if __name__ == "__main__":
    main()
