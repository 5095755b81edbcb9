"""Many processes: `accelerate launch` with two gloo ranks on the CPU, for every trainer and the stages that wire them,
and under DeepSpeed ZeRO-2 and ZeRO-3 (its CPU accelerator).

Each 2-rank run is checked against a 1-process run with the same global batch (same steps, same
schedule): the final weights agree within float tolerance, every output file is written once and
complete, and a 2-rank run killed with SIGKILL mid-way resumes under 2 processes and under 1.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from chatrlhf.config import load_config
from chatrlhf.lm.modeling import read_meta
from chatrlhf.lm.training import Checkpoints, read_metrics

pytestmark = pytest.mark.slow  # each 2-rank job starts three interpreters: 20-50 s, 3.5 min in all on a loaded 2-core box

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
CONFIGS = TINY.parent / "accelerate"
FAST = ["sft.eval_after=false", "sft.save_every=10", "rm.save_every=2"]
needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                     reason="DeepSpeed is not installed; `make test` installs it (.ci/setup-test-deps)")
# plain gloo ranks, and DeepSpeed ZeRO-2 and ZeRO-3 (ZeRO-3's stage weights gathered from the shards)
ZERO = [0, pytest.param(2, marks=needs_deepspeed), pytest.param(3, marks=needs_deepspeed)]


def cfg_for(out: Path, *extra: str):
    return load_config(TINY, [f"run.out_dir={out}", *FAST, *extra])


def launch(stage: str, out: Path, *extra: str, ranks: int = 2, wait: bool = True, zero: int = 0):
    """`accelerate launch --multi_gpu --num_processes N` of `chatrlhf <stage>`: real gloo ranks on a CPU;
    with `zero` 2 or 3, DeepSpeed's ZeRO stage of that number instead (its CPU accelerator, on gloo)."""
    with socket.socket() as s:  # a free rendezvous port: other jobs may run on this machine
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sets = [a for o in [f"run.out_dir={out}", *FAST, *extra] for a in ("--set", o)]
    kind = ["--use_deepspeed", "--deepspeed_config_file", str(CONFIGS / f"ds_zero{zero}.json")] if zero else ["--multi_gpu"]
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", *kind, "--num_processes", str(ranks),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(port), "-m", "chatrlhf.cli", stage, "--config", str(TINY), *sets]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=(out / "launch.log").open("w"))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    errors = "\n".join(line for line in proc.stderr.splitlines() if "Error" in line)  # every rank's, not only the last
    assert proc.returncode == 0, f"{errors[-3000:]}\n...\n{proc.stderr[-3000:]}"
    return proc.stderr


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    """The tiny pipeline up to the RM, in this process: the 1-process references."""
    from chatrlhf.stages.pretrain import run_pretrain, run_tokenizer
    from chatrlhf.stages.reward import run_rm
    from chatrlhf.stages.sft import run_sft
    from chatrlhf.world.generate import run_world

    out = tmp_path_factory.mktemp("one")
    cfg = cfg_for(out)
    for stage in (run_world, run_tokenizer, run_pretrain, run_sft, run_rm):
        stage(cfg)
    return out


def copy_stages(src: Path, dst: Path, *stages: str) -> Path:
    for s in stages:
        shutil.copytree(src / s, dst / s)
    return dst


def weights(stage_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(stage_dir / "model.safetensors")


def assert_same_weights(a: Path, b: Path, atol: float = 2e-5) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=atol, msg=k)


def assert_written_once(stage_dir: Path, ranks: int = 2) -> None:
    """Complete stage, one metrics row per (step, metric set), complete checkpoints with every rank's
    state, no temp files left."""
    assert read_meta(stage_dir).get("complete"), f"{stage_dir} not complete"
    rows = read_metrics(stage_dir)
    keys = [(r["step"], tuple(sorted(k for k in r if k != "time"))) for r in rows]
    assert len(keys) == len(set(keys)), f"metric rows repeated in {stage_dir}"
    ckpts = Checkpoints(stage_dir)
    for c in ckpts.good():
        assert json.loads((c / "trainer_state.json").read_text())["world_size"] == ranks
        assert sorted(p.name for p in c.glob("random_states_*.pkl")) == [f"random_states_{i}.pkl" for i in range(ranks)]
    leftovers = [p for p in stage_dir.rglob("*") if p.name.startswith(".tmp") or p.name.endswith(".tmp")]
    assert not leftovers, leftovers


