"""rlkit: RL post-training for LLMs on verifiable rewards."""

__version__ = "0.1.0"
