"""Tests for rlkit.tracking: metrics/samples files, TensorBoard, optional wandb, progress bar, tables."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from rich.table import Table

from rlkit import console as console_mod
from rlkit.console import Progress, format_eval_table, print_table, samples_table
from rlkit.tracking import MetricsLogger, read_metrics

ROOT = Path(__file__).resolve().parents[2]


def render(table: Table) -> str:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(table)
    return console.file.getvalue()


def test_log_writes_strict_jsonl_with_tensor_numpy_and_nonfinite(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log(1, {"reward/mean": torch.tensor(0.5), "loss/kl": float("nan"), "rollout/n": np.int64(8)})
        logger.log(2, {"reward/mean": np.float32(0.25), "loss/kl": float("inf"), "sampler/name": "gvm"})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])  # strict JSON: NaN/inf are written as null
    assert "NaN" not in lines[0] and "Infinity" not in lines[1]
    assert first["step"] == 1 and isinstance(first["time"], float)
    assert first["reward/mean"] == 0.5 and first["loss/kl"] is None and first["rollout/n"] == 8
    rows = read_metrics(tmp_path)  # null comes back as NaN
    assert math.isnan(rows[0]["loss/kl"]) and math.isnan(rows[1]["loss/kl"])
    assert rows[1]["reward/mean"] == 0.25 and rows[1]["sampler/name"] == "gvm"


def test_log_lines_are_flushed_before_close(tmp_path):
    logger = MetricsLogger(tmp_path, tensorboard=False)
    logger.log(3, {"loss/policy": 1.5})
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["loss/policy"] == 1.5
    logger.close()
    logger.close()  # idempotent


def test_log_rejects_non_scalars_and_reserved_names(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        with pytest.raises(TypeError, match=r"'adv/values'.*shape \(3,\)"):
            logger.log(1, {"adv/values": torch.ones(3)})
        with pytest.raises(TypeError, match=r"'x'.*list"):
            logger.log(1, {"x": [1, 2]})
        with pytest.raises(ValueError, match="reserved"):
            logger.log(1, {"step": 1})


def test_tensorboard_event_file_written(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        logger.log(1, {"reward/mean": 0.5, "loss/kl": float("nan"), "sampler/name": "fixed"})
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_disabled_logger_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    logger = MetricsLogger(run_dir, wandb={"project": "x"}, enabled=False)  # wandb not even imported
    logger.log(1, {"reward/mean": 1.0})
    assert logger.log_samples(1, [{"prompt": "p"}]) is None
    logger.close()
    assert not run_dir.exists()
    print_table(None)  # what a disabled logger returns prints nothing


def test_read_metrics_tolerates_truncated_last_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "reward/mean": 0.1}\n{"step": 2, "rew')
    assert read_metrics(tmp_path) == [{"step": 1, "reward/mean": 0.1}]


def test_read_metrics_names_a_corrupt_middle_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        read_metrics(tmp_path)


def test_read_metrics_missing_file_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="rlkit run directory"):
        read_metrics(tmp_path / "nope")


def test_resumed_logger_drops_partial_line_and_appends(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "x": 1.0}\n{"step": 2, "x"')
    with pytest.warns(UserWarning, match="partial last line"):
        logger = MetricsLogger(tmp_path, tensorboard=False)
    logger.log(2, {"x": 2.0})
    logger.close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]


def test_log_samples_writes_rows_and_samples_table_renders_them(tmp_path):
    long_text = "[bold]x[/bold] " + "word " * 40
    rows = [
        {"prompt": long_text, "completion": "42", "reward": torch.tensor(1.0), "success": True, "advantage": 0.5},
        {"prompt": "2+2?", "completion": "5\nno", "reward": 0.0, "success": False, "advantage": float("nan")},
    ]
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log_samples(7, rows)
    table = samples_table(rows, title="samples at step 7", max_chars=80)   # the trainer renders what it logged
    written = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [r["step"] for r in written] == [7, 7]
    assert written[0]["reward"] == 1.0 and written[0]["success"] is True and written[0]["prompt"] == long_text
    assert written[1]["advantage"] is None
    assert isinstance(table, Table) and table.row_count == 2
    text = render(table)
    assert "[bold]x[/bold]" in text  # markup escaped, shown literally
    assert "…" in text and "word " * 20 not in text  # truncated to ~80 chars


def test_wandb_requested_but_not_installed_raises_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` raise ImportError
    with pytest.raises(ImportError, match="pip install wandb"):
        MetricsLogger(tmp_path / "run", wandb={"project": "rlkit"})
    assert not (tmp_path / "run").exists()  # failed before creating anything


def test_wandb_receives_init_kwargs_and_numeric_metrics(tmp_path, monkeypatch):
    calls: dict = {"log": []}

    class FakeRun:
        def log(self, data, step):
            calls["log"].append((step, data))

        def finish(self):
            calls["finished"] = True

    def init(**kwargs):
        calls["init"] = kwargs
        return FakeRun()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    with MetricsLogger(tmp_path, tensorboard=False, wandb={"project": "p", "name": "n"}) as logger:
        logger.log(4, {"reward/mean": torch.tensor(0.5), "sampler/name": "gvm"})
    assert calls["init"] == {"dir": str(tmp_path), "project": "p", "name": "n"}
    assert calls["log"] == [(4, {"reward/mean": 0.5})]
    assert calls["finished"]


TRACKIO_RUN = """
import torch
from rlkit.tracking import MetricsLogger
from trackio.sqlite_storage import SQLiteStorage
with MetricsLogger("run7", tensorboard=False, trackio={"project": "unit"}) as logger:
    logger.log(1, {"reward/mean": 0.25, "sampler/name": "fixed"})
    logger.log(2, {"reward/mean": torch.tensor(0.75)})