@pytest.mark.parametrize("zero", ZERO)
def test_pretrain_on_two_ranks_matches_one_process(one_process, tmp_path, zero):
    run = copy_stages(one_process, tmp_path, "world", "tokenizer")
    log = launch("pretrain", run, zero=zero)
    kind = "DEEPSPEED" if zero else "MULTI_CPU"
    assert f"pretrain: 2 process(es) [{kind}, backend gloo" in log and "per-rank batch 2 x 64 tokens" in log
    assert "global batch 4 x 64 tokens" in log
    assert log.count("pretrain: val loss") == 1  # one rank reports and writes
    assert_same_weights(one_process / "pretrain", run / "pretrain")
    assert_written_once(run / "pretrain")
    assert len(read_metrics(run / "pretrain")) == len(read_metrics(one_process / "pretrain"))
    assert read_meta(run / "pretrain")["val_loss"] == pytest.approx(read_meta(one_process / "pretrain")["val_loss"], abs=1e-4)


@pytest.mark.parametrize("zero", ZERO)
def test_sft_on_two_ranks_matches_one_process(one_process, tmp_path, zero):
    run = copy_stages(one_process, tmp_path, "world", "tokenizer", "pretrain")
    log = launch("sft", run, zero=zero)
    assert "sft: 2 process(es)" in log
    assert_same_weights(one_process / "sft", run / "sft")
    assert_written_once(run / "sft")
    assert read_meta(run / "sft")["steps"] == read_meta(one_process / "sft")["steps"]


@pytest.mark.parametrize("zero", ZERO)
def test_rm_with_its_samples_on_two_ranks_matches_one_process(one_process, tmp_path, zero):
    """`chatrlhf rm` samples the comparisons first: each rank samples its share of the prompts (row i
    keeps its seed), rank 0 labels and writes them, then both train."""
    run = copy_stages(one_process, tmp_path, "world", "tokenizer", "pretrain", "sft")
    log = launch("rm", run, zero=zero)
    assert log.count("rm: held-out prompts acc") == 1
    comparisons = (run / "rm" / "comparisons.jsonl").read_text()
    assert comparisons == (one_process / "rm" / "comparisons.jsonl").read_text()
    assert_same_weights(one_process / "rm", run / "rm")
    assert_written_once(run / "rm")
    assert Checkpoints(run / "rm").good(), "rm.save_every=2 wrote checkpoints on two ranks"
    for key in ("acc_held_out_prompts", "reward_bias"):
        assert read_meta(run / "rm")["eval"][key] == pytest.approx(read_meta(one_process / "rm")["eval"][key], abs=1e-4)


def rm_in_one_process_and_on_two_ranks(one_process: Path, tmp_path: Path, *extra: str) -> dict[str, Path]:
    """`chatrlhf rm` with `extra` on one_process's stages and comparisons, in this process ("one") and
    on two ranks ("two"); the two run directories."""
    from chatrlhf.stages.reward import run_rm

    runs = {}
    for name in ("one", "two"):
        runs[name] = copy_stages(one_process, tmp_path / name, "world", "tokenizer", "pretrain", "sft")
        (runs[name] / "rm").mkdir()
        shutil.copy(one_process / "rm" / "comparisons.jsonl", runs[name] / "rm" / "comparisons.jsonl")
    run_rm(cfg_for(runs["one"], *extra))
    launch("rm", runs["two"], *extra)
    return runs


