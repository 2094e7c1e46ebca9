"""The critic (value model) of PPO with GAE: V(s_t) for every response position, trained next to the policy.

``V[i, t]`` is the value of the state *before* response token t is generated (prompt + response[:t]): the hidden
state at the position whose logit predicts token t (verl's ``values[:, -T-1:-1]``).

Two layouts (``critic.shared_backbone``):

* separate (default): ``AutoModel.from_pretrained(critic.model or model.name_or_path)`` plus a ``Linear(hidden, 1)``
  head -- its own parameters, optimizer (``critic.lr``) and gradient clipping;
* shared: a ``Linear(hidden, 1)`` head on the policy's last hidden state. The value loss then also
  back-propagates into the policy backbone (stepped by the policy's optimizer); the head has its own optimizer.
  The values come from a second forward pass of the policy (simple, costs one forward per micro-batch).

The head is zero-initialised (rlkit choice): V = 0 at the start, so the first advantages are plain returns-to-go
and the critic learns from there. Both models go through ``accelerator.prepare`` (DDP gradient averaging, and
``save_state`` checkpoints them with the policy). ``critic.warmup_steps``: the first RL steps update only the
critic (the policy's gradients are dropped), so the advantages are not driven by an untrained value function.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from rlkit import ops
from rlkit.batch import RolloutBatch
from rlkit.forward import ForwardSpec, over_micro_batches


class ValueModel(nn.Module):
    """A transformer backbone (no LM head) plus a scalar value head: [n, S] token ids -> [n, S] values."""

    def __init__(self, backbone: nn.Module, hidden_size: int):
        super().__init__()
        self.backbone = backbone
        self.value_head = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        return self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)        # [n, S]


class ValueHead(nn.Module):
    """The shared-backbone head: the policy's last hidden state -> values."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.value_head = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, policy: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = policy(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, output_hidden_states=True)
        hidden = out.hidden_states[-1]                                                      # [n, S, H]
        return self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)        # [n, S]


class Critic:
    """A prepared value module plus its optimizer; computes response values with and without grad."""

    def __init__(self, module: nn.Module, optimizer, accelerator, *, shared: bool, max_grad_norm: float | None,
                 warmup_steps: int):
        self.module, self.optimizer, self.accelerator = module, optimizer, accelerator
        self.shared, self.max_grad_norm, self.warmup_steps = shared, max_grad_norm, warmup_steps

    def values(self, policy: nn.Module, rows: RolloutBatch, spec: ForwardSpec) -> torch.Tensor:
        """V for every response token of ``rows``: [n, T], 0 where masked (with grad). Always right-padded rows:
        the value model's backbone is called without position ids, so it cannot read packed rows."""
        device = self.accelerator.device
        input_ids, attention_mask, response_index = ops.build_inputs(
            rows.prompt_ids, rows.response_ids.cpu(), rows.response_mask.cpu(), spec.pad_id)  # [n,S], [n,S], [n,T]
        args = (input_ids.to(device), attention_mask.to(device))
        full = self.module(policy, *args) if self.shared else self.module(*args)            # [n, S]
        values = full.float().gather(1, response_index.to(device))                          # [n, T]
        return values * rows.response_mask.to(device)

    def score(self, policy: nn.Module, batch: RolloutBatch, spec: ForwardSpec) -> torch.Tensor:
        """No-grad values of the whole batch (the scoring pass): [N, T] on CPU. With a token budget
        (``spec.max_tokens_per_micro``) the micro-batches are right-padded rows grouped by it (rows x longest <=
        budget), never packed (see :meth:`values`)."""
        models = [self.module] + ([policy] if self.shared else [])
        padded = dataclasses.replace(spec, pack_sequences=False)
        return over_micro_batches(models, batch, padded, lambda rows: self.values(policy, rows, padded))  # [N, T]

    def step(self) -> tuple[float, bool]:
        """Clip and apply the critic's gradients; (grad norm, applied). Non-finite norms skip the step."""
        params = [p for p in self.module.parameters() if p.requires_grad]
        if self.max_grad_norm is not None:
            norm = float(self.accelerator.clip_grad_norm_(params, self.max_grad_norm))
        else:
            grads = [p.grad.detach().norm() for p in params if p.grad is not None]
            norm = float(torch.norm(torch.stack(grads))) if grads else 0.0
        ok = math.isfinite(norm)
        if ok:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm, ok

    def unwrap(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.module)

    @property
    def modules(self) -> list[nn.Module]:
        """The prepared modules the update's backward reaches (for ``no_sync``)."""
        return [self.module]

    def metrics(self, norms: list[float], policy_frozen: bool) -> dict[str, float]:
        """``critic/*`` of one policy update: mean gradient norm, and whether the policy was frozen (warm-up)."""
        return {"critic/grad_norm": sum(norms) / len(norms), "critic/policy_frozen": float(policy_frozen)}

    def save(self, path: Path) -> None:
        """The value model as ``path/critic.safetensors``, for continuing PPO from the exported policy."""
        save_file({k: v.contiguous() for k, v in self.unwrap().state_dict().items()}, str(path / "critic.safetensors"))


class NoCritic:
    """The critic of a run without one (no plug-in needs values): no modules, no values, nothing to step, save or
    log -- so the update and the export need no ``critic is None`` branches."""

    modules: tuple = ()
    warmup_steps = 0

    def values(self, policy, rows: RolloutBatch, spec: ForwardSpec) -> None:
        return None

    def step(self) -> tuple[float, bool]:
        return 0.0, True

    def metrics(self, norms: list[float], policy_frozen: bool) -> dict[str, float]:
        return {}

    def save(self, path: Path) -> None:
        pass


def build_critic(cfg, accelerator, policy: nn.Module) -> Critic:
    """The critic of ``cfg.critic`` (a RecipeConfig with a critic section), prepared with ``accelerator``."""
    from transformers import AutoModel

    c = cfg.critic
    if c.shared_backbone:
        if c.model is not None:
            raise ValueError("critic.model and critic.shared_backbone=true exclude each other: the shared head sits "
                             "on the policy's backbone; drop critic.model or set shared_backbone: false")
        module = ValueHead(policy.config.hidden_size)
    else:
        path = c.model or cfg.model.name_or_path
        backbone = AutoModel.from_pretrained(path, revision=cfg.model.revision, dtype=getattr(torch, cfg.model.dtype),
                                             trust_remote_code=cfg.model.trust_remote_code)
        if cfg.model.gradient_checkpointing:
            backbone.gradient_checkpointing_enable()
        module = ValueModel(backbone, backbone.config.hidden_size)
    module.value_head.to(dtype=torch.float32)
    optimizer = torch.optim.AdamW(module.parameters(), lr=c.lr, eps=c.adam_eps, weight_decay=c.weight_decay)
    module, optimizer = accelerator.prepare(module, optimizer)
    return Critic(module, optimizer, accelerator, shared=c.shared_backbone, max_grad_norm=c.max_grad_norm,
                  warmup_steps=c.warmup_steps)


def no_sync_all(accelerator, models: list) -> contextlib.ExitStack:
    """``accelerator.no_sync`` over several prepared models at once."""
    stack = contextlib.ExitStack()
    for m in models:
        stack.enter_context(accelerator.no_sync(m))
    return stack
