"""PPO step benchmark, results in bench/results/ppo.json.

    .venv/bin/python bench/bench_ppo.py            # chatrlhf vs TRL 1.10 PPOTrainer, rollout tokens/s, FLOPs

One run, the same setup for both trainers: a random embedded-size Llama (policy, reference, RM and
value model all from it), the same chat-templated world prompts, the same response length, rollout
batch, mini-batch and PPO epochs, one CPU thread each, each trainer in its own subprocess
(chatrlhf in .venv, TRL's `trl.experimental.ppo.PPOTrainer` in .venv-trl110, made with
`pip install torch==2.13.0`, then `trl==1.10.0` and `-e .`). A step is one rollout batch plus its
PPO epochs; the first step is a warm-up and not counted. The trainers run alternately, twice each,
and the medians of all their steps are compared, so load on a shared machine hits both alike. Each
step is timed in wall seconds and in the worker's CPU seconds; both ratios are reported.

Ours runs twice: with the default `ppo.critic.model=shared`, a value head on the policy's last hidden
states (one trunk pass per mini-batch, values from the rollout's hidden states), and with
`ppo.critic.model=separate`, a value model initialised from the whole RM, the critic TRL 1.10's
PPOTrainer takes. Both ratios are reported. A third run keeps the separate critic and sets
`ppo.update.compile` (torch.compile of the layer stacks of the policy, the reference, the value model
and the RM, and of the update's log-softmax).
TRL runs twice as well: as it ships (eager), and compiled through accelerate's dynamo backend
(`ACCELERATE_DYNAMO_BACKEND=inductor`, what `accelerate launch --dynamo_backend inductor` sets; TRL's
PPOTrainer ignores `TrainingArguments.torch_compile`). The ratios named speedup_vs_trl* are against
TRL eager; `best_vs_best_separate_critic` compares each trainer at its best with a separate critic
(the faster of its eager and compiled steps). A compiled worker's first step compiles (cold in its
first run, from inductor's disk cache in the second) and each worker's first step is reported apart.

Also: rollout tokens/s of our KV-cache engine against `model.generate` on the same batch, and the
step's model FLOPs (2N per token forward, 6N forward+backward; attention's T^2 term left out, small
at these lengths) against the CPU's measured fp32 matmul peak on the same thread count.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "ppo.json"
TRL_PY = ROOT / ".venv-trl110" / "bin" / "python"
OURS_PY = ROOT / ".venv" / "bin" / "python"

SETTINGS = {"rollout_batch_size": 32, "mini_batch_size": 8, "ppo_epochs": 2, "response_length": 48,
            "steps": 4, "threads": 1, "learning_rate": 1e-5, "kl_coef": 0.05, "seed": 0}


# --- setup (shared by both workers) ------------------------------------------------------------


def setup(tmp: Path) -> dict:
    """Tokenizer + random embedded-size Llama (policy dir) + RM dir (same backbone, scalar head) + prompts."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from chatrlhf.config import ModelConfig, WorldConfig
    from chatrlhf.lm.modeling import build_tiny_llama, save_stage
    from chatrlhf.lm.tokenizer import train_tokenizer
    from chatrlhf.world import World

    world = World.generate(WorldConfig(corpus_docs=800, n_sft_prompts=20, n_rm_prompts=10, n_ppo_prompts=64,
                                       n_eval_prompts=10))
    tok = train_tokenizer(world.corpus("train"), vocab_size=2048)
    torch.manual_seed(0)
    model = build_tiny_llama(ModelConfig(), tok)
    save_stage(model, tok, tmp / "policy", {"stage": "bench"})
    rm = AutoModelForSequenceClassification.from_pretrained(str(tmp / "policy"), num_labels=1)
    rm.config.pad_token_id = tok.pad_token_id
    save_stage(rm, tok, tmp / "rm", {"stage": "bench"})
    prompts = [{"messages": p["messages"]} for p in world.prompts("ppo")]
    (tmp / "prompts.json").write_text(json.dumps(prompts))
    return {"params": sum(p.numel() for p in model.parameters())}


# --- workers -----------------------------------------------------------------------------------


# our trainer's variants: the default shared critic, a separate critic as TRL's, and the separate critic
# with ppo.update.compile (torch.compile of the layer stacks; its first step compiles and is not counted)
OURS = {"ours": {"critic": "shared"}, "ours_separate": {"critic": "separate"},
        "ours_separate_compiled": {"critic": "separate", "compile": True}}
# TRL as it ships (eager), and compiled through accelerate's dynamo backend: each trainer is also compared at its best
TRL = {"trl": {}, "trl_compiled": {"compile": True}}


