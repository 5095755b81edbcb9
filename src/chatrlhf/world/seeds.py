"""Which world seeds are for what.

A world seed changes the people, places, objects, their facts and rumours, the prompts and which
content each split asks about. Every default and ablation is chosen on development worlds; the
test worlds are for figures that are published and are never used for a choice (not to pick a
default, a stopping point or a hyperparameter), each run from scratch.

    chatrlhf run --set world.seed=9001 --set run.out_dir=runs/test-9001
"""

from __future__ import annotations

from typing import Literal

DEVELOPMENT_SEEDS: tuple[int, ...] = (1234, 1235, 1236, 1237)  # 1234 is the default (WorldConfig.seed)
TEST_SEEDS: tuple[int, ...] = (9001, 9002, 9003)


def seed_role(seed: int) -> Literal["development", "test", "other"]:
    """'development' (choices may be made on it), 'test' (report only) or 'other'."""
    return "development" if seed in DEVELOPMENT_SEEDS else "test" if seed in TEST_SEEDS else "other"
