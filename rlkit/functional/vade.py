r"""VADE: per-prompt Beta posteriors of the success rate, two-scale decay, information-gain scores.

Paper: Hu, Qiu, Bai, Yang, Yuan, Jing, He, Zhang, "VADE: Variance-Aware Dynamic sampling via online sample-level
Difficulty Estimation", arXiv 2511.18902 (CVPR 2026 Findings). Spec: ALGORITHMS.md §8.

From the paper (abstract level only; its full text and code could not be read): a Beta distribution per training
sample over its correctness probability, a Thompson sampler that picks the samples maximising an information-gain
objective of the sampled probability, and a two-scale prior decay that keeps the estimates valid while the policy
moves.

Reconstructed by rlkit, modelled on MoPPS (verl ``recipe/mopps/mopps.py::PosteriorSampler``): every formula and
every default below. State per prompt: Beta(alpha, beta), prior (a0, b0) = (1, 1).

    global (slow) decay, prompt unseen for Δ steps       alpha <- a0 + lam_global^Δ (alpha - a0)
        (``vade_decay``)                                  beta  <- b0 + lam_global^Δ (beta  - b0)
        Δ = 0 is the identity, lam_global = 1 no decay; shrinks toward the prior, keeps the side of the mean
        (alpha - beta keeps its sign for a0 = b0), widens the posterior; composes: Δ1 then Δ2 steps = Δ1 + Δ2.
    local (fast) decay per observation, MoPPS form       alpha <- lam_local alpha + (1 - lam_local) a0 + s
        (``vade_update``)                                 beta  <- lam_local beta  + (1 - lam_local) b0 + f
        s = successes (rewards in [0, 1] count as fractional successes), f = failures = G - s; constant evidence
        converges to the fixed point a0 + s / (1 - lam_local) (lam_local < 1); lam_local = 0 keeps only the prior
        plus the new evidence, lam_local = 1 never forgets.
    information-gain score of a (Thompson-drawn) success probability p (``vade_scores``):
        variance        p (1 - p)                   Bernoulli reward variance (rlkit default)
        nondegenerate   1 - p^G - (1 - p)^G         probability a group of G completions is not all-equal
        knapsack        p (1 - p)^2                 Knapsack-RL InfoGain (arXiv 2509.25849); the only formula a
                                                    secondary source attributes to VADE -- unconfirmed
        variance and nondegenerate are symmetric and decreasing in |p - 1/2|, so they rank prompts identically;
        knapsack peaks at p = 1/3, is not symmetric and favours harder prompts
        (draws [0.62, 0.91, 0.18, 0.55]: top-2 [3, 0] under variance, [2, 3] under knapsack).
    posterior statistics for logging (``vade_posterior_stats``):
        mean = alpha / (alpha + beta)      var = alpha beta / ((alpha + beta)^2 (alpha + beta + 1))

Defaults (rlkit proposals, unverified): a0 = b0 = 1, lam_local = 0.9, lam_global = 0.99, score "variance". The
candidate-pool multiplier (c = 2 candidates per trained prompt) and the Thompson draw itself belong to the sampler
plug-in (``rlkit.samplers.vade``), not to this module.

rlkit choices:
    * A group of one completion (s + f = 1) updates like any other. The MoPPS reference's update line ends in
      ``... if rollout.n > 1 else 8``, which binds to the whole expression and overwrites alpha and beta with 8
      when n = 1; that is not reproduced.
    * The global decay is lazy: it is applied for the Δ steps a prompt went unseen, when it is next looked at, so
      prompts never drawn cost nothing. Δ is an integer >= 0 (a tensor [P] or one int for every prompt). Where
      lam_global^Δ = 1 (Δ = 0 or lam_global = 1) alpha and beta come back bit for bit, not via a0 + 1 (alpha - a0).
    * Successes and failures may be fractional (any finite value >= 0); mapping rewards into [0, 1] is the
      caller's job.
    * ``group_size`` is only used by "nondegenerate"; for the other scores it is validated when given and ignored.
    * Arithmetic in float64 (inputs are detached and converted); the outputs are float64.
"""

