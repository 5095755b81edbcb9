import pytest

from chatrlhf.config import ConfigError, load_config


def test_defaults_validate():
    cfg = load_config(None, [])
    assert cfg.ppo.reward.kl_coef > 0


def test_default_yaml_matches_models():
    cfg = load_config("configs/default.yaml", [])
    assert cfg.run.out_dir


def test_every_shipped_config_validates():
    from pathlib import Path

    paths = sorted(Path("configs").glob("*.yaml"))
    assert {p.name for p in paths} >= {"default.yaml", "tiny.yaml", "large_rm.yaml"}
    for p in paths:
        load_config(p, [])  # an unknown or renamed key raises ConfigError naming it
    assert load_config("configs/large_rm.yaml", []).rm.labelers_per_prompt == 3


def test_override_sets_nested_value():
    cfg = load_config(None, ["ppo.reward.kl_coef=0.5", "sft.lora.r=4", "model.name_or_path=gpt2"])
    assert cfg.ppo.reward.kl_coef == 0.5 and cfg.sft.lora.r == 4 and cfg.model.name_or_path == "gpt2"


def test_typo_names_file_key_and_suggestion(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("pretrain:\n  lerning_rate: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(f, [])
    msg = str(e.value)
    assert str(f) in msg and "pretrain.lerning_rate" in msg and "pretrain.learning_rate" in msg
    assert "allowed keys" in msg and "warmup_steps" in msg


def test_a_flat_ppo_key_names_its_group(tmp_path):
    f = tmp_path / "old.yaml"
    f.write_text("ppo:\n  kl_coef: 0.1\n  critic: separate\n  ptx_coef: 0.5\n")
    with pytest.raises(ConfigError) as e:
        load_config(f, [])
    msg = str(e.value)
    assert "'ppo.kl_coef' is now 'ppo.reward.kl_coef'" in msg and "'ppo.critic' is now 'ppo.critic.model'" in msg
    assert "'ppo.ptx_coef' is now 'ppo.ptx.coef'" in msg and str(f) in msg
    cfg = load_config(None, ["ppo.reward.kl_coef=0.1", "ppo.critic.model=separate", "ppo.ptx.coef=0.5"])
    assert (cfg.ppo.reward.kl_coef, cfg.ppo.critic.model, cfg.ppo.ptx.coef) == (0.1, "separate", 0.5)
    with pytest.raises(ConfigError, match="unknown key 'ppo.update.kl_coef'"):  # groups are sections like any other
        load_config(None, ["ppo.update.kl_coef=0.1"])


def test_unknown_section_and_wrong_type():
    with pytest.raises(ConfigError, match="unknown key 'ppp'.*did you mean 'ppo'"):
        load_config(None, ["ppp.kl_coef=1"])
    with pytest.raises(ConfigError, match="ppo.total_iterations"):
        load_config(None, ["ppo.total_iterations=many"])


def test_missing_file_and_bad_override():
    with pytest.raises(ConfigError, match="not found: nope.yaml"):
        load_config("nope.yaml", [])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, ["ppo.reward.kl_coef"])


def test_cli_reports_config_error(tmp_path):
    from typer.testing import CliRunner

    from chatrlhf.cli import app

    f = tmp_path / "c.yaml"
    f.write_text("sft:\n  epochz: 2\n")
    res = CliRunner().invoke(app, ["config", "--config", str(f)])
    assert res.exit_code == 2
    assert "sft.epochs" in res.output
