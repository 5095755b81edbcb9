"""Reward-model benchmarks, results in bench/results/rm.json.

    .venv/bin/python bench/bench_rm.py                 # throughput: chatrlhf vs TRL RewardTrainer
    .venv/bin/python bench/bench_rm.py --comparisons runs/default/rm/comparisons.jsonl
                                                       # the same on a run's comparisons (real lengths)
                                                       # -> bench/results/rm_world_comparisons.json
    .venv/bin/python bench/bench_rm.py --real-data     # accuracy on OASST K-way ranks and HH-RLHF pairs
                                                       # -> bench/results/rm_real_data.json

Throughput: the same model (the run's SFT, else a random embedded-size Llama), the same comparisons
(K = 4, so 6 pairs per prompt, tokenised once here), the same pairs per optimizer step, one CPU thread,
each trainer in its own subprocess: chatrlhf in .venv, TRL's RewardTrainer in .venv-bench (made with
`pip install torch==2.13.0`, then `trl` and `-e .`). The figure is training pairs per second and
their ratio. chatrlhf scores each response once per prompt (K forward passes for C(K,2) pairs, as
InstructGPT batches them); RewardTrainer gets each pair as two sequences. That is most of the gap,
and it is the point of keeping a prompt's pairs together. chatrlhf also runs once with rm.packing
off (padded batches), to measure what packing a batch's sequences into rows saves.

Real data: an RM from the run's SFT (else a small random Llama with a BPE fitted to the text) trained
on 80% of the prompts and scored on the other 20%. Small data and a small model: the check is that
the pipeline runs on real K-way rankings and learns above chance (50%).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "rm.json"
REAL_RESULTS = ROOT / "bench" / "results" / "rm_real_data.json"
SHARED = ROOT.parent / "shared" / "data"
BENCH_PY = ROOT / ".venv-bench" / "bin" / "python"

SUBJECTS = ["Zorbel Quint", "the baker of Varnok", "Selmouth", "the teal lantern", "Mirra Dune", "the old mill"]
VERBS = ["lives in", "was born in", "keeps", "sold", "painted", "remembers"]


def synthetic_comparisons(n: int, k: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        q = f"What do you know about {rng.choice(SUBJECTS)}?"
        resp = [" ".join(f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(SUBJECTS)}."
                         for _ in range(rng.randint(1, 4))) for _ in range(k)]
        ranks = list(range(1, k + 1))
        rng.shuffle(ranks)
        out.append({"id": f"b{i}", "prompt_id": f"p{i}", "messages": [{"role": "user", "content": q}],
                    "responses": resp, "rankings": [{"labeler": "L0", "ranks": ranks}]})
    return out


def init_model(tmp: Path, texts: list[str]) -> tuple[Path, str]:
    """The run's SFT dir when complete, else a random embedded-size Llama saved under tmp."""
    from chatrlhf.config import Config, ModelConfig
    from chatrlhf.lm.modeling import build_tiny_llama, save_stage, stage_complete
    from chatrlhf.lm.tokenizer import train_tokenizer

    sft = Config().stage_dir("sft")
    if stage_complete(sft):
        return sft, str(sft)
    import torch

    torch.manual_seed(0)
    tok = train_tokenizer(texts, vocab_size=2048)
    save_stage(build_tiny_llama(ModelConfig(), tok), tok, tmp / "init", {"stage": "bench"})
    return tmp / "init", "random embedded-size Llama (no complete sft/ stage)"


# --- throughput: one side per subprocess -----------------------------------------------------


def side_ours(spec: dict) -> dict:
    import torch

    from chatrlhf.config import Config
    from chatrlhf.lm.modeling import load_tokenizer
    from chatrlhf.lm.reward_model import build_reward_model, encode_response
    from chatrlhf.stages.reward import _train_steps

    torch.set_num_threads(1)
    comps = json.loads(Path(spec["comparisons"]).read_text())
    cfg = Config.model_validate({"run": {"tensorboard": False, "device": "cpu"},
                                 "rm": {"batch_prompts": spec["batch_prompts"], "learning_rate": spec["lr"],
                                        "epochs": spec["steps"] * spec["batch_prompts"] / len(comps),
                                        "warmup_steps": 2, "save_every": 0, "log_every": 1000, "max_len": 256,
                                        "packing": spec.get("packing", True)}})
    tok = load_tokenizer(spec["init"])
    model = build_reward_model(spec["init"], tok)
    tokens = [[encode_response(tok, c["messages"], r, 256) for r in c["responses"]] for c in comps]
    n_pairs = spec["steps"] * spec["pairs_per_step"]
    with tempfile.TemporaryDirectory() as d:
        c0 = time.process_time()
        run = _train_steps(cfg, model, tok, comps, tokens, set(), Path(d))
        cpu = time.process_time() - c0
    return {"steps": run["steps"], "seconds": run["train_seconds"], "cpu_seconds": cpu,
            "pairs_per_s": run["pairs_per_second"], "pairs_per_cpu_s": n_pairs / cpu,
            "sequences_per_s": run["sequences_per_second"], "final_loss": run["last"]["loss"]}