def worker_ours(tmp: Path, s: dict, critic: str = "shared", compile: bool = False) -> dict:
    import torch

    from chatrlhf.config import PPOConfig
    from chatrlhf.lm.modeling import load_causal_lm, load_tokenizer
    from chatrlhf.lm.reward_model import RewardModel, compile_reward
    from chatrlhf.lm.training import make_accelerator
    from chatrlhf.rl.critic import load_critic
    from chatrlhf.rl.ppo import PPOTrainer

    torch.set_num_threads(s["threads"])
    prompts = json.loads((tmp / "prompts.json").read_text())
    tok = load_tokenizer(tmp / "policy")
    policy, ref = load_causal_lm(tmp / "policy"), load_causal_lm(tmp / "policy")
    rm = RewardModel.load(tmp / "rm")
    if compile:  # as chatrlhf ppo does with ppo.update.compile
        compile_reward(rm)
    cfg = PPOConfig.model_validate({
        "total_iterations": s["steps"] + 1, "save_every": 10_000, "critic": {"model": critic},
        "rollout": {"batch_size": s["rollout_batch_size"], "max_new_tokens": s["response_length"]},
        "update": {"mini_batch_size": s["mini_batch_size"], "epochs": s["ppo_epochs"], "learning_rate": s["learning_rate"],
                   "compile": compile},
        "reward": {"kl_coef": s["kl_coef"]}, "guard": {"early_stop": "none", "max_kl": 1e9}})
    trainer = PPOTrainer(cfg, policy, ref, load_critic(tmp / "rm", critic, policy), tok,
                         lambda ps, ts: rm.score([p["messages"] for p in ps], ts), prompts, tmp / "ours_out",
                         make_accelerator(s["seed"], device="cpu"), seed=s["seed"])
    phases = time_phases()
    steps, cpu = [], []
    for _ in range(s["steps"] + 1):
        c = time.process_time()
        steps.append(trainer.step())
        cpu.append(time.process_time() - c)
    first, steps, cpu = steps[0], steps[1:], cpu[1:]
    out = {"first_step_s": [first["time_step_s"]], "step_s": [h["time_step_s"] for h in steps], "step_cpu_s": cpu,
           "rollout_s": [h["time_rollout_s"] for h in steps],
           # seconds per counted step in each phase after the rollout (the first, warm-up step left out)
           "phases_s": {k: sum(v[1:]) / len(steps) for k, v in phases.items()},
           "response_len": statistics.mean(h["response_len"] for h in steps)}
    if critic == "shared":
        out.update(generation_speed(tmp, s, policy, tok, prompts))
        out["matmul_peak_gflops"] = matmul_peak(s["threads"])
    return out


def time_phases() -> dict[str, list[float]]:
    """Wall seconds of each call to the PPO step's phases after the rollout (RM scoring, the reference
    and value passes, the update epochs), recorded by wrapping them where chatrlhf.rl.ppo calls them."""
    import chatrlhf.rl.ppo as ppo

    seconds: dict[str, list[float]] = {}
    for name in ("score_rollout", "evaluate_rollout", "ppo_update"):
        def timed(*a, _fn=getattr(ppo, name), _name=name, **k):
            t = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                seconds.setdefault(_name, []).append(time.perf_counter() - t)
        setattr(ppo, name, timed)
    return seconds


