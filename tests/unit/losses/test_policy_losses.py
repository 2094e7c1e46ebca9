"""CISPO and GSPO: hand-computed 2-sequence examples, what is stopped is stopped, and the reference formulas (TRL's
cispo, verl's compute_policy_loss_gspo) written out independently here and compared on random tensors."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from rlkit.config import load_config
from rlkit.functional.policy_losses import cispo_loss, gspo_loss
from rlkit.plugin_api import MicroBatch
from rlkit.registry import LOSSES

MASK = torch.tensor([[True, True], [True, False]])


def test_cispo_hand_numbers_and_gradients():
    # row 0 (A = 1): ratios 1 and 6 -> weights 1 and 5 (cap 1 + eps_high = 5); row 1 (A = -1): ratio 0.5, no lower
    # bound -> weight 0.5; its second token is masked.
    # loss = -w A logprobs: row 0: -1*1*(-1) = 1, -5*1*(-2) = 10; row 1: -0.5*(-1)*(-0.5) = -0.25
    # d loss / d logprobs = -w A: row 0: -1, -5; row 1: 0.5 (the weight itself carries no gradient)
    lp = torch.tensor([[-1.0, -2.0], [-0.5, -1.5]], requires_grad=True)
    old = torch.tensor([[-1.0, -2.0 - math.log(6.0)], [-0.5 + math.log(2.0), -1.5]])
    adv = torch.tensor([1.0, -1.0])
    loss, m = cispo_loss(lp, old, adv, MASK)
    assert torch.allclose(loss, torch.tensor([[1.0, 10.0], [-0.25, 0.0]]))
    loss.sum().backward()
    assert torch.allclose(lp.grad, torch.tensor([[-1.0, -5.0], [0.5, 0.0]]))
    assert float(m["clip_frac"]) == pytest.approx(1 / 3)          # the ratio of 6, out of 3 trained tokens
    # a lower bound (eps_low = 0.2) lifts row 1's weight to 0.8: -0.8 * (-1) * (-0.5) = -0.4
    loss, m = cispo_loss(lp.detach(), old, adv, MASK, eps_low=0.2)
    assert float(loss[1, 0]) == pytest.approx(-0.4) and float(m["clip_frac"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="eps_high > 0"):
        cispo_loss(lp, old, adv, MASK, eps_high=0.0)


def test_cispo_matches_trl_formula():
    # TRL GRPOTrainer._compute_loss, loss_type="cispo", importance_sampling_level="token" (per-token loss before
    # aggregation): clamped = clamp(exp(lp - old), max=epsilon_high).detach(); loss = -clamped * A * lp, where
    # TRL's epsilon_high is the cap itself (rlkit: 1 + eps_high)
    g = torch.Generator().manual_seed(0)
    lp = (-torch.rand(6, 9, generator=g) * 3).requires_grad_()
    old = lp.detach() + torch.randn(6, 9, generator=g)
    adv = torch.randn(6, generator=g)
    mask = torch.rand(6, 9, generator=g) > 0.2
    ours, _ = cispo_loss(lp, old, adv, mask, eps_high=4.0)
    ref = -torch.clamp(torch.exp(lp - old), max=5.0).detach() * adv[:, None] * lp
    torch.testing.assert_close(ours, torch.where(mask, ref, 0.0))
    g1, = torch.autograd.grad(ours.sum(), lp)
    g2, = torch.autograd.grad(torch.where(mask, ref, 0.0).sum(), lp)
    torch.testing.assert_close(g1, g2)


def test_gspo_hand_numbers_sequence_and_token_levels():
    # row 0 (A = 1): log-ratios 0.1, -0.3 -> mean -0.1, s = e^-0.1 = 0.904837; clip range [0.9997, 1.0004]:
    #   max(-0.904837, -0.9997) = -0.904837 (unclipped branch) on both tokens
    # row 1 (A = 1): one trained token, log-ratio 0.2 -> s = e^0.2 = 1.221403: max(-1.221403, -1.0004) = -1.0004
    #   (clipped branch: no gradient)
    # gradient of the summed loss: row 0: sequence level -2 s * (1/2) = -s per token; token level -s per token too
    lp = torch.tensor([[-1.0, -2.0], [-0.5, -1.5]])
    old = lp - torch.tensor([[0.1, -0.3], [0.2, 0.7]])
    adv = torch.tensor([1.0, 1.0])
    s0 = math.exp(-0.1)
    for level in ("sequence", "token"):
        x = lp.clone().requires_grad_()
        loss, m = gspo_loss(x, old, adv, MASK, level=level)
        assert torch.allclose(loss, torch.tensor([[-s0, -s0], [-1.0004, 0.0]])), level
        loss.sum().backward()
        assert torch.allclose(x.grad, torch.tensor([[-s0, -s0], [0.0, 0.0]]), atol=1e-6), level
        assert float(m["clip_frac"]) == pytest.approx(1 / 3)
        assert float(m["seq_ratio_mean"]) == pytest.approx((2 * s0 + math.exp(0.2)) / 3, rel=1e-5)
    with pytest.raises(ValueError, match="'sequence' or 'token'"):
        gspo_loss(lp, old, adv, MASK, level="tokens")


def test_gspo_token_level_matches_verl_formula():
    # verl compute_policy_loss_gspo (per-token pg_losses before agg_loss), written out independently
    g = torch.Generator().manual_seed(1)
    lp = (-torch.rand(5, 7, generator=g) * 2).requires_grad_()
    old = lp.detach() + 0.01 * torch.randn(5, 7, generator=g)
    adv = torch.randn(5, 7, generator=g)                                   # per-token advantages: levels differ
    mask = torch.rand(5, 7, generator=g) > 0.3
    m = mask.float()
    seq = ((lp - old) * m).sum(-1) / m.sum(-1).clamp(min=1)
    log_s = torch.clamp(lp - lp.detach() + seq.detach()[:, None], max=10.0)
    s = torch.exp(log_s)
    ref = torch.maximum(-adv * s, -adv * torch.clamp(s, 1 - 3e-4, 1 + 4e-4))
    ours, _ = gspo_loss(lp, old, adv, mask, level="token")
    torch.testing.assert_close(ours, torch.where(mask, ref, 0.0))
    g1, = torch.autograd.grad(ours.sum(), lp)
    g2, = torch.autograd.grad(torch.where(mask, ref, 0.0).sum(), lp)
    torch.testing.assert_close(g1, g2)
    seq_level, _ = gspo_loss(lp, old, adv, mask, level="sequence")
    torch.testing.assert_close(seq_level, ours)                            # same values, other gradient path
    g3, = torch.autograd.grad(seq_level.sum(), lp)
    assert not torch.allclose(g1, g3)


def test_plugins_use_the_batch_and_refuse_bad_options():
    from tests.unit.advantages.test_advantage_plugins import batch
    b = batch([1.0, 0.0], [0, 0], T=2)
    b.advantages = torch.tensor([1.0, -1.0])
    lp = torch.tensor([[-1.0, -2.0], [-0.5, -1.5]], requires_grad=True)
    for name in ("cispo", "gspo"):
        loss, metrics = LOSSES.build(name, {})(MicroBatch(batch=b, logprobs=lp, entropy=None))
        # no old_logprobs (one on-policy update): ratio 1, so both are -A * (logprobs resp. 1) on trained tokens
        want = -b.advantages[:, None] * (lp.detach() if name == "cispo" else 1.0) * b.response_mask
        assert torch.allclose(loss, want), name
        assert float(metrics["clip_frac"]) == 0.0
    assert LOSSES.build("cispo", {"tis_cap": 2.0}).requires == {"old_logprobs"}
    with pytest.raises(ValueError, match="eps_high"):
        LOSSES.build("cispo", {"eps_high": -1})
    with pytest.raises(ValueError, match="0 < eps_low < 1"):
        LOSSES.build("gspo", {"eps_low": 0.0})


@pytest.mark.parametrize("loss, aggregation, warns", [("gspo", "token_mean", True), ("gspo", "seq_mean_token_mean", False),
                                                      ("cispo", "seq_mean_token_mean", True), ("cispo", "token_mean", False)])
def test_validate_warns_when_the_aggregation_is_not_the_papers(loss, aggregation, warns, caplog):
    from rlkit.session import check_recipe
    base = {"model": {"name_or_path": "m"}, "data": {"train": "t.jsonl"},
            "reward": {"functions": [{"name": "exact_match"}]}, "losses": [loss], "aggregation": aggregation}
    with caplog.at_level(logging.WARNING, logger="rlkit"):
        check_recipe(load_config(None, [], base=base), check_files=False)
    hits = [r.message for r in caplog.records if f"loss '{loss}' is defined with aggregation" in r.message]
    assert bool(hits) == warns, hits


class _OneProcess:
    num_processes, process_index = 1, 0


def _kl_cov_batch(old, adv, mask):
    from tests.unit.advantages.test_advantage_plugins import batch
    b = batch([0.0] * old.shape[0], [0] * old.shape[0], T=old.shape[1])
    b.response_mask, b.old_logprobs = mask, old
    b.advantages = torch.where(mask, adv, 0.0)
    return b


def test_kl_cov_hand_numbers():
    # trained tokens: A = 1, 1, -1 and log pi_old = -1, -3, -2: means 1/3 and -2; cov = 2/3, -2/3, 0.
    # ratio 0.5 -> k = int(3 * 0.5) = 1: only the first token (cov 2/3) gets |log r|.
    # current = old + (0.1, 0.2, 0.3): loss = -A e^d (+ 1.0 * 0.1 on the first); d loss / d logprobs = -A e^d + 1
    mask = torch.tensor([[True, True], [True, False]])
    old = torch.tensor([[-1.0, -3.0], [-2.0, 0.0]])
    adv = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    b = _kl_cov_batch(old, adv, mask)
    loss_fn = LOSSES.build("kl_cov", {"ratio": 0.5})
    loss_fn.prepare(b, _OneProcess())
    assert loss_fn.mean_adv == pytest.approx(1 / 3) and loss_fn.mean_logprob == pytest.approx(-2.0)
    assert loss_fn.threshold == pytest.approx(2 / 3)
    lp = (old + torch.tensor([[0.1, 0.2], [0.3, 0.0]])).requires_grad_()
    loss, m = loss_fn(MicroBatch(batch=b, logprobs=lp, entropy=None))
    e = math.exp
    assert torch.allclose(loss, torch.tensor([[-e(0.1) + 0.1, -e(0.2)], [e(0.3), 0.0]]))
    loss.sum().backward()
    assert torch.allclose(lp.grad, torch.tensor([[-e(0.1) + 1.0, -e(0.2)], [e(0.3), 0.0]]))
    assert float(m["kl_cov_frac"]) == pytest.approx(1 / 3)
    assert loss_fn.requires == {"old_logprobs"}


def test_kl_cov_selects_verls_top_covariance_tokens():
    # verl compute_policy_loss_kl_cov's selection, written out independently: at the first optimizer step
    # (current log-probs == old) its covariance over the valid tokens and top-k = max(1, int(n * ratio))
    g = torch.Generator().manual_seed(4)
    mask = torch.rand(8, 30, generator=g) > 0.25
    old = -torch.rand(8, 30, generator=g) * 4
    adv = torch.randn(8, generator=g)[:, None].expand(8, 30)
    b = _kl_cov_batch(old, adv, mask)
    loss_fn = LOSSES.build("kl_cov", {"ratio": 0.05})
    loss_fn.prepare(b, _OneProcess())
    lp = old.clone().requires_grad_()
    a, l = adv[mask], old[mask]
    cov = (a - a.mean()) * (l - l.mean())
    k = max(1, int(len(cov) * 0.05))
    want = torch.zeros(len(cov), dtype=torch.bool)
    want[torch.topk(cov, k).indices] = True
    cov_ours = (adv - loss_fn.mean_adv) * (old - loss_fn.mean_logprob)
    got = (cov_ours >= loss_fn.threshold)[mask]
    assert torch.equal(got, want) and int(got.sum()) == k
    loss, _ = loss_fn(MicroBatch(batch=b, logprobs=lp, entropy=None))
    torch.testing.assert_close(loss, torch.where(mask, -adv, 0.0))        # ratio 1, |log r| = 0


def test_clip_cov_detaches_a_seeded_share_of_the_covariance_band():
    # 4 completions x 6 tokens; advantages +-2 and spread log-probs put several tokens in the band (1, 5)
    g = torch.Generator().manual_seed(5)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[3, 4:] = False
    old = -torch.rand(4, 6, generator=g) * 6
    adv = torch.tensor([2.0, -2.0, 2.0, -2.0])[:, None].expand(4, 6)
    b = _kl_cov_batch(old, adv, mask)
    b.response_ids = torch.randint(5, 300, (4, 6), generator=g)
    loss_fn = LOSSES.build("clip_cov", {"ratio": 0.1})
    loss_fn.prepare(b, _OneProcess())
    cov = (adv - loss_fn.mean_adv) * (old - loss_fn.mean_logprob)
    band = (cov > 1.0) & (cov < 5.0) & mask
    k = max(1, int(22 * 0.1))                                              # 22 trained tokens -> 2 detached
    assert int(band.sum()) > k
    lp = old.clone().requires_grad_()
    loss, m = loss_fn(MicroBatch(batch=b, logprobs=lp, entropy=None))
    detached = (loss == 0) & mask
    assert int(detached.sum()) == k and bool((detached <= band).all())
    assert float(m["clip_cov_frac"]) == pytest.approx(k / 22)
    loss.sum().backward()
    assert torch.all(lp.grad[detached] == 0) and torch.all(lp.grad[mask & ~detached] != 0)
    # the draw depends on the completions, not on how the rows are split: the second half alone agrees
    part = b.select(torch.tensor([2, 3]))
    part_loss, _ = loss_fn(MicroBatch(batch=part, logprobs=old[2:].clone().requires_grad_(), entropy=None))
    assert torch.equal(part_loss == 0, (loss == 0)[2:])
    # and it is checkpointed: a fresh plug-in with the state draws the same tokens at its next step
    again = LOSSES.build("clip_cov", {"ratio": 0.1})
    again.load_state_dict({"calls": 0})
    again.prepare(b, _OneProcess())
    assert again.u_max == loss_fn.u_max
