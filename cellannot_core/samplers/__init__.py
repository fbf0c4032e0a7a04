"""SGLD samplers (pure step functions) and the replay buffer."""
from .sgld import NoiseInit, ReplayBuffer, sgld_sample, sgld_step

__all__ = ["NoiseInit", "ReplayBuffer", "sgld_sample", "sgld_step"]