print("LOGS", [(row["step"], row["reward/mean"], "sampler/name" in row) for row in SQLiteStorage.get_logs("unit", "run7")])
"""


def test_trackio_is_a_tracker_beside_the_files(tmp_path):
    # the real package (dev extra), in a subprocess: trackio reads TRACKIO_DIR (its database) at import time
    pytest.importorskip("trackio")
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", TRACKIO_RUN], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "LOGS [(1, 0.25, False), (2, 0.75, False)]" in out.stdout
    assert (tmp_path / "trackio" / "unit.db").exists()
    assert (tmp_path / "run7" / "metrics.jsonl").read_text().count("\n") == 2


def test_trackio_requested_but_not_installed_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "trackio", None)
    with pytest.raises(ImportError, match=r"rlkit\[trackio\]"):
        MetricsLogger(tmp_path / "run", trackio={})
    assert not (tmp_path / "run").exists()


def test_progress_with_non_tty_stream():
    stream = io.StringIO()  # not a TTY, like CI
    bar = Progress(5, initial=1, file=stream)
    bar.update(2, {"reward/mean": 0.5, "reward/success": 0.25, "loss/kl": 0.001, "loss/total": 0.1})
    bar.update(5, {"reward/mean": torch.tensor(0.75), "time/step": 2.0})
    bar.close()
    bar.close()
    out = stream.getvalue()
    assert "5/5" in out and "reward=0.75" in out and "s/step=2" in out


def test_progress_postfix_and_disabled():
    text = Progress.postfix({"reward/mean": 0.5, "loss/kl": 0.00123, "loss/total": 1.0, "time/step": 3.0})
    assert text == "reward=0.5 kl=0.00123 loss=1 s/step=3"
    stream = io.StringIO()
    bar = Progress(3, enabled=False, file=stream)
    bar.update(1, {"reward/mean": 1.0})
    bar.close()
    assert stream.getvalue() == ""


def test_eval_table_and_print_table(capsys):
    table = format_eval_table({"eval/accuracy": 0.4567891, "eval/n": 200, "[x]": "y"}, title="gsm8k")
    assert table.row_count == 3
    print_table(table)
    out = capsys.readouterr().out
    assert "gsm8k" in out and "0.4568" in out and "200" in out and "[x]" in out
    assert console_mod.console.stderr is False
