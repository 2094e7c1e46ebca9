"""Reward plug-ins: loading, signature checks, weighting, timeouts and failure isolation.

Two signatures are accepted, recognised from the parameter names with ``inspect.signature``:

* TRL-style batch: ``fn(completions, prompts=None, **dataset_columns) -> list`` -- any function with a
  ``completions`` parameter (a function, an ``async def``, or a callable object). It gets the keywords it names
  (or everything, with ``**kwargs``), as TRL's GRPOTrainer passes them (:mod:`rlkit.reward_calls`):
  ``completions`` and ``prompts`` (N strings, or N message lists when the prompt column is conversational),
  ``completion_ids`` (N lists of generated token ids), each dataset column (a list of N values, e.g.
  ``answer``), ``trainer_state``, and the callbacks ``log_metric`` / ``log_extra``.
* verl-style per sample: ``compute_score(data_source, solution_str, ground_truth, extra_info=None)`` -- any
  function with ``solution_str`` and ``ground_truth``. ``ground_truth`` is the ``answer_column`` value (or,
  in verl's parquet layout, ``reward_model["ground_truth"]``), ``data_source`` the ``data_source`` column (else
  ``default_data_source``), ``extra_info`` a dict of the other columns updated with the row's own
  ``extra_info`` column when it has one (verl's layout); only the names it declares are passed.

A result is a number, ``None`` (this sample cannot be scored) or a dict ``{"reward": x, "success": bool}``
(``"score"`` is read as ``"reward"``, verl's spelling; other numeric keys become metrics ``<fn>/<key>``).

Combination (``RewardManager.score``): ``components[N, K]`` holds each function's raw value (NaN for None,
``failure_value`` for a failure); ``rewards[N] = sum_k weight_k * component_k`` with None counted as 0,
except that a sample every function returned None for gets NaN (unscorable). ``success[N]`` is 1.0 when every
function that reported ``success`` for the sample said True, 0.0 if one said False, NaN when none reported.

Failure isolation: a batch call that raises or times out is retried one sample at a time; a sample that
still raises, times out, or returns a non-numeric value gets ``failure_value``. The first failure of each
function is logged with its traceback, later ones only counted (metrics ``failures``, ``timeouts``). If a
function fails on every sample of a call, ``RewardFailure`` stops the run; so does a batch function that
returns the wrong number of items or a dataset column it needs being absent.

Timeouts and executors (``executor=``, recipe ``reward.executor``): ``timeout_s`` applies per batch call for
batch functions and per sample for verl-style ones, in one of two places:

* ``process``: the call goes to a worker process of a :class:`rlkit.sandbox.ProcessExecutor` (2 workers,
  started on first use; closed by ``close()``). The worker resolves the reward's reference itself (a
  registered name, ``module:attr`` or ``path/file.py:attr`` -- made absolute) and gets the bound options and
  the batch as keyword arguments, so they must be picklable. A call past ``timeout_s`` is killed with its
  whole process group: nothing leaks, and the next call runs on a fresh worker. A worker crash (segfault,
  ``os._exit``) fails that call only. No memory limit, no network isolation, CPU time limited only to
  ``timeout_s`` per core; the worker runs in the trainer's working directory. Import time of the reward
  module is not counted in ``timeout_s``. Rewards run in the worker's main thread, so ``signal`` works.
* ``thread``: the call runs in a daemon ``threading.Thread`` joined with ``timeout_s``. Python cannot kill a
  thread, so a hung reward leaks one daemon thread, which keeps running in the background but never blocks
  interpreter exit (unlike ``ThreadPoolExecutor`` workers). Rewards then run outside the main thread: they
  must not rely on ``signal`` (e.g. SIGALRM timeouts). Pick ``thread`` for rewards holding a model, a client
  or other state that cannot cross a process boundary (or should not be loaded once per worker).
* ``auto`` (default): ``process`` for plain importable functions (a module-level ``def``, built-in or named as
  ``module:attr`` / ``path/file.py:attr``), ``thread`` for anything else (callable objects, class instances,
  ``functools.partial``, lambdas, closures, functions of ``__main__``). The choice is logged once per function.

After 3 consecutive per-sample timeouts the rest of that call is marked timed out without calling, so a reward
that always hangs costs a few ``timeout_s``, not ``N * timeout_s``. ``timeout_s=None`` (or <= 0) calls inline,
in the caller's thread, whatever the executor.

External components (``external_names=`` / ``score(external=...)``): rewards computed elsewhere (an
environment's own episode reward), one list of N floats or None per name. Each is combined exactly like a
reward function of weight 1.0 and listed after the functions in ``names`` and ``components``.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import numbers
import os
import threading
import time
import traceback
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping

import numpy as np
import torch

from rlkit.registry import REWARDS, PluginError, closest, import_object
from rlkit.reward_calls import CALLBACKS, RewardLog, RewardState, as_messages, is_async, is_conversational, \
    resolve_awaitable
from rlkit.sandbox import ProcessExecutor, SandboxCallError, SandboxLimits, SandboxTimeout

logger = logging.getLogger("rlkit.rewards")

BATCH, PER_SAMPLE = "batch", "per_sample"
SHARED = frozenset({"trainer_state", *CALLBACKS})   # one value per call, not one per sample
FILLED = frozenset({"completions", "prompts", "completion_ids", "solution_str", "ground_truth", "data_source",
                    "extra_info"}) | SHARED
MAX_CONSECUTIVE_TIMEOUTS = 3
EXECUTORS = ("auto", "process", "thread")
PROCESS_WORKERS = 2
_ANNOUNCED: set[tuple[str, str]] = set()   # (reward, executor) pairs already logged
SIGNATURES = ("fn(completions, prompts=None, **columns) -> list  (TRL-style, one call per batch), or "
              "compute_score(data_source, solution_str, ground_truth, extra_info=None)  (verl-style, per sample)")


class RewardSignatureError(ValueError):
    """A reward function's signature is neither of the two accepted ones."""


