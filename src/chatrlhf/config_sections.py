"""The configuration sections of evaluation, the apps (chat, serve, label) and the method comparisons
(preferences, DPO, compare), `LoraConfig` (SFT's and PPO's), and `Section`, the base of every section.
`chatrlhf.config` assembles them into `Config`; import them from there.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraConfig(Section):
    enabled: bool = Field(False, description="Train LoRA adapters through peft instead of all weights.")
    r: int = Field(8, description="LoRA rank.")
    alpha: int = Field(16, description="LoRA alpha.")
    dropout: float = Field(0.0, description="LoRA dropout.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], description="Modules that get adapters."
    )
    merge: bool = Field(True, description="PPO and DPO: merge adapters into a plain checkpoint when the stage ends (false "
                        "saves the peft adapter alone). SFT always saves merged weights, with the adapter alone in "
                        "sft/adapter/, because the RM and PPO load SFT as a plain model.")


# --- evaluation, apps and method comparisons --------------------------------------------------


class EvalConfig(Section):
    n_prompts: int = Field(400, description="Held-out world prompts to evaluate (0 = all).")
    max_new_tokens: int = Field(48, description="Maximum response tokens.")
    temperature: float = Field(1.0, description="Sampling temperature (greedy is always evaluated too).")
    bootstrap: int = Field(1000, description="Bootstrap resamples for confidence intervals.")
    baseline: str = Field("sft", description="Model that win rates are measured against.")
    judgements_per_pair: int = Field(20, ge=1, description=(
        "Held-out labeler judgements per (model, baseline) answer pair, rotating over the held-out labelers; "
        "the win rate is their mean (1 = one judgement per pair, noisier)."))
    shared_data: str = Field("../shared/data", description="Directory of the shared real datasets (skipped when absent).")
    real_data_limit: int = Field(25, description="Examples per real benchmark in the default run (0 = all; bench/bench_eval.py full).")
    judge: str | None = Field(None, description="Reward model directory used to score real prompts (None = final RM).")
    sections: list[Literal["world", "real_prompts", "truthfulqa", "crows_pairs", "rtp"]] = Field(
        default_factory=lambda: ["world", "real_prompts", "truthfulqa", "crows_pairs", "rtp"],
        description="Evaluation sections to run (each is skipped with a note when its data is absent).")
    rtp_samples: int = Field(2, description="Sampled continuations per RealToxicityPrompts prompt (Gehman et al. use 25).")
    decoding_temperatures: list[float] = Field(
        default_factory=lambda: [0.0, 0.7, 1.0],
        description="Candidate decodings for the headline (0 = greedy): the final policy and the baseline each answer the "
        "eval prompts at the one the training labelers score best on validation_prompts (never eval prompts, never the judges).")
    validation_prompts: int = Field(64, ge=0, description="Prompts of the guard split (content of their own, never trained "
                                    "on) on which each headline model's decoding is chosen; 0 = greedy for both.")
    validation_judgements: int = Field(3, ge=1, description="Training-labeler Likert judgements per validation answer.")
    final: str | None = Field(None, description="The model the headline compares with the baseline (None = the newest "
                              "policy evaluated).")
    min_real_items: int = Field(100, ge=1, description="A real-data benchmark gets a verdict only with at least this many items.")
    real_data_in_domain: Literal["auto", "yes", "no"] = Field(
        "auto", description="Whether the real benchmarks (TruthfulQA, RealToxicityPrompts, CrowS-Pairs, real prompts) "
        "measure this model at all. auto: no for a model pre-trained on the embedded world alone (model.name_or_path "
        "unset), yes otherwise. Out of domain: figures are shown, no verdict.")


class ChatConfig(Section):
    model: str | None = Field(None, description="Model directory (None = the newest policy of the run).")
    system_prompt: str | None = Field(None, description="System prompt kept at the start of every conversation.")
    max_new_tokens: int = Field(64, description="Maximum reply tokens.")
    temperature: float = Field(0.7, description="Sampling temperature.")
    top_p: float = Field(0.95, description="Nucleus sampling threshold.")
    top_k: int = Field(0, description="Top-k sampling (0 = off).")
    compile: bool = Field(False, description="Decode with the compiled one-row step (lm/engine_compiled.py CompiledStep; "
                          "CPU, Llama-family models): about twice the eager fast path per token. Each cache size "
                          "compiles once (seconds, a C++ compiler needed) and is kept on disk.")


class ServeConfig(Section):
    host: str = Field("127.0.0.1", description="Bind address.")
    port: int = Field(8000, description="Port.")
    max_body_bytes: int = Field(64_000, description="Largest accepted request body.")
    max_messages: int = Field(64, description="Most messages in one request.")
    max_tokens: int = Field(256, description="Largest max_tokens a request may ask for.")
    timeout_s: float = Field(60.0, description="Per-request timeout.")
    default_max_tokens: int = Field(64, description="max_tokens of a request that does not say.")
    max_batch: int = Field(16, description="Most requests decoded together (continuous batching).")
    stuck_s: float = Field(30.0, gt=0, description="/health answers 503 when the decoding loop holds work but has not "
                           "finished a step for this long (or has died and not been restarted).")
    save_conversations: str | None = Field(None, description="Append finished conversations as jsonl here (off by default).")
    decode_process: bool = Field(True, description="Decode in a child process (run.threads torch threads; 0 = every core "
                                 "but one): HTTP work in the serving process then never stalls a decode step.")
    compile: bool = Field(False, description="Decode a lone conversation with the compiled one-row step (see chat.compile); "
                          "batches of several requests take the eager fast path.")


class LabelConfig(Section):
    db: str = Field("sqlite:///runs/labeling.db", description="SQLAlchemy database URL (SQLite or PostgreSQL).")
    host: str = Field("127.0.0.1", description="Bind address.")
    port: int = Field(8100, description="Port.")
    max_body_bytes: int = Field(4_000_000, description="Largest accepted request body (413 above it).")
    claim_minutes: float = Field(60.0, description="How long a labeler holds an item before it goes back to the queue.")
    admin_name: str = Field("admin", description="Admin user that the CHATRLHF_LABEL_ADMIN_TOKEN token belongs to.")


class PreferencesConfig(Section):
    """`chatrlhf preferences`: one RM and policy per labeler group, a pooled one and a group-conditioned
    one, all from the same SFT model and the same sampled answers, judged by each group's held-out members."""
    groups: list[str] = Field(default_factory=lambda: ["brief", "thorough", "cautious"], description="Training groups to compare.")
    comparisons: int = Field(2000, ge=1, description="Prompts of the RM stage's sampled comparisons each RM is trained on (re-ranked per group).")
    ppo_iterations: int = Field(40, ge=1, description="PPO iterations per policy (no best-of-n fine-tune: the "
                                "comparison is between what each group's reward model teaches).")
    learning_rate: float | None = Field(5e-5, gt=0, description="Every variant's PPO learning rate (None: "
                                        "ppo.update.learning_rate). The variants run ppo_iterations with no guard, "
                                        "so a faster rate takes them further from their SFT models than the main run's "
                                        "guarded PPO goes (docs/RESULTS.md, 'The whose-preferences table with PPO's "
                                        "learning rate 1.5e-4').")
    rounds: int = Field(1, ge=1, description="Rounds of every variant: each round after the first ranks rm.k samples "
                        "of the variant's newest policy for iterate.prompts_per_round fresh PPO prompts by its own "
                        "labelers (a conditioned variant's prompts each ask for a group, answered under its line and "
                        "ranked by that group), continues its RM on them with as many earlier comparisons replayed, "
                        "and runs PPO again from the newest policy, as the main run's iterate does.")
    conditioned_rounds: int | None = Field(None, ge=1, description="Rounds of the conditioned variants (None: rounds).")
    conditioned_ppo_iterations: int | None = Field(None, ge=1, description="PPO iterations of the conditioned "
                                                   "variants (None: ppo_iterations), whose prompts ask for every group.")
    best_of_n: int = Field(0, ge=0, description="Each variant's PPO starts from a best-of-n fine-tune of its own SFT model "
                           "under its own RM (ppo.rejection_sampling's settings with n = this; 0: none, PPO straight "
                           "from the SFT model). Every variant gets the same.")
    guard: bool = Field(False, description="Each variant's PPO keeps the iteration its own training labelers "
                        "like best against its SFT model's answers on the guard prompts (ppo.guard, judged by the "
                        "variant's groups; the conditioned variants by the group each prompt asks for); off: every "
                        "variant's last iteration.")
    eval_prompts: int = Field(200, ge=1, description="Held-out eval prompts each policy answers (greedy).")
    judgements: int = Field(20, ge=1, description="Judgements per answer pair, spread over the judging group's held-out "
                            "members, as many as the headline's. Each draws the member's noise anew, so more leave less "
                            "judge noise in a cell (bench/judge_noise.py measures it).")
    conditioned_sft: bool = Field(True, description="Also train a conditioned-sft variant: the conditioned RM and policy "
                                  "started from an SFT model fine-tuned from the same pre-trained model, with the same "
                                  "sft.* settings, on demonstrations that name their writer's group in a system message "
                                  "(sft.group_system_message). The conditioned variant keeps the shared SFT model, so the "
                                  "two rows show what reading the group line from SFT on adds.")
    group_sft_epochs: float | None = Field(None, gt=0, description="sft.epochs for each group's own SFT model "
                                           "(group_sft: every SFT prompt answered by the group's writers; None: the "
                                           "run's sft.epochs).")
    conditioned_sft_epochs: float | None = Field(None, gt=0, description="sft.epochs for the conditioned-sft "
                                                 "variant's SFT model (None: the run's sft.epochs).")
    conditioned_sft_start: Literal["pretrain", "sft"] = Field("pretrain", description="What the conditioned-sft "
                                                              "variant's SFT model is fine-tuned from: the pre-trained "
                                                              "model, as the run's SFT is, or the run's SFT model itself "
                                                              "(sft.start_from), which already answers in the chat format "
                                                              "and states the world's facts.")
    conditioned_weights: dict[str, float] | None = Field(None, description="The conditioned variants' weight for each "
        "group: the share of their comparisons each group ranks and of their PPO prompts that ask for it, e.g. {brief: "
        "0.2, thorough: 0.4, cautious: 0.4} (a design choice of whose taste one model leans to); None: every group alike.")
    group_sft_start: Literal["pretrain", "sft"] = Field("pretrain", description="What each group's own SFT model "
                                                        "(group_sft) is fine-tuned from: the pre-trained model, as the "
                                                        "run's SFT is, or the run's SFT model itself (sft.start_from), "
                                                        "which learnt from every group's writers.")
    group_demonstrations: bool = Field(True, description="The conditioned-sft variant's demonstrations: a writer of "
                                       "every group answers every SFT prompt, each under its group's line "
                                       "(sft.group_demonstrations); off: one writer per prompt, as the shared SFT model reads.")
    line_near_answer: bool = Field(True, description="The conditioned-sft variant's SFT model is trained, and saved, with "
                                   "the chat template that writes the group line right before each answer "
                                   "(sft.group_line_near_answer; the embedded tokenizer only), where a model this small "
                                   "reads it; off: the line first, as the template writes any system message.")
    own_samples: bool = Field(False, description="A variant with an SFT model of its own (conditioned-sft; each group's "
                              "with group_sft) ranks K answers its own SFT model samples for the RM stage's prompts (a "
                              "conditioned one under the group line each prompt is drawn for), as InstructGPT's labelers "
                              "rank the outputs of the model being aligned; off: every variant re-ranks the RM stage's "
                              "samples of the run's SFT model.")
    mixed_samples: bool = Field(False, description="Every variant re-ranks the same answers, drawn in turn from each "
                                "SFT model the stage has: the run's and each group's own (needs group_sft), so every RM "
                                "sees the answers each group's writers taught, a hedge or a safety note included, as "
                                "InstructGPT's labelers ranked outputs of several models; off: the RM stage's samples "
                                "of the run's SFT model.")
    conditioned_reward: Literal["conditioned", "groups"] = Field(
        "conditioned", description="What the conditioned variants' PPO is paid: their own group-conditioned RM "
        "(conditioned), or on each prompt the RM of the group it asks for, trained on that group's rankings alone "
        "(groups; one policy still serves every group)."
    )
    own_reference: bool = Field(True, description="Each variant's PPO takes its KL penalty to the SFT model it "
                                "started from (conditioned-sft's, a group's with group_sft), as InstructGPT's policy "
                                "does to its own SFT model; off: to the run's shared SFT model, the same anchor for "
                                "every variant.")
    sft_ptx_coef: float | None = Field(None, ge=0, description="sft.ptx_coef of every variant's SFT model: each "
                                       "group's (group_sft), conditioned-sft's, and the run's SFT trained again with "
                                       "it for the pooled and conditioned variants; None: the run's sft.ptx_coef and "
                                       "SFT model.")
    group_sft: bool = Field(False, description="Each group's variant starts its RM and policy from an SFT model "
                            "fine-tuned, with the run's sft.* settings, on demonstrations its own group wrote "
                            "(sft.writer_group) instead of the shared SFT model: the group's bias through "
                            "demonstrations and rankings both, as the labelers who write and rank pass it on.")


