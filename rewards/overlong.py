"""``overlong_penalty``: DAPO's soft overlong punishment (Yu et al., arXiv 2503.14476, §3.4), a length-based
reward term added to the task reward.

    L_exp = max_len - buffer
    R(y)  = 0                                        |y| <= L_exp
          = -penalty * (|y| - L_exp) / buffer        L_exp < |y| <= max_len     (linear ramp down to -penalty)

|y| is the completion's length in generated tokens (``completion_ids``). Set ``max_len`` to
``rollout.max_new_tokens``; a completion cut there gets the full ``-penalty``. verl's DAPO recipe:
``overlong_buffer.len`` = buffer, ``penalty_factor`` = penalty. It reports no success signal, so it shapes the
reward without touching accuracy or the success-based filter of ``sampler: dynamic``::

    reward:
      functions:
        - {name: exact_match}
        - {name: overlong_penalty, kwargs: {max_len: 8, buffer: 4, penalty: 1.0}}

The alternative to shaping is ``train.mask_truncated: true``: completions cut at ``max_new_tokens`` leave the
loss altogether (TRL's ``mask_truncated_completions``).
"""

from __future__ import annotations

from typing import Any

from rlkit.registry import REWARDS


@REWARDS.register("overlong_penalty")
def overlong_penalty(completions: list[str], completion_ids: list[list[int]], max_len: int, buffer: int,
                     penalty: float = 1.0, **kwargs: Any) -> list[float]:
    """0 up to max_len - buffer tokens, then a linear ramp down to -penalty at max_len."""
    if not 0 < buffer <= max_len:
        raise ValueError(f"overlong_penalty: buffer={buffer} must be in (0, max_len={max_len}]")
    if penalty < 0:
        raise ValueError(f"overlong_penalty: penalty={penalty} must be >= 0")
    expected = max_len - buffer
    return [min(-(len(ids) - expected) / buffer * penalty, 0.0) for ids in completion_ids]
