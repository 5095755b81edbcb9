"""The PPO critic: a policy-independent value model initialised from the reward model.

InstructGPT initialises the value function from the RM. The RM is an
AutoModelForSequenceClassification(num_labels=1): a backbone plus a scalar `score` head read at
the last token. The critic keeps both and reads the head at *every* token, so V(s_t) starts as
"what the RM would say if the response stopped here" -- a far better start than a random head.
Saved with save_pretrained, so `value/` is itself a loadable sequence-classification model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification

from chatrlhf.modeling import DTYPES
from chatrlhf.reward import reward_backbone_and_head


class ValueModel(nn.Module):
    """V(s_t) for every position: backbone hidden states -> the RM's scalar head."""

    def __init__(self, seqcls_model: nn.Module):
        super().__init__()
        self.model = seqcls_model
        reward_backbone_and_head(seqcls_model)  # fail early when there is no scalar head

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: str = "float32") -> "ValueModel":
        """Load from an RM directory (or a saved value/ directory, same format), or from a causal
        LM directory, in which case the head starts random (no RM to copy)."""
        path = Path(path)
        if path.exists() and not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json; cannot build the value model from it")
        model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1, dtype=DTYPES[dtype])
        if model.config.pad_token_id is None:
            model.config.pad_token_id = model.config.eos_token_id
        return cls(model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        # looked up per call, not stored as submodules, so state_dict has each weight once
        backbone, head = reward_backbone_and_head(self.model)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False).last_hidden_state  # (B, T, H)
        return head(hidden).squeeze(-1).float()  # (B, T)

    def save_pretrained(self, out_dir: str | Path) -> None:
        self.model.save_pretrained(out_dir, safe_serialization=True)

