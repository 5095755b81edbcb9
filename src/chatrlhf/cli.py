"""The `chatrlhf` command: one sub-command per stage, each taking --config and --set.

Stage modules are imported inside each command so that `chatrlhf --help` stays fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from chatrlhf.cli_options import ConfigOpt, ResumeOpt, SetOpt, console, fail_with, load_cfg
from chatrlhf.config import dump_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing reaches a hub at run time unless the user asks
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_DEBUG = {"on": os.environ.get("CHATRLHF_DEBUG", "") not in ("", "0")}


def _is_user_mistake(e: BaseException) -> bool:
    """Errors that name what to fix (a path, a key, a limit) and need no traceback: files, data,
    configuration, chat templates, an unstable run. Anything else is a bug and keeps its traceback."""
    from jinja2.exceptions import TemplateError

    return isinstance(e, (OSError, ValueError, TemplateError)) or type(e).__name__ == "PPOInstabilityError"


class _FriendlyGroup(TyperGroup):
    """Every command: an ordinary mistake is one paragraph and exit 1; --debug shows the traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Exception as e:
            if _DEBUG["on"] or not _is_user_mistake(e) or isinstance(e, (typer.Exit, typer.Abort)):
                raise
            console.print(f"[red]error:[/red] {e}\n[dim](run with --debug for the traceback)[/dim]")
            raise typer.Exit(1) from None


app = typer.Typer(help="chatrlhf: pre-train, SFT, reward model, PPO, evaluate and chat, the InstructGPT way.",
                  no_args_is_help=True, pretty_exceptions_enable=False, cls=_FriendlyGroup)


@app.callback()
def _options(debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback of an error "
                                                 "(ordinary mistakes are otherwise one paragraph).")] = False):
    """chatrlhf: pre-train, SFT, reward model, PPO, evaluate and chat, the InstructGPT way."""
    _DEBUG["on"] = debug or os.environ.get("CHATRLHF_DEBUG", "") not in ("", "0")
score_app = typer.Typer(help="Score generations that already exist (csv/jsonl/parquet).", no_args_is_help=True)
app.add_typer(score_app, name="score")


@app.command()
def config(config: ConfigOpt = None, set: SetOpt = None, out: Annotated[Optional[Path], typer.Option(help="Write the resolved config here.")] = None):
    """Validate a config and print it resolved (defaults + file + overrides)."""
    cfg = load_cfg(config, set)
    if out:
        dump_config(cfg, out)
    import yaml

    typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


@app.command()
def world(config: ConfigOpt = None, set: SetOpt = None):
    """Generate the embedded world: facts, corpus, prompts, demonstrations, simulated labelers."""
    from chatrlhf.world.generate import run_world

    run_world(load_cfg(config, set))


@app.command()
def tokenizer(config: ConfigOpt = None, set: SetOpt = None):
    """Train the byte-level BPE tokenizer on the pre-training corpus."""
    from chatrlhf.stages.pretrain import run_tokenizer

    run_tokenizer(load_cfg(config, set))


@app.command()
def pretrain(config: ConfigOpt = None, set: SetOpt = None, resume_anyway: ResumeOpt = False):
    """Generative pre-training of the causal LM on the corpus (resumes from the last checkpoint)."""
    from chatrlhf.stages.pretrain import run_pretrain

    run_pretrain(load_cfg(config, set, resume_anyway))


@app.command()
def sft(config: ConfigOpt = None, set: SetOpt = None, resume_anyway: ResumeOpt = False,
        eval_only: Annotated[bool, typer.Option("--eval-only", help="Only score SFT vs base on held-out prompts.")] = False):
    """Supervised fine-tuning on demonstrations."""
    from chatrlhf.stages.sft import run_sft

    run_sft(load_cfg(config, set, resume_anyway), eval_only=eval_only)


@app.command()
def sample(config: ConfigOpt = None, set: SetOpt = None,
           policy: Annotated[Optional[Path], typer.Option(help="Policy directory (default: newest policy of the run).")] = None,
           out: Annotated[Optional[Path], typer.Option(help="Comparison task file to write.")] = None,
           conversations: Annotated[Optional[Path], typer.Option(help="Saved chat transcripts to sample alternatives for.")] = None,
           label: Annotated[bool, typer.Option(help="Have the simulated labelers rank the samples.")] = True):
    """Draw K responses per prompt from a policy, as a comparison task file."""
    from chatrlhf.stages.sampling import run_sample

    run_sample(load_cfg(config, set), policy=policy, out=out, conversations=conversations, label=label)


@app.command()
def rm(config: ConfigOpt = None, set: SetOpt = None, resume_anyway: ResumeOpt = False):
    """Train the reward model on K-way rankings."""
    from chatrlhf.stages.reward import run_rm

    run_rm(load_cfg(config, set, resume_anyway))