from __future__ import annotations

import math

import torch

from rlkit.functional.checks import check_choice

VADE_SCORES = ("variance", "nondegenerate", "knapsack")


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_prior(prior) -> tuple[float, float]:
    ok = isinstance(prior, (tuple, list)) and len(prior) == 2 and all(_is_number(x) and x > 0 for x in prior)
    if not ok:
        raise ValueError(f"vade: prior={prior!r} must be two finite numbers > 0, (alpha0, beta0); default (1.0, 1.0) "
                         "is the uniform prior")
    return float(prior[0]), float(prior[1])


def _check_lam(lam: float, name: str, low_open: bool) -> None:
    ok = _is_number(lam) and lam <= 1 and (lam > 0 if low_open else lam >= 0)
    if not ok:
        raise ValueError(f"vade: {name}={lam!r} must lie in {'(0, 1]' if low_open else '[0, 1]'} "
                         f"(the fraction of the evidence kept per step; 1 = no decay)")


def _first_bad(x: torch.Tensor, good: torch.Tensor) -> float:
    return x[~good].flatten()[0].item()


def _posterior(alpha, beta) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.as_tensor(alpha).detach().to(torch.float64)  # [P]
    b = torch.as_tensor(beta).detach().to(torch.float64)  # [P]
    if a.shape != b.shape:
        raise ValueError(f"vade: alpha {tuple(a.shape)} and beta {tuple(b.shape)} must have the same shape "
                         "(one Beta posterior per prompt)")
    for name, x in (("alpha", a), ("beta", b)):
        good = torch.isfinite(x) & (x > 0)  # [P] bool
        if not good.all():
            raise ValueError(f"vade: {name} must be finite and > 0 (Beta posterior parameters), got "
                             f"{_first_bad(x, good)}; start from the prior (1, 1)")
    return a, b  # [P], [P]


def _evidence(value, name: str, shape: torch.Size) -> torch.Tensor:
    x = torch.as_tensor(value).detach().to(torch.float64)  # [P]
    if x.shape != shape:
        raise ValueError(f"vade: {name} {tuple(x.shape)} must have the shape of alpha {tuple(shape)} (one count "
                         "per prompt)")
    good = torch.isfinite(x) & (x >= 0)  # [P] bool
    if not good.all():
        raise ValueError(f"vade: {name} must be finite and >= 0, got {_first_bad(x, good)}; map rewards to [0, 1] "
                         "first (successes = sum of the group's rewards, failures = group size - successes)")
    return x  # [P]


