"""KL coefficient controllers for the per-token KL penalty to the SFT model.

Adaptive controller from Ziegler et al. 2019, "Fine-Tuning Language Models from Human
Preferences", section 2.2: beta is nudged proportionally towards a target KL, with the error
clipped to +-20% so one odd batch cannot swing it.
"""

from __future__ import annotations


class FixedKLController:
    """A constant beta (InstructGPT used a fixed coefficient)."""

    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


class AdaptiveKLController:
    """beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n_steps / horizon)."""

    def __init__(self, kl_coef: float, target: float, horizon: int):
        self.value = kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


def make_kl_controller(kl_coef: float, adaptive: bool, target: float, horizon: int):
    return AdaptiveKLController(kl_coef, target, horizon) if adaptive else FixedKLController(kl_coef)