def side_trl(spec: dict) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    torch.set_num_threads(1)
    pairs = json.loads(Path(spec["pairs"]).read_text())
    tok = AutoTokenizer.from_pretrained(spec["init"])
    model = AutoModelForSequenceClassification.from_pretrained(spec["init"], num_labels=1, pad_token_id=tok.pad_token_id)
    args = RewardConfig(output_dir=spec["tmp"], per_device_train_batch_size=spec["pairs_per_step"],
                        max_steps=spec["steps"], learning_rate=spec["lr"], warmup_steps=2, lr_scheduler_type="cosine",
                        logging_steps=1000, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
                        dataloader_num_workers=0, seed=0, max_length=256,
                        # RewardConfig defaults to bf16 and gradient checkpointing; match chatrlhf (fp32, none)
                        bf16=False, gradient_checkpointing=False)
    ds = Dataset.from_list([{"chosen_ids": p["chosen_ids"], "rejected_ids": p["rejected_ids"]} for p in pairs])
    trainer = RewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    t0, c0 = time.time(), time.process_time()
    out = trainer.train()
    secs, cpu = time.time() - t0, time.process_time() - c0
    n_pairs = spec["steps"] * spec["pairs_per_step"]
    return {"trl_version": trl.__version__, "steps": spec["steps"], "seconds": secs, "cpu_seconds": cpu,
            "pairs_per_s": n_pairs / secs, "pairs_per_cpu_s": n_pairs / cpu,
            "sequences_per_s": 2 * n_pairs / secs, "final_loss": out.training_loss}


def run_side(python: Path, side: str, spec: dict, script: str = __file__, tag: str = "") -> dict:
    """Run `script --side SIDE --spec FILE` in `python` (ours, or a peer's venv) on one thread; its last
    stdout line is the result. `tag` keeps the spec files of several runs of one side apart."""
    spec_path = Path(spec["tmp"]) / f"{side}{tag}.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([str(python), script, "--side", side, "--spec", str(spec_path)], capture_output=True,
                          text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}",
                "stderr_tail": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def throughput(n_prompts: int = 96, k: int = 4, batch_prompts: int = 8, steps: int = 12,
               comparisons: Path | None = None) -> dict:
    from math import comb

    from chatrlhf.lm.modeling import load_tokenizer
    from chatrlhf.lm.rankings import expand_pairs
    from chatrlhf.lm.reward_model import encode_response

    comps = synthetic_comparisons(n_prompts, k)
    if comparisons is not None:  # a run's own K=4 comparisons: the lengths RM training really sees
        rows = [json.loads(line) for line in comparisons.read_text().splitlines()[:n_prompts]]
        comps = [{**c, "rankings": c["rankings"][:1]} for c in rows if len(c["responses"]) == k]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        texts = [c["messages"][0]["content"] + " " + r for c in comps for r in c["responses"]] * 3
        init, source = init_model(tmp, texts)
        tok = load_tokenizer(init)
        pairs = []
        for g, c in enumerate(comps):
            for p in expand_pairs(c, g):
                pairs.append({"chosen_ids": encode_response(tok, c["messages"], c["responses"][p.chosen], 256),
                              "rejected_ids": encode_response(tok, c["messages"], c["responses"][p.rejected], 256)})
        (tmp / "comparisons.json").write_text(json.dumps(comps))
        (tmp / "pairs.json").write_text(json.dumps(pairs))
        spec = {"init": str(init), "comparisons": str(tmp / "comparisons.json"), "pairs": str(tmp / "pairs.json"),
                "tmp": str(tmp), "steps": steps, "lr": 5e-4, "batch_prompts": batch_prompts,
                "pairs_per_step": batch_prompts * comb(k, 2)}
        ours = run_side(Path(sys.executable), "ours", spec)
        padded = run_side(Path(sys.executable), "ours", spec | {"packing": False})  # rm.packing off
        trl = run_side(BENCH_PY, "trl", spec) if BENCH_PY.exists() else {"error": f"{BENCH_PY} missing"}
    ok = "pairs_per_s" in ours and "pairs_per_s" in trl
    # flat headline first (bench/run_all.py prints top-level scalars); CPU seconds are the fair figure
    # on a shared machine, wall time swings with the other load
    return {"model": source, "comparisons": str(comparisons or "synthetic"), "threads": 1, "k": k, "pairs_per_step": spec["pairs_per_step"], "steps": steps,
            "chatrlhf_pairs_per_cpu_s": ours.get("pairs_per_cpu_s"), "trl_pairs_per_cpu_s": trl.get("pairs_per_cpu_s"),
            "ratio_pairs_per_cpu_s": ours["pairs_per_cpu_s"] / trl["pairs_per_cpu_s"] if ok else None,
            "ratio_pairs_per_wall_s": ours["pairs_per_s"] / trl["pairs_per_s"] if ok else None,
            "packed_vs_padded_pairs_per_cpu_s": ours["pairs_per_cpu_s"] / padded["pairs_per_cpu_s"]
            if "pairs_per_cpu_s" in padded else None,
            "trl_error": trl.get("error", ""), "chatrlhf": ours, "chatrlhf_padded": padded, "trl_reward_trainer": trl}


