"""The embedded world: a fictional fact base, task prompts, a misaligned pre-training corpus,
demonstrations, simulated labelers and the gold rubric that judges responses offline.

    from chatrlhf.world import World
    w = World.load(cfg.stage_dir("world"))
"""

from chatrlhf.world.core import World
from chatrlhf.world.gold import Gold
from chatrlhf.world.labelers import SimulatedLabeler

__all__ = ["World", "Gold", "SimulatedLabeler"]
