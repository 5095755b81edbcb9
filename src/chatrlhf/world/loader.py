"""The one way the pipeline reaches the embedded world: load the run's world/ stage (or know it is
absent, for a user's own data), read its demonstrations, and name its labelers."""

from __future__ import annotations

from chatrlhf.config import Config
from chatrlhf.lm.conversations import Conversation, nonempty, row_to_conversations
from chatrlhf.lm.data import DataError
from chatrlhf.lm.modeling import stage_complete


def load_world(cfg: Config):
    """The run's world when it has been generated (or saved by `World.save`), else None (a user's
    own data needs none)."""
    wdir = cfg.stage_dir("world")
    if not (stage_complete(wdir) or (wdir / "facts.jsonl").is_file()):
        return None
    from chatrlhf.world import World

    return World.load(wdir)


def require_world(cfg: Config, needed_for: str):
    """The run's world, or a clear error saying what needed it and how to make it."""
    world = load_world(cfg)
    if world is None:
        raise FileNotFoundError(f"{needed_for} needs the embedded world at {cfg.stage_dir('world')}, which is not "
                                "there; run `chatrlhf world` first")
    return world


def pretraining_text(cfg: Config, world, on_world: bool) -> tuple[list[str], list[str]] | None:
    """(train, val) documents of what the model was pre-trained on, for PPO-ptx, SFT-ptx and the
    perplexity check: pretrain.data when set, else the world's corpus when the stage trains on the
    world (`on_world`: no user data of its own); None when there is neither."""
    if cfg.pretrain.data:  # the corpus the user pre-trained on, or would have
        from chatrlhf.lm.data import load_text_corpus

        corpus = load_text_corpus(cfg.pretrain.data, cfg.stage_dir("world"), cfg.pretrain.text_column,
                                  cfg.pretrain.val_fraction)
        return corpus.train, corpus.val
    if world is not None and on_world:
        return world.corpus("train"), world.corpus("val")
    return None


def world_demonstrations(cfg: Config) -> list[Conversation]:
    """The embedded world's demonstrations as conversations (SFT's data when sft.data is unset)."""
    from chatrlhf.world import World

    world_dir = cfg.stage_dir("world")
    if not world_dir.is_dir():
        raise DataError(f"sft.data is not set and there is no embedded world at {world_dir}: set sft.data to your "
                        "demonstrations (jsonl/csv/parquet or a datasets name; sft.columns maps your column names), "
                        "or run `chatrlhf world` to generate the embedded world")
    print(f"sft: using the embedded world's demonstrations ({world_dir}); set sft.data to use your own")
    world = World.load(world_dir)
    demos = world.demonstrations()
    if cfg.sft.group_demonstrations or cfg.sft.writer_group:  # every group's writers answer every prompt
        from chatrlhf.world.labelers import write_group_demonstrations

        demos = write_group_demonstrations(world.prompts("sft"), world.labelers(), world.info.get("seed", cfg.world.seed),
                                           cfg.world.demo_quality, world.facts)
        if (g := cfg.sft.writer_group) is not None:  # ... and one group's share is kept
            if g not in world.labeler_groups():
                raise DataError(f"sft.writer_group={g!r} is not a training group of the world in {world_dir} "
                                f"(its groups: {', '.join(world.labeler_groups())})")
            demos = [d for d in demos if world.labeler(d["labeler"]).group == g]
    if cfg.sft.group_system_message:
        demos = with_writer_group(world, demos)
    return nonempty([c for i, d in enumerate(demos)
                     for c in row_to_conversations(d, "messages", {}, f"{world_dir}/demonstrations.jsonl:{i + 1}")],
                    f"world demonstrations in {world_dir}")


def with_writer_group(world, demos: list[dict]) -> list[dict]:
    """Each demonstration with its writer's group named in a system message first (any other system
    message dropped), as a group-conditioned model is asked: the writer's group is how it was written."""
    from chatrlhf.world.groups import for_group

    return [for_group(d, world.labeler(d["labeler"]).group) for d in demos]


def group_messages(world) -> dict[str, str]:
    """group -> the system message naming it, for every training group (a conditioned model's meta.json)."""
    from chatrlhf.world.groups import group_message

    return {g: group_message(g)["content"] for g in world.labeler_groups()}


def labeler_id(lab) -> str:
    for attr in ("id", "labeler_id", "name"):
        if isinstance(getattr(lab, attr, None), str):
            return getattr(lab, attr)
    return str(lab)


def held_out_labelers(world) -> set[str]:
    return {labeler_id(lab) for lab in world.labelers(held_out=True)} if world is not None else set()