class RewardFailure(RuntimeError):
    """A reward function is broken for this run (fails on every sample, wrong result length ...)."""


@dataclass
class RewardSpec:
    """One reward function of a recipe."""

    name: str                    # registered name, "module:attr" or "path/file.py:attr"
    weight: float = 1.0          # weight in the summed reward (0 = metric only)
    kwargs: dict[str, Any] = field(default_factory=dict)  # options bound to the function


@dataclass
class RewardFunction:
    """A loaded, signature-checked reward function with its bound options."""

    name: str
    fn: Callable[..., Any]       # functools.partial of the plug-in with ``kwargs`` bound
    style: str                   # BATCH or PER_SAMPLE
    weight: float
    params: Mapping[str, inspect.Parameter]
    bound: frozenset[str] = frozenset()
    options: dict[str, Any] = field(default_factory=dict)   # the bound kwargs (sent to a worker process)
    worker_ref: str | None = None  # reference a fresh process resolves to this same function; None = not importable
    executor: str = "thread"       # where calls run: "process", "thread" or "inline" (set by RewardManager)
    is_async: bool = False         # ``async def`` (or an async ``__call__``): awaited in the calling thread

    @property
    def var_kw(self) -> bool:
        return any(p.kind is p.VAR_KEYWORD for p in self.params.values())

    def accepts(self, name: str) -> bool:
        return name not in self.bound and (self.var_kw or name in self.params)

    def required(self) -> list[str]:
        """Named parameters without a default that rlkit must fill (bound options excluded)."""
        return [n for n, p in self.params.items() if p.default is p.empty and n not in self.bound
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


@dataclass
class RewardResult:
    """Scores of N completions by K reward functions."""

    rewards: torch.Tensor        # [N] float, weighted sum; NaN = unscorable
    success: torch.Tensor        # [N] float 1.0/0.0; NaN = no function reported success
    components: torch.Tensor     # [N, K] float, raw (unweighted) value per function; NaN = None
    metrics: dict[str, float]
    names: list[str]             # [K] function names, then external names: the columns of ``components``
    logged: dict[str, list] = field(default_factory=dict)   # log_extra columns, N values each


def check_signature(fn: Callable[..., Any]) -> str:
    """Return BATCH or PER_SAMPLE for ``fn``; raise RewardSignatureError for anything else."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError) as exc:
        raise RewardSignatureError(f"cannot read the signature of reward {fn!r}: {exc}") from exc
    if "solution_str" in params and "ground_truth" in params:
        return PER_SAMPLE
    if "completions" in params:
        return BATCH
    name = getattr(fn, "__qualname__", repr(fn))
    raise RewardSignatureError(f"reward function {name}{inspect.signature(fn)} has neither accepted signature: "
                               f"{SIGNATURES}. Rename its parameters to match one of them")


def _display_name(spec_name: str, fn: Callable[..., Any]) -> str:
    if ":" not in spec_name:
        return spec_name
    return getattr(fn, "plugin_name", None) or spec_name.rpartition(":")[2].rpartition(".")[2]


def load_reward(spec: RewardSpec) -> RewardFunction:
    """Resolve ``spec.name`` through the REWARDS registry, check its signature, bind ``spec.kwargs``."""
    if ":" not in spec.name:
        import rewards  # noqa: F401  (registers the built-ins: exact_match, math_verify, format)
    fn = REWARDS.get(spec.name)
    style = check_signature(fn)
    params = inspect.signature(fn).parameters
    unfilled = [n for n, p in params.items() if style == PER_SAMPLE and p.default is p.empty
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in FILLED | set(spec.kwargs)]
    if unfilled:
        raise RewardSignatureError(f"reward '{spec.name}': required parameter(s) {', '.join(unfilled)} of a "
                                   f"verl-style function are not filled by rlkit; give them defaults or set "
                                   f"them under the reward's kwargs")
    named = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - FILLED
    for key in spec.kwargs:
        if key in FILLED:
            raise PluginError(f"reward '{spec.name}': option '{key}' is filled by rlkit from the batch; remove it")
        if key not in named:
            raise PluginError(f"reward '{spec.name}': unknown option '{key}'{closest(key, named)}; valid options: "
                              f"{', '.join(sorted(named)) or '(none)'}")
    if not (isinstance(spec.weight, numbers.Real) and math.isfinite(spec.weight)):
        raise PluginError(f"reward '{spec.name}': weight must be a finite number, got {spec.weight!r}")
    return RewardFunction(name=_display_name(spec.name, fn), fn=functools.partial(fn, **spec.kwargs),
                          style=style, weight=float(spec.weight), params=params, bound=frozenset(spec.kwargs),
                          options=dict(spec.kwargs), worker_ref=None if is_async(fn) else worker_ref(spec.name, fn),
                          is_async=is_async(fn))


def _absolute(ref: str) -> str:
    """``path/file.py:attr`` with the path made absolute (workers may run elsewhere); other refs unchanged."""
    module, _, attr = ref.rpartition(":")
    return f"{Path(module).resolve()}:{attr}" if module.endswith(".py") or "/" in module else ref


def worker_ref(name: str, fn: Any) -> str | None:
    """A reference that a fresh process resolves to ``fn`` itself, or None when ``fn`` is not a plain importable
    function (callable objects, class instances, partials, lambdas, closures, functions of ``__main__``)."""
    if (not inspect.isfunction(fn) or "<" in fn.__qualname__ or fn.__closure__ is not None
            or fn.__module__ in (None, "__main__")):
        return None
    if ":" in name:
        ref = _absolute(name)
    elif fn.__module__.partition(".")[0] == "rewards":
        return name                   # a built-in: the worker imports ``rewards`` and looks the name up
    else:
        ref = f"{fn.__module__}:{fn.__qualname__}"
    try:
        return ref if import_object(ref) is fn else None
    except Exception:  # noqa: BLE001  (not importable by that reference: stay in a thread)
        return None


def _missing_columns(rf: RewardFunction, columns: Iterable[str], answer_column: str) -> list[str]:
    have = set(columns)
    if rf.style == PER_SAMPLE:
        return [] if answer_column in have or "reward_model" in have else [answer_column]
    return [n for n in rf.required() if n not in have | {"completions", "prompts", "completion_ids"} | SHARED]


def validate(specs: list[RewardSpec], columns: Iterable[str] | None = None,
             answer_column: str = "answer") -> list[RewardFunction]:
    """Load every spec (start-up check, no model needed); with ``columns``, check the data feeds them."""
    if not specs:
        raise ValueError("no reward functions configured; add at least one under reward.functions")
    loaded = [load_reward(s) for s in specs]
    columns = None if columns is None else list(columns)
    for rf in loaded if columns is not None else []:
        missing = _missing_columns(rf, columns, answer_column)
        if missing:
            raise RewardFailure(f"reward '{rf.name}' needs dataset column(s) {', '.join(missing)}, which the "
                                f"dataset lacks (columns: {', '.join(sorted(columns))})")
    return loaded


def _ground_truth(columns: dict[str, list], answer_column: str, i: int) -> Any:
    """The answer column, else verl's ``reward_model["ground_truth"]`` (its preprocessed parquet layout)."""
    if answer_column in columns:
        return columns[answer_column][i]
    return (columns["reward_model"][i] or {}).get("ground_truth")


class _TimedOut(Exception):
    pass


def _call(fn: Callable[..., Any], kwargs: dict[str, Any], timeout_s: float | None, name: str) -> Any:
    """``fn(**kwargs)`` in a daemon thread joined for ``timeout_s`` (inline when None)."""
    if timeout_s is None:
        return resolve_awaitable(fn(**kwargs))
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = resolve_awaitable(fn(**kwargs))
        except BaseException as exc:  # noqa: BLE001  (handed to the caller)
            box["error"] = exc if isinstance(exc, Exception) else RuntimeError(f"reward raised {exc!r}")

    thread = threading.Thread(target=target, name=f"rlkit-reward-{name}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise _TimedOut(f"reward '{name}' did not return within timeout_s={timeout_s}")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _number(x: Any) -> float:
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        x = x.item()
    elif isinstance(x, (np.ndarray, np.generic)) and np.size(x) == 1:
        x = x.item()
    if not isinstance(x, numbers.Real):
        raise ValueError(f"reward value {x!r:.80} is not a number")
    if not math.isfinite(float(x)):
        raise ValueError(f"reward value {x!r} is not finite")
    return float(x)


def parse_result(value: Any) -> tuple[float | None, float, dict[str, float]]:
    """One result -> (reward or None, success 1.0/0.0 or NaN, numeric extras); ValueError if invalid."""
    if value is None:
        return None, math.nan, {}
    if not isinstance(value, Mapping):
        return _number(value), math.nan, {}
    key = "reward" if "reward" in value else "score" if "score" in value else None
    if key is None:
        raise ValueError(f"dict result has no 'reward' key (keys: {', '.join(map(str, value))})")
    reward = None if value[key] is None else _number(value[key])
    success = value.get("success")
    success = math.nan if success is None else float(bool(_number(success)))
    extras = {}
    for k, v in value.items():
        if k not in (key, "success"):
            try:
                extras[str(k)] = _number(v)
            except ValueError:
                pass  # non-numeric extras are not metrics
    return reward, success, extras


class _Outcome:
    """One function's results over N samples, filled sample by sample."""

    def __init__(self, n: int, failure_value: float):
        self.values = [math.nan] * n        # [N] reward; NaN = None, failure_value = failed
        self.success = [math.nan] * n       # [N] 1.0/0.0; NaN = not reported
        self.failed = [False] * n
        self.timed_out = [False] * n
        self.extras: dict[str, list[float]] = {}
        self.failure_value = failure_value
        self.first_error: tuple[int, str, str] | None = None   # (sample, summary, traceback)
        self.batch_retries = 0              # batch calls that failed and were retried one sample at a time
        self.log = RewardLog()              # what the function logged (log_metric / log_extra)

    def record(self, i: int, result: Any) -> None:
        try:
            reward, success, extras = parse_result(result)
        except ValueError as exc:
            self.fail(i, exc)
            return
        self.values[i] = math.nan if reward is None else reward
        self.success[i] = success
        for key, v in extras.items():
            self.extras.setdefault(key, [math.nan] * len(self.values))[i] = v

    def fail(self, i: int, exc: Exception) -> None:
        self.values[i], self.failed[i] = self.failure_value, True
        self.timed_out[i] = isinstance(exc, _TimedOut)
        if self.first_error is None and isinstance(exc, SandboxCallError):   # raised in a worker process
            self.first_error = (i, str(exc), exc.remote_traceback or str(exc))
        elif self.first_error is None:
            self.first_error = (i, f"{type(exc).__name__}: {exc}", "".join(traceback.format_exception(exc)))


def _concurrently(calls: list[Callable[[], _Outcome]], flags: list[bool]) -> list[_Outcome]:
    """Run ``calls`` in order, those flagged (async reward functions) side by side in threads when there are
    several; an exception of any is raised here."""
    results: dict[int, Any] = {}
    together = [i for i, f in enumerate(flags) if f] if sum(flags) > 1 else []

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except BaseException as exc:  # noqa: BLE001  (re-raised in the caller)
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in together]
    for t in threads:
        t.start()
    for i in range(len(calls)):
        if i not in together:
            run(i)
    for t in threads:
        t.join()
    for i in range(len(calls)):
        if isinstance(results[i], BaseException):
            raise results[i]
    return [results[i] for i in range(len(calls))]


def _as_list(rf: RewardFunction, results: Any, n: int) -> list[Any]:
    if isinstance(results, (str, bytes, Mapping)) or not isinstance(results, Iterable):
        raise RewardFailure(f"reward '{rf.name}' returned {type(results).__name__}, expected a list of {n} "
                            f"results, one per completion")
    results = list(results)
    if len(results) != n:
        raise RewardFailure(f"reward '{rf.name}' returned {len(results)} results for {n} completions; a batch "
                            f"reward must return exactly one result per completion")
    return results


Invoke = Callable[[dict[str, Any]], Any]    # kwargs -> the function's result (raises _TimedOut past timeout_s)


def _run_each(rf: RewardFunction, n: int, kwargs_at: Callable[[int], dict[str, Any]],
              unpack: Callable[[Any], Any], invoke: Invoke, out: _Outcome) -> None:
    """Call ``rf`` once per sample; after MAX_CONSECUTIVE_TIMEOUTS timeouts in a row, skip the rest."""
    streak = 0
    for i in range(n):
        if streak >= MAX_CONSECUTIVE_TIMEOUTS:
            out.fail(i, _TimedOut(f"reward '{rf.name}' skipped after {streak} consecutive timeouts"))
            continue
        try:
            result = invoke(kwargs_at(i))
        except Exception as exc:  # noqa: BLE001  (isolated: this sample fails)
            streak = streak + 1 if isinstance(exc, _TimedOut) else 0
            out.fail(i, exc)
            continue
        streak = 0
        out.record(i, unpack(result))


_WARNED_RETRY: set[str] = set()


def _score_batch(rf: RewardFunction, kwargs: dict[str, list], shared: dict[str, Any], n: int, invoke: Invoke,
                 out: _Outcome) -> None:
    """One call for the whole batch (``kwargs``: N values each; ``shared``: one value per call); if it raises or
    times out, retry one sample at a time (counted, warned about once per function)."""
    try:
        results = invoke({**kwargs, **shared})
    except Exception as exc:  # noqa: BLE001  (retried per sample below)
        out.batch_retries += 1
        if rf.name not in _WARNED_RETRY:
            _WARNED_RETRY.add(rf.name)
            logger.warning("reward '%s' raised on a batch of %d (%s: %s); retrying it one sample at a time (slower; "
                           "counted in reward/batch_retries, warned once)", rf.name, n, type(exc).__name__, exc)
        _run_each(rf, n, lambda i: {**{k: [v[i]] for k, v in kwargs.items()}, **shared},
                  lambda r: _as_list(rf, r, 1)[0], invoke, out)
        return
    for i, result in enumerate(_as_list(rf, results, n)):
        out.record(i, result)


class RewardManager:
    """Scores completions with every configured reward function and combines them (see module docstring)."""

    def __init__(self, specs: list[RewardSpec], *, timeout_s: float | None = 30.0, failure_value: float = 0.0,
                 answer_column: str = "answer", default_data_source: str = "unknown",
                 executor: Literal["auto", "process", "thread"] = "auto", allow_empty: bool = False,
                 external_names: Iterable[str] = ()):
        if executor not in EXECUTORS:
            raise ValueError(f"RewardManager(executor={executor!r}): choose one of {', '.join(EXECUTORS)}")
        self.functions = [load_reward(s) for s in specs] if allow_empty else validate(specs)
        seen: dict[str, int] = {}
        for rf in self.functions:  # unique metric names when one function is configured twice
            seen[rf.name] = seen.get(rf.name, 0) + 1
            rf.name = rf.name if seen[rf.name] == 1 else f"{rf.name}_{seen[rf.name]}"
        self.external_names = self._check_external_names(list(external_names))
        self.timeout_s = timeout_s if timeout_s is not None and timeout_s > 0 else None
        self.failure_value = float(failure_value)
        self.answer_column = answer_column
        self.default_data_source = default_data_source
        self._logged: set[str] = set()
        self._pool: ProcessExecutor | None = None   # started on the first process call
        self._pool_lock = threading.Lock()
        for spec, rf in zip(specs, self.functions):
            self._place(rf, spec.name, executor)

    def _check_external_names(self, names: list[str]) -> list[str]:
        taken = {rf.name for rf in self.functions}
        for name in names:
            if not isinstance(name, str) or not name:
                raise ValueError(f"external_names: {name!r} is not a non-empty string")
            if name in taken:
                raise ValueError(f"external_names: '{name}' is also the name of a reward function or is listed "
                                 f"twice; give every reward component its own name")
            taken.add(name)
        return names

    def _place(self, rf: RewardFunction, spec_name: str, choice: str) -> None:
        """Choose where ``rf`` runs (module docstring, "Timeouts and executors") and log it once."""
        if self.timeout_s is None:
            rf.executor = "inline"
        elif rf.is_async:                # awaited in a thread's own event loop (reward_calls.resolve_awaitable)
            rf.executor = "thread"
        elif choice == "process":
            rf.worker_ref = rf.worker_ref or _absolute(spec_name)   # resolved by name in the worker, whatever it is
            rf.executor = "process"
        else:
            rf.executor = "process" if choice == "auto" and rf.worker_ref is not None else "thread"
        if (rf.name, rf.executor) not in _ANNOUNCED:
            _ANNOUNCED.add((rf.name, rf.executor))
            where = {"process": f"a worker process (resolving '{rf.worker_ref}')",
                     "thread": "a daemon thread" + (" (not a plain importable function)" if choice == "auto" else ""),
                     "inline": "the caller's thread (timeout_s=None)"}[rf.executor]
            logger.info("reward '%s' runs in %s", rf.name, where)

    @property
    def names(self) -> list[str]:
        return [rf.name for rf in self.functions] + self.external_names

    def close(self) -> None:
        """Stop the reward worker processes (if any were started); idempotent. A later call starts new ones."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def _invoke(self, rf: RewardFunction, kwargs: dict[str, Any]) -> Any:
        """``rf(**kwargs)`` where ``rf.executor`` says; a timeout raises _TimedOut."""
        if rf.executor != "process":
            return _call(rf.fn, kwargs, self.timeout_s, rf.name)
        with self._pool_lock:
            if self._pool is None:
                limits = SandboxLimits(timeout_s=self.timeout_s, cpu_s=self.timeout_s * (os.cpu_count() or 1),
                                       memory_mb=None, max_processes=None, no_network=False, fresh_workdir=False)
                self._pool = ProcessExecutor(limits, workers=PROCESS_WORKERS, name="rewards")
                weakref.finalize(self, self._pool.request_close)   # dropped without close(): workers stop
            pool = self._pool
        callbacks = [c for c in CALLBACKS if c in kwargs]
        try:
            if not callbacks:
                return pool.call(rf.worker_ref, {**rf.options, **kwargs})
            log = kwargs[callbacks[0]].__self__          # the RewardLog the callbacks belong to
            plain = {k: v for k, v in kwargs.items() if k not in callbacks}
            result, logged = pool.call(("rlkit.reward_calls:call_logged", rf.worker_ref),
                                       {"kwargs": {**rf.options, **plain}, "callbacks": callbacks})
            log.merge(logged)
            return result
        except SandboxTimeout as exc:
            raise _TimedOut(f"reward '{rf.name}' did not return within timeout_s={self.timeout_s}; its worker "
                            f"process was killed") from exc

    def check_columns(self, columns: Iterable[str]) -> None:
        """Raise RewardFailure if a function needs a column the dataset lacks (start-up check)."""
        columns = list(columns)
        for rf in self.functions:
            missing = _missing_columns(rf, columns, self.answer_column)
            if missing:
                raise RewardFailure(f"reward '{rf.name}' needs dataset column(s) {', '.join(missing)}, which the "
                                    f"dataset lacks (columns: {', '.join(sorted(columns)) or '(none)'}); set "
                                    f"data.answer_column or add the column")

    def score(self, prompts: list[str], completions: list[str], columns: dict[str, list],
              completion_ids: list[list[int]] | None = None,
              external: dict[str, list[float | None]] | None = None, *, raw_prompts: list | None = None,
              messages: list[list[dict]] | None = None, state: RewardState | None = None) -> RewardResult:
        """Score N completions; ``columns`` maps each dataset column to its N values; ``completion_ids`` are the
        generated token ids (for length-based rewards such as ``overlong_penalty``); ``external`` holds one list
        of N values (float or None) per name in ``external_names``, combined like weight-1.0 functions.
        ``raw_prompts`` (the prompt column as stored) decide TRL's conversational form; ``messages`` are the
        completions as messages (multi-turn episodes; default: one assistant message each); ``state`` is what
        ``trainer_state`` receives."""
        t0 = time.perf_counter()
        n = len(completions)
        bad = {k: len(v) for k, v in {"prompts": prompts, **columns}.items() if len(v) != n}
        if bad:
            raise ValueError(f"reward inputs disagree in length: {n} completions but {bad}")
        self.check_columns(columns)
        extra = self._external_outcomes(external, n)
        conv = raw_prompts is not None and n > 0 and is_conversational(raw_prompts[0])
        batch_inputs = {**columns, "prompts": list(raw_prompts if conv else prompts),
                        "completions": (messages or [as_messages(t) for t in completions]) if conv else
                        list(completions)}
        if completion_ids is not None:
            batch_inputs["completion_ids"] = [list(ids) for ids in completion_ids]
        outcomes = _concurrently([functools.partial(self._score_function, rf, batch_inputs, completions, columns,
                                                    state or RewardState()) for rf in self.functions],
                                 [rf.is_async for rf in self.functions])
        result = self._combine(outcomes + extra, n)
        result.metrics["time_s"] = time.perf_counter() - t0
        return result

    def _external_outcomes(self, external: dict[str, list[float | None]] | None, n: int) -> list[_Outcome]:
        """One _Outcome per external name: the given values, None -> NaN (unscorable)."""
        external = external or {}
        if set(external) != set(self.external_names):
            raise ValueError(f"score(external=...) got the keys {sorted(external)}, but this RewardManager was "
                             f"built with external_names={self.external_names}; pass exactly those keys, each a "
                             f"list of {n} floats or None")
        outcomes = []
        for name in self.external_names:
            values = list(external[name])
            if len(values) != n:
                raise ValueError(f"external reward '{name}' has {len(values)} values for {n} completions")
            out = _Outcome(n, self.failure_value)
            for i, value in enumerate(values):
                try:
                    out.values[i] = math.nan if value is None else _number(value)
                except ValueError as exc:
                    raise ValueError(f"external reward '{name}', sample {i}: {exc}; give a finite number or "
                                     f"None (unscorable)") from None
            outcomes.append(out)
        return outcomes

    def _score_function(self, rf: RewardFunction, batch_inputs: dict[str, list], completions: list[str],
                        columns: dict[str, list], state: RewardState) -> _Outcome:
        n = len(completions)
        out = _Outcome(n, self.failure_value)
        invoke = functools.partial(self._invoke, rf)
        if rf.style == BATCH:
            if "completion_ids" not in batch_inputs and "completion_ids" in rf.required():
                raise RewardFailure(f"reward '{rf.name}' needs completion_ids, which this caller does not provide")
            shared = {"trainer_state": state, **out.log.callbacks(set(CALLBACKS))}
            _score_batch(rf, {k: list(v) for k, v in batch_inputs.items() if rf.accepts(k)},
                         {k: v for k, v in shared.items() if rf.accepts(k)}, n, invoke, out)
        else:
            _run_each(rf, n, lambda i: self._sample_kwargs(rf, i, completions, columns), lambda r: r, invoke, out)
        self._report(rf, out, n)
        return out

    def _sample_kwargs(self, rf: RewardFunction, i: int, completions: list[str],
                       columns: dict[str, list]) -> dict[str, Any]:
        skip = (self.answer_column, "data_source", "reward_model", "extra_info")
        extra = {k: v[i] for k, v in columns.items() if k not in skip}
        if "extra_info" in columns and isinstance(columns["extra_info"][i], Mapping):   # verl's own extra_info
            extra.update(columns["extra_info"][i])
        data = {"solution_str": completions[i], "ground_truth": _ground_truth(columns, self.answer_column, i),
                "data_source": columns["data_source"][i] if "data_source" in columns else self.default_data_source,
                "extra_info": extra}
        return {k: v for k, v in data.items() if rf.accepts(k)}

    def _report(self, rf: RewardFunction, out: _Outcome, n: int) -> None:
        if out.first_error is None:
            return
        sample, summary, trace = out.first_error
        if rf.name not in self._logged:
            self._logged.add(rf.name)
            logger.warning("reward '%s' failed on sample %d (it gets failure_value=%s; later failures are only "
                           "counted in the metrics):\n%s", rf.name, sample, self.failure_value, trace)
        if n and all(out.failed):
            hint = (" Rewards run in worker threads: disable their own signal-based timeouts."
                    if "signal only works in main thread" in summary else "")
            raise RewardFailure(f"reward '{rf.name}' failed on all {n} samples of this step; first error "
                                f"(sample {sample}): {summary}.{hint} The run stops: fix the reward function "
                                f"(full traceback logged above by 'rlkit.rewards').")

    def _combine(self, outcomes: list[_Outcome], n: int) -> RewardResult:
        k = len(outcomes)
        comps = torch.tensor([o.values for o in outcomes], dtype=torch.float32).reshape(k, n).T    # [N, K]
        weights = torch.tensor([rf.weight for rf in self.functions] + [1.0] * len(self.external_names),
                               dtype=torch.float32)                                                # [K]
        scored = ~torch.isnan(comps)                                                                # [N, K]
        rewards = (torch.nan_to_num(comps, nan=0.0) * weights).sum(dim=1)                           # [N]
        rewards[~scored.any(dim=1)] = math.nan
        succ = torch.tensor([o.success for o in outcomes], dtype=torch.float32).reshape(k, n).T    # [N, K]
        reported = ~torch.isnan(succ)                                                               # [N, K]
        every = torch.where(reported, succ, torch.ones_like(succ)).amin(dim=1)                     # [N] AND
        success = torch.where(reported.any(dim=1), every, torch.full_like(rewards, math.nan))      # [N]
        metrics = self._metrics(outcomes, comps, rewards)
        logged = {col: vals for o in outcomes for col, vals in o.log.extras.items() if len(vals) == n}
        return RewardResult(rewards=rewards, success=success, components=comps, metrics=metrics,
                            names=self.names, logged=logged)

    def _metrics(self, outcomes: list[_Outcome], comps: torch.Tensor, rewards: torch.Tensor) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for j, (name, out) in enumerate(zip(self.names, outcomes)):
            col = comps[:, j]                                                                        # [N]
            if (~torch.isnan(col)).any():
                metrics[f"{name}/mean"] = float(col.nanmean())
            metrics[f"{name}/failures"] = float(sum(out.failed))
            metrics[f"{name}/batch_retries"] = float(out.batch_retries)
            for key, values in out.log.metrics.items():                  # log_metric: the step's mean
                metrics[f"{name}/{key}"] = float(np.mean(values))
            metrics[f"{name}/timeouts"] = float(sum(out.timed_out))
            metrics[f"{name}/unscorable"] = float(torch.isnan(col).sum())
            for key, values in out.extras.items():
                if not all(math.isnan(v) for v in values):
                    metrics[f"{name}/{key}"] = float(np.nanmean(values))
        metrics["failures"] = float(sum(sum(o.failed) for o in outcomes))
        metrics["batch_retries"] = float(sum(o.batch_retries for o in outcomes))
        metrics["timeouts"] = float(sum(sum(o.timed_out) for o in outcomes))
        metrics["unscorable"] = float(torch.isnan(rewards).sum())
        return metrics