def test_rm_with_its_language_model_term_on_two_ranks_matches_one_process(one_process, tmp_path):
    """rm.lm_coef: each rank's language-model term on its share of the comparisons; the term averages
    over comparisons as the ranking loss does, so two ranks take the one-process steps."""
    runs = rm_in_one_process_and_on_two_ranks(one_process, tmp_path, "rm.lm_coef=0.5")
    assert_same_weights(runs["one"] / "rm", runs["two"] / "rm")
    assert_written_once(runs["two"] / "rm")
    one, two = (read_metrics(runs[n] / "rm") for n in ("one", "two"))
    assert [r["rm/lm_loss"] for r in two] == pytest.approx([r["rm/lm_loss"] for r in one], abs=1e-4)
    assert not any("rm/lm_loss" in r for r in read_metrics(one_process / "rm"))  # off by default


def test_lora_rm_on_two_ranks_matches_one_process(one_process, tmp_path):
    """rm.lora: both processes draw the same adapters from the seed, train them and the head on their
    shares, and save the same merged weights."""
    runs = rm_in_one_process_and_on_two_ranks(one_process, tmp_path, "rm.lora.enabled=true", "rm.learning_rate=1e-2")
    moved = max((weights(runs["one"] / "rm")[k] - w).abs().max().item() for k, w in weights(one_process / "sft").items()
                if k in weights(runs["one"] / "rm"))
    assert moved > 1e-3, "the adapters hardly moved: the comparison below would prove nothing"
    assert_same_weights(runs["one"] / "rm", runs["two"] / "rm")
    assert_written_once(runs["two"] / "rm")


LAST = ["ppo.guard.early_stop=none"]  # the last iteration is exported, not the guard's pick
RLOO = [*LAST, "ppo.advantage.estimator=rloo", "ppo.rollout.samples_per_prompt=2", "ppo.rejection_sampling.n=1"]
GRPO = [*LAST, "ppo.advantage.estimator=grpo", "ppo.rollout.samples_per_prompt=2", "ppo.rejection_sampling.n=1"]
RL = {"gae": LAST, "rloo": RLOO, "grpo": GRPO}  # GAE starts from best-of-n, the group baselines without a critic
ONLINE_DPO = ["dpo.learning_rate=1e-3", "dpo.rounds=2", "dpo.save_every=2", "dpo.log_every=1"]


@pytest.fixture(scope="module")
def in_one_process(one_process, tmp_path_factory):
    """`(stage, *extra) -> run directory`: `ppo` or `dpo` run in this process from the 1-process run's
    world, SFT and RM, once per settings (the plain 2-rank and the DeepSpeed tests compare with the same run)."""
    from chatrlhf.stages.dpo import run_dpo
    from chatrlhf.stages.ppo import run_ppo

    done: dict[tuple[str, ...], Path] = {}

    def run(stage: str, *extra: str) -> Path:
        if (stage, *extra) not in done:
            d = copy_stages(one_process, tmp_path_factory.mktemp(f"one_{stage}"), "world", "sft", "rm")
            {"ppo": run_ppo, "dpo": run_dpo}[stage](cfg_for(d, *extra))
            done[(stage, *extra)] = d
        return done[(stage, *extra)]

    return run


