"""GRPO and RLOO step benchmark: chatrlhf's RL stage against TRL 1.16's GRPOTrainer and RLOOTrainer,
results in bench/results/grpo.json.

    .venv/bin/python bench/bench_grpo.py

The setup of bench_ppo.py (a random embedded-size Llama as policy, reference and RM backbone, the
world's chat-templated PPO prompts), one CPU thread each, each trainer in its own subprocess
(chatrlhf in .venv, TRL in .venv-bench, built by bench_sft.ensure_bench_venv). One step is one
generation batch and its updates, matched on both sides: 8 prompts x 4 samples = 32 responses of at
most 48 tokens, mini-batches of 8, 2 passes (TRL: per_device_train_batch_size 8, steps_per_generation
4, num_generations 4, num_iterations 2, so 8 optimizer steps per generation batch, as ours), KL
coefficient 0.05 to a frozen reference, the RM as the reward, fp32 and no gradient checkpointing.
TRL's GRPO loss_type is 'bnpo' (tokens of the mini-batch, as ours averages). The first step is a
warm-up and not counted; the trainers run alternately, twice each, and the medians of the steps' CPU
seconds are compared (wall seconds too: they swing with a shared machine's load).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "grpo.json"
OURS_PY = ROOT / ".venv" / "bin" / "python"
TRL_PY = ROOT / ".venv-bench" / "bin" / "python"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ppo import setup  # noqa: E402  (same model, RM and prompts as the PPO bench)

S = {"prompts_per_step": 8, "k": 4, "mini_batch_size": 8, "epochs": 2, "response_length": 48, "steps": 4,
     "threads": 1, "learning_rate": 1e-5, "kl_coef": 0.05, "seed": 0}


def worker_ours(tmp: Path, estimator: str) -> dict:
    import torch

    from chatrlhf.config import PPOConfig
    from chatrlhf.lm.modeling import load_causal_lm, load_tokenizer
    from chatrlhf.lm.reward_model import RewardModel
    from chatrlhf.lm.training import make_accelerator
    from chatrlhf.rl.ppo import PPOTrainer

    torch.set_num_threads(S["threads"])
    prompts = json.loads((tmp / "prompts.json").read_text())
    tok = load_tokenizer(tmp / "policy")
    rm = RewardModel.load(tmp / "rm")
    cfg = PPOConfig.model_validate({
        "total_iterations": S["steps"] + 1, "save_every": 10_000, "advantage": {"estimator": estimator},
        "rollout": {"batch_size": S["prompts_per_step"] * S["k"], "samples_per_prompt": S["k"],
                    "max_new_tokens": S["response_length"]},
        "update": {"mini_batch_size": S["mini_batch_size"], "epochs": S["epochs"], "learning_rate": S["learning_rate"]},
        "reward": {"kl_coef": S["kl_coef"], "sft_loglik_coef": 0.0, "verifier_coef": 0.0},
        "guard": {"early_stop": "none", "max_kl": 1e9}})
    trainer = PPOTrainer(cfg, load_causal_lm(tmp / "policy"), load_causal_lm(tmp / "policy"), None, tok,
                         lambda ps, ts: rm.score([p["messages"] for p in ps], ts), prompts, tmp / f"ours_{estimator}",
                         make_accelerator(S["seed"], device="cpu"), seed=S["seed"])
    steps, cpu = [], []
    for _ in range(S["steps"] + 1):
        c0 = time.process_time()
        steps.append(trainer.step())
        cpu.append(time.process_time() - c0)
    return {"step_s": [h["time_step_s"] for h in steps[1:]], "step_cpu_s": cpu[1:],
            "response_len": statistics.mean(h["response_len"] for h in steps[1:])}


def worker_trl(tmp: Path, kind: str) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback

    torch.set_num_threads(S["threads"])
    prompts = json.loads((tmp / "prompts.json").read_text())
    tok = AutoTokenizer.from_pretrained(str(tmp / "policy"))
    per_gen = S["prompts_per_step"] * S["k"] // S["mini_batch_size"] * S["epochs"]  # optimizer steps per generation
    common = dict(output_dir=str(tmp / f"trl_{kind}"), per_device_train_batch_size=S["mini_batch_size"],
                  steps_per_generation=S["prompts_per_step"] * S["k"] // S["mini_batch_size"], num_generations=S["k"],
                  num_iterations=S["epochs"], max_completion_length=S["response_length"], beta=S["kl_coef"],
                  learning_rate=S["learning_rate"], max_steps=per_gen * (S["steps"] + 1), temperature=1.0,
                  logging_steps=10_000, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
                  dataloader_num_workers=0, seed=S["seed"], bf16=False, gradient_checkpointing=False)
    if kind == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        args, cls = GRPOConfig(**common, loss_type="bnpo"), GRPOTrainer
    else:
        from trl import RLOOConfig, RLOOTrainer

        args, cls = RLOOConfig(**common), RLOOTrainer
    stamps: list[tuple[float, float]] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *_a, **_k):
            stamps.append((time.time(), time.process_time()))

    ds = Dataset.from_list([{"prompt": p["messages"]} for p in prompts])
    trainer = cls(model=str(tmp / "policy"), reward_funcs=str(tmp / "rm"), args=args, train_dataset=ds,
                  processing_class=tok, callbacks=[Clock()])
    t0 = (time.time(), time.process_time())
    trainer.train()
    ends = [t0] + stamps[per_gen - 1::per_gen]  # the end of each generation batch's updates
    return {"step_s": [b[0] - a[0] for a, b in zip(ends, ends[1:])][1:],
            "step_cpu_s": [b[1] - a[1] for a, b in zip(ends, ends[1:])][1:],
            "trl_version": trl.__version__, "optimizer_steps": len(stamps)}


def run_worker(py: Path, which: str, tmp: Path) -> dict:
    out = tmp / f"{which}.json"
    env = {**os.environ, "OMP_NUM_THREADS": str(S["threads"]), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([str(py), __file__, "--worker", which, "--tmp", str(tmp), "--out", str(out)], env=env,
                          cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1],
                "stderr_tail": proc.stderr[-3000:], "step_s": []}
    return json.loads(out.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", choices=["ours_grpo", "ours_rloo", "trl_grpo", "trl_rloo"], help=argparse.SUPPRESS)
    p.add_argument("--tmp", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        side, kind = a.worker.split("_")
        a.out.write_text(json.dumps(worker_ours(a.tmp, kind) if side == "ours" else worker_trl(a.tmp, kind)))
        return
    if not TRL_PY.exists():
        from bench_sft import ensure_bench_venv

        ensure_bench_venv()
    res: dict = {"settings": S}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        setup(tmp)
        runs: dict[str, list[dict]] = {w: [] for w in ("ours_grpo", "trl_grpo", "ours_rloo", "trl_rloo")}
        for _ in range(2):  # alternate, so a shared machine's load hits every side alike
            for w in runs:
                runs[w].append(run_worker(OURS_PY if w.startswith("ours") else TRL_PY, w, tmp))
    med = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
    for kind in ("grpo", "rloo"):
        ours = [s for r in runs[f"ours_{kind}"] for s in r["step_s"]]
        trl = [s for r in runs[f"trl_{kind}"] for s in r["step_s"]]
        ours_cpu = [s for r in runs[f"ours_{kind}"] for s in r.get("step_cpu_s", [])]
        trl_cpu = [s for r in runs[f"trl_{kind}"] for s in r.get("step_cpu_s", [])]
        o, t, oc, tc = med(ours), med(trl), med(ours_cpu), med(trl_cpu)
        # CPU seconds are the headline: on a shared machine wall time swings with the other load
        res[f"{kind}_speedup_vs_trl"] = tc / oc if oc and tc else None
        res[f"{kind}_speedup_vs_trl_wall"] = t / o if o and t else None
        res[kind] = {"ours_step_cpu_s_median": oc, "trl_step_cpu_s_median": tc, "ours_step_s_median": o,
                     "trl_step_s_median": t, "ours_step_s": ours, "trl_step_s": trl, "ours_step_cpu_s": ours_cpu,
                     "trl_step_cpu_s": trl_cpu,
                     "errors": [r["error"] for r in runs[f"ours_{kind}"] + runs[f"trl_{kind}"] if "error" in r],
                     "trl_version": next((r.get("trl_version") for r in runs[f"trl_{kind}"] if "trl_version" in r), None)}
    res["machine"] = {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2))
    print(json.dumps({k: v for k, v in res.items() if "speedup" in k}, indent=2))


if __name__ == "__main__":
    main()
