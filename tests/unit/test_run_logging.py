"""Console vs run log: which records a user sees, and that the run log keeps all of them."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from rlkit.run_logging import ConsoleFilter, is_benign, run_log

ROOT = Path(__file__).resolve().parents[2]


def _record(name: str, level: int, msg: str, *args) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


RECORDS = {
    "rlkit info": _record("rlkit.trainer", logging.INFO, "training on %d process(es)", 1),
    "rlkit debug": _record("rlkit.rewards", logging.DEBUG, "retrying one by one"),
    "vllm info": _record("vllm.model_executor.model_loader.reload.inplace", logging.INFO, "Reloading weights inplace..."),
    "vllm rotary": _record("vllm.model_executor.model_loader.reload.layerwise", logging.WARNING,
                           "%s: Failed to load weights", "RotaryEmbedding"),
    "vllm other layer": _record("vllm.model_executor.model_loader.reload.layerwise", logging.WARNING,
                                "%s: Failed to load weights", "QKVParallelLinear"),
    "accelerate info": _record("accelerate.checkpointing", logging.INFO, "Model weights saved in /x"),
    "accelerate tied": _record("accelerate.utils.other", logging.WARNING,
                               "[RANK 0] Removed shared tensor {'lm_head.weight'} while saving."),
    "torch warning": _record("torch.distributed", logging.WARNING, "something that matters"),
    "vllm eager": _record("vllm.config.vllm", logging.WARNING, "Enforce eager set, disabling torch.compile"),
    "vllm kv": _record("vllm.v1.core.kv_cache_utils", logging.WARNING, "KV cache smaller than max_model_len"),
}


def test_console_shows_rlkit_and_warnings_that_matter():
    quiet = ConsoleFilter(verbose=False)
    shown = {k for k, r in RECORDS.items() if quiet.filter(r)}
    # a layer other than RotaryEmbedding failing to reload is a real problem: it stays on the console
    assert shown == {"rlkit info", "vllm other layer", "torch warning", "vllm kv"}
    assert {k for k, r in RECORDS.items() if is_benign(r)} == {"vllm rotary", "accelerate tied", "vllm eager"}
    assert all(ConsoleFilter(verbose=True).filter(r) for r in RECORDS.values())


def test_run_log_keeps_every_record_at_info(tmp_path):
    root = logging.getLogger()
    with run_log(tmp_path / "run") as path:
        for record in RECORDS.values():
            root.handle(record)
    text = path.read_text()
    assert path == tmp_path / "run" / "run.log"
    for key in ("rlkit info", "vllm info", "vllm rotary", "accelerate info", "accelerate tied", "torch warning"):
        assert RECORDS[key].getMessage() in text, key
    assert "retrying one by one" not in text                    # DEBUG is below the run log's level
    assert not [h for h in root.handlers if getattr(h, "baseFilename", "") == str(path)]   # detached after
    with run_log(tmp_path / "run", process_index=1) as other:
        assert other.name == "run.rank1.log"


def test_cli_routes_library_chatter_and_verbose_brings_it_back(tmp_path):
    # the CLI's set-up in a fresh interpreter: a vLLM-style logger (vLLM's own handler is off) and transformers
    code = ("import logging, sys; from rlkit.run_logging import configure_console, run_log\n"
            "configure_console(verbose=len(sys.argv) > 1)\n"
            "with run_log('out'):\n"
            "    logging.getLogger('vllm.x').info('vllm chatter')\n"
            "    logging.getLogger('rlkit.x').info('rlkit message')\n"
            "    import transformers; transformers.utils.logging.get_logger('transformers.x').warning('tf warning')\n")
    for verbose in (False, True):
        proc = subprocess.run([sys.executable, "-c", code, *(["-v"] if verbose else [])], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(ROOT)})
        assert proc.returncode == 0, proc.stderr
        assert "rlkit message" in proc.stderr and "tf warning" in proc.stderr
        assert ("vllm chatter" in proc.stderr) == verbose
        log = (tmp_path / "out" / "run.log").read_text()
        assert "vllm chatter" in log and "tf warning" in log