@pytest.mark.parametrize("zero", [0, pytest.param(2, marks=needs_deepspeed)])
@pytest.mark.parametrize("method", list(RL))
def test_ppo_on_two_ranks_matches_one_process(one_process, in_one_process, tmp_path, method, zero):
    """Best-of-n, then PPO (GAE; or RLOO or GRPO without a critic): the same rollouts (a row's sample
    depends on its seed only), advantages whitened over the global batch, and each mini-batch's rows run
    where they are held, weighted by their share of its tokens: the weights agree with one process's,
    on plain gloo ranks and under ZeRO-2 (policy and value head one DeepSpeed engine)."""
    extra = RL[method]
    run = copy_stages(one_process, tmp_path / "two", "world", "sft", "rm")
    log = launch("ppo", run, *extra, zero=zero)
    kind = "DEEPSPEED" if zero else "MULTI_CPU"
    assert f"ppo: 2 process(es) [{kind}" in log and log.count("best-of-4:") == (method == "gae")
    out = run / "ppo"
    assert_written_once(out)
    assert (out / "value").is_dir() == (method == "gae")
    assert [r["step"] for r in read_metrics(out)] == [1, 2]
    assert read_meta(out)["iterations"] == 2 and read_meta(out)["selected_iteration"] == 2
    sft, ppo = weights(one_process / "sft"), weights(out)
    assert any(not torch.equal(sft[k], ppo[k]) for k in sft), "the policy moved away from SFT"

    single = in_one_process("ppo", *extra)
    atol = 1e-5 if zero else 1e-6  # PPO moves weights by ~2e-4 here
    if method == "gae":
        assert read_meta(out / "best_of_n").get("complete")
        assert_same_weights(single / "ppo" / "best_of_n", out / "best_of_n", atol=atol)
        heads = [load_file(d / "value" / "value_head.safetensors") for d in (single / "ppo", out)]
        for k in heads[0]:
            torch.testing.assert_close(heads[1][k], heads[0][k], rtol=0, atol=atol, msg=k)
    assert_same_weights(single / "ppo", out, atol=atol)
    for a, b in zip(read_metrics(single / "ppo"), read_metrics(out), strict=True):
        for key in ("rm_score", "kl", "response_len"):
            assert b[key] == pytest.approx(a[key], abs=1e-4), (a["step"], key)


@pytest.mark.parametrize(("lora", "zero"), [(False, 0), (True, 0), pytest.param(False, 2, marks=needs_deepspeed)])
def test_online_dpo_on_two_ranks_matches_one_process(one_process, in_one_process, tmp_path, lora, zero):
    """DPO on the RM's comparisons, then a second (online) round on fresh samples of its policy: each
    rank trains on its share of every batch and samples its share of the prompts; the weights, the
    round-2 comparisons, the held-out accuracies and the logged losses are one process's (with LoRA
    too: the same adapters drawn, the reference the policy with them off; and under ZeRO-2)."""
    extra = list(ONLINE_DPO)
    extra += ["dpo.lora.enabled=true", "dpo.learning_rate=1e-2"] if lora else []
    run = copy_stages(one_process, tmp_path / "two", "world", "sft", "rm")
    log = launch("dpo", run, *extra, zero=zero)
    kind = "DEEPSPEED" if zero else "MULTI_CPU"
    assert f"dpo: 2 process(es) [{kind}" in log and "global batch 8 comparisons" in log
    assert log.count("held-out preference accuracy") == 1, "every rank reported"
    out = run / "dpo"
    assert_written_once(out)
    assert [c.name for c in Checkpoints(out).good()] == ["step_000002"]

    single = in_one_process("dpo", *extra)
    moved = max((weights(single / "dpo")[k] - w).abs().max().item() for k, w in weights(one_process / "sft").items())
    assert moved > 1e-4, "DPO hardly moved the policy: the comparison below would prove nothing"
    assert_same_weights(single / "dpo", out, atol=1e-5)  # DPO moves weights by ~1e-3 here; Adam's update of a
    # near-zero gradient amplifies the last-bit difference of a sum over two shares (about 1e-6)
    assert (out / "round_2" / "comparisons.jsonl").read_text() == (single / "dpo" / "round_2" / "comparisons.jsonl").read_text()
    a, b = (json.loads((d / "eval.json").read_text()) for d in (single / "dpo", out))
    assert b["after"] == a["after"] and b["before"] == a["before"]
    for d in ("", "round_2"):
        one, two = read_metrics(single / "dpo" / d), read_metrics(out / d)
        assert [r["step"] for r in two] == [r["step"] for r in one]
        assert [r["dpo/loss"] for r in two] == pytest.approx([r["dpo/loss"] for r in one], abs=1e-5)


