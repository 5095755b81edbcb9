"""The over-optimisation guard: held-out prompts answered by the policy, compared against SFT
answers by the training labelers; the best checkpoint by that win rate is the one exported.
"""

from __future__ import annotations

import random


# --- the over-optimisation guard -------------------------------------------------------------
class LabelerGuard:
    """Win rate of the policy against fixed SFT answers on held-out prompts, judged by training
    labelers (not the held-out ones, not the gold score): what a real team could afford."""

    def __init__(self, prompts: list[dict], baseline_texts: list[str], labelers: list, seed: int,
                 per_prompt: int = 1):
        self.prompts, self.baseline, self.labelers, self.seed = prompts, baseline_texts, labelers, seed
        self.per_prompt = max(1, min(per_prompt, len(labelers)))

    def win_rate(self, texts: list[str], iteration: int) -> float:
        rng = random.Random(self.seed * 7919 + iteration)
        wins = []
        for i, (p, t, b) in enumerate(zip(self.prompts, texts, self.baseline)):
            for j in range(self.per_prompt):  # distinct labelers per pair: their noise averages out
                lab = self.labelers[(i * self.per_prompt + j) % len(self.labelers)]
                if rng.random() < 0.5:  # random order: a labeler's position bias favours neither side
                    wins.append(float(lab.compare(p, t, b, rng)))
                else:
                    wins.append(1.0 - float(lab.compare(p, b, t, rng)))
        return sum(wins) / max(1, len(wins))
