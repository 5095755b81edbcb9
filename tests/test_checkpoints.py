"""Checkpoints are always good: a NaN or diverging run keeps a finite checkpoint and names it, a
half-written checkpoint is skipped, a resume with other settings is refused naming them, a rerun
clears the stage's complete flag, and metric rows are not logged twice across a resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_sft import _cfg

from chatrlhf.lm.modeling import read_meta, stage_complete, write_meta
from chatrlhf.lm.training import (
    settings_diff,
    Checkpoints,
    DivergenceError,
    DivergenceGuard,
    NonFiniteLossError,
    SettingsMismatchError,
)
from chatrlhf.stages import sft


def _finite_checkpoint(path: Path) -> None:
    weights = load_file(str(path / "model.safetensors"))
    assert weights and all(torch.isfinite(w).all() for w in weights.values()), path


def _kept(message: str) -> Path:
    return Path(message.split("last verified checkpoint kept: ")[1].split(" (a rerun")[0])


def test_nan_weights_at_a_huge_learning_rate_keep_the_last_finite_checkpoint(tmp_path, tiny_model_dir):
    cfg = _cfg(tmp_path, tiny_model_dir, learning_rate=1e6, max_steps=12, save_every=1, eval_every=100)
    with pytest.raises(NonFiniteLossError, match="non-finite") as e:
        sft.train_sft(cfg)
    kept = _kept(str(e.value))
    assert kept == Checkpoints(cfg.stage_dir("sft")).latest()
    _finite_checkpoint(kept)
    assert not stage_complete(cfg.stage_dir("sft"))


def test_finite_divergence_stops_keeps_a_finite_checkpoint_and_a_saner_rerun_resumes_it(tmp_path, tiny_model_dir):
    cfg = _cfg(tmp_path, tiny_model_dir, learning_rate=100.0, warmup_steps=100, max_steps=12, save_every=1,
               eval_every=100)
    with pytest.raises(DivergenceError, match=r"far above its running range.*last verified checkpoint kept") as e:
        sft.train_sft(cfg)
    kept = _kept(str(e.value))
    _finite_checkpoint(kept)
    ckpts = Checkpoints(cfg.stage_dir("sft"))
    assert ckpts.latest() == kept and list(ckpts.root.glob("rejected_step_*"))  # the diverged one set aside
    assert not stage_complete(cfg.stage_dir("sft"))
    # the same run at a sane learning rate: refused, naming the setting, until told to resume anyway
    sane = _cfg(tmp_path, tiny_model_dir, learning_rate=3e-3, warmup_steps=100, max_steps=12, save_every=1,
                eval_every=100)
    with pytest.raises(SettingsMismatchError, match=r"sft\.learning_rate: 100\.0 -> 0\.003"):
        sft.train_sft(sane)
    sane.run.resume_anyway = True
    out = sft.train_sft(sane)
    assert read_meta(out)["complete"] and read_meta(out)["steps"] == 12


def test_divergence_guard_tolerates_a_falling_noisy_loss():
    guard = DivergenceGuard(10.0)
    for step, loss in enumerate([6.0, 6.3, 5.1, 4.0, 3.2, 3.9, 2.5, 2.9, 2.2]):
        guard.check(loss, step, "t", lambda: None)
    with pytest.raises(DivergenceError, match="loss 80 at step 9"):
        guard.check(80.0, 9, "t", lambda: None)
    DivergenceGuard(0.0).check(1e9, 0, "t", lambda: None)  # 0 turns it off


def _crash_at(monkeypatch, at: int) -> None:
    real = sft._TrainLoop.train_step

    def crash(self, batch, step):
        if step == at:
            raise KeyboardInterrupt
        return real(self, batch, step)

    monkeypatch.setattr(sft._TrainLoop, "train_step", crash)


def test_half_written_checkpoint_is_skipped_and_metric_rows_are_not_repeated(tmp_path, tiny_model_dir, monkeypatch,
                                                                              capsys):
    cfg = _cfg(tmp_path, tiny_model_dir, log_every=1, eval_every=100)
    _crash_at(monkeypatch, 7)  # checkpoints at 4; rows logged for steps 1..7
    with pytest.raises(KeyboardInterrupt):
        sft.train_sft(cfg)
    root = Checkpoints(cfg.stage_dir("sft")).root
    half = root / "step_000006"  # what a copy or a crash of another writer can leave behind
    half.mkdir()
    (half / "trainer_state.json").write_text(json.dumps({"step": 6}))
    monkeypatch.undo()
    out = sft.train_sft(cfg)
    assert "step_000006 has trainer_state.json but no weight files" in capsys.readouterr().err
    assert read_meta(out)["complete"] and read_meta(out)["steps"] == 8
    steps = [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "train/loss" in r]
    assert steps == list(range(1, 9))  # steps 5..7 ran twice but are logged once


def test_rerun_clears_the_complete_flag_before_it_starts(tmp_path, tiny_model_dir, monkeypatch):
    from chatrlhf.lm import training
    from chatrlhf.stages import ppo

    cfg = _cfg(tmp_path, tiny_model_dir)
    out = cfg.stage_dir("ppo")
    for stage in ("sft", "rm", "ppo"):  # PPO's inputs are there; its own output claims to be complete
        cfg.stage_dir(stage).mkdir(parents=True)
        write_meta(cfg.stage_dir(stage), {"stage": stage, "complete": True})

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "make_accelerator", killed)  # the rerun dies right after it starts
    with pytest.raises(KeyboardInterrupt):
        ppo.run_ppo(cfg)
    assert not stage_complete(out)


def test_ppo_refuses_a_checkpoint_of_other_settings_naming_them(tiny_model_dir, tmp_path):
    from test_ppo import make_trainer, toy_cfg

    make_trainer(tiny_model_dir, tmp_path, toy_cfg(total_iterations=1, save_every=1)).train(resume=False)
    other = make_trainer(tiny_model_dir, tmp_path, toy_cfg(total_iterations=2, save_every=1, learning_rate=1e-3))
    with pytest.raises(SettingsMismatchError, match=r"ppo\.update\.learning_rate: 0\.003 -> 0\.001"):
        other.train(resume=True)
    other.ckpts.configure(resume_anyway=True)
    assert len(other.train(resume=True)) == 1 and other.iteration == 2  # resumed at iteration 1
    assert other.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)  # this run's learning rate applies


def test_cli_reports_a_stopped_run_without_a_traceback(tmp_path, tiny_model_dir, monkeypatch, capsys):
    import sys

    from chatrlhf.cli import main
    from chatrlhf.config import dump_config

    cfg = _cfg(tmp_path, tiny_model_dir, learning_rate=1e6, max_steps=12, save_every=1, eval_every=100)
    dump_config(cfg, tmp_path / "c.yaml")
    monkeypatch.setattr(sys, "argv", ["chatrlhf", "sft", "-c", str(tmp_path / "c.yaml"), "--resume-anyway"])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    assert e.value.code == 1 and "error:" in err and "last verified checkpoint kept" in " ".join(err.split())
    assert "Traceback" not in err


def test_an_option_added_later_and_left_off_is_no_difference_to_resume():
    saved = {"rm": {"learning_rate": 5e-4, "epochs": 2.0}, "seed": 0}
    later = {"rm": {"learning_rate": 5e-4, "epochs": 2.0, "lm_coef": 0.0, "conditioned": False, "data": None}, "seed": 0}
    assert settings_diff(saved, later) == []
    assert settings_diff(saved, {**later, "rm": {**later["rm"], "lm_coef": 0.5}}) == ["rm.lm_coef: '(unset)' -> 0.5"]
    assert settings_diff(later, saved) == []  # an option removed at its off value: likewise
    assert settings_diff({**saved, "rm": {**saved["rm"], "lm_coef": 0.5}}, later) == ["rm.lm_coef: 0.5 -> 0.0"]


def test_an_option_added_later_at_its_default_is_no_difference_to_resume():
    """An option whose default is not an off value (ppo.reward.kl_estimator: "k1") still resumes a
    checkpoint that predates it while it keeps its default, and not once set otherwise."""
    saved = {"ppo": {"reward": {"kl_coef": 0.05}}}
    later = {"ppo": {"reward": {"kl_coef": 0.05, "kl_estimator": "k1"}}}
    defaults = {"ppo": {"reward": {"kl_coef": 0.05, "kl_estimator": "k1"}}}
    assert settings_diff(saved, later) == ["ppo.reward.kl_estimator: '(unset)' -> 'k1'"]  # without the defaults
    assert settings_diff(saved, later, defaults) == []
    k3 = {"ppo": {"reward": {"kl_coef": 0.05, "kl_estimator": "k3"}}}
    assert settings_diff(saved, k3, defaults) == ["ppo.reward.kl_estimator: '(unset)' -> 'k3'"]
    assert settings_diff({"ppo": {"reward": {"kl_coef": 0.02}}}, later, defaults) == ["ppo.reward.kl_coef: 0.02 -> 0.05"]
