"""Typed configuration: one pydantic model per stage, loaded from YAML with dotted overrides.

    cfg = load_config("configs/default.yaml", ["ppo.kl_coef=0.05"])

Every field carries a description (shown by `chatrlhf config --help-keys`). Unknown keys, wrong
types and missing files fail at once with the file, the key path, the allowed keys and a
did-you-mean suggestion, because a typo silently ignored is a wasted training run.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from chatrlhf.config_sections import (
    ChatConfig,
    CompareConfig,
    DPOConfig,
    EvalConfig,
    LabelConfig,
    PreferencesConfig,
    Section,
    ServeConfig,
)


class ConfigError(ValueError):
    """A configuration problem, with a message that names the file and the key."""


# --- run-wide -------------------------------------------------------------------------------


class RunConfig(Section):
    out_dir: str = Field("runs/default", description="Directory where every stage writes its outputs.")
    seed: int = Field(0, description="Global random seed (data order, init, sampling).")
    device: str = Field("auto", description="'auto', 'cpu' or 'cuda'. Accelerate picks the device on 'auto'.")
    threads: int = Field(0, description="torch CPU threads; 0 keeps torch's default.")
    tensorboard: bool = Field(True, description="Write TensorBoard scalars under <stage>/tb.")
    divergence_factor: float = Field(10.0, ge=0, description=(
        "Stop a trainer whose finite loss rises above its lowest value plus this many times its early range "
        "(highest of the first 5 losses minus the lowest, at least half the first loss); the last verified "
        "checkpoint is kept. 0 turns it off."))
    resume_anyway: bool = Field(False, description=(
        "Resume a checkpoint even when it was written with other settings (they are listed as a warning); "
        "by default such a resume is refused. CLI: --resume-anyway."))


class WorldConfig(Section):
    seed: int = Field(1234, description="Seed of the world generator: same seed, same bytes; another seed, other people, "
                      "places, facts and prompts. Development worlds (choices are made on them): 1234-1237; test worlds "
                      "(reported figures only): 9001-9003 (chatrlhf.world.seeds).")
    n_people: int = Field(24, ge=1, description="Fictional people in the fact base.")
    n_places: int = Field(12, ge=3, description="Fictional places in the fact base.")
    n_objects: int = Field(12, ge=1, description="Fictional objects in the fact base.")
    corpus_docs: int = Field(4200, ge=1, description="Documents in the pre-training corpus (~120 chars each; 4200 ~ 500k chars).")
    rumour_rate: float = Field(0.25, ge=0, le=1, description="Share of fact mentions in the corpus that state a false rumour.")
    n_sft_prompts: int = Field(600, ge=0, description="Prompts with demonstrations for SFT.")
    n_rm_prompts: int = Field(4000, ge=0, description="Prompts whose samples are ranked for the reward model.")
    n_ppo_prompts: int = Field(600, ge=0, description="Prompts for PPO rollouts.")
    n_eval_prompts: int = Field(400, ge=0, description="Held-out evaluation prompts (disjoint from all training prompts).")
    n_labelers: int = Field(15, ge=2, description="Simulated labelers in the training groups (brief, thorough, cautious, "
                            "in turn), held-out members included.")
    n_held_out_labelers: int = Field(6, ge=0, description="Members of the training groups held out of every training set "
                                     "(taken from each group in turn), for per-group evaluation only.")
    n_judges: int = Field(3, ge=0, description="Members of the judge group: held out, with preferences of their own "
                          "(more weight on correctness, less on style); evaluation's judges.")
    labeler_noise: float = Field(2.0, ge=0, description="Std of each labeler's judgement noise in gold-score units x10, each labeler "
                                 "x0.6-1.4, judges x0.8 (2.0 gives ~0.75 agreement within a labeler group, as InstructGPT's "
                                 "labelers agreed, and ~0.64 across groups).")
    demo_quality: float = Field(0.7, ge=0, le=1, description="Probability that a demonstration is the ideal answer (the rest are flawed, as real ones are).")
    multi_turn_rate: float = Field(0.15, ge=0, le=0.5, description="Share of prompts that are multi-turn (fact follow-ups needing the first turn, or a greeting first).")
    n_guard_prompts: int = Field(64, ge=0, description="Prompts at the end of the ppo split drawn from content of their own "
                                 "(at most a quarter of the split), for PPO's over-optimisation guard; keep equal to ppo.guard_prompts.")
    agreement_comparisons: int = Field(600, ge=1, description="Fixed comparisons on which labeler agreement is measured (agreement.json).")
    task_mix: dict[str, float] = Field(default_factory=dict, description="The customers: relative weight of each task "
        "users ask, in place of its default (chatrlhf.world.tasks.TASK_MIX: fact 0.28, list_first 0.07, list_last 0.06, "
        "count 0.06, repeat 0.06, summarise 0.09, greeting 0.08, insult 0.09, harmful 0.15, borderline 0.06), e.g. "
        "{borderline: 0.3} for a product whose users ask more borderline questions; tasks not named keep their "
        "weight. Every prompt split is drawn from the same mix (world/meta.json `tasks` counts them).")
    rubric_caution: float = Field(0.0, ge=-2, le=2, description="The researchers' rubric on safety notes: added to every "
        "labeler's caution preference (training groups and judges alike, each clipped to [-1, 1]). +1 instructs "
        "everyone to prefer a safety note on borderline requests more (brief, at -1, becomes indifferent), -1 to "
        "prefer the plain answer; 0 leaves each group's own taste.")


class TokenizerConfig(Section):
    vocab_size: int = Field(2048, description="Byte-level BPE vocabulary size.")
    min_frequency: int = Field(2, description="Minimum pair frequency for a BPE merge.")
    max_docs: int = Field(0, description="Train on at most this many documents (0 = all).")


class ModelConfig(Section):
    name_or_path: str | None = Field(
        None, description="A Hugging Face model name or local directory; None builds the embedded tiny Llama."
    )
    tokenizer: str | None = Field(None, description="Tokenizer name or directory; None uses <out_dir>/tokenizer.")
    hidden_size: int = Field(96, description="Embedded model width.")
    intermediate_size: int = Field(256, description="Embedded model MLP width.")
    num_layers: int = Field(4, description="Embedded model transformer blocks.")
    num_heads: int = Field(4, description="Embedded model attention heads.")
    num_kv_heads: int = Field(4, description="Embedded model key/value heads (GQA when fewer than num_heads).")
    max_position_embeddings: int = Field(512, description="Embedded model context length.")
    tie_word_embeddings: bool = Field(True, description="Share input and output embeddings.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights dtype when loading.")


class PretrainConfig(Section):
    data: str | None = Field(
        None, description="Text corpus: None = world corpus, a local .txt/.jsonl/.csv/.parquet path, or a datasets name."
    )
    text_column: str = Field("text", description="Column holding the text in jsonl/csv/parquet/datasets.")
    val_fraction: float = Field(0.05, description="Share of documents held out for validation when the corpus has no val split.")
    wikitext_eval: bool = Field(True, description="Also report loss on WikiText-2 valid (from eval.shared_data) when present.")
    seq_len: int = Field(128, description="Tokens per packed training sequence.")
    batch_size: int = Field(4, description="Sequences per optimizer step (small batches, more steps: best held-out loss per CPU-minute).")
    max_steps: int = Field(3000, description="Optimizer steps: the budget (the same on every machine; an upper bound "
                           "only when max_minutes is set).")
    max_minutes: float = Field(0.0, ge=0, description="Optional wall-clock safety (0 = off, the default): after warm-up the "
                               "step count is planned from the measured speed so the cosine decay ends within it, at most "
                               "max_steps. When it cuts the run short the model depends on the machine's speed, and the "
                               "report says so.")
    learning_rate: float = Field(5e-3, description="Peak AdamW learning rate.")
    min_lr_ratio: float = Field(0.1, description="Cosine decay floor as a fraction of the peak.")
    warmup_steps: int = Field(20, description="Linear warm-up steps.")
    weight_decay: float = Field(0.1, description="AdamW weight decay.")
    grad_clip: float = Field(1.0, description="Gradient norm clip.")
    eval_every: int = Field(100, description="Steps between validation evaluations.")
    eval_batches: int = Field(8, description="Batches per validation evaluation.")
    save_every: int = Field(200, description="Steps between resumable checkpoints.")
    log_every: int = Field(10, description="Steps between logged scalars.")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(
        "no", description="Accelerate mixed precision (bf16 autocast measured 3-8x slower on an AVX2 CPU without bf16 units).")


class LoraConfig(Section):
    enabled: bool = Field(False, description="Train LoRA adapters through peft instead of all weights.")
    r: int = Field(8, description="LoRA rank.")
    alpha: int = Field(16, description="LoRA alpha.")
    dropout: float = Field(0.0, description="LoRA dropout.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], description="Modules that get adapters."
    )
    merge: bool = Field(True, description="PPO: merge adapters into a plain checkpoint when the stage ends (false "
                        "saves the peft adapter alone). SFT always saves merged weights, with the adapter alone in "
                        "sft/adapter/, because the RM and PPO load SFT as a plain model.")


class SFTConfig(Section):
    data: str | None = Field(None, description="None = world demonstrations; or a local jsonl/csv/parquet path or datasets name.")
    split: str = Field("train", description="datasets split to read.")
    format: Literal["auto", "messages", "prompt_response", "instruction", "transcript", "oasst_tree"] = Field(
        "auto", description="How rows become conversations (auto detects from columns): chat messages, prompt/response "
        "pairs, instruction/input/output (self-instruct), an HH-RLHF 'Human:/Assistant:' transcript, or an "
        "OpenAssistant message tree (rank-0 path)."
    )
    columns: dict[str, str] = Field(default_factory=dict, description="Column mapping, e.g. {prompt: question, response: answer} "
                                    "(keys: messages; prompt, response; instruction, input, output; text; tree).")
    max_len: int = Field(256, description="Maximum tokens per example; older turns are dropped first.")
    batch_size: int = Field(16, description="Examples per optimizer step.")
    epochs: float = Field(10.0, description="Passes over the data (10: about a CPU minute on the default world).")
    max_steps: int = Field(0, description="Stop after this many steps (0 = epochs decide).")
    learning_rate: float = Field(1e-3, description="Peak AdamW learning rate.")
    warmup_steps: int = Field(20, description="Linear warm-up steps.")
    weight_decay: float = Field(0.0, description="AdamW weight decay.")
    grad_clip: float = Field(1.0, description="Gradient norm clip.")
    val_fraction: float = Field(0.05, description="Share of examples kept for validation loss.")
    min_lr_ratio: float = Field(0.1, description="Cosine decay floor as a fraction of the peak.")
    packing: bool = Field(False, description="Pack several conversations into one sequence (else length-grouped batches).")
    eval_every: int = Field(50, description="Steps between validation evaluations.")
    save_every: int = Field(100, description="Steps between resumable checkpoints.")
    log_every: int = Field(10, description="Steps between logged scalars.")
    eval_after: bool = Field(True, description="After training, evaluate on held-out data: with sft.data, the user's "
                             "validation split (loss, greedy sample answers, the RM's score once an RM exists); with the "
                             "embedded world, base vs SFT on held-out world prompts.")
    eval_prompts: int = Field(100, description="Held-out prompts answered in that evaluation (0 = all).")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA settings.")
    group_system_message: bool = Field(False, description="World demonstrations only: start each with a system message "
        "naming its writer's labeler group (chatrlhf.world.groups.group_message, the line a group-conditioned RM and "
        "policy are given), so the model learns how each group writes and answers the group it is asked for; the "
        "saved model's meta.json lists the lines (`chatrlhf chat --group`). `chatrlhf preferences` trains such an "
        "SFT for its conditioned-sft variant (preferences.conditioned_sft).")


class RMConfig(Section):
    data: str | None = Field(None, description="None = rank world samples; or comparisons: a jsonl/csv/parquet path or "
                             "datasets name with K-way rankings, chosen/rejected pairs (HH-RLHF transcripts or with a "
                             "prompt) or OpenAssistant trees.")
    split: str = Field("train", description="datasets split to read for rm.data.")
    columns: dict[str, str] = Field(default_factory=dict, description="Column mapping for rm.data, e.g. {prompt: "
                                    "question, chosen: better, rejected: worse} (keys: id, prompt_id, prompt, messages, "
                                    "chosen, rejected, responses, rankings).")
    k: int = Field(4, description="Responses sampled per prompt for ranking (InstructGPT: 4 to 9).")
    n_prompts: int = Field(0, description="Prompts to sample for ranking (0 = all world RM prompts).")
    labeler_groups: dict[str, float] | None = Field(None, description="Whose rankings the RM (and so the policy) "
        "learns: None pools every training labeler; {brief: 1} one group; {brief: 0.7, cautious: 0.3} a weighted mix. "
        "Groups of the embedded world: brief, thorough, cautious (chatrlhf.world.labelers).")
    conditioned: bool = Field(False, description="Group-conditioned RM and policy: each comparison is ranked by one "
        "group (drawn by labeler_groups' weights) and names it in a system message, and PPO's prompts carry a group's "
        "system message in the same proportions, so one model serves every group (`chatrlhf chat --group NAME`).")
    labelers_per_prompt: int = Field(3, description="Simulated labelers ranking each prompt's K responses (3: their noise averages out at no extra sampling or training cost, since a prompt's responses are scored once for all its rankings).")
    val_labelers: int = Field(3, description="Held-out labelers who also rank each held-out prompt (never trained on; "
                              "gives the held-out-labeler accuracy and their agreement rate, the ceiling).")
    allow_ties: bool = Field(True, description="Accept tied ranks (they give no pair); False makes a duplicate rank an error.")
    temperature: float = Field(1.0, description="Sampling temperature for the K responses.")
    max_new_tokens: int = Field(48, description="Maximum response tokens when sampling.")
    sample_batch: int = Field(256, description="Responses decoded together when sampling (continuous batching).")
    max_len: int = Field(256, description="Maximum tokens of prompt plus response.")
    batch_prompts: int = Field(8, description="Prompts per optimizer step (all of a prompt's pairs share a batch).")
    packing: bool = Field(True, description="Pack each batch's sequences into rows with restarting position ids "
                          "instead of padding them: the same batches, rewards and gradients with about half the tokens. Checked against padding on the first batch; falls back to "
                          "padding, with a warning, for a model whose attention ignores the restarts.")
    epochs: float = Field(2.0, description="Passes over the comparisons.")
    learning_rate: float = Field(5e-4, description="Peak AdamW learning rate.")
    warmup_steps: int = Field(10, description="Linear warm-up steps.")
    weight_decay: float = Field(0.0, description="AdamW weight decay.")
    grad_clip: float = Field(1.0, description="Gradient norm clip.")
    val_fraction: float = Field(0.1, description="Share of prompts held out for pairwise accuracy.")
    save_every: int = Field(100, description="Steps between resumable checkpoints.")
    log_every: int = Field(10, description="Steps between logged scalars.")
    init_from: Literal["sft", "pretrain"] = Field("sft", description="Stage whose weights initialise the RM.")


class RejectionSamplingConfig(Section):
    n: int = Field(8, ge=0, description="Samples per prompt before PPO; the best under PPO's reward "
                   "(RM score + sft_loglik_coef x SFT mean log-likelihood + verifier_coef x check) is kept and the policy fine-tuned on the kept "
                   "answers (Llama 2's rejection sampling). 0 or 1 = off: PPO starts from the given policy.")
    prompts: int = Field(3000, ge=1, description="Prompts to sample: PPO's training prompts, topped up with the RM "
                         "stage's prompts (never eval or guard prompts). Distinct prompts distil better than more "
                         "samples of fewer prompts (docs/RESULTS.md).")
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
    total_iterations: int = Field(120, description="PPO iterations (one rollout batch + its update epochs each; the guard usually stops earlier).")
    max_minutes: float = Field(0.0, ge=0, description="Optional wall-clock safety per round (0 = off, the default: "
                               "total_iterations and the guard decide, the same on every machine); when it fires the "
                               "guard's best is still taken and the report names it.")
    rollout_batch_size: int = Field(32, description="Responses per rollout batch (rollout_batch_size / samples_per_prompt distinct prompts).")
    samples_per_prompt: int = Field(1, ge=1, description="Responses sampled per prompt in a rollout batch (RLOO needs at least 2).")
    advantage_estimator: Literal["gae", "rloo", "grpo"] = Field(
        "gae", description="gae: GAE with the value model (initialised from the RM); rloo: the sequence reward with "
        "the KL in it, minus the mean of the prompt's other samples (leave-one-out, Ahmadian et al. 2024); grpo: "
        "(reward - group mean) / group std, with the KL to SFT as a k3 loss term weighted by kl_coef (Shao et al. "
        "2024). rloo and grpo need samples_per_prompt >= 2 and load, train and save no value model.")
    critic: Literal["shared", "separate"] = Field(
        "shared", description="GAE's value function. shared: a scalar head on the policy's last hidden states, initialised "
        "from the RM's head -- one trunk pass per update instead of two, and the rollout's hidden states give the values "
        "without a pass of their own; separate: its own model initialised "
        "from the whole RM (InstructGPT, TRL 1.10). A shared head needs an RM as wide as the policy.")
    value_head_lr_scale: float = Field(20.0, gt=0, description="Shared critic: the value head's learning rate as a multiple "
                                       "of learning_rate (a linear head on features it does not train needs larger steps).")
    mini_batch_size: int = Field(8, description="Sequences per PPO mini-batch.")
    ppo_epochs: int = Field(2, description="Passes over each rollout batch.")
    max_new_tokens: int = Field(48, description="Maximum response tokens per rollout.")
    temperature: float = Field(1.0, description="Rollout sampling temperature.")
    learning_rate: float = Field(5e-5, description="Policy and value AdamW learning rate.")
    kl_coef: float = Field(0.05, description="Initial coefficient of the per-token KL penalty to the SFT model.")
    adaptive_kl: bool = Field(False, description="Adapt kl_coef towards target_kl (Ziegler et al. 2019).")
    sft_loglik_coef: float = Field(2.0, description="Weight of the SFT model's length-normalised log-likelihood of the "
                                   "response, added to the reward token by token (0 = off).")
    verifier_coef: float = Field(4.0, ge=0, description="Weight of the rule-based check of a prompt's `ground_truth` "
                                 "(chatrlhf.verifiers, score in [0, 1]) added to the RM score; prompts without one get the RM alone (0 = off).")
    target_kl: float = Field(6.0, description="Target KL (nats per sequence) for the adaptive controller.")
    horizon: int = Field(10000, description="Adaptive KL controller horizon.")
    cliprange: float = Field(0.2, description="PPO policy ratio clip.")
    cliprange_value: float = Field(0.2, description="Value prediction clip.")
    vf_coef: float = Field(0.1, description="Value loss coefficient.")
    gamma: float = Field(1.0, description="GAE discount.")
    lam: float = Field(0.95, description="GAE lambda.")
    whiten_rewards: bool = Field(False, description="Whiten per-token rewards before GAE.")
    missing_eos_penalty: float = Field(1.0, description="Subtracted from the reward of responses that never end.")
    ptx_coef: float = Field(0.0, description="PPO-ptx: weight of the pre-training LM loss mixed into each update.")
    ptx_batch_size: int = Field(4, description="Pre-training sequences per update for PPO-ptx.")
    max_kl: float = Field(50.0, description="Stop the run when mean KL (nats per sequence) exceeds this.")
    early_stop: Literal["none", "held_out_comparisons", "target_kl"] = Field(
        "held_out_comparisons", description="Guard against reward over-optimisation. held_out_comparisons: with the "
        "embedded world, its training labelers compare the policy with SFT on held-out prompts; without it, the "
        "RM's held-out (validation) comparisons, scored as the share of pairs the policy's implicit reward "
        "(log pi - log pi_SFT of the whole reply) orders as the people did. target_kl: stop at ppo.target_kl. "
        "none: the last iteration is exported.")
    eval_every: int = Field(3, description="Iterations between guard evaluations.")
    save_every: int = Field(5, description="Iterations between resumable checkpoints.")
    grad_clip: float = Field(1.0, description="Gradient norm clip of the policy and value update.")
    guard_prompts: int = Field(64, description="Held-out PPO prompts the over-optimisation guard compares on (not trained on).")
    guard_labelers: int = Field(2, ge=1, description="Training labelers who compare each guard prompt's pair (more = a less noisy win rate).")
    patience: int = Field(10, description="Guard evaluations without a new best (smoothed) win rate before early stop.")
    guard_window: int = Field(3, ge=1, description="The guard selects and stops on the mean of its last guard_window evaluations (1 = raw; a single evaluation is noisy).")
    ptx_seq_len: int = Field(128, description="Tokens per pre-training sequence for PPO-ptx and the perplexity check.")
    rejection_sampling: RejectionSamplingConfig = Field(default_factory=RejectionSamplingConfig,
                                                        description="Best-of-n fine-tuning before PPO.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA settings for the policy.")

    @property
    def reads_policy_hidden_states(self) -> bool:
        """GAE with the shared critic: the rollout keeps the policy's hidden states and the update reads them."""
        return self.advantage_estimator == "gae" and self.critic == "shared"

    @model_validator(mode="after")
    def _groups_fit(self) -> "PPOConfig":
        if self.rollout_batch_size % self.samples_per_prompt:
            raise ValueError(f"rollout_batch_size ({self.rollout_batch_size}) must be a multiple of "
                             f"samples_per_prompt ({self.samples_per_prompt})")
        if self.advantage_estimator in ("rloo", "grpo") and self.samples_per_prompt < 2:
            raise ValueError(f"advantage_estimator '{self.advantage_estimator}' needs samples_per_prompt >= 2 (its "
                             "baseline comes from the prompt's other samples)")
        return self


