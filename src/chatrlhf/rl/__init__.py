"""The RLHF algorithms: experience collection, losses, PPO, the guard, rejection sampling."""
