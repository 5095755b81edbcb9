"""The PPO critic, in one of two shapes (`ppo.critic.model`).

shared (default): a scalar head on the policy's own last hidden states, its weights copied from the
RM's head. One trunk pass serves the policy loss and the value loss, and the rollout's hidden states
give the values, so the critic costs almost nothing. The head reads the policy's features without
training them (the value loss's gradient stops at the head, so the policy's trunk moves only for the
policy loss) and learns at critic.head_lr_scale x the policy's learning rate. It needs an RM as wide as the policy.

separate: a policy-independent value model initialised from the whole reward model, as InstructGPT
does. The RM is an AutoModelForSequenceClassification(num_labels=1): a backbone plus a scalar
`score` head read at the last token. The critic keeps both and reads the head at *every* token, so
V(s_t) starts as "what the RM would say if the response stopped here". Saved with save_pretrained,
so `value/` is itself a loadable sequence-classification model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForSequenceClassification

from chatrlhf.lm.modeling import DTYPES
from chatrlhf.lm.reward_model import reward_backbone_and_head
from chatrlhf.lm.unpadded import scatter_rows, unpadded_hidden_states, why_not_unpadded


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
        """V(s_t) at every real token, (B, T); what a pad position holds is unspecified."""
        # looked up per call, not stored as submodules, so state_dict has each weight once
        backbone, head = reward_backbone_and_head(self.model)
        if position_ids is not None and why_not_unpadded(self.model) is None:
            # PPO's rows are [left-padded prompt | right-padded response]: skip the pads' projections and MLP
            hidden, flat = unpadded_hidden_states(backbone, input_ids, attention_mask, position_ids)
            return scatter_rows(head(hidden).squeeze(-1).float(), flat, *input_ids.shape)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False).last_hidden_state  # (B, T, H)
        return head(hidden).squeeze(-1).float()  # (B, T)

    def save_pretrained(self, out_dir: str | Path) -> None:
        self.model.save_pretrained(out_dir, safe_serialization=True)


def load_critic(rm_dir: str | Path, critic: str, policy: nn.Module, dtype: str = "float32") -> "ValueModel | ValueHead":
    """PPO's critic initialised from the RM in `rm_dir`: a ValueHead as wide as `policy` (`shared`)
    or a ValueModel of its own (`separate`)."""
    if critic == "shared":
        return ValueHead.from_reward_model(rm_dir, policy.get_output_embeddings().weight.shape[1])
    return ValueModel.from_pretrained(rm_dir, dtype)


class ValueHead(nn.Module):
    """The shared critic: V(s_t) = head(the policy's last hidden state at t). Called on hidden
    states, not token ids (chatrlhf.ppo hands over the rollout's, or the update's policy pass's)."""

    FILE = "value_head.safetensors"

    def __init__(self, hidden_size: int):
        super().__init__()
        self.head = nn.Linear(hidden_size, 1, bias=False)

    @classmethod
    def from_reward_model(cls, rm_dir: str | Path, hidden_size: int) -> "ValueHead":
        """A head whose weights are the RM's scalar head (the policy's width must match the RM's)."""
        rm = ValueModel.from_pretrained(rm_dir).model
        _, rm_head = reward_backbone_and_head(rm)
        if rm_head.in_features != hidden_size:
            raise ValueError(f"ppo.critic.model=shared: the reward model in {rm_dir} has width {rm_head.in_features}, "
                             f"the policy {hidden_size}; its head cannot start the policy's value head. "
                             "Use ppo.critic.model=separate.")
        out = cls(hidden_size)
        with torch.no_grad():
            out.head.weight.copy_(rm_head.weight.float())
        return out

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden.float()).squeeze(-1)  # (B, T, H) -> (B, T)

    def save_pretrained(self, out_dir: str | Path) -> None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(Path(out_dir) / self.FILE))

    @classmethod
    def from_saved(cls, out_dir: str | Path) -> "ValueHead":
        state = load_file(str(Path(out_dir) / cls.FILE))
        out = cls(state["head.weight"].shape[1])
        out.load_state_dict(state)
        return out
