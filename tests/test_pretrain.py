"""Pre-training: packing, data order, baselines, loss goes down, exact resume after a kill, NaN stop,
from_pretrained round-trip, and any text corpus (jsonl, csv, tinyshakespeare, a user's model)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import shared_data
from safetensors.torch import load_file

from chatrlhf.config import load_config
from chatrlhf.lm.data import DataError, load_text_corpus, read_text_file
from chatrlhf.lm.modeling import read_meta
from chatrlhf.lm.training import Checkpoints, NonFiniteLossError, read_metrics
from chatrlhf.stages import pretrain

NAMES = ["Zorbel Quint", "Mira Vell", "Oskar Dunn", "Tama Roo", "Ilse Farr", "Beno Kast"]
PLACES = ["Varnok", "Selmouth", "Quillby", "Dorrow"]
JOBS = ["baker", "sailor", "painter", "smith"]


def fake_world_docs(n: int, offset: int = 0) -> list[str]:
    """Fact-like documents with learnable structure (who lives where, does what)."""
    docs = []
    for i in range(offset, offset + n):
        who = NAMES[i % len(NAMES)]
        docs.append(f"{who} is a {JOBS[i % len(JOBS)]} who lives in {PLACES[(i // 3) % len(PLACES)]}. "
                    f"Every morning {who.split()[0]} walks to the market and buys bread.")
    return docs


def write_world(world_dir: Path, n_train: int = 240, n_val: int = 40) -> None:
    world_dir.mkdir(parents=True, exist_ok=True)
    for name, docs in (("train", fake_world_docs(n_train)), ("val", fake_world_docs(n_val, offset=7))):
        (world_dir / f"corpus_{name}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))


TINY = ["tokenizer.vocab_size=300", "model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=2",
        "model.num_heads=2", "model.num_kv_heads=2", "model.max_position_embeddings=64", "pretrain.seq_len=32",
        "pretrain.batch_size=4", "pretrain.max_steps=12", "pretrain.warmup_steps=2", "pretrain.eval_every=6",
        "pretrain.eval_batches=2", "pretrain.save_every=6", "pretrain.log_every=3", "pretrain.learning_rate=0.01",
        "pretrain.wikitext_eval=false", "pretrain.max_minutes=0", "run.tensorboard=false"]


def tiny_cfg(out: Path, *extra: str):
    return load_config(None, [f"run.out_dir={out}", *TINY, *extra])


@pytest.fixture(scope="module")
def tokenized_run(tmp_path_factory) -> Path:
    """A run dir with a fake world corpus and a trained tokenizer (shared by the tests below)."""
    out = tmp_path_factory.mktemp("run")
    write_world(out / "world")
    pretrain.run_tokenizer(tiny_cfg(out))
    return out


def fresh_run(tokenized_run: Path, tmp_path: Path) -> Path:
    """A copy of the world + tokenizer dirs, so each test trains into its own pretrain/."""
    import shutil

    for d in ("world", "tokenizer"):
        shutil.copytree(tokenized_run / d, tmp_path / d)
    return tmp_path


# --- pure pieces --------------------------------------------------------------------------------


def test_packed_stream_is_pure_function_of_step_and_covers_each_epoch():
    tokens = torch.arange(10 * 8 + 3)
    a, b = pretrain.PackedStream(tokens, 8, 3, seed=1), pretrain.PackedStream(tokens, 8, 3, seed=1)
    for step in (5, 0, 7, 5):  # any order, any instance: same batch
        xa, ya = a.batch(step)
        xb, yb = b.batch(step)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.equal(ya[:, :-1], xa[:, 1:])  # targets are the inputs shifted by one
    # within one epoch every chunk is visited exactly once
    n = a.n_chunks
    starts = [int(a.batch(s)[0][r, 0]) for s in range(n // 3) for r in range(3)]
    assert len(set(starts)) == len(starts) == (n // 3) * 3
    assert not torch.equal(pretrain.PackedStream(tokens, 8, 3, seed=2).batch(0)[0], a.batch(0)[0])


def test_pack_documents_puts_separator_before_each_document(tiny_model_dir):
    from chatrlhf.lm.modeling import load_tokenizer
    from chatrlhf.lm.tokenizer import document_eos

    tok = load_tokenizer(tiny_model_dir)
    ids = pretrain.pack_documents(tok, ["Hello there.", "Varnok is a town."])
    sep = document_eos(tok)
    assert ids[0] == sep and int((ids == sep).sum()) == 2
    parts = tok.decode(ids.tolist(), skip_special_tokens=False).split("<|eos|>")
    assert parts == ["", " Hello there.", " Varnok is a town."]  # each document starts a word


def test_unigram_loss_matches_hand_computation():
    train = torch.tensor([0, 0, 0, 1])  # counts+1 over vocab 3: [4, 2, 1] / 7
    val = torch.tensor([2, 0, 1])  # targets are val[1:] = [0, 1]
    expected = -(torch.log(torch.tensor(4 / 7)) + torch.log(torch.tensor(2 / 7))) / 2
    assert pretrain.unigram_loss(train, val, 3) == pytest.approx(float(expected), rel=1e-6)


def test_stream_on_too_small_corpus_names_the_fix():
    with pytest.raises(ValueError, match="seq_len"):
        pretrain.PackedStream(torch.arange(10), 8, 2, seed=0)


# --- text corpora -------------------------------------------------------------------------------


def test_text_corpus_from_jsonl_csv_txt_and_errors(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"body": "one doc"}\n\n{"body": "two doc"}\n')
    assert read_text_file(tmp_path / "c.jsonl", "body") == ["one doc", "two doc"]
    (tmp_path / "c.csv").write_text('\ufeffid,body\n1,"first, with comma"\n2,second\n')
    assert read_text_file(tmp_path / "c.csv", "body") == ["first, with comma", "second"]
    (tmp_path / "c.txt").write_text("para one\nline two\n\n\npara two\n")
    assert read_text_file(tmp_path / "c.txt") == ["para one\nline two", "para two"]
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        read_text_file(tmp_path / "bad.jsonl")
    with pytest.raises(DataError, match=r"c.jsonl:1: no field 'text'.*body"):
        read_text_file(tmp_path / "c.jsonl")
    with pytest.raises(DataError, match=r"c.csv: no column 'text' \(columns: id, body\)"):
        read_text_file(tmp_path / "c.csv")
    with pytest.raises(DataError, match="world corpus not found.*chatrlhf world"):
        load_text_corpus(None, tmp_path / "no_world")


def test_parquet_corpus_and_holdout(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [f"doc {i}" for i in range(40)]}), tmp_path / "c.parquet")
    corpus = load_text_corpus(str(tmp_path / "c.parquet"), tmp_path, val_fraction=0.1)
    assert len(corpus.val) == 4 and len(corpus.train) == 36 and not set(corpus.val) & set(corpus.train)


def test_datasets_directory_with_its_own_validation_split(tmp_path):
    data = tmp_path / "ds"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in fake_world_docs(30)))
    (data / "validation.jsonl").write_text(json.dumps({"text": "held out"}) + "\n")
    corpus = load_text_corpus(str(data), tmp_path)
    assert len(corpus.train) == 30 and corpus.val == ["held out"]
    with pytest.raises(DataError, match="no column 'story'"):
        load_text_corpus(str(data), tmp_path, text_column="story")


# --- the stage ----------------------------------------------------------------------------------


def test_pretrain_learns_beats_unigram_and_round_trips(tokenized_run, tmp_path):
    from transformers import AutoModelForCausalLM

    run = fresh_run(tokenized_run, tmp_path)
    cfg = tiny_cfg(run, "pretrain.max_steps=40", "pretrain.eval_every=20", "pretrain.save_every=20")
    out = pretrain.run_pretrain(cfg)
    meta = read_meta(out)
    assert meta["complete"] and meta["steps"] == 40 and meta["tokens_seen"] == 40 * 4 * 32
    assert meta["val_loss"] < meta["unigram_val_loss"] - 0.3, meta
    train = [m["train/loss"] for m in read_metrics(out) if "train/loss" in m]
    assert train[-1] < train[0] - 1.0  # the loss goes down
    assert {"params", "tokens_per_s", "val_ppl", "val_bpb"} <= set(meta)

    # from_pretrained round-trip: the reloaded weights give the very loss the stage reported
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = pretrain.load_tokenizer(out)
    val = pretrain.pack_documents(tok, load_text_corpus(None, run / "world").val)
    chunks = pretrain.eval_chunks(val, cfg.pretrain.seq_len, 4 * cfg.pretrain.eval_batches * cfg.pretrain.batch_size)
    assert pretrain.evaluate_lm_loss(model, chunks, 4, torch.device("cpu")) == pytest.approx(meta["val_loss"], abs=1e-5)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tie kept


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def test_resume_after_interruption_matches_uninterrupted_run(tokenized_run, tmp_path, monkeypatch):
    full = pretrain.run_pretrain(tiny_cfg(fresh_run(tokenized_run, tmp_path / "full")))

    # "kill" the run right after its step-6 checkpoint is written, then run the stage again
    real_save = Checkpoints.save

    def save_then_die(self, accelerator, step, state):
        real_save(self, accelerator, step, state)
        raise KeyboardInterrupt(f"simulated kill after step {step}")

    monkeypatch.setattr(Checkpoints, "save", save_then_die)
    cfg = tiny_cfg(fresh_run(tokenized_run, tmp_path / "killed"))
    with pytest.raises(KeyboardInterrupt):
        pretrain.run_pretrain(cfg)
    assert Checkpoints(cfg.stage_dir("pretrain")).latest().name == "step_000006"
    assert not read_meta(cfg.stage_dir("pretrain")).get("complete")
    monkeypatch.setattr(Checkpoints, "save", real_save)
    resumed = pretrain.run_pretrain(cfg)

    a, b = _weights(full), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    assert read_meta(resumed)["val_loss"] == pytest.approx(read_meta(full)["val_loss"], abs=1e-6)
    assert read_meta(resumed)["tokens_seen"] == read_meta(full)["tokens_seen"]


@pytest.mark.slow  # a fresh interpreter importing torch + transformers: ~20 s on a loaded 2-core box
def test_sigkill_mid_run_then_resume_reaches_same_weights(tokenized_run, tmp_path):
    overrides = ["pretrain.max_steps=30", "pretrain.save_every=3"]
    full = pretrain.run_pretrain(tiny_cfg(fresh_run(tokenized_run, tmp_path / "full"), *overrides))

    run = fresh_run(tokenized_run, tmp_path / "killed")
    args = [a for o in TINY + overrides + [f"run.out_dir={run}"] for a in ("--set", o)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "chatrlhf.cli", "pretrain", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = Checkpoints(run / "pretrain")
    deadline = time.time() + 120
    while ckpts.latest() is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = ckpts.latest()
    assert killed_at is not None and not read_meta(run / "pretrain").get("complete")

    resumed = pretrain.run_pretrain(tiny_cfg(run, *overrides))
    a, b = _weights(full), _weights(resumed)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=f"{k} (killed after {killed_at.name})")


def test_nan_loss_stops_with_clear_error_and_keeps_last_checkpoint(tokenized_run, tmp_path, monkeypatch):
    cfg = tiny_cfg(fresh_run(tokenized_run, tmp_path))
    real_loss, calls = pretrain.lm_loss, {"train": 0}

    def poisoned(model, x, y):
        loss = real_loss(model, x, y)
        if model.training:
            calls["train"] += 1
            if calls["train"] == 9:  # step 8 (0-based), after the step-6 checkpoint
                return loss * float("nan")
        return loss

    monkeypatch.setattr(pretrain, "lm_loss", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 8.*step_000006"):
        pretrain.run_pretrain(cfg)
    stage = cfg.stage_dir("pretrain")
    assert not read_meta(stage).get("complete")
    latest = Checkpoints(stage).latest()
    weights = _weights(latest)
    assert latest.name == "step_000006" and all(torch.isfinite(w).all() for w in weights.values())
    monkeypatch.setattr(pretrain, "lm_loss", real_loss)
    assert read_meta(pretrain.run_pretrain(cfg))["complete"]  # and the run resumes from it


def test_time_budget_plans_steps_so_the_cosine_still_decays(tokenized_run, tmp_path):
    cfg = tiny_cfg(fresh_run(tokenized_run, tmp_path), "pretrain.max_steps=100000", "pretrain.max_minutes=0.03",
                   "pretrain.eval_every=1000", "pretrain.save_every=1000", "pretrain.log_every=1")
    t0 = time.time()
    meta = read_meta(pretrain.run_pretrain(cfg))
    assert time.time() - t0 < 60
    assert 5 < meta["steps"] == meta["planned_steps"] < 100000
    assert meta["loop_seconds"] < 0.03 * 60 * 2  # the plan held (slack for a loaded machine)
    last_lr = [m["train/lr"] for m in read_metrics(cfg.stage_dir("pretrain")) if "train/lr" in m][-1]
    assert last_lr == pytest.approx(cfg.pretrain.learning_rate * cfg.pretrain.min_lr_ratio, rel=1e-2)  # the last logged lr is the one its step used, a hair above the floor


def test_checkpoint_from_another_config_is_refused(tokenized_run, tmp_path):
    run = fresh_run(tokenized_run, tmp_path)
    pretrain.run_pretrain(tiny_cfg(run, "pretrain.max_steps=6"))
    with pytest.raises(ValueError, match="different model/pretrain config"):
        pretrain.run_pretrain(tiny_cfg(run, "pretrain.max_steps=6", "pretrain.learning_rate=0.02"))


def test_csv_corpus_end_to_end_from_cli(tmp_path):
    from typer.testing import CliRunner

    from chatrlhf.cli import app

    rows = "".join(f'{i},"{d}"\n' for i, d in enumerate(fake_world_docs(200)))
    (tmp_path / "corpus.csv").write_text("id,story\n" + rows)
    sets = [a for o in [*TINY, f"run.out_dir={tmp_path}", f"pretrain.data={tmp_path / 'corpus.csv'}",
                        "pretrain.text_column=story", "pretrain.max_steps=5"] for a in ("--set", o)]
    runner = CliRunner()
    assert runner.invoke(app, ["tokenizer", *sets]).exit_code == 0
    result = runner.invoke(app, ["pretrain", *sets])
    assert result.exit_code == 0, result.output
    meta = read_meta(tmp_path / "pretrain")
    assert meta["steps"] == 5 and meta["data"].endswith("corpus.csv")


def test_tinyshakespeare_and_wikitext_eval(tmp_path):
    path = shared_data("tinyshakespeare/input.txt")
    shared_data("wikitext2/valid.txt")
    cfg = tiny_cfg(tmp_path, f"pretrain.data={path}", "pretrain.max_steps=4", "pretrain.wikitext_eval=true",
                   f"eval.shared_data={path.parents[1]}", "tokenizer.max_docs=2000")
    pretrain.run_tokenizer(cfg)
    meta = read_meta(pretrain.run_pretrain(cfg))
    assert meta["train_tokens"] > 100_000 and meta["val_tokens"] > 0
    assert 0 < meta["wikitext2_loss"] < 10 and meta["wikitext2_bpb"] > 0


def test_continue_pretraining_a_users_model(tiny_model_dir, tmp_path):
    write_world(tmp_path / "world")
    cfg = tiny_cfg(tmp_path, f"model.name_or_path={tiny_model_dir}", "pretrain.max_steps=3")
    pretrain.run_tokenizer(cfg)
    meta = read_meta(pretrain.run_pretrain(cfg))
    assert meta["complete"] and meta["steps"] == 3
    assert meta["params"] == sum(t.numel() for t in _weights(tiny_model_dir).values())
