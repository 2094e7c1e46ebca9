"""Tensor building blocks: group and masked reductions, log-probs/entropy from logits, input packing.

Shapes: ``N`` rows (completions), ``G`` groups, ``n`` micro-batch rows, ``T`` response tokens,
``S`` prompt + response tokens, ``V`` vocabulary. Masks are bool, True = include; where a function also
accepts float weights it says so.

Group reductions use ``torch.unique(return_inverse=True)`` + ``index_add_``: group ids may be arbitrary
(unsorted, non-contiguous) and groups may have different sizes; there is no Python loop over groups.
"""

from __future__ import annotations

import torch

AUTO_CHUNK_ELEMENTS = 1 << 26  # logits elements per chunk when chunk_rows is None (256 MiB in fp32)


# ----------------------------------------------------------------------------------------- groups


def _index_sum(values: torch.Tensor, inverse: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Sum ``values`` [N] into ``num_groups`` slots given by ``inverse`` [N] -> [G]."""
    return values.new_zeros(num_groups).index_add_(0, inverse, values)  # [G]


def group_sum(values: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-group sums of ``values``.

    Args:
        values: [N] float.
        group_ids: [N] long, arbitrary ids (need not be sorted or contiguous).

    Returns:
        sums: [G] float, one slot per distinct id, in ascending id order.
        counts: [G] long, rows per group.
        inverse: [N] long, the slot of each row (``sums[inverse]`` broadcasts back to rows).
    """
    uniq, inverse = torch.unique(group_ids, return_inverse=True)  # [G], [N]
    sums = _index_sum(values, inverse, uniq.numel())  # [G]
    counts = torch.bincount(inverse, minlength=uniq.numel())  # [G]
    return sums, counts, inverse  # [G], [G], [N]


def group_mean_std(values: torch.Tensor, group_ids: torch.Tensor, *,
                   unbiased: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-group mean and std, broadcast back to rows; NaN values are left out.

    Two-pass (mean, then squared deviations) for accuracy. A group with no valid value has mean 0; a group
    with fewer than 2 valid values has std 0. ``unbiased=True`` is Bessel's correction (ddof=1).

    Args:
        values: [N] float, NaN = missing.
        group_ids: [N] long.

    Returns:
        mean: [N] float, std: [N] float, count: [N] long (number of valid values in the row's group).
    """
    uniq, inverse = torch.unique(group_ids, return_inverse=True)  # [G], [N]
    num_groups = uniq.numel()
    valid = ~torch.isnan(values)  # [N] bool
    n_valid = _index_sum(valid.to(values.dtype), inverse, num_groups)  # [G]
    sums = _index_sum(torch.where(valid, values, 0.0), inverse, num_groups)  # [G]
    mean = sums / n_valid.clamp(min=1)  # [G]
    dev = torch.where(valid, values - mean[inverse], 0.0)  # [N]
    sq = _index_sum(dev * dev, inverse, num_groups)  # [G]
    denom = (n_valid - 1) if unbiased else n_valid  # [G]
    var = torch.where(n_valid >= 2, sq / denom.clamp(min=1), 0.0)  # [G]
    return mean[inverse], var.sqrt()[inverse], n_valid.long()[inverse]  # [N], [N], [N]


def sort_within_groups(values: torch.Tensor, group_ids: torch.Tensor, *, descending: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Order rows group by group (ascending id), by value within a group, stably (ties keep index order).

    Args:
        values: [N] float.  group_ids: [N] long, arbitrary ids.  descending: sort values high to low.

    Returns:
        order: [N] long, row indices in that order.
        slot: [N] long, group slot (0..G-1) of ``order[k]``.
        pos: [N] long, rank of ``order[k]`` inside its group (0 = first).
        counts: [G] long, rows per group.
    """
    _, inverse = torch.unique(group_ids, return_inverse=True)  # [G], [N]
    counts = torch.bincount(inverse)  # [G]
    by_value = torch.sort(values, descending=descending, stable=True).indices  # [N]
    order = by_value[torch.argsort(inverse[by_value], stable=True)]  # [N]
    slot = inverse[order]  # [N]
    pos = torch.arange(values.numel(), device=values.device) - (torch.cumsum(counts, 0) - counts)[slot]  # [N]
    return order, slot, pos, counts


def group_min_max(values: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group min and max of the non-NaN ``values`` [N], broadcast back to rows -> ([N], [N]).

    A group with no valid value gets min = +inf and max = -inf.
    """
    uniq, inverse = torch.unique(group_ids, return_inverse=True)  # [G], [N]
    valid = ~torch.isnan(values)  # [N] bool
    inf = torch.full((uniq.numel(),), float("inf"), dtype=values.dtype, device=values.device)  # [G]
    low = inf.scatter_reduce(0, inverse, torch.where(valid, values, float("inf")), "amin")  # [G]
    high = (-inf).scatter_reduce(0, inverse, torch.where(valid, values, float("-inf")), "amax")  # [G]
    return low[inverse], high[inverse]  # [N], [N]


# ----------------------------------------------------------------------------------------- masked


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``x * mask`` over ``dim`` (all dims if None). ``mask`` bool or float weights, same shape as x.

    Masked-out entries never contribute, even if they hold NaN or inf.
    """
    w = mask.to(x.dtype)  # same shape as x
    prod = torch.where(w != 0, x * w, 0.0)  # same shape as x
    return prod.sum() if dim is None else prod.sum(dim)  # [] or x.shape without dim


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Weighted mean ``Σ x·mask / Σ mask`` over ``dim``; 0 (never NaN) where the mask is empty."""
    total = masked_sum(x, mask, dim)  # reduced shape
    w = mask.to(x.dtype)  # same shape as x
    count = w.sum() if dim is None else w.sum(dim)  # reduced shape
    return torch.where(count > 0, total / torch.where(count > 0, count, 1.0), 0.0)  # reduced shape


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the masked entries of ``x`` (scalar). Bessel-corrected if ``unbiased``.

    Returns 0 when the mask is empty, or holds a single entry and ``unbiased`` is set.
    """
    mean = masked_mean(x, mask)  # []
    count = mask.to(x.dtype).sum()  # []
    sq = masked_sum((x - mean) ** 2, mask)  # []
    denom = count - 1 if unbiased else count  # []
    return torch.where(denom > 0, sq / torch.where(denom > 0, denom, 1.0), 0.0)  # []


# --------------------------------------------------------------------------------- logits -> logprobs


def _chunks(rows: int, chunk_rows: int):
    for start in range(0, rows, chunk_rows):
        yield slice(start, min(start + chunk_rows, rows))


class _SelectedLogprob(torch.autograd.Function):
    """log_softmax(logits / temperature)[target] row by row chunk, in fp32, without keeping fp32 copies.

    Only the original logits, the targets and the per-row log-sum-exp are saved; backward recomputes
    softmax per chunk: d logprob / d logits = (onehot(target) - softmax(z)) / temperature.
    """

    @staticmethod
    def forward(ctx, logits, targets, temperature, chunk_rows, with_entropy, entropy_grad=False):  # [R,V], [R]
        dtype = torch.promote_types(logits.dtype, torch.float32)
        rows = logits.shape[0]
        logprobs = torch.empty(rows, dtype=dtype, device=logits.device)  # [R]
        lse = torch.empty(rows, dtype=dtype, device=logits.device)  # [R]
        entropy = torch.empty(rows if with_entropy else 0, dtype=dtype, device=logits.device)  # [R] or [0]
        for sl in _chunks(rows, chunk_rows):
            z = logits[sl].to(dtype) / temperature  # [c,V]
            lse[sl] = torch.logsumexp(z, dim=-1)  # [c]
            logprobs[sl] = z.gather(-1, targets[sl, None]).squeeze(-1) - lse[sl]  # [c]
            if with_entropy:
                p = torch.exp(z - lse[sl, None])  # [c,V]
                entropy[sl] = lse[sl] - (p * z).sum(-1)  # [c]
        ctx.save_for_backward(logits, targets, lse, entropy if entropy_grad else None)
        ctx.temperature, ctx.chunk_rows = temperature, chunk_rows
        if not entropy_grad:
            ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy):  # [R], [R] (used only with entropy_grad)
        logits, targets, lse, entropy = ctx.saved_tensors
        grad = torch.empty_like(logits)  # [R,V], logits dtype
        for sl in _chunks(logits.shape[0], ctx.chunk_rows):
            logp = logits[sl].to(lse.dtype) / ctx.temperature - lse[sl, None]  # [c,V], log softmax
            p = torch.exp(logp)  # [c,V]
            g = (-p).scatter_add_(-1, targets[sl, None], torch.ones_like(p[:, :1]))  # [c,V], onehot - p
            g = g * grad_logprobs[sl, None]  # [c,V]
            if entropy is not None:  # d H / d z = -p (log p + H)
                g -= p * (logp + entropy[sl, None]) * grad_entropy[sl, None]  # [c,V]
            grad[sl] = (g / ctx.temperature).to(grad.dtype)  # [c,V]
        return grad, None, None, None, None, None


def logprobs_from_logits(logits: torch.Tensor, targets: torch.Tensor, *, temperature: float = 1.0,
                         with_entropy: bool = False, chunk_rows: int | None = None,
                         entropy_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probability of ``targets`` under ``softmax(logits / temperature)``, and optionally the entropy.

    The ``n*T`` positions are processed ``chunk_rows`` at a time, each chunk upcast to fp32 (fp64 stays
    fp64), so bf16 logits never get a full [n,T,V] fp32 copy -- not in the forward pass and not saved for
    backward (a custom autograd function saves only the original logits and a [n*T] log-sum-exp, and
    recomputes the softmax chunk by chunk in backward). ``chunk_rows=None`` picks
    ``AUTO_CHUNK_ELEMENTS // V`` positions per chunk.

    Gradients flow to ``logits`` through ``logprobs``; the entropy ``-Σ p log p`` (a metric / selection signal)
    has no gradient unless ``entropy_grad`` (an entropy bonus; ``dH/dz = -p (log p + H)``, same chunked memory).

    Args:
        logits: [n,T,V] any float dtype.
        targets: [n,T] long, valid token ids everywhere (put e.g. the pad id at masked positions).

    Returns:
        logprobs: [n,T] fp32 (fp64 for fp64 logits), with grad.
        entropy: [n,T] same dtype, with grad only with ``entropy_grad``; None unless ``with_entropy``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if entropy_grad and not with_entropy:
        raise ValueError("entropy_grad needs with_entropy=True")
    n, T, V = logits.shape
    if chunk_rows is None:
        chunk_rows = max(1, AUTO_CHUNK_ELEMENTS // V)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1 or None, got {chunk_rows}")
    flat = logits.reshape(n * T, V)  # [n*T,V], a view when logits are contiguous
    logprobs, entropy = _SelectedLogprob.apply(flat, targets.reshape(n * T), float(temperature),  # [n*T], [n*T]|[0]
                                               int(chunk_rows), with_entropy, bool(entropy_grad))
    return logprobs.view(n, T), (entropy.view(n, T) if with_entropy else None)  # [n,T], [n,T] | None


# ------------------------------------------------------------------------------------------ inputs


def build_inputs(prompt_ids: list[list[int]], response_ids: torch.Tensor, response_mask: torch.Tensor,
                 pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pack ``prompt_i + response_i`` per row, right-padded, for one teacher-forced forward pass.

    The response of row i is ``response_ids[i, :L_i]`` with ``L_i`` = 1 + the last True position of
    ``response_mask[i]`` (= ``response_mask[i].sum()`` for the usual right-padded mask; masked tokens
    *inside* a response stay in the context). Right padding keeps every row starting at position 0, so the
    model's default position ids ``arange(S)`` are right and no position-id fix-up is needed; pads sit after
    the last real token, where causal attention never lets a real token see them.

    Args:
        prompt_ids: n lists of prompt token ids, each non-empty (the first response token is predicted
            by the logit at the last prompt position).
        response_ids: [n,T] long.  response_mask: [n,T] bool.  pad_id: filler token id.

    Returns:
        input_ids: [n,S] long, S = max_i(len(prompt_i) + L_i).
        attention_mask: [n,S] long 1/0 (the Hugging Face convention), 1 on real tokens.
        response_index: [n,T] long, position in ``input_ids`` of the logit that predicts response token t
            (= len(prompt_i) - 1 + t), clamped to S - 1 past the end of the row.
    """
    n, T = response_ids.shape
    if len(prompt_ids) != n:
        raise ValueError(f"build_inputs: {len(prompt_ids)} prompts for {n} responses")
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("build_inputs: empty prompt; the first response token needs a logit to predict it")
    device = response_ids.device
    plen = torch.tensor([len(p) for p in prompt_ids], dtype=torch.long, device=device)  # [n]
    t = torch.arange(T, device=device)  # [T]
    rlen = (response_mask.long() * (t + 1)).amax(-1) if T > 0 else torch.zeros_like(plen)  # [n]
    total = plen + rlen  # [n]
    S = int(total.max())
    input_ids = torch.full((n, S), pad_id, dtype=torch.long, device=device)  # [n,S]
    prompts = torch.nn.utils.rnn.pad_sequence([torch.tensor(p, dtype=torch.long) for p in prompt_ids],
                                              batch_first=True, padding_value=pad_id)  # [n,Pmax]
    input_ids[:, :prompts.shape[1]] = prompts.to(device)  # [n,Pmax]
    keep = t[None, :] < rlen[:, None]  # [n,T]
    pos = plen[:, None] + t[None, :]  # [n,T]
    rows = torch.arange(n, device=device)[:, None].expand(n, T)  # [n,T]
    input_ids[rows[keep], pos[keep]] = response_ids[keep].long()  # [n,S]
    attention_mask = (torch.arange(S, device=device)[None, :] < total[:, None]).long()  # [n,S]
    response_index = (pos - 1).clamp(max=S - 1)  # [n,T]
    return input_ids, attention_mask, response_index  # [n,S], [n,S], [n,T]


def gather_response_logits(logits: torch.Tensor, response_index: torch.Tensor) -> torch.Tensor:
    """Pick the logits that predict the response tokens: [n,S,V], [n,T] -> [n,T,V]."""
    index = response_index[:, :, None].expand(-1, -1, logits.shape[-1])  # [n,T,V] (expanded view)
    return logits.gather(1, index)  # [n,T,V]


def right_pad(sequences: list[list[float]] | list[list[int]], pad_value: float | int, *,
              dtype: torch.dtype = torch.long, min_width: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged lists -> (values [n, T], mask [n, T] bool), right-padded with ``pad_value``; T >= ``min_width``."""
    width = max([min_width] + [len(s) for s in sequences])
    values = torch.full((len(sequences), width), pad_value, dtype=dtype)  # [n, T]
    mask = torch.zeros((len(sequences), width), dtype=torch.bool)  # [n, T]
    for i, seq in enumerate(sequences):
        if len(seq):
            values[i, :len(seq)] = torch.tensor(seq, dtype=dtype)
            mask[i, :len(seq)] = True
    return values, mask


def sequence_lengths(prompt_ids: list[list[int]], response_mask: torch.Tensor) -> torch.Tensor:
    """Tokens each row feeds to the model: ``len(prompt_i) + L_i`` [n] long, ``L_i`` as in :func:`build_inputs`."""
    T = response_mask.shape[1]
    plen = torch.tensor([len(p) for p in prompt_ids], dtype=torch.long)  # [n]
    t = torch.arange(T)  # [T]
    rlen = (response_mask.cpu().long() * (t + 1)).amax(-1) if T > 0 else torch.zeros_like(plen)  # [n]
    return plen + rlen  # [n]


def build_packed_inputs(prompt_ids: list[list[int]], response_ids: torch.Tensor,
                        response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Concatenate every ``prompt_i + response_i`` into one padding-free row for a packed forward pass.

    Row i occupies ``[start_i, start_i + S_i)`` with ``S_i = len(prompt_i) + L_i`` (``L_i`` as in
    :func:`build_inputs`) and position ids ``0 .. S_i - 1``. Passed with ``attention_mask=None``, Hugging Face
    models (transformers >= 4.56, ``masking_utils.find_packed_sequence_indices``) read the restarts of the
    position ids as sequence boundaries and attend block-diagonally and causally, so each sequence sees only
    itself: the same numbers as one forward pass per sequence (checked in tests/unit/test_forward.py).

    Returns:
        input_ids: [1,L] long, L = Σ_i S_i (no padding).
        position_ids: [1,L] long, restarting at 0 for every sequence.
        flat_index: [n,T] long, position in the L packed tokens of the hidden state that predicts response
            token t of row i (= start_i + len(prompt_i) - 1 + t), clamped to the row's last token past ``L_i``.
    """
    n, T = response_ids.shape
    if len(prompt_ids) != n:
        raise ValueError(f"build_packed_inputs: {len(prompt_ids)} prompts for {n} responses")
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("build_packed_inputs: empty prompt; the first response token needs a logit to predict it")
    total = sequence_lengths(prompt_ids, response_mask)  # [n]
    plen = torch.tensor([len(p) for p in prompt_ids], dtype=torch.long)  # [n]
    start = torch.cumsum(total, 0) - total  # [n]
    pieces = []
    for i, p in enumerate(prompt_ids):
        pieces += [torch.tensor(p, dtype=torch.long), response_ids[i, :int(total[i] - plen[i])].cpu().long()]
    input_ids = torch.cat(pieces)[None]  # [1,L]
    position_ids = (torch.arange(int(total.sum())) - torch.repeat_interleave(start, total))[None]  # [1,L]
    t = torch.arange(T)  # [T]
    last = (start + total - 1)[:, None]  # [n,1]
    flat_index = torch.minimum(start[:, None] + plen[:, None] - 1 + t[None, :], last)  # [n,T]
    return input_ids, position_ids, flat_index  # [1,L], [1,L], [n,T]


def token_budget_groups(lengths: torch.Tensor, max_tokens: int, *, packed: bool = True) -> list[torch.Tensor]:
    """Split rows into micro-batches of at most ``max_tokens`` model tokens each -> list of row indices.

    ``packed=True`` (one padding-free row per micro-batch, cost = Σ lengths): first-fit decreasing bin packing.
    ``packed=False`` (right-padded rows, cost = rows x longest row): rows sorted by length, longest first, and
    cut greedily while ``rows * longest <= max_tokens`` (verl's dynamic batch size). A row longer than
    ``max_tokens`` goes alone. Each group's indices are ascending; every row is in exactly one group.

    Args:
        lengths: [n] long, tokens per row (:func:`sequence_lengths`).
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    order = torch.sort(lengths, descending=True, stable=True).indices.tolist()  # [n], longest first
    bins: list[list[int]] = []
    if packed:
        room: list[int] = []
        for i in order:
            k = int(lengths[i])
            slot = next((b for b, r in enumerate(room) if r >= k), None)
            if slot is None:
                bins.append([i])
                room.append(max_tokens - k)
            else:
                bins[slot].append(i)
                room[slot] -= k
    else:
        for i in order:
            if bins and (len(bins[-1]) + 1) * int(lengths[bins[-1][0]]) <= max_tokens:
                bins[-1].append(i)
            else:
                bins.append([i])
    return [torch.tensor(sorted(b), dtype=torch.long) for b in bins]
