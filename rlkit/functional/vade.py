r"""VADE: per-prompt Beta posteriors of the success rate, two-scale decay, information-gain scores.

Paper: Hu, Qiu, Bai, Yang, Yuan, Jing, He, Zhang, "VADE: Variance-Aware Dynamic sampling via online sample-level
Difficulty Estimation", arXiv 2511.18902 (CVPR 2026 Findings). Spec: ALGORITHMS.md §8.

From the paper (abstract level; its full text and code could not be read): a Beta distribution per training sample
over its correctness probability, a Thompson sampler maximising an information-gain objective of the sampled
probability, and a two-scale prior decay that keeps the estimates valid while the policy moves.

Reconstructed by rlkit (modelled on MoPPS, verl ``recipe/mopps/mopps.py::PosteriorSampler``): every formula and
default below. Prior (a0, b0) = (1, 1).

    global (slow) decay, for a prompt unseen for Δ steps:   a <- a0 + lam_global^Δ (a - a0)
                                                            b <- b0 + lam_global^Δ (b - b0)
        shrinks toward the prior, keeps the side of the mean, widens the posterior; composes: Δ1 then Δ2 = Δ1 + Δ2.
    local (fast) decay with an observation (MoPPS form):    a <- lam_local a + (1 - lam_local) a0 + s
                                                            b <- lam_local b + (1 - lam_local) b0 + f
        s = successes (fractional for rewards in [0, 1]), f = failures; constant evidence converges to the fixed
        point a* = a0 + s / (1 - lam_local).
    information-gain scores of a (Thompson-drawn) success probability p:
        variance        p (1 - p)                   Bernoulli reward variance (rlkit default)
        nondegenerate   1 - p^G - (1 - p)^G         probability a group of G is not all-equal
        knapsack        p (1 - p)^2                 Knapsack-RL InfoGain (arXiv 2509.25849); the only formula a
                                                    secondary source attributes to VADE -- unconfirmed
    variance and nondegenerate are symmetric and decrease in |p - 1/2|, so they rank prompts identically;
    knapsack peaks at p = 1/3 and favours harder prompts.

Defaults (rlkit proposals, unverified): lam_local = 0.9, lam_global = 0.99, prior (1, 1), score "variance".

rlkit choices: arithmetic in float64; a group of one completion updates like any other (the MoPPS reference's
``... if rollout.n > 1 else 8`` binds to the whole expression and overwrites alpha and beta with 8 when n = 1).
"""

from __future__ import annotations

import math

import torch

VADE_SCORES = ("variance", "nondegenerate", "knapsack")


def _check_prior(prior) -> tuple[float, float]:
    if len(prior) != 2 or not all(isinstance(x, (int, float)) and math.isfinite(x) and x > 0 for x in prior):
        raise ValueError(f"vade: prior={prior!r} must be two finite numbers > 0: (alpha0, beta0), e.g. (1.0, 1.0)")
    return float(prior[0]), float(prior[1])


def _check_lam(lam: float, name: str, low_open: bool) -> None:
    ok = isinstance(lam, (int, float)) and math.isfinite(lam) and lam <= 1 and (lam > 0 if low_open else lam >= 0)
    if not ok:
        raise ValueError(f"vade: {name}={lam!r} must lie in {'(0, 1]' if low_open else '[0, 1]'} (1 = no decay)")


def _posterior(alpha, beta) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.as_tensor(alpha).detach().to(torch.float64)  # [P]
    b = torch.as_tensor(beta).detach().to(torch.float64)  # [P]
    if a.shape != b.shape:
        raise ValueError(f"vade: alpha {tuple(a.shape)} and beta {tuple(b.shape)} must have the same shape")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all() and (a > 0).all() and (b > 0).all()):
        raise ValueError("vade: alpha and beta must be finite and > 0 (Beta posterior parameters)")
    return a, b


def vade_decay(alpha: torch.Tensor, beta: torch.Tensor, steps_unseen, *, lam_global: float = 0.99,
               prior: tuple[float, float] = (1.0, 1.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """Lazy global decay toward the prior for ``steps_unseen`` (int or [P] ints >= 0) steps -> (alpha, beta) [P]."""
    _check_lam(lam_global, "lam_global", low_open=True)
    a0, b0 = _check_prior(prior)
    a, b = _posterior(alpha, beta)  # [P], [P]
    delta = torch.as_tensor(steps_unseen)
    if delta.is_floating_point() or (delta < 0).any():
        raise ValueError(f"vade: steps_unseen must be integers >= 0, got {steps_unseen!r}")
    keep = torch.as_tensor(float(lam_global), dtype=torch.float64) ** delta.to(torch.float64)  # [P] or []
    return a0 + keep * (a - a0), b0 + keep * (b - b0)  # [P], [P]


def vade_update(alpha: torch.Tensor, beta: torch.Tensor, successes, failures, *, lam_local: float = 0.9,
                prior: tuple[float, float] = (1.0, 1.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """Local decay plus new evidence: successes / failures [P] >= 0 (may be fractional) -> (alpha, beta) [P]."""
    _check_lam(lam_local, "lam_local", low_open=False)
    a0, b0 = _check_prior(prior)
    a, b = _posterior(alpha, beta)  # [P], [P]
    s = torch.as_tensor(successes).detach().to(torch.float64)  # [P]
    f = torch.as_tensor(failures).detach().to(torch.float64)  # [P]
    if not (torch.isfinite(s).all() and torch.isfinite(f).all() and (s >= 0).all() and (f >= 0).all()):
        raise ValueError("vade: successes and failures must be finite and >= 0 (map rewards to [0, 1] first)")
    return lam_local * a + (1 - lam_local) * a0 + s, lam_local * b + (1 - lam_local) * b0 + f  # [P], [P]


def vade_scores(p: torch.Tensor, *, kind: str = "variance", group_size: int | None = None) -> torch.Tensor:
    """Information-gain score of success probabilities p [P] in [0, 1] (module docstring) -> [P] float64."""
    if kind not in VADE_SCORES:
        raise ValueError(f"vade: kind={kind!r} is not valid; choose one of {', '.join(map(repr, VADE_SCORES))}")
    x = torch.as_tensor(p).detach().to(torch.float64)  # [P]
    if not (torch.isfinite(x).all() and (x >= 0).all() and (x <= 1).all()):
        raise ValueError("vade: p must lie in [0, 1] (success probabilities, e.g. Thompson draws)")
    if kind == "variance":
        return x * (1 - x)  # [P]
    if kind == "knapsack":
        return x * (1 - x) ** 2  # [P]
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"vade: kind='nondegenerate' needs group_size >= 1 (completions per prompt), got "
                         f"{group_size!r}")
    return 1 - x ** group_size - (1 - x) ** group_size  # [P]


def vade_posterior_stats(alpha: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean a/(a+b) and variance ab/((a+b)^2 (a+b+1)) of Beta(a, b) -> [P], [P]."""
    a, b = _posterior(alpha, beta)
    total = a + b
    return a / total, a * b / (total ** 2 * (total + 1))
