"""Your model, your data, your prompts: the whole chain SFT -> RM -> PPO -> eval -> chat/serve on
tiny random-initialised Hugging Face models with real tokenizers and the real files of
../shared/data, with no world directory and the world generator made unavailable."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch
from conftest import shared_data
from safetensors.torch import load_file
from typer.testing import CliRunner
from user_models import save_user_model

from chatrlhf.cli import app


@pytest.fixture
def no_world(monkeypatch):
    """Any attempt to generate or load the embedded world fails the test."""
    from chatrlhf.world import World

    def refuse(*a, **k):
        raise AssertionError("the embedded world was used")

    monkeypatch.setattr(World, "generate", refuse)
    monkeypatch.setattr(World, "load", refuse)


def _slice(src: Path, dst: Path, n: int) -> Path:
    """The first n lines of a real (gzipped) jsonl file, in tmp (the data never goes into the repo)."""
    opener = gzip.open if src.suffix == ".gz" else open
    with opener(src, "rt", encoding="utf-8") as f:
        lines = [next(f) for _ in range(n)]
    dst.write_text("".join(lines), encoding="utf-8")
    return dst


def cli(*args: str, input: str | None = None):
    r = CliRunner().invoke(app, list(args), input=input)
    print(r.output)
    if r.exit_code != 0:
        raise AssertionError(f"chatrlhf {args[0]} exited {r.exit_code}:\n{r.output[-3000:]}")
    return r


def sets(**kv) -> list[str]:
    out = []
    for k, v in kv.items():
        out += ["--set", f"{k.replace('__', '.')}={v}"]
    return out


# arch, chat template, SFT data, RM data, PPO prompts, LoRA (target modules), PPO guard
CASES = {
    "llama-chatml": ("llama", "chatml", "self_instruct", "oasst", "lottery", None, "held_out_comparisons"),
    "gpt2-no-template-lora": ("gpt2", None, "hh", "hh", "hh", "[c_attn]", "none"),
    "qwen2-chatml-lora": ("qwen2", "chatml", "oasst", "oasst", "lottery", "[q_proj,v_proj]", "none"),
    "mistral-inst-csv": ("mistral", "inst", "self_instruct", "hh_csv", "csv", None, "held_out_comparisons"),
}


def _data(kind: str, tmp: Path) -> tuple[str, dict[str, str]]:
    """(path, extra --set) for a data kind, from the real files."""
    if kind == "self_instruct":
        return str(shared_data("self_instruct/seed_tasks.jsonl")), {}
    if kind == "oasst":
        return str(_slice(shared_data("openassistant_oasst_sample/en_100_tree.jsonl"), tmp / "oasst.jsonl", 40)), {}
    if kind == "hh":
        return str(_slice(shared_data("hh_rlhf/harmless-base/test.jsonl.gz"), tmp / "hh.jsonl", 80)), {}
    if kind == "lottery":
        return str(shared_data("openassistant_oasst_sample/prompt_lottery_en_250_text.jsonl")), {}
    if kind == "hh_csv":  # HH pairs as a csv with the user's own column names
        import pandas as pd

        from chatrlhf.lm.rankings import parse_hh_transcript

        rows = []
        for line in _slice(shared_data("hh_rlhf/harmless-base/test.jsonl.gz"), tmp / "hh_raw.jsonl", 80).read_text().splitlines():
            r = json.loads(line)
            c, j = parse_hh_transcript(r["chosen"]), parse_hh_transcript(r["rejected"])
            if c and j and c[-1]["role"] == j[-1]["role"] == "assistant" and c[-1]["content"] and j[-1]["content"]:
                rows.append({"question": c[-2]["content"], "good": c[-1]["content"], "bad": j[-1]["content"]})
        pd.DataFrame(rows).to_csv(tmp / "pairs.csv", index=False)
        return str(tmp / "pairs.csv"), {"rm__columns__prompt": "question", "rm__columns__chosen": "good",
                                        "rm__columns__rejected": "bad"}
    if kind == "csv":  # prompts as a csv with a mapped column and a checkable answer
        import pandas as pd

        lottery = [json.loads(x) for x in shared_data("openassistant_oasst_sample/prompt_lottery_en_250_text.jsonl")
                   .read_text().splitlines()[:30]]
        pd.DataFrame({"q": lottery, "gt": [json.dumps({"type": "number", "answer": 3})] * len(lottery)}).to_csv(
            tmp / "prompts.csv", index=False)
        return str(tmp / "prompts.csv"), {"ppo__columns__prompt": "q", "ppo__columns__ground_truth": "gt"}
    raise ValueError(kind)


@pytest.mark.parametrize("case", list(CASES))
def test_whole_chain_on_your_model_and_data(case, tmp_path, no_world, monkeypatch):
    arch, template, sft_kind, rm_kind, ppo_kind, lora, guard = CASES[case]
    model_dir = save_user_model(tmp_path / "model", arch, template)
    run = tmp_path / "run"
    (sft_data, s1), (rm_data, s2), (ppo_data, s3) = (_data(k, tmp_path) for k in (sft_kind, rm_kind, ppo_kind))
    common = sets(run__out_dir=run, model__name_or_path=model_dir, run__tensorboard="false",
                  sft__data=sft_data, sft__max_steps=3, sft__batch_size=4, sft__max_len=256, sft__eval_prompts=3, sft__val_fraction=0.1,
                  eval__max_new_tokens=6,
                  rm__data=rm_data, rm__epochs=0.1, rm__batch_prompts=4, rm__max_len=128, rm__val_fraction=0.2,
                  ppo__data=ppo_data, ppo__total_iterations=2, ppo__rollout__batch_size=4, ppo__update__mini_batch_size=4,
                  ppo__update__epochs=1, ppo__rollout__max_new_tokens=6, ppo__update__learning_rate=1e-3, ppo__guard__eval_every=1,
                  ppo__guard__prompts=4, ppo__rejection_sampling__n=2, ppo__rejection_sampling__prompts=6,
                  ppo__rejection_sampling__epochs=1, ppo__rejection_sampling__batch_size=4, ppo__guard__early_stop=guard,
                  **s1, **s2, **s3)
    if lora:
        common += sets(sft__lora__enabled="true", sft__lora__target_modules=lora,
                       rm__lora__enabled="true", rm__lora__target_modules=lora,
                       ppo__lora__enabled="true", ppo__lora__target_modules=lora)

    cli("sft", *common)
    ev = json.loads((run / "sft" / "eval_user_data.json").read_text())
    assert ev["samples"] == min(3, ev["val_examples"]) > 0 and ev["val_loss"] == ev["val_loss"]  # the user's own held-out data, a real loss

    cli("rm", *common)
    assert (run / "rm" / "val_comparisons.jsonl").stat().st_size > 0
    if lora:  # a LoRA RM is saved merged: the sequence-classification checkpoint every reader of the RM loads
        assert not any("lora" in k for k in load_file(run / "rm" / "model.safetensors"))

    # DPO on the same comparisons, read as the RM reads them (rm.columns included), with LoRA where the case has it
    dpo_sets = sets(dpo__epochs=0.2, dpo__batch_prompts=4, dpo__max_len=128, dpo__learning_rate=1e-3)
    if lora:
        dpo_sets += sets(dpo__lora__enabled="true", dpo__lora__target_modules=lora)
    cli("dpo", *common, *dpo_sets)
    dpo_meta = json.loads((run / "dpo" / "meta.json").read_text())
    assert dpo_meta["complete"] and dpo_meta["comparisons"] == rm_data and dpo_meta["eval"]["before"]
    dpo_w, sft_w = load_file(run / "dpo" / "model.safetensors"), load_file(run / "sft" / "model.safetensors")
    assert set(dpo_w) == set(sft_w) and any(not torch.equal(dpo_w[k], sft_w[k]) for k in sft_w)  # plain (LoRA merged), trained

    from chatrlhf.lm.conversations import load_prompts
    from chatrlhf.rl import ppo as rl_ppo

    user_prompts = {json.dumps(p["messages"]) for p in load_prompts(ppo_data, columns={
        k.split("__")[-1]: v for k, v in s3.items()})}
    seen: list[str] = []
    real_rollout = rl_ppo.rollout

    def spy(model, tok, prompts, *a, **k):
        seen.extend(json.dumps(p["messages"]) for p in prompts)
        return real_rollout(model, tok, prompts, *a, **k)

    monkeypatch.setattr(rl_ppo, "rollout", spy)
    out = cli("ppo", *common).output
    assert "embedded world" not in out
    meta = json.loads((run / "ppo" / "meta.json").read_text())
    assert meta["iterations"] == 2 and meta["prompts"]["source"] == ppo_data
    assert meta["prompts"]["guard"] == ("ComparisonGuard" if guard == "held_out_comparisons" else None)
    assert seen and set(seen) <= user_prompts  # PPO trained on the user's prompts, and only on them
    # no pre-training text (no world, no pretrain.data): the default PPO-ptx is left out and says so
    assert meta["ptx_coef"] == 0.0 and "PPO-ptx off" in out
    best_of_n = json.loads((run / "ppo" / "best_of_n" / "meta.json").read_text())
    assert best_of_n["prompts_sampled"] == 6
    sft_w, ppo_w = load_file(run / "sft" / "model.safetensors"), load_file(run / "ppo" / "model.safetensors")
    assert set(sft_w) == set(ppo_w)  # LoRA merged back into a plain checkpoint
    assert any(not torch.equal(sft_w[k], ppo_w[k]) for k in sft_w)  # the PPO policy is not SFT
    if meta["selected_iteration"] > 0:  # and PPO's own updates moved it past its best-of-n start
        start = load_file(run / "ppo" / "best_of_n" / "model.safetensors")
        assert any(not torch.equal(start[k], ppo_w[k]) for k in start)
    assert guard != "none" or meta["selected_iteration"] == 2

    cli("sft", "--eval-only", *common)  # now with an RM: its score of SFT's answers and the references
    assert "rm_score" in json.loads((run / "sft" / "eval_user_data.json").read_text())

    cli("eval", *common, *sets(eval__sections="[world,real_prompts]", eval__real_data_limit=2,
                               eval__shared_data=shared_data("").resolve()))
    summary = json.loads((run / "eval" / "summary.json").read_text())
    # the best-of-n start is evaluated too, for the stage attribution (sft -> best_of_n -> ppo)
    assert set(summary["models"]) == {"sft", "best_of_n", "ppo"} and "real_rm_score" in summary["models"]["ppo"]
    assert any("world section skipped" in n for n in summary["notes"])
    cli("report", *common)
    assert (run / "report" / "report.html").is_file()

    chat = cli("chat", *common, "--system", "Answer briefly.", input="Hello there\nAnd again?\n/exit\n").output
    assert chat.count("bot>") == 2 and "error" not in chat

    from fastapi.testclient import TestClient

    from chatrlhf.config import ServeConfig
    from chatrlhf.lm.engine import load_engine
    from chatrlhf.serve.server import create_app

    with TestClient(create_app(load_engine(run / "ppo"), ServeConfig(default_max_tokens=4))) as client:
        r = client.post("/v1/chat/completions", json={"model": "x", "messages": [
            {"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == "assistant"


def test_readme_commands_align_your_own_model(tmp_path, no_world, monkeypatch):
    """The README's "Align your own model" commands, as written, with configs/your_model.yaml (only
    the model path, the run folder and the step counts changed, to keep the test fast)."""
    import re
    import shlex

    repo = Path(__file__).resolve().parents[1]
    block = re.search(r"<!-- your-model-commands -->\s*```bash\n(.*?)```", (repo / "README.md").read_text(), re.S)
    lines = [ln.split("#")[0].strip() for ln in block.group(1).splitlines()]
    commands = [shlex.split(ln)[1:] for ln in lines if ln.startswith("chatrlhf ")]
    assert [c[0] for c in commands] == ["sft", "rm", "ppo", "sft", "eval", "chat", "serve"]
    shared_data("openassistant_oasst_sample/en_100_tree.jsonl")
    shared_data("self_instruct/seed_tasks.jsonl")
    monkeypatch.chdir(repo)  # the config's data paths are relative to the repository, as in the README
    model = save_user_model(tmp_path / "model", "qwen2", "chatml")
    fast = sets(run__out_dir=tmp_path / "run", sft__max_steps=2, sft__batch_size=4, sft__max_len=256,
                sft__eval_prompts=2, eval__max_new_tokens=4, rm__epochs=0.05, rm__max_len=256, rm__batch_prompts=4,
                ppo__total_iterations=1, ppo__rollout__batch_size=4, ppo__update__mini_batch_size=4, ppo__rollout__max_new_tokens=4,
                ppo__rejection_sampling__prompts=4, ppo__rejection_sampling__n=2, ppo__rejection_sampling__epochs=1,
                ppo__guard__prompts=4, eval__sections="[real_prompts]", eval__real_data_limit=2)
    for cmd in commands:
        cmd = [a.replace("$MODEL", str(model)) for a in cmd]
        if cmd[0] == "serve":  # a server runs until stopped: check it starts on the right model instead
            from chatrlhf.config import load_config
            from chatrlhf.layout import resolve_model

            cfg = load_config(cmd[cmd.index("-c") + 1], [f"run.out_dir={tmp_path / 'run'}"])
            assert resolve_model(cfg) == tmp_path / "run" / "ppo"
            continue
        cli(*cmd, *fast, input="Hello!\n/exit\n" if cmd[0] == "chat" else None)
    assert json.loads((tmp_path / "run" / "ppo" / "meta.json").read_text())["prompts"]["source"].endswith(
        "prompt_lottery_en_250_text.jsonl")
