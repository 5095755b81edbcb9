"""LoRA through peft: wrap a causal LM, and merge the adapters into a plain checkpoint.

LoRA (Hu et al. 2021) freezes W and learns a low-rank update, W' = W + (alpha / r) * B @ A, with
A (r x in) and B (out x r, zero-initialised so training starts from the base model). After
training, `merge` folds B @ A into W, so the saved stage is an ordinary safetensors checkpoint that
`AutoModelForCausalLM.from_pretrained` loads without peft. SFT and PPO share these helpers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from chatrlhf.config import LoraConfig


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Leaf names of the layers LoRA can adapt (Linear, and GPT-2's Conv1D), for error messages."""
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D":
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def wrap_lora(model, cfg: LoraConfig, task_type: str | None = "CAUSAL_LM", also_train: Sequence[torch.nn.Module] = ()):
    """A peft model with trainable adapters on `cfg.target_modules`; every other weight frozen but
    those of `also_train` (a reward model's new scalar head, with `task_type=None`: peft's plain wrapper)."""
    import peft

    available = linear_module_names(model)
    missing = [t for t in cfg.target_modules if t not in available]
    if missing:
        raise ValueError(f"lora.target_modules {missing} not found in {type(model).__name__}; "
                         f"its adaptable layers are: {', '.join(available)}")
    fan_in_fan_out = any(type(m).__name__ == "Conv1D" for m in model.modules())  # GPT-2 stores W transposed
    peft_cfg = peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                               target_modules=list(cfg.target_modules), task_type=task_type,
                               fan_in_fan_out=fan_in_fan_out)
    wrapped = peft.get_peft_model(model, peft_cfg)
    for module in also_train:
        module.requires_grad_(True)
    return wrapped


def is_lora(model) -> bool:
    import peft

    return isinstance(model, peft.PeftModel)


def merge(model):
    """Fold the adapters into the base weights and return the plain transformers model."""
    return model.merge_and_unload() if is_lora(model) else model


def trainable_params(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total


def save_merged(model, tokenizer, out_dir: str | Path, meta: dict[str, Any], keep_adapter: bool = True) -> Path:
    """Save a stage whose weights are the merged model; the adapter alone goes to out_dir/adapter."""
    from chatrlhf.lm.modeling import save_stage

    out = Path(out_dir)
    if is_lora(model) and keep_adapter:
        model.save_pretrained(out / "adapter")  # small: just A and B, for inspection or re-use
    return save_stage(merge(model), tokenizer, out, meta)