def vade_decay(alpha: torch.Tensor, beta: torch.Tensor, steps_unseen: torch.Tensor | int, *,
               lam_global: float = 0.99,
               prior: tuple[float, float] = (1.0, 1.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """Lazy global (slow-scale) decay toward the prior, alpha <- a0 + lam_global^Δ (alpha - a0) (module docstring).

    Args:
        alpha, beta: [P] Beta posterior parameters > 0.  steps_unseen: Δ, [P] integers >= 0 or one int for all.
        lam_global: in (0, 1] (0.99; 1 = no decay).  prior: (a0, b0), both > 0 ((1, 1)).

    Returns:
        (alpha, beta): [P], [P] float64; unchanged where Δ = 0.
    """
    _check_lam(lam_global, "lam_global", low_open=True)
    a0, b0 = _check_prior(prior)
    a, b = _posterior(alpha, beta)  # [P], [P]
    delta = torch.as_tensor(steps_unseen).detach()  # [P] or []
    if delta.is_floating_point() or delta.is_complex() or delta.dtype == torch.bool:
        got = f"dtype {delta.dtype}" if isinstance(steps_unseen, torch.Tensor) else repr(steps_unseen)
        raise ValueError(f"vade: steps_unseen must be integers >= 0 (steps since the prompt was last seen), got "
                         f"{got}; pass a long tensor or an int")
    if delta.dim() != 0 and delta.shape != a.shape:
        raise ValueError(f"vade: steps_unseen {tuple(delta.shape)} must be one int or have the shape of alpha "
                         f"{tuple(a.shape)}")
    if (delta < 0).any():
        raise ValueError(f"vade: steps_unseen must be integers >= 0, got {delta[delta < 0].flatten()[0].item()}; "
                         "pass current step - step last seen")
    keep = torch.tensor(float(lam_global), dtype=torch.float64) ** delta.to(torch.float64)  # [P] or []
    untouched = keep == 1  # [P] or [] bool, Δ = 0 or lam_global = 1: returned bit for bit
    new_a = torch.where(untouched, a, a0 + keep * (a - a0))  # [P]
    new_b = torch.where(untouched, b, b0 + keep * (b - b0))  # [P]
    return new_a, new_b  # [P], [P]


def vade_update(alpha: torch.Tensor, beta: torch.Tensor, successes: torch.Tensor, failures: torch.Tensor, *,
                lam_local: float = 0.9,
                prior: tuple[float, float] = (1.0, 1.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """Local (fast-scale) decay plus new evidence, alpha <- lam a + (1 - lam) a0 + s (module docstring).

    Args:
        alpha, beta: [P] Beta posterior parameters > 0.  successes, failures: [P] finite >= 0, may be fractional.
        lam_local: in [0, 1] (0.9; 1 = never forget).  prior: (a0, b0), both > 0 ((1, 1)).

    Returns:
        (alpha, beta): [P], [P] float64.
    """
    _check_lam(lam_local, "lam_local", low_open=False)
    a0, b0 = _check_prior(prior)
    a, b = _posterior(alpha, beta)  # [P], [P]
    s = _evidence(successes, "successes", a.shape)  # [P]
    f = _evidence(failures, "failures", a.shape)  # [P]
    new_a = lam_local * a + (1 - lam_local) * a0 + s  # [P]
    new_b = lam_local * b + (1 - lam_local) * b0 + f  # [P]
    return new_a, new_b  # [P], [P]


def vade_scores(p: torch.Tensor, *, kind: str = "variance", group_size: int | None = None) -> torch.Tensor:
    """Information-gain score of success probabilities (module docstring): p(1-p), 1-p^G-(1-p)^G or p(1-p)^2.

    Args:
        p: [P] success probabilities in [0, 1] (Thompson draws).  kind: "variance" | "nondegenerate" | "knapsack".
        group_size: G >= 1, completions per prompt; required by "nondegenerate".

    Returns:
        [P] float64 scores >= 0, exactly 0 at p = 0 and p = 1.
    """
    check_choice("vade: kind", kind, VADE_SCORES)
    if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int)
                                   or group_size < 1):
        raise ValueError(f"vade: group_size={group_size!r} must be an integer >= 1 (completions per prompt)")
    if kind == "nondegenerate" and group_size is None:
        raise ValueError("vade: kind='nondegenerate' needs group_size (completions per prompt, e.g. rollout.n); "
                         "got None")
    x = torch.as_tensor(p).detach().to(torch.float64)  # [P]
    good = torch.isfinite(x) & (x >= 0) & (x <= 1)  # [P] bool
    if not good.all():
        raise ValueError(f"vade: p must lie in [0, 1], got {_first_bad(x, good)}; pass success probabilities "
                         "(e.g. Thompson draws from the Beta posteriors)")
    if kind == "variance":
        return x * (1 - x)  # [P]
    if kind == "knapsack":
        return x * (1 - x) ** 2  # [P]
    return 1 - x ** group_size - (1 - x) ** group_size  # [P]


def vade_posterior_stats(alpha: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean alpha/(alpha+beta) and variance alpha beta/((alpha+beta)^2 (alpha+beta+1)) of Beta(alpha, beta).

    Args:
        alpha, beta: [P] Beta posterior parameters > 0.

    Returns:
        (mean, var): [P], [P] float64, for logging.
    """
    a, b = _posterior(alpha, beta)  # [P], [P]
    total = a + b  # [P]
    return a / total, a * b / (total ** 2 * (total + 1))  # [P], [P]
