"""rlkit.scoring.Scorer: the scoring pass fills exactly the fields in ``needs`` (and runs no forward for the
others), each from the model the field belongs to."""

import pytest
import torch

from rlkit import scoring
from rlkit.critic import NoCritic
from rlkit.forward import ForwardSpec
from tests.unit.advantages.test_advantage_plugins import batch


class _Critic:
    def __init__(self):
        self.calls = []

    def score(self, model, b, spec):
        self.calls.append(model)
        return torch.full((len(b), 3), 0.5)


@pytest.fixture
def forwards(monkeypatch):
    """score_batch replaced by a fake that records which model it ran and returns -1 (policy) or -2 (reference)."""
    calls = []

    def fake(model, b, spec, *, with_entropy):
        calls.append((model, with_entropy))
        lp = torch.full((len(b), 3), -1.0 if model == "policy" else -2.0)          # [N, T]
        return lp, (torch.full_like(lp, 0.7) if with_entropy else None)
    monkeypatch.setattr(scoring, "score_batch", fake)
    return calls


def _scorer(needs, critic=None) -> scoring.Scorer:
    return scoring.Scorer(frozenset(needs), ForwardSpec(pad_id=0), model="prepared", policy="policy",
                          ref_model="reference", critic=critic or NoCritic())


def test_nothing_needed_runs_no_forward(forwards):
    b = batch([1, 0], [0, 0])
    assert _scorer(set())(b) == {}
    assert forwards == [] and b.old_logprobs is None and b.ref_logprobs is None and b.values is None


def test_old_logprobs_and_the_engine_gap(forwards):
    b = batch([1, 0], [0, 0])
    b.rollout_logprobs = torch.tensor([[-1.0, -0.5, -3.0], [-1.0, -1.0, -1.0]])
    b.response_mask[1, 2] = False                          # this token's gap (0) must not count
    metrics = _scorer({"old_logprobs"})(b)
    assert forwards == [("policy", False)]
    assert torch.equal(b.old_logprobs, torch.full((2, 3), -1.0))
    # |gaps| over the 5 response tokens: 0, 0.5, 2, 0, 0 -> mean 0.5
    assert metrics == {"rollout/logprob_diff": pytest.approx(0.5)}


def test_reference_and_values_come_from_their_own_models(forwards):
    b, critic = batch([1, 0], [0, 0]), _Critic()
    metrics = _scorer({"entropy", "ref_logprobs", "values"}, critic)(b)
    assert forwards == [("policy", True), ("reference", False)]
    assert torch.equal(b.entropy, torch.full((2, 3), 0.7)) and torch.equal(b.ref_logprobs, torch.full((2, 3), -2.0))
    assert critic.calls == ["prepared"] and torch.equal(b.values, torch.full((2, 3), 0.5))
    assert set(metrics) == {"rollout/logprob_diff"}
