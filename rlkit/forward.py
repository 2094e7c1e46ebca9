"""Policy forward passes over response tokens: per-token log-probs (and entropy) for rows of a RolloutBatch.

For row i with prompt ``x_i`` and response ``y_i``:

    logprobs[i,t] = log softmax(z_it)[y_it],   entropy[i,t] = -Σ_v softmax(z_it)_v log softmax(z_it)_v,
    z_it = lm_head(h_it) / temperature,         h_it = last hidden state at the position that predicts y_it

(0 where ``response_mask`` is False). Two ways to get there, equal up to fp32 rounding:

* **chunked** (``chunk_tokens`` = "auto" or an int, the default): the model runs as usual, but its output head
  is swapped, for this one call, for :func:`rlkit.fused_logprob.linear_logprobs` on the hidden states of the
  response positions only. No [n,S,V] or [n,T,V] logits tensor exists: the LM head runs ``chunk_tokens`` positions
  at a time, the log-softmax of each chunk is taken in fp32, and backward recomputes the chunk's logits. When the
  head's weight is frozen (LoRA without ``lm_head``, frozen tied embeddings), d logprob / d hidden is computed in
  the forward pass instead and nothing is recomputed. Because the whole model is still called (through its DDP /
  FSDP / peft wrappers and their hooks), gradient synchronisation, gradient checkpointing and LoRA adapters work
  unchanged. Models whose logits are more than ``lm_head(hidden)`` (logit soft-capping, logit scales, a wrapped
  head; :func:`rlkit.fused_logprob.check_fusable`) fall back to full logits, with one log line.
* **full logits** (``chunk_tokens`` = 0 / None): ``model(...).logits`` [n,S,V], gathered to [n,T,V], then
  :func:`rlkit.ops.logprobs_from_logits` (chunked fp32 log-softmax over the existing logits).

Inputs are right-padded rows (:func:`rlkit.ops.build_inputs`), or with ``packed=True`` one padding-free row holding
all sequences with position ids restarting at 0 (:func:`rlkit.ops.build_packed_inputs`): transformers >= 4.56 then
attends block-diagonally, which gives the same numbers as separate rows (tests/unit/test_forward.py).

Mixed precision (``train.mixed_precision=bf16`` with ``model.dtype=float32``): the parameters -- the master
weights the optimizer updates, and with them AdamW's moments -- stay fp32; accelerate's autocast runs the matmuls
of the forward pass (and their backward) in bf16, and the gradients arrive in fp32 on the fp32 parameters. The
chunked head casts like autocast casts ``nn.Linear`` (bf16 matmul) and takes each chunk's log-softmax in fp32.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Callable, ContextManager, Literal

import torch

from rlkit import ops
from rlkit.batch import RolloutBatch
from rlkit.fused_logprob import check_fusable, linear_logprobs

log = logging.getLogger("rlkit")

ChunkTokens = Literal["auto"] | int | None   # positions per LM-head chunk; "auto" = 2**26 // V; 0 / None = full logits
TokenBudget = Literal["auto"] | int | None   # tokens per micro-batch; "auto" = micro_batch_size x longest; None = rows
_logged: set[str] = set()


@dataclass(frozen=True)
class ForwardSpec:
    """How the policy (and the reference, the critic, the samplers' probes) run over response tokens: fixed for a
    run, built once by ``rlkit.session.build_session`` (:meth:`from_train`) and passed to every forward call.

    ``pack_sequences`` is resolved (never "auto", see :func:`resolve_packing`); ``autocast`` is the
    accelerator's ``autocast`` (a context-manager factory; ``contextlib.nullcontext`` outside accelerate)."""

    pad_id: int
    temperature: float = 1.0                 # rollout.temperature: logits / T, as the engine sampled
    chunk_tokens: ChunkTokens = "auto"       # train.logprob_chunk_tokens
    micro_batch_size: int = 8                # train.micro_batch_size
    max_tokens_per_micro: TokenBudget = None  # train.max_tokens_per_micro (None: micro_batch_size rows)
    pack_sequences: bool = False             # resolved train.pack_sequences
    autocast: Callable[[], ContextManager] = contextlib.nullcontext

    @property
    def packed(self) -> bool:
        """Token-budget micro-batches go in as one padding-free row each."""
        return self.max_tokens_per_micro is not None and self.pack_sequences

    def micro_batches(self, batch: RolloutBatch) -> list[torch.Tensor]:
        """Row indices of each micro-batch of ``batch`` under this spec (:func:`micro_batch_groups`)."""
        return micro_batch_groups(batch, self.micro_batch_size, self.max_tokens_per_micro, self.pack_sequences)

    @classmethod
    def from_train(cls, train, *, pad_id: int, temperature: float, model, autocast) -> "ForwardSpec":
        """The spec of a recipe's ``train`` section (rlkit.config.TrainConfig) for ``model``."""
        return cls(pad_id=pad_id, temperature=temperature, chunk_tokens=train.logprob_chunk_tokens,
                   micro_batch_size=train.micro_batch_size, max_tokens_per_micro=train.max_tokens_per_micro,
                   pack_sequences=resolve_packing(train.pack_sequences, model), autocast=autocast)


def _log_once(message: str, *args, level: int = logging.INFO) -> None:
    key = message % args
    if key not in _logged:
        _logged.add(key)
        log.log(level, message, *args)


def response_logprobs(model, batch: RolloutBatch, spec: ForwardSpec, *, with_entropy: bool = False,
                      entropy_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(response token) [n, T] (0 where masked) and optionally the entropy [n, T] for every row of ``batch``
    (one micro-batch: packed into one row when ``spec.packed``)."""
    return token_logprobs(model, batch.prompt_ids, batch.response_ids, batch.response_mask, pad_id=spec.pad_id,
                          temperature=spec.temperature, with_entropy=with_entropy, chunk_tokens=spec.chunk_tokens,
                          packed=spec.packed, entropy_grad=entropy_grad)


def token_logprobs(model, prompt_ids: list[list[int]], response_ids: torch.Tensor, response_mask: torch.Tensor, *,
                   pad_id: int, temperature: float = 1.0, with_entropy: bool = False,
                   chunk_tokens: ChunkTokens = "auto", packed: bool = False,
                   entropy_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(response_ids[i,t] | prompt_i, response_i[:t]) [n, T], 0 where ``response_mask`` [n, T] is False.

    The primitive under :func:`response_logprobs`, for callers that hold token lists rather than a batch (the
    canary's probe, the gradient probe, SFT).
    ``chunk_tokens``: response positions per LM-head chunk ("auto", an int > 0), or 0 / None for the full-logits
    path (module docstring). ``packed``: one padding-free row instead of right-padded rows. Returns fp32
    logprobs [n,T] (with grad when grad is enabled) and the entropy [n,T] (no grad) or None.
    """
    device = next(model.parameters()).device
    n, T = response_ids.shape
    mask = response_mask.to(device).bool()                                                 # [n, T]
    targets = response_ids.to(device)                                                      # [n, T]
    temperature = temperature if temperature > 0 else 1.0
    if packed:
        input_ids, position_ids, flat_index = ops.build_packed_inputs(
            prompt_ids, response_ids.cpu(), response_mask.cpu())                           # [1,L], [1,L], [n,T]
        inputs = dict(input_ids=input_ids.to(device), position_ids=position_ids.to(device), attention_mask=None)
    else:
        input_ids, attention_mask, response_index = ops.build_inputs(
            prompt_ids, response_ids.cpu(), response_mask.cpu(), pad_id)                   # [n,S], [n,S], [n,T]
        S = input_ids.shape[1]
        flat_index = response_index + torch.arange(n)[:, None] * S                        # [n, T] into n*S
        inputs = dict(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device))
    flat_index = flat_index.to(device)                                                     # [n, T]
    head = _fusable_head(model) if chunk_tokens else None
    if head is not None:
        chunk_rows = None if chunk_tokens == "auto" else int(chunk_tokens)
        sel = flat_index[mask]                                                             # [R] response positions
        with _head_computes_logprobs(head, sel, targets[mask], temperature, chunk_rows, with_entropy,
                                     entropy_grad) as called:
            out = model(**inputs, use_cache=False)
        if called:
            cols = out.logits                                                              # [R, 1 or 2] fp32
            logprobs = cols.new_zeros(n, T).masked_scatter(mask, cols[:, 0])              # [n, T]
            ent_col = cols[:, 1] if entropy_grad else cols[:, 1].detach() if with_entropy else None  # [R]
            entropy = cols.new_zeros(n, T).masked_scatter(mask, ent_col) if with_entropy else None
            return logprobs, entropy
        _log_once("%s did not call its output head on the hidden states; computing log-probs from full logits",
                  type(model).__name__)
    else:
        out = model(**inputs, use_cache=False)
    logits = out.logits                                                                    # [b, S, V]
    logits = logits.reshape(-1, logits.shape[-1])[flat_index]                              # [n, T, V]
    logprobs, entropy = ops.logprobs_from_logits(logits, targets, temperature=temperature,
                                                 with_entropy=with_entropy, entropy_grad=entropy_grad)  # [n, T] x2
    logprobs = logprobs * mask
    if entropy is not None:
        entropy = entropy * mask
    return logprobs, entropy


def _unwrap(model):
    """The Hugging Face model behind DDP/FSDP/compile wrappers and the LoRA reference (an adapter-less view)."""
    from accelerate.utils import extract_model_from_parallel

    from rlkit.lora import AdapterDisabledReference
    if isinstance(model, AdapterDisabledReference):
        model = model.policy
    return extract_model_from_parallel(model, keep_fp32_wrapper=True)


def _fusable_head(model) -> torch.nn.Linear | None:
    """The plain Linear output head the chunked path can replace, or None (logged once) when there is none."""
    inner = _unwrap(model)
    try:
        check_fusable(inner)
        head = inner.get_output_embeddings()
        if "forward" in vars(head):
            raise NotImplementedError(f"{type(inner).__name__}'s output head has a patched forward (a hook)")
    except NotImplementedError as exc:
        _log_once("chunked log-probs unavailable, using full logits: %s", exc)
        return None
    return head


@contextlib.contextmanager
def _head_computes_logprobs(head: torch.nn.Linear, sel: torch.Tensor, targets: torch.Tensor, temperature: float,
                            chunk_rows: int | None, with_entropy: bool, entropy_grad: bool = False):
    """For one model call, make ``head(hidden [b,S,H])`` return [R, 1 or 2] = (logprobs, entropy) of the R
    positions ``sel`` (indices into the b*S flattened positions) instead of logits [b,S,V].

    The result still leaves the model as its output (``out.logits``), so wrappers that hook module outputs (DDP,
    FSDP2's pre-backward all-gather) see it. Yields a list that is non-empty once the head was called.
    """
    called: list[bool] = []

    def forward(hidden: torch.Tensor) -> torch.Tensor:                                     # [b,S,H]
        picked = hidden.reshape(-1, hidden.shape[-1])[sel]                                 # [R, H]
        logprobs, entropy = linear_logprobs(picked, head.weight, targets, bias=head.bias, temperature=temperature,
                                            chunk_rows=chunk_rows, with_entropy=with_entropy,
                                            entropy_grad=entropy_grad)                     # [R], [R] | None
        called.append(True)
        return torch.stack([logprobs] + ([entropy] if with_entropy else []), dim=-1)       # [R, 1 or 2]

    head.forward = forward
    try:
        yield called
    finally:
        del head.forward


PACKING_ATTENTION = ("flash", "flex")   # attention implementations whose packed rows cost no dense [L, L] work


def resolve_packing(setting: Literal["auto"] | bool, model) -> bool:
    """``train.pack_sequences`` -> bool: "auto" packs when the model's attention implementation (config
    ``_attn_implementation``) is a flash / flex kernel, which attends per sequence; sdpa and eager apply the
    block-diagonal mask to a dense [L, L] score matrix, so padded token-budget micro-batches are cheaper there."""
    if setting != "auto":
        return bool(setting)
    impl = str(getattr(_unwrap(model).config, "_attn_implementation", None) or "")
    return any(kind in impl for kind in PACKING_ATTENTION)


def micro_batch_groups(batch: RolloutBatch, micro_batch_size: int, max_tokens_per_micro: TokenBudget = None,
                       packed: bool = True) -> list[torch.Tensor]:
    """Row indices of each micro-batch: consecutive ``micro_batch_size`` rows, or, with ``max_tokens_per_micro``,
    groups of at most that many model tokens (:func:`rlkit.ops.token_budget_groups`; a longer row goes alone).
    ``"auto"``: a budget of ``micro_batch_size`` x the longest row here, the widest fixed micro-batch's size."""
    n = len(batch)
    if max_tokens_per_micro is None:
        return [torch.arange(lo, min(lo + micro_batch_size, n)) for lo in range(0, n, micro_batch_size)]
    lengths = ops.sequence_lengths(batch.prompt_ids, batch.response_mask)                 # [n]
    longest = int(lengths.max()) if n else 1
    if max_tokens_per_micro == "auto":
        max_tokens_per_micro = micro_batch_size * longest
    elif longest > max_tokens_per_micro:
        _log_once("train.max_tokens_per_micro=%d is below the longest sequence (%d tokens); such rows form a "
                  "micro-batch of their own", max_tokens_per_micro, longest, level=logging.WARNING)
    return ops.token_budget_groups(lengths, max_tokens_per_micro, packed=packed)


@torch.no_grad()
def over_micro_batches(models: list, batch: RolloutBatch, spec: ForwardSpec, fn):
    """``fn(rows)`` per micro-batch of ``spec`` (:func:`micro_batch_groups`), under ``spec.autocast``, without grad
    and with ``models`` in eval mode.

    ``fn`` returns a tensor [n, ...] or a tuple of such tensors / None; the result has the same structure with
    the rows of every micro-batch put back in batch order ([N, ...], float32 on CPU).
    """
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        groups = spec.micro_batches(batch)
        parts = []
        for idx in groups:
            with spec.autocast():
                parts.append(fn(batch.select(idx)))
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
    order = torch.argsort(torch.cat(groups))                                                # [N] inverse permutation

    def merge(items):
        return None if items[0] is None else torch.cat([x.float().cpu() for x in items])[order]  # [N, ...]
    if isinstance(parts[0], tuple):
        return tuple(merge([p[k] for p in parts]) for k in range(len(parts[0])))
    return merge(parts)


def score_batch(model, batch: RolloutBatch, spec: ForwardSpec, *,
                with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """No-grad log-probs [N, T] (and entropy [N, T]) of ``model`` over the whole batch, micro-batch by micro-batch."""
    return over_micro_batches([model], batch, spec,
                              lambda rows: response_logprobs(model, rows, spec, with_entropy=with_entropy))
