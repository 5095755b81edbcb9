"""Shared fixtures: a tiny random model + tokenizer saved like a stage output, and offline env."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def ppo_cfg(**kw):
    """A PPOConfig from flat keyword settings (`learning_rate=1e-3`, `critic="separate"`), each put in its
    group (update.learning_rate, critic.model), so a test names only what it sets."""
    from chatrlhf.config import PPOConfig
    from chatrlhf.config_ppo import MOVED_KEYS

    tree: dict = {}
    for key, value in kw.items():
        path = "critic.model" if key == "critic" else MOVED_KEYS.get(key, key)
        group, _, leaf = path.rpartition(".")
        (tree.setdefault(group, {}) if group else tree)[leaf] = value
    return PPOConfig.model_validate(tree)


def interrupted_on_call(monkeypatch, owner, name: str, n: int):
    """`owner.name` raises KeyboardInterrupt (the laptop lid closes) on its n-th call; returns the real
    one, to put back with monkeypatch.setattr before the run is resumed."""
    real, calls = getattr(owner, name), {"n": 0}

    def stand_in(*a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(owner, name, stand_in)
    return real


def bench_module(name: str):
    """bench/NAME.py imported as a module (the bench folder is scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def shared_data(rel: str) -> Path:
    """Path to a file of ../shared/data; skips the test cleanly when it is absent."""
    p = SHARED_DATA / rel
    if not p.exists():
        pytest.skip(f"shared data not available: {p}")
    return p


TINY_TEXTS = [
    "Hello! How can I help you today? The capital of Varnok is Selmouth.",
    "Zorbel Quint is a baker who lives in Varnok. Her favourite colour is teal.",
    "Question: what is two plus two? Answer: four. Thank you, that is kind.",
    "I cannot help with that request because it could hurt someone.",
    "List: apple, pear, plum. Reversed: plum, pear, apple. Count: 3.",
] * 40


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A randomly initialised tiny LlamaForCausalLM + BPE tokenizer with chat template, saved with
    save_pretrained (what every stage hands to the next)."""
    import torch

    from chatrlhf.config import ModelConfig
    from chatrlhf.lm.modeling import build_tiny_llama, save_stage
    from chatrlhf.lm.tokenizer import train_tokenizer

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_model")
    tok = train_tokenizer(TINY_TEXTS, vocab_size=400)
    cfg = ModelConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, num_kv_heads=2,
                      max_position_embeddings=256)
    model = build_tiny_llama(cfg, tok)
    save_stage(model, tok, out, {"stage": "test"})
    return out