class DPOConfig(Section):
    data: str | None = Field(None, description="Comparisons to learn from: None = the RM stage's (rm.data where set, else "
                             "rm/comparisons.jsonl, sampled and ranked as the RM stage does when missing); or a rankings/pairs "
                             "file or datasets name. Read as the RM reads its data: rm.columns and rm.split apply.")
    beta: float = Field(0.1, gt=0, description="DPO's beta (TRL's name): the strength of the implicit KL to the reference; "
                        "the implicit reward is beta * (log pi(y) - log pi_SFT(y)).")
    loss_type: Literal["sigmoid", "ipo", "hinge"] = Field(
        "sigmoid", description="sigmoid = DPO (Rafailov et al. 2023); ipo = IPO (Azar et al. 2023): the log-ratio margin "
        "regressed to 1 / (2 beta); hinge = SLiC (Zhao et al. 2023): max(0, 1 - beta x margin). TRL's names.")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="With loss_type=sigmoid: conservative DPO (Mitchell "
                                   "2023), for preference labels flipped with this probability. 0 = DPO.")
    epochs: float = Field(2.0, gt=0, description="Passes over the comparisons (the RM's default: the same data, seen as often).")
    batch_prompts: int = Field(8, ge=1, description="Comparisons per optimizer step; all pairs of a K-way ranking share a batch "
                               "and each response is scored once, as in the RM stage.")
    learning_rate: float = Field(1e-4, gt=0, description="Peak AdamW learning rate (cosine decay after warm-up).")
    warmup_steps: int = Field(10, ge=0, description="Linear warm-up steps.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine decay floor as a fraction of the peak.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    grad_clip: float = Field(1.0, description="Gradient norm clip (0 = off).")
    max_len: int = Field(256, description="Maximum tokens of prompt plus response; the prompt is cut from the left.")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="Share of prompts held out for preference accuracy "
                                "(a comparison's own `split` field wins, as in the RM stage).")
    packing: bool = Field(True, description="Pack each batch's sequences into rows with restarting position ids instead "
                          "of padding them, the LM head run on response positions only (checked against padding on the "
                          "first batch; falls back to padding, with a warning, where the model's attention ignores the restarts).")
    ref_batch: int = Field(64, ge=1, description="Sequences per forward pass when the reference log-probs are computed "
                           "(once, before training: the reference is frozen, so one pass serves every epoch).")
    save_every: int = Field(100, description="Steps between resumable checkpoints.")
    log_every: int = Field(10, description="Steps between logged scalars.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA for the policy (as SFT's and PPO's): adapters "
                             "trained, every other weight frozen; the reference is the policy with its adapters off, so no "
                             "second model is loaded. The stage saves the merged weights (the adapter alone in dpo/adapter/; "
                             "lora.merge=false saves the adapter alone).")
    rounds: int = Field(1, ge=1, description="Iterated (online) DPO: after the first pass, each further round samples rm.k "
                        "answers from the newest policy for iterate.prompts_per_round fresh PPO prompts, has the training "
                        "labelers rank them, and runs DPO on them from the newest policy (reference still SFT). 1 = offline DPO.")


class CompareConfig(Section):
    methods: list[str] = Field(
        default_factory=lambda: ["sft", "ppo", "dpo", "grpo", "rloo", "bon4", "bon16", "fewshot"],
        description="Methods in the table: sft (the baseline), ppo (GAE), grpo, rloo, dpo, ipo (DPO with IPO's loss), "
                    "bonN (best of N SFT samples "
                    "under the RM, at inference), fewshot (the pre-trained model prompted with demonstrations).")
    samples_per_prompt: int = Field(4, ge=2, description="GRPO/RLOO group size; PPO gets the same ppo.rollout.batch_size in "
                                    "responses, so every RL method generates the same number of tokens' worth of answers.")
    rejection_sampling: bool = Field(False, description="Let the RL methods start from ppo.rejection_sampling's best-of-n "
                                     "fine-tune (as `chatrlhf ppo` does); off = every method starts from SFT itself.")
    fewshot_demos: int = Field(4, ge=0, description="Demonstrations (world SFT demonstrations, never eval prompts) put "
                               "before the question for the few-shot base model.")
    kl_prompts: int = Field(64, ge=1, description="Eval prompts on which KL(method || SFT) is estimated from each model's "
                            "own temperature-1 samples.")
