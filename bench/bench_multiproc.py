"""Throughput with more processes: 2 ranks x 1 thread against 1 rank x 1 thread, for SFT and PPO.

    .venv/bin/python bench/bench_multiproc.py [--sft-steps 40] [--sft-batch 32] [--ppo-iterations 5]
                                              [--ppo-batch 64] [--repeats 1]

Both sides run the CLI with OMP_NUM_THREADS=1 per process and the same global batch: one process is
`python -m chatrlhf.cli`, two are `accelerate launch --multi_gpu --num_processes 2` (gloo ranks on
the CPU). The data is the tiny world (configs/tiny.yaml), the model the default-size embedded Llama,
pre-trained, fine-tuned and turned into an RM once in setup (one process).
SFT: tokens/s of the training steps (meta.json `tokens_per_s`, rank 0's clock, waits for the
all-reduce included). PPO: rollouts/s over iterations 2.. from metrics.jsonl `time_step_s` (rollout,
scoring, reference pass, update), without best-of-n. Sides alternate for `--repeats` rounds and the
best round of each counts (the machine is shared: noise only slows a side down). Writes
bench/results/multiproc.json; the headlines are `sft_ratio` and `ppo_ratio` = 2-rank / 1-rank
throughput (2.0 is the ideal on two idle cores; `load_before` is the 1-minute load average at start).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
TINY = ROOT / "configs" / "tiny.yaml"
BIN = Path(sys.executable).parent
MODEL = ["model.hidden_size=96", "model.intermediate_size=256", "model.num_layers=4", "model.num_heads=4",
         "model.num_kv_heads=4", "model.max_position_embeddings=512"]  # the default-size embedded model
COMMON = [*MODEL, "sft.eval_after=false", "sft.save_every=100000", "sft.eval_every=100000", "sft.log_every=100000"]


def setup(work: Path) -> None:
    """world -> tokenizer -> pretrain -> SFT -> RM in one process, the inputs of both sides."""
    from chatrlhf.config import load_config
    from chatrlhf.stages.pretrain import run_pretrain, run_tokenizer
    from chatrlhf.stages.reward import run_rm
    from chatrlhf.stages.sft import run_sft
    from chatrlhf.world.generate import run_world

    cfg = load_config(TINY, [f"run.out_dir={work}", *COMMON])
    for stage in (run_world, run_tokenizer, run_pretrain, run_sft, run_rm):
        stage(cfg)


def launch(stage: str, out: Path, ranks: int, sets: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [a for o in [f"run.out_dir={out}", *COMMON, *sets] for a in ("--set", o)]
    tail = ["-m", "chatrlhf.cli", stage, "--config", str(TINY), *args]
    if ranks == 1:
        cmd = [sys.executable, *tail]
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", str(ranks), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port), *tail]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"{stage} on {ranks} rank(s) failed:\n{proc.stderr[-3000:]}")


def side(work: Path, stage: str, ranks: int, sets: list[str]) -> float:
    """Throughput of one run: SFT tokens/s or PPO rollouts/s."""
    out = Path(tempfile.mkdtemp(dir=work, prefix=f"{stage}{ranks}_"))
    for d in (["world", "tokenizer", "pretrain"] if stage == "sft" else ["world", "sft", "rm"]):
        shutil.copytree(work / "base" / d, out / d)
    launch(stage, out, ranks, sets)
    if stage == "sft":
        return json.loads((out / "sft" / "meta.json").read_text())["tokens_per_s"]
    rows = [json.loads(line) for line in (out / "ppo" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["time_step_s"] for r in rows if "time_step_s" in r][1:]  # the first pays allocations
    batch = int(next(s.split("=")[1] for s in sets if s.startswith("ppo.rollout.batch_size=")))
    return batch * len(steps) / sum(steps)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sft-steps", type=int, default=40)
    ap.add_argument("--sft-batch", type=int, default=32, help="rows per global batch (the tiny world has 38)")
    ap.add_argument("--ppo-iterations", type=int, default=5)
    ap.add_argument("--ppo-batch", type=int, default=64, help="rollouts per iteration (mini-batches of a quarter)")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    sets = {"sft": [f"sft.max_steps={args.sft_steps}", f"sft.batch_size={args.sft_batch}"],
            "ppo": [f"ppo.total_iterations={args.ppo_iterations}", f"ppo.rollout.batch_size={args.ppo_batch}",
                    f"ppo.update.mini_batch_size={args.ppo_batch // 4}",
                    "ppo.update.epochs=2", "ppo.rejection_sampling.n=1", "ppo.guard.early_stop=none", "ppo.save_every=100000"]}
    result: dict[str, float | str] = {"load_before": round(load_before, 2), "cores": os.cpu_count() or 0,
                                      "sft_batch": args.sft_batch, "ppo_batch": args.ppo_batch}
    with tempfile.TemporaryDirectory(prefix="bench_multiproc_") as tmp:
        work = Path(tmp)
        t0 = time.time()
        setup(work / "base")
        result["setup_seconds"] = round(time.time() - t0, 1)
        for stage in ("sft", "ppo"):
            best = {1: 0.0, 2: 0.0}
            for _ in range(args.repeats):
                for ranks in (1, 2):
                    best[ranks] = max(best[ranks], side(work, stage, ranks, sets[stage]))
            unit = "tokens_per_s" if stage == "sft" else "rollouts_per_s"
            result |= {f"{stage}_1rank_{unit}": round(best[1], 1), f"{stage}_2rank_{unit}": round(best[2], 1),
                       f"{stage}_ratio": round(best[2] / best[1], 3)}
    result["load_after"] = round(os.getloadavg()[0], 2)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "multiproc.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
