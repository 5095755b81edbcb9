"""PPO's settings, grouped by concern: which prompts and how many iterations at the top, then
`rollout` (sampling), `reward` (what the policy is paid: RM score, KL to SFT, the check), `advantage`
(the estimator), `critic` (GAE's value function), `update` (the clipped policy step), `guard`
(over-optimisation), `ptx` (the pre-training mix), `rejection_sampling` (best-of-n before PPO) and
`lora`. `chatrlhf.config` assembles it into `Config`; import it from there.

    ppo:
      total_iterations: 120
      rollout: {batch_size: 32, max_new_tokens: 48}
      reward: {kl_coef: 0.05}
      update: {learning_rate: 1.5e-04, mini_batch_size: 8, epochs: 2}
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from chatrlhf.config_sections import LoraConfig, Section


class RolloutConfig(Section):
    batch_size: int = Field(32, description="Responses per rollout batch (batch_size / samples_per_prompt distinct prompts).")
    samples_per_prompt: int = Field(1, ge=1, description="Responses sampled per prompt in a rollout batch (RLOO and GRPO need at least 2).")
    max_new_tokens: int = Field(48, description="Maximum response tokens per rollout.")
    temperature: float = Field(1.0, description="Rollout sampling temperature.")


class RewardConfig(Section):
    """R(x, y) = RM score + verifier_coef x check + sft_loglik_coef x SFT log-likelihood - kl_coef x KL to SFT
    - missing_eos_penalty when the response never ends."""
    kl_coef: float = Field(0.05, description="Initial coefficient of the per-token KL penalty to the SFT model.")
    adaptive_kl: bool = Field(False, description="Adapt kl_coef towards target_kl (Ziegler et al. 2019).")
    target_kl: float = Field(6.0, description="Target KL (nats per sequence) of the adaptive controller and of guard.early_stop=target_kl.")
    horizon: int = Field(10000, description="Adaptive KL controller horizon.")
    sft_loglik_coef: float = Field(2.0, description="Weight of the SFT model's length-normalised log-likelihood of the "
                                   "response, added to the reward token by token (0 = off).")
    verifier_coef: float = Field(4.0, ge=0, description="Weight of the rule-based check of a prompt's `ground_truth` "
                                 "(chatrlhf.lm.verifiers, score in [0, 1]) added to the RM score; prompts without one get the RM alone (0 = off).")
    missing_eos_penalty: float = Field(1.0, description="Subtracted from the reward of responses that never end.")
    kl_estimator: Literal["k1", "k3"] = Field(
        "k1", description="The per-token estimate of the KL to SFT in the reward (Schulman 2020; TRL's name): k1 = "
        "log pi - log pi_SFT (InstructGPT), or k3 = pi_SFT/pi - log(pi_SFT/pi) - 1, never negative and of lower variance.")
    normalise: bool = Field(False, description="The RM score shifted and scaled to mean 0 and spread 1 over the "
                            "answers of the RM's validation comparisons, samples of the SFT model (Ziegler et al. "
                            "2019 normalise on the start policy's samples), before the other terms are added.")
    group_normalise: bool = Field(False, description="With a group-conditioned RM (rm.conditioned): each group's RM "
                                  "scores shifted and scaled to the pooled mean and spread, by the RM's scores on its "
                                  "validation comparisons per group, so no group's reward scale outweighs another's in "
                                  "the update of the one policy that serves them all.")
    source: Literal["rm", "gold"] = Field(
        "rm", description="Where the score term comes from. rm: the reward model (the method). gold: gold_scale x the "
        "embedded world's gold rubric (the function the simulated labelers' preferences are built on), a diagnostic "
        "upper bound -- what PPO reaches with a reward model free of labeler noise and taste. Only with the embedded "
        "world's prompts; never used by any shipped config.")
    gold_scale: float = Field(6.0, gt=0, description="reward.source=gold: gold total (0..1) x this. About the RM's own "
                              "scale: labelers whose judgement noise is ~0.2 on the rubric's 0..1 scale give a "
                              "Bradley-Terry RM ~6 logits per rubric unit.")


class AdvantageConfig(Section):
    estimator: Literal["gae", "rloo", "grpo"] = Field(
        "gae", description="gae: GAE with the value model (initialised from the RM); rloo: the sequence reward with "
        "the KL in it, minus the mean of the prompt's other samples (leave-one-out, Ahmadian et al. 2024); grpo: "
        "(reward - group mean) / group std, with the KL to SFT as a k3 loss term weighted by reward.kl_coef (Shao et "
        "al. 2024). rloo and grpo need rollout.samples_per_prompt >= 2 and load, train and save no value model.")
    gamma: float = Field(1.0, description="GAE discount.")
    lam: float = Field(0.95, description="GAE lambda.")
    whiten_rewards: bool = Field(False, description="Whiten per-token rewards before GAE.")


class CriticConfig(Section):
    model: Literal["shared", "separate"] = Field(
        "shared", description="GAE's value function. shared: a scalar head on the policy's last hidden states, initialised "
        "from the RM's head -- one trunk pass per update instead of two, and the rollout's hidden states give the values "
        "without a pass of their own; separate: its own model initialised "
        "from the whole RM (InstructGPT, TRL 1.10). A shared head needs an RM as wide as the policy.")
    head_lr_scale: float = Field(20.0, gt=0, description="Shared critic: the value head's learning rate as a multiple "
                                 "of update.learning_rate (a linear head on features it does not train needs larger steps).")
    vf_coef: float = Field(0.1, description="Value loss coefficient.")
    cliprange_value: float = Field(0.2, description="Value prediction clip.")


class UpdateConfig(Section):
    learning_rate: float = Field(1.5e-4, description="Policy and value AdamW learning rate.")
    mini_batch_size: int = Field(8, description="Sequences per PPO mini-batch (the global batch over all processes).")
    epochs: int = Field(2, description="Passes over each rollout batch.")
    cliprange: float = Field(0.2, description="PPO policy ratio clip.")
    grad_clip: float = Field(1.0, description="Gradient norm clip of the policy and value update.")
    compile: bool = Field(False, description="Compile the layer stacks of the policy, the reference, a separate "
                          "value model and the RM with torch.compile (inductor) where they run on the real tokens only "
                          "(lm.unpadded), and the update's log-softmax: the first iteration compiles (tens of seconds on "
                          "2 CPU cores, seconds from inductor's disk cache); float rounding differs from the eager passes. "
                          "A step with a separate critic runs 1.13-1.19x faster on CPU; the default shared critic's step, "
                          "whose PPO-ptx pass and rollout stay eager, about 1.04x, which does not repay the compiling in "
                          "the default run, so it is off by default.")


class GuardConfig(Section):
    early_stop: Literal["none", "held_out_comparisons", "target_kl"] = Field(
        "held_out_comparisons", description="Guard against reward over-optimisation. held_out_comparisons: with the "
        "embedded world, its training labelers compare the policy with SFT on held-out prompts; without it, the "
        "RM's held-out (validation) comparisons, scored as the share of pairs the policy's implicit reward "
        "(log pi - log pi_SFT of the whole reply) orders as the people did. target_kl: stop at reward.target_kl. "
        "none: the last iteration is exported.")
    eval_every: int = Field(3, description="Iterations between guard evaluations.")
    prompts: int = Field(64, description="Held-out PPO prompts the guard compares on (not trained on).")
    labelers: int = Field(2, ge=1, description="Training labelers who compare each guard prompt's pair (more = a less noisy win rate).")
    patience: int = Field(10, description="Guard evaluations without a new best (smoothed) win rate before early stop.")
    window: int = Field(3, ge=1, description="The guard selects and stops on the mean of its last `window` evaluations (1 = raw; a single evaluation is noisy).")
    temperature: float | None = Field(None, ge=0, description="Temperature of the policy's and the SFT model's answers "
                                      "the guard compares (None: ppo.rollout.temperature; 0: greedy answers, what people "
                                      "get from a model served greedily).")
    max_kl: float = Field(50.0, description="Stop the run when mean KL (nats per sequence) exceeds this.")


class PtxConfig(Section):
    coef: float = Field(0.2, description="PPO-ptx: weight of the pre-training LM loss mixed into each update (0 = off; "
                        "needs pre-training text: the world's corpus or pretrain.data, else PPO runs without it).")
    batch_size: int = Field(4, description="Pre-training sequences per update.")
    seq_len: int = Field(128, description="Tokens per pre-training sequence, for PPO-ptx and the perplexity check.")


class RejectionSamplingConfig(Section):
    n: int = Field(0, ge=0, description="Samples per prompt before PPO (off by default: see docs/RESULTS.md); the best under PPO's reward "
                   "(RM score + reward.sft_loglik_coef x SFT mean log-likelihood + reward.verifier_coef x check) is kept "
                   "and the policy fine-tuned on the kept answers (Llama 2's rejection sampling). 0 or 1 = off: PPO "
                   "starts from the given policy.")
    prompts: int = Field(3000, ge=1, description="Prompts to sample: PPO's training prompts, topped up with the RM "
                         "stage's prompts (never eval or guard prompts).")
    epochs: float = Field(5.0, description="Fine-tuning passes over the kept answers.")
    learning_rate: float = Field(3e-4, description="Fine-tuning AdamW learning rate (cosine decay).")
    batch_size: int = Field(16, ge=1, description="Conversations per fine-tuning step.")
    warmup_steps: int = Field(5, ge=0, description="Linear learning-rate warm-up steps.")
    sample_batch: int = Field(256, ge=1, description="Rows sampled at once (continuous batching).")
    min_check: float = Field(0.0, ge=0.0, le=1.0, description="Drop a prompt from fine-tuning when its kept answer "
                             "scores below this on the prompt's rule-based check (rejection-sampling fine-tuning "
                             "on verified answers only, as RFT and STaR do); prompts without a check are always kept. 0 = keep all.")


class PPOConfig(Section):
    data: str | None = Field(None, description="PPO's prompts: None = the embedded world's; or a local jsonl/csv/parquet "
                             "path or datasets name: a prompt column, a bare string per line, or any SFT format (the "
                             "last reply is taken off). Rows with a `ground_truth` also get the rule-based check.")
    split: str = Field("train", description="datasets split to read for ppo.data.")
    format: Literal["auto", "messages", "prompt_response", "instruction", "transcript", "oasst_tree"] = Field(
        "auto", description="How ppo.data rows become prompts (as sft.format).")
    columns: dict[str, str] = Field(default_factory=dict, description="Column mapping for ppo.data, as sft.columns "
                                    "(e.g. {prompt: question}; also ground_truth).")
    top_up_prompts: int = Field(0, ge=0, description="With the embedded world: add up to this many of the RM stage's "
                                "prompts to PPO's training prompts (more distinct prompts, fewer passes over each; the "
                                "guard's prompts are unchanged). 0 = the world's PPO prompts only.")
    total_iterations: int = Field(120, description="PPO iterations (one rollout batch + its update epochs each; the guard usually stops earlier).")
    max_minutes: float = Field(0.0, ge=0, description="Optional wall-clock safety per round (0 = off, the default: "
                               "total_iterations and the guard decide, the same on every machine); when it fires the "
                               "guard's best is still taken and the report names it.")
    save_every: int = Field(5, description="Iterations between resumable checkpoints.")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Sampling the responses.")
    reward: RewardConfig = Field(default_factory=RewardConfig, description="What a response is paid.")
    advantage: AdvantageConfig = Field(default_factory=AdvantageConfig, description="How rewards become advantages.")
    critic: CriticConfig = Field(default_factory=CriticConfig, description="GAE's value function.")
    update: UpdateConfig = Field(default_factory=UpdateConfig, description="The clipped policy (and value) update.")
    guard: GuardConfig = Field(default_factory=GuardConfig, description="Early stop and checkpoint choice against over-optimisation.")
    ptx: PtxConfig = Field(default_factory=PtxConfig, description="PPO-ptx: the pre-training loss mixed into each update.")
    rejection_sampling: RejectionSamplingConfig = Field(default_factory=RejectionSamplingConfig,
                                                        description="Best-of-n fine-tuning before PPO.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA settings for the policy.")

    @property
    def reads_policy_hidden_states(self) -> bool:
        """GAE with the shared critic: the rollout keeps the policy's hidden states and the update reads them."""
        return self.advantage.estimator == "gae" and self.critic.model == "shared"

    @model_validator(mode="after")
    def _groups_fit(self) -> "PPOConfig":
        k = self.rollout.samples_per_prompt
        if self.rollout.batch_size % k:
            raise ValueError(f"rollout.batch_size ({self.rollout.batch_size}) must be a multiple of "
                             f"rollout.samples_per_prompt ({k})")
        if self.advantage.estimator in ("rloo", "grpo") and k < 2:
            raise ValueError(f"advantage.estimator '{self.advantage.estimator}' needs rollout.samples_per_prompt >= 2 "
                             "(its baseline comes from the prompt's other samples)")
        return self