def test_compare_on_two_ranks_matches_one_process(one_process, tmp_path):
    """`chatrlhf compare` trains DPO and GRPO, samples best-of-4 and judges every method under two
    ranks: its table is one process's, written once."""
    from chatrlhf.stages.compare import run_compare

    methods = ["sft", "dpo", "grpo", "bon4"]
    extra = [f"compare.methods=[{', '.join(methods)}]", "compare.kl_prompts=8", "dpo.epochs=1"]
    run = copy_stages(one_process, tmp_path / "two", "world", "tokenizer", "pretrain", "sft", "rm")
    log = launch("compare", run, *extra)
    assert log.count("| bon4 |") == 1 and log.count("evaluating dpo") == 1, "every rank reported"
    single = copy_stages(one_process, tmp_path / "one", "world", "tokenizer", "pretrain", "sft", "rm")
    one = run_compare(cfg_for(single, *extra))["rows"]
    two = json.loads((run / "compare" / "table.json").read_text())["rows"]
    assert [r["method"] for r in two] == methods
    for a, b in zip(one, two, strict=True):
        for key in ("win_rate_greedy", "win_rate_sampled", "gold_greedy", "likert_greedy", "kl_to_sft"):
            assert b[key] == pytest.approx(a[key], abs=1e-5), (a["method"], key)
    for m in ("dpo", "grpo"):
        assert_written_once(run / "compare" / m)


def test_preferences_on_two_ranks_matches_one_process(one_process, tmp_path):
    """`chatrlhf preferences` (each group's SFT model, RM and PPO, the pooled and conditioned ones,
    a second round for every variant) under two ranks: every cell of its table is one process's, and
    each variant's files are written once."""
    from chatrlhf.stages.preferences import run_preferences

    extra = ["preferences.comparisons=16", "preferences.ppo_iterations=2", "preferences.eval_prompts=8",
             "preferences.judgements=1", "preferences.group_sft=true", "preferences.rounds=2", "iterate.prompts_per_round=8"]
    run = copy_stages(one_process, tmp_path / "two", "world", "tokenizer", "pretrain", "sft", "rm")
    log = launch("preferences", run, *extra)
    assert log.count("Whose preferences") == 1, "every rank reported"
    single = copy_stages(one_process, tmp_path / "one", "world", "tokenizer", "pretrain", "sft", "rm")
    run_preferences(cfg_for(single, *extra))
    a, b = (json.loads((d / "preferences" / "table.json").read_text()) for d in (single, run))
    assert b["rows"].keys() == a["rows"].keys() and b["substance"] == a["substance"]
    for name, row in a["rows"].items():
        for g, cell in row.items():
            assert b["rows"][name][g]["win_rate"] == pytest.approx(cell["win_rate"], abs=1e-9), (name, g)
    for variant in ("brief", "conditioned-sft"):
        d = run / "preferences" / variant
        for stage in ("sft", "rm", "ppo", "round_2/rm", "round_2/ppo"):
            assert_written_once(d / stage)
        assert (d / "round_2" / "comparisons.jsonl").read_text() == (
            single / "preferences" / variant / "round_2" / "comparisons.jsonl").read_text()


def test_whole_run_on_two_ranks_matches_one_process(tmp_path):
    """`chatrlhf run` (world to report, two rounds) under two ranks: every stage's weights and every
    evaluation figure are one process's."""
    from chatrlhf.pipeline import run_all

    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir()
    log = launch("run", two)
    assert log.count("run complete") == 1, log[-3000:]
    run_all(cfg_for(one))
    assert_same_weights(one / "pretrain", two / "pretrain", atol=1e-5)
    # each later stage starts from its predecessor's weights, which differ from one process's in the last
    # float bits (the per-stage tests above start both sides from the same weights and hold 2e-5); SFT-ptx
    # trains every weight on pre-training text too, so that difference grows (about 1e-4 by PPO)
    for stage in ("sft", "rm", "ppo", "rounds/round_2/rm", "rounds/round_2/ppo"):
        assert_same_weights(one / stage, two / stage, atol=3e-4)
    assert_written_once(two / "rounds" / "round_2" / "ppo")
    a, b = (json.loads((d / "eval" / "summary.json").read_text()) for d in (one, two))
    assert a["models"].keys() == b["models"].keys()
    # likelihood figures (TruthfulQA MC) carry the weights' last-bit difference (about 1e-6); one judged
    # answer that changed moves a rate by 1 / (prompts x judgements), over 1e-4 even at the default's
    # 400 x 20, so 1e-5 still sees it
    for model, figures in a["models"].items():
        for key, value in figures.items():
            if isinstance(value, float) and "second" not in key:
                assert b["models"][model][key] == pytest.approx(value, abs=1e-5), (model, key)
    assert json.loads((two / "pipeline.json").read_text())["stages"].keys() == json.loads(
        (one / "pipeline.json").read_text())["stages"].keys()


