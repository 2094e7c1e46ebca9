"""Reward functions used by integration tests (loaded by path, like a user's reward file)."""


def digit_fraction(completions, **kwargs):
    """Fraction of digit characters in the completion: gives a random tiny model a learnable signal."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


def wrong_signature(text, label):
    return [0.0]


def always_raises(completions, **kwargs):
    raise RuntimeError("reward backend is down")



from rlkit.plugin_api import Loss  # noqa: E402


class NaNLoss(Loss):
    """A loss plug-in that produces NaN (simulates a numerical blow-up)."""

    def __call__(self, micro):
        return micro.logprobs * float("nan"), {}


class InterruptOnCall(Loss):
    """Raises KeyboardInterrupt on its ``at``-th call (simulates Ctrl-C / SIGTERM during training)."""

    calls = 0

    def __init__(self, at: int = 2):
        self.at = at

    def __call__(self, micro):
        InterruptOnCall.calls += 1
        if InterruptOnCall.calls == self.at:
            raise KeyboardInterrupt
        return micro.logprobs * 0.0, {}
