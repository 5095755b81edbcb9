"""Loading the run's embedded world, and naming its labelers."""

from __future__ import annotations

from chatrlhf.config import Config
from chatrlhf.lm.modeling import stage_complete


# --- training loop --------------------------------------------------------------------------
def labeler_id(lab) -> str:
    for attr in ("id", "labeler_id", "name"):
        if isinstance(getattr(lab, attr, None), str):
            return getattr(lab, attr)
    return str(lab)


def load_world(cfg: Config):
    """The run's world when it has been generated, else None (external data needs none)."""
    wdir = cfg.stage_dir("world")
    if not stage_complete(wdir):
        return None
    from chatrlhf.world import World

    return World.load(wdir)


def held_out_labelers(world) -> set[str]:
    return {labeler_id(lab) for lab in world.labelers(held_out=True)} if world is not None else set()
