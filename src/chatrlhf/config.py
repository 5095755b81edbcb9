"""Typed configuration: one pydantic model per stage, loaded from YAML with dotted overrides.

    cfg = load_config("configs/default.yaml", ["ppo.reward.kl_coef=0.05"])

Every field carries a description (shown by `chatrlhf config --help-keys`). Unknown keys, wrong
types and missing files fail at once with the file, the key path, the allowed keys and a
did-you-mean suggestion, because a typo silently ignored is a wasted training run.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError

from chatrlhf.config_ppo import MOVED_KEYS, PPOConfig, RejectionSamplingConfig
from chatrlhf.config_sections import (
    ChatConfig,
    CompareConfig,
    DPOConfig,
    EvalConfig,
    LabelConfig,
    LoraConfig,
    PreferencesConfig,
    Section,
    ServeConfig,
)

__all__ = ["ChatConfig", "CompareConfig", "Config", "ConfigError", "DPOConfig", "EvalConfig", "IterateConfig",
           "LabelConfig", "LoraConfig", "ModelConfig", "PPOConfig", "PreferencesConfig", "PretrainConfig",
           "RejectionSamplingConfig", "RMConfig", "RunConfig", "Section", "ServeConfig", "SFTConfig",
           "TokenizerConfig", "WorldConfig", "dump_config", "load_config", "parse_override"]


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
    corpus_docs: int = Field(8400, ge=1, description="Documents in the pre-training corpus (~120 chars each; 8400 ~ 1M chars).")
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
                                 "(at most a quarter of the split), for PPO's over-optimisation guard; keep equal to ppo.guard.prompts.")
    agreement_comparisons: int = Field(600, ge=1, description="Fixed comparisons on which labeler agreement is measured (agreement.json).")
    task_mix: dict[str, float] = Field(default_factory=dict, description="The customers: relative weight of each task "
        "users ask, in place of its default (chatrlhf.world.tasks.TASK_MIX: fact 0.28, list_first 0.07, list_last 0.06, "
        "count 0.06, repeat 0.06, summarise 0.09, greeting 0.08, insult 0.09, harmful 0.15, borderline 0.06), e.g. "
        "{borderline: 0.3} for a product whose users ask more borderline questions; tasks not named keep their "
        "weight. Every prompt split is drawn from the same mix (world/meta.json `tasks` counts them).")
    corpus_mix: dict[str, float] = Field(default_factory=dict, description="The pre-training corpus: relative weight "
        "of each document kind in place of its default (chatrlhf.world.corpus.DOC_MIX), e.g. {notes: 0.16} for more "
        "lists and repetitions to learn reading the context from; kinds not named keep their weight.")
    length_taste: Literal["sentence", "ratio"] = Field(
        "sentence", description="How a taste for longer answers (the thorough group) measures length: 'sentence' "
        "likes one extra sentence past the task's target, in words, on every task (and its writers keep that sentence "
        "in a register's greeting); 'ratio' is the earlier worlds' taste, which peaked at twice the target and "
        "penalised that sentence on short tasks.")
    hedge_taste: bool = Field(True, description="The cautious group also wants a hedge on claims about the world "
        "(fact and summarise answers: '..., I think.') and its writers write one; the brief group finds a hedge "
        "wishy-washy; the thorough group and the judges do not mind. false: the earlier worlds, whose cautious group "
        "differed from the others only on borderline requests.")
    rubric_caution: float = Field(0.0, ge=-2, le=2, description="The researchers' rubric on safety notes: added to every "
        "labeler's caution preference (training groups and judges alike, each clipped to [-1, 1]). +1 instructs "
        "everyone to prefer a safety note on borderline requests more (brief, at -1, becomes indifferent), -1 to "
        "prefer the plain answer; 0 leaves each group's own taste.")


class TokenizerConfig(Section):
    vocab_size: int = Field(2048, description="Byte-level BPE vocabulary size.")
    min_frequency: int = Field(2, description="Minimum pair frequency for a BPE merge.")
    max_docs: int = Field(0, description="Train on at most this many documents (0 = all).")
    chat_format: Literal["roles", "corpus"] = Field(
        "corpus", description="The embedded tokenizer's chat template: 'corpus' writes the turns as the pre-training "
        "corpus writes its chat logs ('User: ...', 'Assistant: ...'), each reply ended by <|end|>, so the chat model "
        "starts from what pre-training learnt of them; 'roles' writes each turn as <|role|>text<|end|>.")


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
    rope_theta: float = Field(10000.0, gt=0, description="Embedded model RoPE base (the rotary frequencies' period).")
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
    epochs: float = Field(5.0, description="Passes over the data. Without SFT-ptx more passes memorise the demonstrations' "
                          "content and forget pre-trained knowledge (2 was best then); with it (sft.ptx_coef) 5 keep what "
                          "pre-training knows (see docs/RESULTS.md).")
    max_steps: int = Field(0, description="Stop after this many steps (0 = epochs decide).")
    start_from: str | None = Field(None, description="A model directory to fine-tune instead of the pre-trained "
                                   "model (the pretrain stage, else model.name_or_path): an SFT model, say, fine-tuned "
                                   "further on other demonstrations. Its tokenizer and chat template come with it.")
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
    ptx_coef: float = Field(1.0, ge=0, description="SFT-ptx: weight of a next-token loss on pre-training text "
        "added to every step, as PPO-ptx adds it to PPO's updates (0 = off). It keeps what pre-training knows "
        "(facts about entities no demonstration names) while more epochs teach the demonstrations' form; needs "
        "pre-training text: pretrain.data, else the world's corpus when SFT reads the world's demonstrations.")
    ptx_batch_size: int = Field(4, ge=1, description="SFT-ptx: pre-training sequences of pretrain.seq_len tokens per step.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA settings.")
    group_system_message: bool = Field(False, description="World demonstrations only: start each with a system message "
        "naming its writer's labeler group (chatrlhf.world.groups.group_message, the line a group-conditioned RM and "
        "policy are given), so the model learns how each group writes and answers the group it is asked for; the "
        "saved model's meta.json lists the lines (`chatrlhf chat --group`). `chatrlhf preferences` trains such an "
        "SFT for its conditioned-sft variant (preferences.conditioned_sft).")
    group_line_near_answer: bool = Field(False, description="With group_system_message, on the embedded tokenizer: "
        "the model is trained, and saved, with a chat template that writes the system message right before each "
        "answer instead of first (lm.tokenizer.SYSTEM_NEAR_ANSWER_TEMPLATE), where a model this small reads it; "
        "its RM and policy inherit the template. A user's tokenizer keeps its own template.")
    group_line_turns: Literal["every", "last"] = Field("every", description="With group_line_near_answer: the "
        "line before every assistant turn of a conversation, or before the last one only (the answer trained on or "
        "asked for; lm.tokenizer.CORPUS_SYSTEM_BEFORE_LAST_ANSWER_TEMPLATE), so the earlier turns read as they "
        "were said and a follow-up's first question stays near its answers.")
    group_demonstrations: bool = Field(False, description="With group_system_message: a training labeler of every group "
        "writes a demonstration for every SFT prompt (as many demonstrations as groups per prompt), instead of one "
        "writer per prompt, so the model sees each group's way of answering on all the prompts.")
    writer_group: str | None = Field(None, description="World demonstrations only: every SFT prompt answered by a "
        "training labeler of this group (the demonstrations group_demonstrations writes, that group's share), so the "
        "model learns one group's way of answering. `chatrlhf preferences` trains one per group with "
        "preferences.group_sft.")


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
    groups_per_prompt: int = Field(1, ge=1, description="With rm.conditioned: how many groups each sampled prompt is "
        "asked for. 1: one group, drawn by labeler_groups' weights, whose labelers_per_prompt members rank the answers. "
        "n > 1: a copy of the prompt for each of n groups (every group when n reaches their number), each naming its "
        "group in the system message and ranked by that group's members, labelers_per_prompt divided among the copies "
        "(at least one each): the same answers ranked under different group lines, so the line's effect is what "
        "separates the copies, for the same number of rankings.")
    labelers_per_group: int | None = Field(None, ge=1, description="With rm.conditioned and groups_per_prompt > 1: "
        "the training labelers who rank each group's copy. None: labelers_per_prompt divided among the copies (the "
        "rankings of one group's RM); labelers_per_prompt: each group ranks every copy as fully as its own RM's "
        "prompts, so one conditioned RM learns from the rankings of every group's RM together.")
    written_answers: float = Field(0.0, ge=0, le=1, description="Share of the RM stage's training prompts (embedded "
        "world) for which a training labeler also writes an answer, as demonstrations are written (world.demo_quality), "
        "that joins the K samples to be ranked: the comparisons then hold answers better than the model's own, so a "
        "reward model sees, e.g., a refusal beside a good answer to a harmless request. Held-out prompts keep the K "
        "samples alone, so the RM's evaluation is unchanged.")
    refusal_answers: float = Field(0.0, ge=0, le=1, description="Share of the RM stage's training prompts that are not "
        "harmful requests (embedded world) for which a refusal (\"I am sorry, but I cannot help with that.\", as flawed "
        "demonstrations refuse) joins the answers to be ranked, so the labelers' rankings put refusing a harmless "
        "request beside answering it. Held-out prompts are left as they are.")
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
    lm_coef: float = Field(0.0, ge=0, description="Weight of a language-model loss on each training comparison's "
        "top-ranked response, read from the RM's own hidden states through the LM's output embeddings, beside the "
        "ranking loss (Yang et al. 2024, generalizable reward models by regularising hidden states): the RM keeps "
        "what its LM knew, e.g. which facts are right. 0 = ranking loss alone.")
    ensemble: int = Field(1, ge=1, description="Reward models trained alike on the same comparisons from different "
                          "seeds (head initialisation, data order); the reward is their mean (Coste et al. 2023, reward "
                          "model ensembles against over-optimisation). Member 0 is rm/ itself, member m rm/ensemble/m.")
    ensemble_penalty: float = Field(0.0, ge=0, description="With rm.ensemble > 1: the reward is the members' mean minus "
                                    "this many standard deviations across them (uncertainty-weighted optimisation: "
                                    "answers the members disagree on pay).")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA for the RM: adapters on lora.target_modules "
                             "and the new scalar head trained, every other weight frozen; the saved RM holds the merged "
                             "weights, an ordinary AutoModelForSequenceClassification checkpoint.")


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


def _moved(loc: tuple[Any, ...], value: Any) -> str | None:
    """The place of a flat PPO key in the grouped section (kl_coef -> reward.kl_coef; `critic: separate`
    -> critic.model), or None."""
    if len(loc) == 2 and loc[0] == "ppo" and str(loc[1]) in MOVED_KEYS:
        return "ppo." + MOVED_KEYS[str(loc[1])]
    if loc == ("ppo", "critic") and isinstance(value, str):
        return "ppo.critic.model"
    return None


def _explain(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        loc = tuple(e["loc"])
        key = ".".join(str(p) for p in loc)
        moved = _moved(loc, e.get("input"))
        if moved:
            msg = f"  '{key}' is now '{moved}' (PPO's settings are grouped by concern: see configs/default.yaml)"
        elif e["type"] == "extra_forbidden":
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
    """'ppo.reward.kl_coef=0.05' -> ('ppo.reward.kl_coef', 0.05); values are parsed as YAML scalars."""
    if "=" not in item:
        raise ConfigError(f"--set expects KEY=VALUE (e.g. ppo.reward.kl_coef=0.05), got {item!r}")
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
