"""Per-token log-probs (and entropy) straight from the last hidden states, never building [N, T, V] logits.

``logprob[r] = z_r[target_r] - logsumexp(z_r)``, ``z_r = (hidden_r @ weight.T + bias) / temperature`` (fp32),
``entropy[r] = logsumexp(z_r) - Σ_v softmax(z_r)_v z_rv``.

The LM head is applied ``chunk_rows`` rows at a time: each chunk's [c, V] logits live only inside one loop
iteration, in buffers reused across chunks, and backward recomputes them (one extra [c, H] x [H, V] matmul per chunk,
i.e. 4 instead of 3 LM-head matmuls in forward + backward). When only ``hidden`` needs a gradient (a frozen head:
LoRA without ``lm_head``, frozen tied embeddings), ``d logprob_r / d hidden_r = (W[target_r] - p_r W) / temperature``
is independent of the upstream gradient, so forward computes it per chunk and saves that [R, H] instead: 2 LM-head
matmuls in all, nothing recomputed. Only hidden, weight, bias, targets and a [R]
log-sum-exp are saved for backward, so peak extra memory is O(c V) instead of the several [R, V] fp32 tensors
(logits, log-softmax, gradient) of ``log_softmax(hidden @ weight.T)`` + autograd.

Shapes: ``R`` rows (flattened response positions, ``n*T``), ``c`` rows per chunk, ``H`` hidden size,
``V`` vocabulary; ``n``, ``T``, ``S`` as in :mod:`rlkit.ops`.
"""

from __future__ import annotations

import torch

from rlkit import ops
from rlkit.ops import AUTO_CHUNK_ELEMENTS

# Logits elements per chunk when chunk_rows is None: 2**26 (256 MiB per fp32 buffer; c = 447 rows for V = 150k).
# Peak memory is proportional to c*V, but small chunks cost time: benchmarks/memory.py at R=4096, V=150k, H=896
# on 2 CPU cores measured c=111 (2**24 elements): memory 0.094x, time 1.15x of full logits; c=512: 0.123x, 0.82x;
# c=2048: 0.249x, 0.90x.
FUSED_CHUNK_ELEMENTS = AUTO_CHUNK_ELEMENTS

# Config attributes of Hugging Face causal LMs that transform hidden states or logits between the backbone
# and the softmax (soft-capping, logit scales, width multipliers, vocab trimming); the fused path cannot
# reproduce them, so model_logprobs_chunked refuses such models instead of silently computing other numbers.
UNSUPPORTED_LOGIT_TRANSFORMS = (
    "final_logit_softcapping",      # gemma2/3/3n/4, vaultgemma, nanochat: cap * tanh(logits / cap)
    "logits_soft_cap",              # recurrent_gemma
    "output_logit_soft_cap",        # xlstm
    "logits_scaling",               # granite*: logits / s; minicpm3: hidden / s
    "logit_scale",                  # cohere*: logits * s
    "lm_head_multiplier",           # falcon_h1: logits * s
    "logits_mup_width_multiplier",  # inkling: hidden / s
    "unpadded_vocab_size",          # inkling: logits[..., :V']
)


def _lm_head_chunk(hidden_c: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   temperature: float, low: torch.Tensor | None, z: torch.Tensor) -> torch.Tensor:
    """Write ``(hidden_c @ weight.T + bias) / temperature`` [c,H] -> [c,V] into ``z`` (fp32 or fp64) and return it.

    The matmul runs in the input dtype (like ``nn.Linear``), into ``low`` [c,V] when that is narrower than
    ``z``, then is upcast; ``addmm(bias, x, W.T)`` is what ``F.linear`` does, so the logits match bit for bit.
    """
    out = z if low is None else low  # [c,V]
    if bias is None:
        torch.mm(hidden_c, weight.t(), out=out)  # [c,V]
    else:
        torch.addmm(bias, hidden_c, weight.t(), out=out)  # [c,V]
    if low is not None:
        z.copy_(low)  # [c,V] upcast
    if temperature != 1.0:
        z.div_(temperature)  # [c,V]
    return z  # [c,V]