def generation_speed(tmp: Path, s: dict, model, tok, prompts: list[dict]) -> dict:
    """Sampled tokens/s: our engine vs model.generate, same prompts, batch and max_new_tokens."""
    import torch

    from chatrlhf.lm.engine import Engine, SamplingParams

    model.eval()
    eng = Engine(model, tok)
    ids = [eng.chat_prompt(p["messages"]) for p in prompts[: s["rollout_batch_size"]]]
    params = SamplingParams(max_new_tokens=s["response_length"], temperature=1.0, seed=1)
    eng.generate(ids[:4], params)  # warm-up
    t = time.perf_counter()
    n_ours = sum(len(g.token_ids) for g in eng.generate(ids, params))
    ours = n_ours / (time.perf_counter() - t)
    batch = tok.pad({"input_ids": ids}, return_tensors="pt")
    with torch.no_grad():
        t = time.perf_counter()
        out = model.generate(**batch, do_sample=True, max_new_tokens=s["response_length"], top_k=0,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        secs = time.perf_counter() - t
    new = out[:, batch["input_ids"].shape[1]:]
    n_hf = int(((new != tok.pad_token_id).cumsum(1) > 0).sum())  # generated tokens up to each row's end
    return {"engine_tokens_per_s": ours, "hf_generate_tokens_per_s": n_hf / secs,
            "engine_vs_generate": ours / (n_hf / secs)}


def worker_trl(tmp: Path, s: dict, compile: bool = False) -> dict:
    if compile:
        # TRL's PPOTrainer builds its own Accelerator, which ignores TrainingArguments.torch_compile; accelerate's
        # dynamo backend (what `accelerate launch --dynamo_backend inductor` sets) compiles the models it prepares
        os.environ["ACCELERATE_DYNAMO_BACKEND"] = "inductor"
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from chatrlhf.lm.modeling import load_tokenizer

    torch.set_num_threads(s["threads"])
    tok = load_tokenizer(tmp / "policy")
    prompts = json.loads((tmp / "prompts.json").read_text())
    ids = [tok(tok.apply_chat_template(p["messages"], add_generation_prompt=True, tokenize=False),
               add_special_tokens=False)["input_ids"] for p in prompts]
    B = s["rollout_batch_size"]
    args = PPOConfig(output_dir=str(tmp / "trl_out"), per_device_train_batch_size=B, gradient_accumulation_steps=1,
                     num_mini_batches=B // s["mini_batch_size"], num_ppo_epochs=s["ppo_epochs"],
                     response_length=s["response_length"], total_episodes=B * (s["steps"] + 1),
                     local_rollout_forward_batch_size=B, learning_rate=s["learning_rate"], kl_coef=s["kl_coef"],
                     stop_token="eos", missing_eos_penalty=1.0, report_to=[], save_strategy="no",
                     num_sample_generations=0, use_cpu=True, seed=s["seed"], logging_steps=1, disable_tqdm=True)
    times: list[tuple[float, float]] = []

    class Timer(TrainerCallback):
        def on_train_begin(self, *a, **k):
            times.append((time.perf_counter(), time.process_time()))

        def on_step_end(self, *a, **k):
            times.append((time.perf_counter(), time.process_time()))

    load = lambda cls, d, **kw: cls.from_pretrained(str(tmp / d), **kw)  # noqa: E731
    trainer = PPOTrainer(args=args, processing_class=tok, model=load(AutoModelForCausalLM, "policy"),
                         ref_model=load(AutoModelForCausalLM, "policy"),
                         reward_model=load(AutoModelForSequenceClassification, "rm", num_labels=1),
                         value_model=load(AutoModelForSequenceClassification, "rm", num_labels=1),
                         train_dataset=Dataset.from_dict({"input_ids": ids}), eval_dataset=Dataset.from_dict({"input_ids": ids[:B]}),
                         callbacks=[Timer()])
    trainer.train()
    wall, cpu = ([b[k] - a[k] for a, b in itertools.pairwise(times)] for k in (0, 1))
    return {"first_step_s": wall[:1], "step_s": wall[1:], "step_cpu_s": cpu[1:]}  # the first (warm-up, compiling) step apart


def matmul_peak(threads: int, n: int = 1024, reps: int = 10) -> float:
    """Best fp32 GFLOP/s of an n x n matmul on `threads` threads (the CPU's practical ceiling)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


# --- FLOPs and the report ---------------------------------------------------------------------


def step_flops(n_params: int, prompt_len: float, resp_len: float, s: dict, separate_critic: bool = False) -> float:
    """Model FLOPs of one PPO step (2N per token forward, 6N forward+backward): rollout, RM and
    reference forwards, then epochs of policy forward+backward; a separate critic adds its own
    forward over the rollout and its forward+backward in every epoch. The shared head's FLOPs are
    negligible, and the old log-probs and values come from the rollout."""
    tokens = s["rollout_batch_size"] * (prompt_len + resp_len)
    fwd = 2 * n_params * tokens
    models = 2 if separate_critic else 1
    return fwd * (3 + models - 1) + s["ppo_epochs"] * models * 3 * fwd


def run_worker(py: Path, which: str, tmp: Path) -> dict:
    out = tmp / f"{which}.json"
    cmd = [str(py), __file__, "--worker", which, "--tmp", str(tmp), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(SETTINGS["threads"]), "CUDA_VISIBLE_DEVICES": "",
           "TORCHINDUCTOR_CACHE_DIR": str(tmp / "inductor")}  # the first compiled worker compiles cold, the second reads it
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    return json.loads(out.read_text())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--worker", choices=[*OURS, *TRL])
    p.add_argument("--tmp", type=Path)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    if a.worker:
        res = worker_trl(a.tmp, SETTINGS, **TRL[a.worker]) if a.worker in TRL else worker_ours(a.tmp, SETTINGS, **OURS[a.worker])
        a.out.write_text(json.dumps(res))
        return
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        info = setup(tmp)
        prompts = json.loads((tmp / "prompts.json").read_text())
        # alternate the trainers (ours..., TRL..., ours..., TRL...) so a shared machine's load hits all alike
        ours, trl = {name: run_worker(OURS_PY, name, tmp) for name in OURS}, {}
        if TRL_PY.exists():
            trl = {name: run_worker(TRL_PY, name, tmp) for name in TRL}
            for runs, py in ((ours, OURS_PY), (trl, TRL_PY)):
                for name, acc in runs.items():
                    again = run_worker(py, name, tmp)
                    for k in ("first_step_s", "step_s", "step_cpu_s", "rollout_s"):
                        if k in acc:
                            acc[k] += again[k]
                    if "phases_s" in acc:
                        acc["phases_s"] = {k: (v + again["phases_s"][k]) / 2 for k, v in acc["phases_s"].items()}
        from chatrlhf.lm.modeling import load_tokenizer

        tok = load_tokenizer(tmp / "policy")
        plen = statistics.mean(len(tok(tok.apply_chat_template(p["messages"], add_generation_prompt=True, tokenize=False),
                                       add_special_tokens=False)["input_ids"]) for p in prompts)
    res = summarise(info, plen, ours, trl)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2))
    print(json.dumps({k: v for k, v in res.items() if "speedup" in k or k in ("rollout", "flops", "best_vs_best_separate_critic")},
                     indent=2))


# result keys of our variants (the first two as in earlier results files); each ratio to TRL is named
# speedup_vs_trl + the key after "ours"
KEYS = {"ours": "ours", "ours_separate": "ours_separate_critic", "ours_separate_compiled": "ours_separate_critic_compiled"}
TRL_KEYS = {"trl": "trl_1_10", "trl_compiled": "trl_1_10_compiled"}


def summarise(info: dict, plen: float, ours: dict[str, dict], trl: dict[str, dict]) -> dict:
    """Per variant: step medians, the first (warm-up) step, and its ratio to TRL's eager step in wall
    and CPU seconds; with a separate critic, each trainer at its best (the faster of its eager and
    compiled steps); the default variant's rollout speed and FLOPs."""
    res = {"settings": SETTINGS, "model_params": info["params"], "mean_prompt_tokens": plen}
    med = lambda run, k="step_s": statistics.median(run[k])  # noqa: E731
    for name, run in ours.items():
        key = KEYS[name]
        suffix = key.removeprefix("ours")
        res[key] = {"step_s_median": med(run), **{k: run[k] for k in ("first_step_s", "step_s", "step_cpu_s", "rollout_s")},
                    "phases_s": run["phases_s"]}
        if trl:
            # CPU seconds too: on a machine shared with other jobs, time spent waiting for a core is not the
            # trainer's, and it varies more than the trainers differ
            res[f"speedup_vs_trl{suffix}"] = med(trl["trl"]) / med(run)
            res[f"cpu_speedup_vs_trl{suffix}"] = med(trl["trl"], "step_cpu_s") / med(run, "step_cpu_s")
    res["ours"]["mean_response_tokens"] = ours["ours"]["response_len"]
    res["trl_1_10"] = None
    for name, run in trl.items():
        res[TRL_KEYS[name]] = {"step_s_median": med(run), **{k: run[k] for k in ("first_step_s", "step_s", "step_cpu_s")}}
    if trl:
        best_ours = min(("ours_separate", "ours_separate_compiled"), key=lambda n: med(ours[n]))
        best_trl = min(trl, key=lambda n: med(trl[n]))
        res["best_vs_best_separate_critic"] = {
            "ours": KEYS[best_ours], "trl": TRL_KEYS[best_trl], "speedup": med(trl[best_trl]) / med(ours[best_ours]),
            "cpu_speedup": med(trl[best_trl], "step_cpu_s") / med(ours[best_ours], "step_cpu_s")}
    base, ours_step = ours["ours"], res["ours"]["step_s_median"]
    flops = step_flops(info["params"], plen, base["response_len"], SETTINGS)
    res["rollout"] = {k: base[k] for k in ("engine_tokens_per_s", "hf_generate_tokens_per_s", "engine_vs_generate")}
    res["flops"] = {"per_step": flops, "achieved_gflops": flops / ours_step / 1e9, "matmul_peak_gflops": base["matmul_peak_gflops"],
                    "fraction_of_peak": flops / ours_step / 1e9 / base["matmul_peak_gflops"]}
    res["machine"] = {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]}
    return res


if __name__ == "__main__":
    main()
