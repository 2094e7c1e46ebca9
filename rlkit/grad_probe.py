"""Per-sequence gradient norms of the policy on a parameter subset (GVM's G_i, ALGORITHMS.md §6).

For each sequence j (prompt x_j, response y_j):

    g_j = ‖ ∇_θsub ( −Σ_t log π_θ(y_jt | x_j, y_j<t) ) ‖₂

with θsub the parameters whose name contains ``pattern`` (GVM's ``act_params``, default ``embed_tokens``), the sum
(not the mean) of token log-probs, and log-probs at the sampling temperature like every other scoring pass.

One forward and one ``torch.autograd.grad`` per sequence: per-sample gradients cannot be read off a batched
backward. ``autograd.grad`` leaves ``.grad`` untouched and does not run DDP's reducer hooks, so the probe neither
disturbs the optimizer nor needs the other processes. Parameters that are frozen (e.g. the base weights under LoRA)
are unfrozen for the probe and frozen again.
"""

from __future__ import annotations

import contextlib

import torch

from rlkit.forward import token_logprobs
from rlkit.ops import right_pad


def probe_parameters(model, pattern: str) -> list[tuple[str, torch.nn.Parameter]]:
    """The (name, parameter) pairs whose name contains ``pattern``; a clear error when none does."""
    chosen = [(n, p) for n, p in model.named_parameters() if pattern in n]
    if not chosen:
        names = [n for n, _ in model.named_parameters()]
        raise ValueError(f"gradient probe: no parameter name contains {pattern!r}; the model's parameters include "
                         f"{names[:4]} ... ({len(names)} in all). Set the sampler's `params` to a substring of one "
                         "of them (GVM's default is 'embed_tokens')")
    return chosen


@contextlib.contextmanager
def _grad_enabled_on(params: list[torch.nn.Parameter]):
    frozen = [p for p in params if not p.requires_grad]
    for p in frozen:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(False)


def sequence_grad_norms(model, prompt_ids: list[list[int]], responses: list[list[int]], *, pattern: str,
                        pad_id: int, temperature: float = 1.0, autocast=contextlib.nullcontext,
                        masks: list[list[bool]] | None = None) -> torch.Tensor:
    """g_j for each sequence (module docstring) -> [k] float32 on CPU; empty responses give 0.

    ``masks``: per response token, True where the policy sampled it (multi-turn episodes: tokens an environment
    inserted are context, outside the sum); None = every token."""
    if len(prompt_ids) != len(responses):
        raise ValueError(f"gradient probe: {len(prompt_ids)} prompts for {len(responses)} responses")
    params = [p for _, p in probe_parameters(model, pattern)]
    out = torch.zeros(len(responses), dtype=torch.float32)  # [k]
    mode = model.training
    model.eval()
    try:
        with torch.enable_grad(), _grad_enabled_on(params):
            for j, (prompt, response) in enumerate(zip(prompt_ids, responses)):
                if not response:
                    continue
                ids, mask = right_pad([response], pad_id)  # [1, L], [1, L]
                if masks is not None:
                    mask = mask & torch.tensor(masks[j], dtype=torch.bool)[None]  # [1, L] model tokens only
                with autocast():
                    logprobs, _ = token_logprobs(model, [prompt], ids, mask, pad_id=pad_id,
                                                 temperature=temperature)  # [1, L]
                grads = torch.autograd.grad(-logprobs.float().sum(), params, allow_unused=True)
                sq = sum(g.float().pow(2).sum() for g in grads if g is not None)
                out[j] = float(sq) ** 0.5 if isinstance(sq, torch.Tensor) else 0.0
    finally:
        model.train(mode)
    return out  # [k]