class _LinearLogprob(torch.autograd.Function):
    """log_softmax((hidden @ weight.T + bias) / temperature)[target] chunk by chunk, logits recomputed in backward.

    With ``s_r = grad_logprob_r / temperature`` and ``G_c = (onehot(target) - softmax(z_c)) * s`` [c,V] (fp32):
    ``grad_hidden[c] = G_c @ weight``, ``grad_weight = Σ_c G_c.T @ hidden_c``, ``grad_bias = Σ_c G_c.sum(0)``;
    grad_weight and grad_bias are accumulated in fp32 (fp64 for fp64 inputs) and cast back at the end.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk_rows, with_entropy,
                entropy_grad=False):  # [R,H],[V,H],[V]|None,[R]
        dtype = torch.promote_types(hidden.dtype, torch.float32)
        (rows, _), vocab, device = hidden.shape, weight.shape[0], hidden.device
        c = min(chunk_rows, rows)
        logprobs = torch.empty(rows, dtype=dtype, device=device)  # [R]
        lse = torch.empty(rows, dtype=dtype, device=device)  # [R]
        entropy = torch.empty(rows if with_entropy else 0, dtype=dtype, device=device)  # [R] or [0]
        z_buf = torch.empty(c, vocab, dtype=dtype, device=device)  # [c,V]
        low_buf = torch.empty(c, vocab, dtype=hidden.dtype, device=device) if hidden.dtype != dtype else None  # [c,V]
        exp_buf = torch.empty(c, vocab, dtype=dtype, device=device) if with_entropy else None  # [c,V]
        # frozen head (no grad for weight/bias, e.g. LoRA without lm_head): d logprob_r / d hidden_r
        # = (weight[target_r] - softmax(z_r) @ weight) / temperature does not depend on the upstream gradient,
        # so it is computed here, from the chunk's softmax at hand, and backward only scales it (no recompute)
        precompute = ctx.needs_input_grad[0] and not any(ctx.needs_input_grad[1:3])
        dhidden = torch.empty(hidden.shape, dtype=hidden.dtype, device=device) if precompute else None  # [R,H]
        dent = torch.empty(hidden.shape, dtype=hidden.dtype, device=device) if precompute and entropy_grad else None
        for sl in ops._chunks(rows, chunk_rows):
            k = sl.stop - sl.start
            low = None if low_buf is None else low_buf[:k]  # [c,V]
            z = _lm_head_chunk(hidden[sl], weight, bias, temperature, low, z_buf[:k])  # [c,V]
            picked = z.gather(-1, targets[sl, None]).squeeze(-1)  # [c]
            top = z.amax(-1)  # [c]
            z.sub_(top[:, None])  # [c,V], y = z - max
            if with_entropy:
                e = torch.exp(z, out=exp_buf[:k])  # [c,V]
                total = e.sum(-1)  # [c]
                if precompute:  # keep e intact for d logprob / d hidden: row dot products via bmm, no [c,V] temp
                    entropy[sl] = total.log() - torch.bmm(e[:, None, :], z[:, :, None]).view(-1) / total  # [c]
                    if entropy_grad:  # d H / d hidden = -(p * (log p + H)) @ weight / temperature, p = e / total
                        q = z.sub_((total.log() - entropy[sl])[:, None]).mul_(e).div_(total[:, None])  # [c,V]
                        q_mm = q if low is None else low.copy_(q)  # [c,V], matmul dtype = input dtype
                        torch.mm(q_mm, weight, out=dent[sl]).mul_(-1.0 / temperature)  # [c,H]
                else:
                    entropy[sl] = total.log() - e.mul_(z).sum(-1) / total  # [c], log Σe^y - Σ e^y y / Σe^y
            else:
                e = z.exp_()  # [c,V]
                total = e.sum(-1)  # [c]
            lse[sl] = top + total.log()  # [c]
            logprobs[sl] = picked - lse[sl]  # [c]
            if precompute:
                d = e.div_(total[:, None])  # [c,V], softmax
                d.scatter_add_(-1, targets[sl, None], torch.full_like(total[:, None], -1.0))  # [c,V], p - onehot
                d_mm = d if low is None else low.copy_(d)  # [c,V], matmul dtype = input dtype
                torch.mm(d_mm, weight, out=dhidden[sl]).mul_(-1.0 / temperature)  # [c,H], d logprob / d hidden
        if precompute:
            ctx.save_for_backward(dhidden, dent)
        else:
            ctx.save_for_backward(hidden, weight, bias, targets, lse, entropy if entropy_grad else None)
        ctx.temperature, ctx.chunk_rows, ctx.precomputed = temperature, chunk_rows, precompute
        ctx.entropy_grad = entropy_grad
        if not entropy_grad:
            ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy):  # [R], [R] (used only with entropy_grad)
        if ctx.precomputed:
            dhidden, dent = ctx.saved_tensors  # [R,H], [R,H] | None
            grad_hidden = dhidden * grad_logprobs[:, None].to(dhidden.dtype)  # [R,H]
            if dent is not None:
                grad_hidden += dent * grad_entropy[:, None].to(dent.dtype)  # [R,H]
            return grad_hidden, None, None, None, None, None, None, None
        hidden, weight, bias, targets, lse, entropy = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        dtype, (rows, _), vocab, device = lse.dtype, hidden.shape, weight.shape[0], hidden.device
        c = min(ctx.chunk_rows, rows)
        grad_hidden = torch.empty(hidden.shape, dtype=hidden.dtype, device=device) if need_hidden else None  # [R,H]
        grad_weight = torch.zeros(weight.shape, dtype=dtype, device=device) if need_weight else None  # [V,H] fp32
        grad_bias = torch.zeros(vocab, dtype=dtype, device=device) if need_bias else None  # [V] fp32
        z_buf = torch.empty(c, vocab, dtype=dtype, device=device)  # [c,V]
        low_buf = torch.empty(c, vocab, dtype=hidden.dtype, device=device) if hidden.dtype != dtype else None  # [c,V]
        q_buf = torch.empty(c, vocab, dtype=dtype, device=device) if entropy is not None else None  # [c,V]
        for sl in ops._chunks(rows, ctx.chunk_rows):
            k = sl.stop - sl.start
            low = None if low_buf is None else low_buf[:k]  # [c,V]
            h = hidden[sl]  # [c,H]
            z = _lm_head_chunk(h, weight, bias, ctx.temperature, low, z_buf[:k])  # [c,V]
            neg_scale = grad_logprobs[sl].to(dtype) / -ctx.temperature  # [c], -s
            logp = z.sub_(lse[sl, None])  # [c,V], log softmax
            q = None
            if entropy is not None:  # d H / d z = -p (log p + H): kept as -p (log p + H) * g_H / T in q
                q = torch.add(logp, entropy[sl, None], out=q_buf[:k])  # [c,V], log p + H
            d = logp.exp_()  # [c,V], softmax
            if q is not None:
                q.mul_(d).mul_((grad_entropy[sl].to(dtype) / -ctx.temperature)[:, None])  # [c,V]
            d.scatter_add_(-1, targets[sl, None], torch.full_like(neg_scale[:, None], -1.0))  # [c,V], p - onehot
            if q is not None:  # the two row scales differ: fold them into d, unit scale on the [c,H] side
                d.mul_(neg_scale[:, None]).add_(q)  # [c,V], full d loss / d z / T
                neg_scale = torch.ones_like(neg_scale)  # [c]
            # G = (onehot - p) * s = d * (-s): the row scale goes on the [c,H] side, saving a pass over [c,V]
            if need_bias:
                grad_bias.addmv_(d.t(), neg_scale)  # [V]
            d_mm = d if low is None else low.copy_(d)  # [c,V], matmul dtype = input dtype
            if need_hidden:
                torch.mm(d_mm, weight, out=grad_hidden[sl]).mul_(neg_scale[:, None].to(hidden.dtype))  # [c,H]
            if need_weight:
                h_scaled = h * neg_scale[:, None].to(hidden.dtype)  # [c,H]
                if low is None:
                    grad_weight.addmm_(d_mm.t(), h_scaled)  # [V,H]
                else:
                    grad_weight += torch.mm(d_mm.t(), h_scaled)  # [V,H], low-precision product, fp32 sum
        grad_weight = None if grad_weight is None else grad_weight.to(weight.dtype)  # [V,H]
        grad_bias = None if grad_bias is None else grad_bias.to(bias.dtype)  # [V]
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None


def _autocast_like_linear(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """Under an enabled autocast, cast fp32/fp16/bf16 inputs to its dtype, as autocast does for ``F.linear``."""
    device_type = hidden.device.type
    if not (torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)):
        return hidden, weight, bias
    dtype = torch.get_autocast_dtype(device_type)

    def cast(t):
        return t if t is None or not t.is_floating_point() or t.dtype == torch.float64 else t.to(dtype)
    return cast(hidden), cast(weight), cast(bias)  # [R,H], [V,H], [V] | None


def linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                    bias: torch.Tensor | None = None, temperature: float = 1.0, chunk_rows: int | None = None,
                    with_entropy: bool = False,
                    entropy_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probability of ``targets`` under ``softmax((hidden @ weight.T + bias) / temperature)``, and the entropy.

    Equal to ``logprobs_from_logits(F.linear(hidden, weight, bias), targets)`` (same fp32 upcast after the
    matmul), but the [R, V] logits never exist: rows are processed ``chunk_rows`` at a time and recomputed
    in backward (see the module docstring). ``chunk_rows=None`` picks ``FUSED_CHUNK_ELEMENTS // V`` rows
    (2**26 logits elements, 256 MiB per fp32 buffer).

    Under an enabled autocast the inputs are cast to its dtype first, as autocast does for ``nn.Linear``.
    Gradients flow to ``hidden``, ``weight`` and ``bias`` through ``logprobs``, and through the entropy too with
    ``entropy_grad`` (for an entropy bonus: ``dH/dz = -p (log p + H)``, one more [c, V] buffer in backward, or one
    more [R, H] precomputed gradient with a frozen head); otherwise the entropy has no gradient. Backward needs an fp32 [V,H] buffer for
    grad_weight when ``weight`` requires grad.

    Args:
        hidden: [R,H] any float dtype (bf16 on GPU).
        weight: [V,H] same dtype and device, e.g. ``model.get_output_embeddings().weight`` (tied or not).
        targets: [R] long, valid token ids everywhere (put e.g. the pad id at masked positions).
        bias: [V] same dtype, or None.

    Returns:
        logprobs: [R] fp32 (fp64 for fp64 inputs), with grad.
        entropy: [R] same dtype, with grad only with ``entropy_grad``; None unless ``with_entropy``.
    """
    if entropy_grad and not with_entropy:
        raise ValueError("entropy_grad needs with_entropy=True")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    hidden, weight, bias = _autocast_like_linear(hidden, weight, bias)
    if hidden.dim() != 2 or weight.dim() != 2:
        raise ValueError(f"hidden must be [R, H] and weight [V, H], got hidden {tuple(hidden.shape)} and "
                         f"weight {tuple(weight.shape)}")
    if hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden size mismatch: hidden {tuple(hidden.shape)} vs weight {tuple(weight.shape)}")
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets must be [R] = [{hidden.shape[0]}], got {tuple(targets.shape)}")
    if targets.dtype != torch.long:
        raise ValueError(f"targets must be torch.long, got {targets.dtype}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias must be [V] = [{weight.shape[0]}], got {tuple(bias.shape)}")
    if not hidden.is_floating_point():
        raise ValueError(f"hidden must be a float tensor, got {hidden.dtype}")
    tensors = {"weight": weight} if bias is None else {"weight": weight, "bias": bias}
    for name, t in tensors.items():
        if t.dtype != hidden.dtype or t.device != hidden.device:
            raise ValueError(f"{name} must match hidden's dtype and device ({hidden.dtype}, {hidden.device}), "
                             f"got ({t.dtype}, {t.device})")
    if targets.device != hidden.device:
        raise ValueError(f"targets must be on hidden's device {hidden.device}, got {targets.device}")
    if chunk_rows is None:
        chunk_rows = max(1, FUSED_CHUNK_ELEMENTS // max(1, weight.shape[0]))
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1 or None, got {chunk_rows}")
    with torch.autocast(hidden.device.type, enabled=False):  # buffers and out= matmuls keep the input dtype
        logprobs, entropy = _LinearLogprob.apply(hidden, weight, bias, targets, float(temperature),  # [R], [R]|[0]
                                                 int(chunk_rows), with_entropy, bool(entropy_grad))
    return logprobs, (entropy if with_entropy else None)  # [R], [R] | None


# ------------------------------------------------------------------------------------- Hugging Face


def check_fusable(model) -> None:
    """Raise NotImplementedError if ``model``'s logits are not ``lm_head(last_hidden_state)`` (a plain Linear)."""
    config = getattr(model, "config", None)
    configs = [config] if config is None or not hasattr(config, "get_text_config") else \
        [config, config.get_text_config()]
    for cfg in configs:
        for name in UNSUPPORTED_LOGIT_TRANSFORMS:
            value = getattr(cfg, name, None)
            if value is not None:
                raise NotImplementedError(
                    f"{type(model).__name__} has config.{name} = {value}: its logits are not a plain linear head "
                    f"of the last hidden state, so the chunked log-prob path cannot reproduce them; use full logits")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Linear):
        raise NotImplementedError(
            f"{type(model).__name__}.get_output_embeddings() is {type(head).__name__}, not a torch.nn.Linear "
            f"(e.g. a LoRA-wrapped or quantized lm_head); the chunked log-prob path needs its plain weight")