# --- real data ------------------------------------------------------------------------------


# name -> (file, settings): OASST replies are long (keep 256 tokens); HH's last turns are short, so
# 128 tokens lets all 2,312 pairs train in the same time
REAL_SOURCES = {
    "oasst_en_100_tree": (SHARED / "openassistant_oasst_sample" / "en_100_tree.jsonl", {"epochs": 2.0, "max_len": 256}),
    "hh_rlhf_harmless_test": (SHARED / "hh_rlhf" / "harmless-base" / "test.jsonl.gz", {"epochs": 1.0, "max_len": 128}),
}


def real_data(only: list[str] | None = None) -> dict:
    from chatrlhf.config import Config
    from chatrlhf.lm.rankings import load_comparisons
    from chatrlhf.stages.reward import train_reward_model

    out: dict = json.loads(REAL_RESULTS.read_text()) if REAL_RESULTS.is_file() else {}
    for name, (path, rm) in REAL_SOURCES.items():
        if only and not any(o in name for o in only):
            continue
        if not path.exists():
            out[name] = {"skipped": f"{path} absent"}
            continue
        comps = load_comparisons(path)
        with tempfile.TemporaryDirectory() as d:
            texts = [m["content"] for c in comps for m in c["messages"]] + [r for c in comps for r in c["responses"]]
            init, source = init_model(Path(d), texts)
            cfg = Config.model_validate({"run": {"out_dir": d, "tensorboard": False},
                                         "rm": {"val_fraction": 0.2, "batch_prompts": 8, "learning_rate": 5e-4,
                                                "save_every": 0, **rm}})
            t0 = time.time()
            m = train_reward_model(cfg, comps, init, Path(d) / "rm", world=None)
        out[name] = {"model": source, "comparisons": len(comps), "train_comparisons": m["train_comparisons"],
                     "val_comparisons": m["val_comparisons"], "val_pairs": m["pairs_held_out_prompts"],
                     "acc_held_out_prompts": m["acc_held_out_prompts"], "acc_train": m["acc_train"],
                     "ece": m["calibration"]["ece"], "settings": rm, "seconds": time.time() - t0}
    return out


def write_results(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(value, indent=2))
    tmp.replace(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", choices=["ours", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--real-data", nargs="*", metavar="SOURCE",
                    help="Run the OASST / HH-RLHF accuracy check instead (optionally only: oasst, hh).")
    ap.add_argument("--steps", type=int, default=12, help="Optimizer steps per side.")
    ap.add_argument("--comparisons", type=Path, help="Time on a run's comparisons.jsonl (e.g. runs/default/rm/"
                    "comparisons.jsonl) instead of synthetic ones; results go to rm_world_comparisons.json.")
    a = ap.parse_args()
    if a.side:
        spec = json.loads(Path(a.spec).read_text())
        print(json.dumps(side_ours(spec) if a.side == "ours" else side_trl(spec)))
        return
    if a.real_data is not None:
        res = real_data(a.real_data)
        write_results(REAL_RESULTS, res)
    else:
        res = throughput(steps=a.steps, comparisons=a.comparisons)
        write_results(RESULTS.with_name("rm_world_comparisons.json") if a.comparisons else RESULTS, res)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