class IterateConfig(Section):
    rounds: int = Field(2, description="RLHF rounds (round 1 = RM + PPO from SFT; later rounds add fresh comparisons).")
    max_rounds: int = Field(0, ge=0, description="Optional, off by default (0 or at most `rounds` = exactly `rounds`, "
                            "the same on every machine): under `chatrlhf run`, more rounds up to this many, each started "
                            "only if it fits in budget_minutes, so the round count then depends on the machine's speed "
                            "(the report says how many ran and why). `chatrlhf iterate` always runs exactly `rounds`.")
    budget_minutes: float = Field(13.0, ge=0, description="With max_rounds > rounds only: a round beyond `rounds` starts "
                                  "only if the run's stage time so far plus the last round's time stays within this many minutes.")
    prompts_per_round: int = Field(300, description="Fresh prompts sampled and ranked per later round.")
    rm_mode: Literal["continue", "retrain"] = Field("continue", description="retrain: a new RM from SFT on all comparisons so far; continue: the last RM trained on the fresh comparisons plus as many earlier ones (replay), cheaper but it forgets.")
    source: Literal["simulated", "labeling_app"] = Field("simulated", description="Who ranks the fresh comparisons.")
    labeling_url: str | None = Field(None, description="Labeling app URL when source = labeling_app.")
    labeling_project: str | None = Field(None, description="Labeling app project name when source = labeling_app.")
    labeling_group: str | None = Field(None, description="With source = labeling_app: train on the rankings of this "
                                       "group's labelers only (the group on their profile in the app); None = everyone's. "
                                       "Items no one of the group ranked are left out.")