def _backbone(model):
    """The module mapping input ids to the last hidden states (``Qwen2Model`` inside ``Qwen2ForCausalLM``)."""
    backbone = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    if backbone is None or backbone is model:
        raise NotImplementedError(f"cannot find the decoder backbone of {type(model).__name__} "
                                  f"(get_decoder() returned {type(backbone).__name__})")
    return backbone


def model_logprobs_chunked(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                           response_index: torch.Tensor, targets: torch.Tensor, *, temperature: float,
                           with_entropy: bool,
                           chunk_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked :func:`linear_logprobs` on a Hugging Face causal LM: the same numbers as
    ``logprobs_from_logits(gather_response_logits(model(...).logits, response_index), targets)``.

    Runs the backbone (``model.get_decoder()``, e.g. ``Qwen2Model`` / ``LlamaModel``) instead of the full
    model, picks the hidden states that predict the response tokens and applies the output embedding
    chunk by chunk, so neither [n,S,V] nor [n,T,V] logits are built. Raises NotImplementedError for models
    whose logits are more than ``lm_head(hidden)`` (see ``UNSUPPORTED_LOGIT_TRANSFORMS``); fall back to full
    logits then.

    Args:
        input_ids, attention_mask: [n,S] on the model's device, as from :func:`rlkit.ops.build_inputs`.
        response_index: [n,T] long, position of the hidden state that predicts response token t.
        targets: [n,T] long, valid token ids everywhere.

    Returns:
        logprobs: [n,T] fp32, with grad; entropy: [n,T] fp32, no grad, or None unless ``with_entropy``.
        Masked positions are not zeroed (as in ``logprobs_from_logits``).
    """
    check_fusable(model)
    head = model.get_output_embeddings()
    out = _backbone(model)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    hidden = out.last_hidden_state  # [n,S,H]
    n, T = response_index.shape
    index = response_index[:, :, None].expand(-1, -1, hidden.shape[-1])  # [n,T,H] (expanded view)
    picked = hidden.gather(1, index).reshape(n * T, hidden.shape[-1])  # [n*T,H]
    weight = head.weight  # [V,H]
    bias = head.bias  # [V] | None
    logprobs, entropy = linear_logprobs(picked, weight, targets.reshape(n * T), bias=bias,  # [n*T], [n*T]|None
                                        temperature=temperature, chunk_rows=chunk_rows, with_entropy=with_entropy)
    return logprobs.view(n, T), (entropy.view(n, T) if with_entropy else None)  # [n,T], [n,T] | None
