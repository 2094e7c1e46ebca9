"""Reward functions used by integration tests (loaded by path, like a user's reward file)."""


def digit_fraction(completions, **kwargs):
    """Fraction of digit characters in the completion: gives a random tiny model a learnable signal."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


def wrong_signature(text, label):
    return [0.0]