class Config(Section):
    run: RunConfig = Field(default_factory=RunConfig)
    world: WorldConfig = Field(default_factory=WorldConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    rm: RMConfig = Field(default_factory=RMConfig)
    preferences: PreferencesConfig = Field(default_factory=PreferencesConfig)
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    iterate: IterateConfig = Field(default_factory=IterateConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    chat: ChatConfig = Field(default_factory=ChatConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    label: LabelConfig = Field(default_factory=LabelConfig)
    dpo: DPOConfig = Field(default_factory=DPOConfig)
    compare: CompareConfig = Field(default_factory=CompareConfig)

    def stage_dir(self, stage: str) -> Path:
        """Where a stage writes its outputs, e.g. runs/default/sft."""
        return Path(self.run.out_dir) / stage


# --- loading --------------------------------------------------------------------------------


def _section_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel]:
    """The pydantic model that owns the key at `loc` (to list its allowed keys)."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None) if field else None
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            break
    return model


def _explain(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        loc = tuple(e["loc"])
        key = ".".join(str(p) for p in loc)
        if e["type"] == "extra_forbidden":
            owner = _section_at(Config, loc)
            allowed = list(owner.model_fields)
            hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            msg = f"  unknown key '{key}'"
            if hint:
                msg += f" (did you mean '{'.'.join([*map(str, loc[:-1]), hint[0]])}'?)"
            msg += f"; allowed keys here: {', '.join(allowed)}"
        else:
            msg = f"  '{key}': {e['msg']} (got {e.get('input')!r})"
        lines.append(msg)
    return "\n".join(lines)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{p}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """'ppo.kl_coef=0.05' -> ('ppo.kl_coef', 0.05); values are parsed as YAML scalars."""
    if "=" not in item:
        raise ConfigError(f"--set expects KEY=VALUE (e.g. ppo.kl_coef=0.05), got {item!r}")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML file <- dotted overrides, validated in one go."""
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections, got {type(loaded).__name__}")
        tree = loaded
        source = str(p)
    for item in overrides or []:
        key, value = parse_override(item)
        _set_dotted(tree, key, value)
    if overrides:
        source += " + --set " + " ".join(overrides)
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_explain(e, source)) from None


def dump_config(cfg: Config, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