@app.command()
def ppo(config: ConfigOpt = None, set: SetOpt = None, resume_anyway: ResumeOpt = False):
    """PPO against the reward model with a KL penalty to the SFT model (PPO-ptx with ppo.ptx.coef > 0)."""
    from chatrlhf.stages.ppo import run_ppo

    run_ppo(load_cfg(config, set, resume_anyway))


@app.command()
def dpo(config: ConfigOpt = None, set: SetOpt = None):
    """DPO from the SFT model on the RM's comparisons (reference = SFT; dpo.rounds > 1: online rounds)."""
    from chatrlhf.stages.dpo import run_dpo

    run_dpo(load_cfg(config, set))


@app.command()
def compare(config: ConfigOpt = None, set: SetOpt = None,
            methods: Annotated[Optional[str], typer.Option(help="Comma-separated: sft,ppo,dpo,grpo,rloo,bon4,bon16,fewshot "
                                                          "(default: compare.methods).")] = None):
    """Train PPO, GRPO, RLOO and DPO from the same SFT model and comparisons, add best-of-n and few-shot
    baselines, and judge all against SFT with the held-out labelers (compare/table.md, table.json)."""
    from chatrlhf.stages.compare import run_compare

    try:
        run_compare(load_cfg(config, set), [m.strip() for m in methods.split(",") if m.strip()] if methods else None)
    except (FileNotFoundError, ValueError) as e:
        fail_with(e)


@app.command()
def iterate(config: ConfigOpt = None, set: SetOpt = None, resume_anyway: ResumeOpt = False,
            rounds: Annotated[Optional[int], typer.Option(help="RLHF rounds (overrides iterate.rounds).")] = None):
    """Iterated RLHF: fresh comparisons from the newest policy, RM update, PPO again."""
    from chatrlhf.stages.iterate import run_iterate

    overrides = list(set or []) + ([f"iterate.rounds={rounds}"] if rounds is not None else [])
    run_iterate(load_cfg(config, overrides, resume_anyway))


@app.command()
def preferences(config: ConfigOpt = None, set: SetOpt = None):
    """Whose preferences: one RM and policy per labeler group, pooled and group-conditioned, each judged
    by every group's held-out members (needs the run's SFT and RM stages; writes preferences/table.md)."""
    from chatrlhf.stages.preferences import run_preferences

    run_preferences(load_cfg(config, set))


@app.command("eval")
def eval_(config: ConfigOpt = None, set: SetOpt = None,
          model: Annotated[Optional[list[str]], typer.Option("--model", "-m", help="NAME=DIR or a stage name (base, sft, ppo); repeatable.")] = None):
    """Evaluate helpfulness, truthfulness and harmlessness of one or more models."""
    from chatrlhf.evaluate.run import run_eval

    try:
        run_eval(load_cfg(config, set), models=model or [])
    except (FileNotFoundError, ValueError) as e:
        fail_with(e)


@app.command()
def report(config: ConfigOpt = None, set: SetOpt = None):
    """Write the alignment report (HTML, Markdown and metrics.json)."""
    from chatrlhf.evaluate.report import run_report

    run_report(load_cfg(config, set))


@app.command()
def run(config: ConfigOpt = None, set: SetOpt = None, resume_anyway: ResumeOpt = False,
        force: Annotated[bool, typer.Option(help="Rerun stages even when their outputs are complete.")] = False):
    """The whole mission: world -> tokenizer -> pretrain -> SFT -> RM -> PPO -> more rounds -> eval -> report."""
    from chatrlhf.pipeline import run_all

    run_all(load_cfg(config, set, resume_anyway), force=force)


@app.command()
def chat(config: ConfigOpt = None, set: SetOpt = None,
         model: Annotated[Optional[Path], typer.Option(help="Model directory (default: newest policy of the run).")] = None,
         system: Annotated[Optional[str], typer.Option(help="System prompt.")] = None,
         group: Annotated[Optional[str], typer.Option(help="Labeler group a group-conditioned model answers for "
                                                      "(its system message; e.g. brief, thorough, cautious).")] = None,
         compile: Annotated[bool, typer.Option("--compile", help="Decode through the compiled one-row step "
                                               "(sets chat.compile; compiles once per cache size, kept on disk).")] = False):
    """Chat in the terminal; the conversation is kept across turns (/reset, /save FILE, /load FILE)."""
    from chatrlhf.serve.chat import run_chat

    run_chat(load_cfg(config, list(set or []) + (["chat.compile=true"] if compile else [])), model=model, system=system,
             group=group)