# A flat key of an older config file -> where it lives now (named in the error for that key).
MOVED_KEYS = {
    "rollout_batch_size": "rollout.batch_size", "samples_per_prompt": "rollout.samples_per_prompt",
    "max_new_tokens": "rollout.max_new_tokens", "temperature": "rollout.temperature",
    "kl_coef": "reward.kl_coef", "adaptive_kl": "reward.adaptive_kl", "target_kl": "reward.target_kl",
    "horizon": "reward.horizon", "sft_loglik_coef": "reward.sft_loglik_coef", "verifier_coef": "reward.verifier_coef",
    "missing_eos_penalty": "reward.missing_eos_penalty",
    "advantage_estimator": "advantage.estimator", "gamma": "advantage.gamma", "lam": "advantage.lam",
    "whiten_rewards": "advantage.whiten_rewards",
    "value_head_lr_scale": "critic.head_lr_scale", "vf_coef": "critic.vf_coef", "cliprange_value": "critic.cliprange_value",
    "learning_rate": "update.learning_rate", "mini_batch_size": "update.mini_batch_size", "ppo_epochs": "update.epochs",
    "cliprange": "update.cliprange", "grad_clip": "update.grad_clip",
    "early_stop": "guard.early_stop", "eval_every": "guard.eval_every", "guard_prompts": "guard.prompts",
    "guard_labelers": "guard.labelers", "patience": "guard.patience", "guard_window": "guard.window", "max_kl": "guard.max_kl",
    "ptx_coef": "ptx.coef", "ptx_batch_size": "ptx.batch_size", "ptx_seq_len": "ptx.seq_len",
}


def guard_sampling(cfg: PPOConfig) -> PPOConfig:
    """`cfg` with the guard's temperature as the rollout's: how the guard's answers are drawn."""
    t = cfg.guard.temperature
    return cfg if t is None else cfg.model_copy(update={"rollout": cfg.rollout.model_copy(update={"temperature": t})})