def kill_after_first_checkpoint(run: Path, *extra: str, zero: int = 0) -> Path:
    """Start a 2-rank pretrain, SIGKILL the launcher and both ranks once a checkpoint counts."""
    proc = launch("pretrain", run, *extra, wait=False, zero=zero)
    ckpts, deadline = Checkpoints(run / "pretrain"), time.time() + 300
    while ckpts.latest() is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"exited with {proc.returncode} before a checkpoint: " + (run / "launch.log").read_text()[-3000:]
    # the ranks run in sessions of their own (torch elastic starts them so): kill them by id, with the launcher
    victims = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    while any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in victims):
        time.sleep(0.05)
    killed_at = ckpts.latest()
    assert killed_at is not None, (run / "launch.log").read_text()[-3000:]
    assert not read_meta(run / "pretrain").get("complete"), "killed too late: the run had finished"
    return killed_at


LONG = ["pretrain.max_steps=200", "pretrain.save_every=10", "pretrain.eval_every=100"]


@pytest.mark.parametrize(("resume_ranks", "zero"), [(2, 0), (1, 0), pytest.param(2, 2, marks=needs_deepspeed)])
def test_two_rank_pretrain_killed_mid_way_resumes(one_process, tmp_path, resume_ranks, zero):
    """Killed after its first checkpoint, a 2-rank pretrain resumes under 2 ranks or 1 to the
    uninterrupted weights; under DeepSpeed ZeRO-2 (zero=2) from its engine checkpoint, under 2 ranks."""
    from chatrlhf.stages.pretrain import run_pretrain

    full = run_pretrain(cfg_for(copy_stages(one_process, tmp_path / "full", "world", "tokenizer"), *LONG))
    run = copy_stages(one_process, tmp_path / "killed", "world", "tokenizer")
    killed_at = kill_after_first_checkpoint(run, *LONG, zero=zero)
    assert (killed_at / "pytorch_model").is_dir() == bool(zero), "DeepSpeed writes an engine checkpoint"
    if resume_ranks == 2:
        log = launch("pretrain", run, *LONG, zero=zero)
        assert f"resuming from {killed_at}" in log or "resuming from" in log
    else:
        run_pretrain(cfg_for(run, *LONG))
    assert_same_weights(full, run / "pretrain", atol=5e-5)
    assert read_meta(run / "pretrain")["steps"] == 200
    steps = [r["step"] for r in read_metrics(run / "pretrain") if "train/loss" in r]
    assert steps == sorted(set(steps)), "no step logged twice after the resume"


# --- DeepSpeed: ZeRO-2 runs in the tests above (ZERO, and PPO and online DPO); ZeRO-3 where a stage samples


@needs_deepspeed
def test_deepspeed_zero3_is_refused_where_a_stage_samples_from_its_model(one_process, tmp_path):
    """ZeRO-3 leaves each rank a shard of the model, so a stage that samples from it (PPO) refuses it."""
    with pytest.raises(AssertionError, match="ZeRO-3 leaves each rank a shard"):
        launch("ppo", copy_stages(one_process, tmp_path / "zero3", "world", "sft", "rm"), zero=3)