@app.command()
def serve(config: ConfigOpt = None, set: SetOpt = None,
          model: Annotated[Optional[Path], typer.Option(help="Model directory (default: newest policy of the run).")] = None,
          save_conversations: Annotated[Optional[Path], typer.Option(help="Directory: finished conversations are appended to DIR/conversations.jsonl (off by default).")] = None,
          port: Annotated[Optional[int], typer.Option(help="Port (overrides serve.port).")] = None,
          compile: Annotated[bool, typer.Option("--compile", help="Decode a lone conversation through the compiled "
                                                "one-row step (sets serve.compile).")] = False):
    """OpenAI-compatible chat server (/v1/chat/completions, /v1/models, /health) with a web chat page at /."""
    from chatrlhf.serve.server import run_server

    overrides = list(set or []) + ([f"serve.port={port}"] if port is not None else []) + (["serve.compile=true"] if compile else [])
    run_server(load_cfg(config, overrides), model=model, save_conversations=save_conversations)


@score_app.command("toxicity")
def score_toxicity(file: Path, column: Annotated[str, typer.Option(help="Column with the text to score.")] = "text",
                   group_by: Annotated[Optional[str], typer.Option(help="Summarise per value of this column.")] = None,
                   out: Annotated[Optional[Path], typer.Option(help="Output file (default: FILE with .scored before the suffix).")] = None):
    """Toxicity of each row's text, written beside the row, plus a summary."""
    from chatrlhf.evaluate.scoring import score_toxicity_file

    try:
        score_toxicity_file(file, column=column, group_by=group_by, out=out)
    except (FileNotFoundError, ValueError) as e:
        fail_with(e)


@score_app.command("oasst-agreement")
def score_oasst_agreement(file: Path, out: Annotated[Optional[Path], typer.Option(help="Also write the table as JSON here.")] = None):
    """OpenAssistant trees (jsonl[.gz]): per language, how often the better-ranked of two sibling
    replies also has more net thumbs (+1 minus -1), with a 95% bootstrap interval over trees."""
    import json

    from chatrlhf.evaluate.oasst_agreement import language_agreement, read_trees

    try:
        table = language_agreement(read_trees(file))
    except (FileNotFoundError, KeyError, ValueError) as e:
        fail_with(e)
    for lang, row in table.items():
        typer.echo(f"{lang}: agreement {row['agreement']:.3f} [{row['low']:.3f}, {row['high']:.3f}] on "
                   f"{row['pairs'] - row['thumb_ties']} pairs ({row['thumb_ties']} thumb ties left out) in {row['trees']} trees")
    if out:
        out.write_text(json.dumps(table, indent=2))


@score_app.command("truthfulness")
def score_truthfulness(file: Path,
                       question_column: Annotated[str, typer.Option(help="Column with the question.")] = "question",
                       answer_column: Annotated[str, typer.Option(help="Column with the answer to judge.")] = "answer",
                       group_by: Annotated[Optional[str], typer.Option(help="Summarise per value of this column.")] = None,
                       out: Annotated[Optional[Path], typer.Option(help="Output file.")] = None,
                       truthfulqa_dir: Annotated[Path, typer.Option(help="Directory with TruthfulQA.csv and mc_task.json.")] = Path("../shared/data/truthfulqa")):
    """Truthfulness and informativeness of each answer (TruthfulQA references, offline judge)."""
    from chatrlhf.evaluate.scoring import score_truthfulness_file

    try:
        score_truthfulness_file(file, question_column=question_column, answer_column=answer_column, group_by=group_by,
                                out=out, truthfulqa_dir=truthfulqa_dir)
    except (FileNotFoundError, ValueError) as e:
        fail_with(e)


def _add_label_app() -> None:
    try:
        from chatrlhf.labeling.cli import label_app
    except ImportError:  # the labeling app is optional at import time
        return
    app.add_typer(label_app, name="label")


_add_label_app()


def _stopped(e: BaseException) -> bool:
    """A trainer stopping itself (NaN, divergence): an ordinary outcome, reported without a traceback.
    Checked through sys.modules so `chatrlhf --help` does not import torch."""
    training = sys.modules.get("chatrlhf.lm.training")
    return training is not None and isinstance(e, training.TrainingStopped)


def _leave_process_group() -> None:
    """Under `accelerate launch`, leave the process group before the interpreter exits: a DeepSpeed
    rank whose communication threads are still up at exit aborts ("terminate called without an
    active exception")."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main() -> None:  # pragma: no cover
    try:
        app()
    except Exception as e:
        if _DEBUG["on"] or (not isinstance(e, (FileNotFoundError, ValueError)) and not _stopped(e)):
            raise
        console.print(f"[red]error:[/red] {e}")
        sys.exit(1)
    finally:
        _leave_process_group()


if __name__ == "__main__":  # pragma: no cover
    main()
