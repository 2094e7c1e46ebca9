"""Where log records go: the console gets rlkit's own messages and everyone's warnings, the run log gets all.

Console (``configure_console``, called once by the CLI): records of ``rlkit.*`` at INFO and above, and WARNING and
above from every library, except the known-benign ones in :data:`BENIGN` (each names why it is harmless). vLLM's,
accelerate's and transformers' INFO chatter (weight reloads, prefix-cache resets, checkpoint saving) and the
libraries' own progress bars (weight loading, dataset ``map``) stay off the console, so the progress bar, the
evaluation tables and the final before/after line are what a user sees. vLLM's start-up notes about rlkit's own
settings or the CPU build (eager mode, no Triton, chunked prefill off, thread binding) count as benign too. Python
warnings are captured as log records (logger ``py.warnings``). ``-v/--verbose`` shows every record and bar.

Run log (``run_log(output_dir)``, around one training run): every record at INFO and above, benign ones included,
goes to ``<output_dir>/run.log`` (``run.rank<k>.log`` on the other processes), with timestamps.

vLLM normally installs its own stderr handler on the ``vllm`` logger; ``configure_console`` sets
``VLLM_CONFIGURE_LOGGING=0`` (unless the user set it) before vLLM is imported, so vLLM's records reach these
handlers like any other library's.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

CONSOLE_FORMAT = "%(levelname)s %(name)s: %(message)s"
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: (logger name prefix, part of the formatted message, why it is harmless): dropped from the console only.
BENIGN: list[tuple[str, str, str]] = [
    ("vllm.model_executor.model_loader.reload", "RotaryEmbedding: Failed to load weights",
     "vLLM 0.32 counts RotaryEmbedding's non-persistent cos_sin_cache buffer as a loadable weight; no checkpoint "
     "holds it (it is computed from rope_theta), so every in-place reload 'fails' to load it and vLLM puts the "
     "original buffer back. The weight-sync canary checks the reloaded engine against the policy every sync"),
    ("accelerate", "Removed shared tensor",
     "checkpoints of a model with tied input/output embeddings hold the shared tensor once; loading ties them "
     "again (the exact-resume tests compare every parameter)"),
    # vLLM's start-up notes that describe rlkit's own, deliberate settings or the CPU build, not a problem
    ("vllm", "The global random seed is set to",
     "rlkit seeds every request itself (per-completion seeds) and never relies on the process RNG vLLM seeds"),
    ("vllm", "does not officially support disabling chunked prefill",
     "rlkit turns chunked prefill off on CPU on purpose (rlkit.rollout.vllm_engine.llm_kwargs says why)"),
    ("vllm", "Enforce eager set", "rlkit's choice on CPU (no CUDA graphs to capture)"),
    ("vllm", "Inductor compilation was disabled", "follows from eager mode"),
    ("vllm", "Triton is installed, but doesn't include CPU backend", "the CPU build runs without Triton"),
    ("vllm", "Triton is not installed", "the CPU build runs without Triton"),
    ("vllm", "Model Runner V2 requires Triton", "vLLM falls back to its V1 runner, which rlkit is tested with"),
    ("vllm", "Reset SSM cache type", "concerns state-space models only"),
    ("vllm", "is set; leaving Torch threads at", "the thread count rlkit (OMP_NUM_THREADS) asked for"),
    ("vllm", "doesn't allow to use `torch.set_num_threads` after the thread binding",
     "the binding rlkit asked for (VLLM_CPU_OMP_THREADS_BIND) stays"),
    ("vllm", "is not found in LD_PRELOAD",
     "a CPU performance hint (tcmalloc / Intel OpenMP preloading); rlkit runs correctly without it"),
    ("py.warnings", "`torch.distributed.reduce_op` is deprecated", "raised inside vLLM's own module scan"),
]

_verbose = False


def is_verbose() -> bool:
    """Whether the CLI was asked for every library's output (``-v``): libraries' own progress bars follow it."""
    return _verbose


def is_benign(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return any(record.name.startswith(prefix) and part in message for prefix, part, _ in BENIGN)


class ConsoleFilter(logging.Filter):
    """rlkit's INFO and above plus every library's WARNING and above, minus :data:`BENIGN`; all when verbose."""

    def __init__(self, verbose: bool = False):
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if self.verbose:
            return True
        if record.name == "rlkit" or record.name.startswith("rlkit."):
            return record.levelno >= logging.INFO
        return record.levelno >= logging.WARNING and not is_benign(record)


def configure_console(verbose: bool = False) -> None:
    """Route library logging (and Python warnings) through the root logger with :class:`ConsoleFilter`
    (idempotent)."""
    global _verbose
    _verbose = verbose
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    logging.captureWarnings(True)           # warnings.warn -> logger "py.warnings": filtered and in the run log
    root = logging.getLogger()
    root.setLevel(os.environ.get("RLKIT_LOG_LEVEL", "DEBUG" if verbose else "INFO"))
    for handler in [h for h in root.handlers if getattr(h, "_rlkit_console", False)]:
        root.removeHandler(handler)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(CONSOLE_FORMAT))
    handler.addFilter(ConsoleFilter(verbose))
    handler._rlkit_console = True
    root.addHandler(handler)
    vllm_logger = logging.getLogger("vllm")      # vLLM imported (and configured itself) already: take it over
    if vllm_logger.handlers and not vllm_logger.propagate:
        vllm_logger.handlers.clear()
        vllm_logger.propagate = True
    _quiet_libraries(verbose)


def _quiet_libraries(verbose: bool) -> None:
    import transformers
    tf_logging = transformers.utils.logging
    tf_logging.disable_default_handler()    # transformers' records propagate to the root handlers instead
    tf_logging.enable_propagation()
    tf_logging.set_verbosity_info() if verbose else tf_logging.set_verbosity_warning()
    (tf_logging.enable_progress_bar if verbose else tf_logging.disable_progress_bar)()
    with contextlib.suppress(ImportError):
        import datasets
        (datasets.enable_progress_bars if verbose else datasets.disable_progress_bars)()


@contextlib.contextmanager
def run_log(output_dir: str | Path, process_index: int = 0) -> Iterator[Path]:
    """Copy every record at INFO and above to the run's log file while the block runs."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / ("run.log" if process_index == 0 else f"run.rank{process_index}.log")
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(FILE_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    if root.getEffectiveLevel() > logging.INFO:
        previous, root.level = root.level, logging.INFO
    else:
        previous = None
    try:
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()
        if previous is not None:
            root.setLevel(previous)
