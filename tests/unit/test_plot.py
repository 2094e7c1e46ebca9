"""Tests for rlkit.plot: PNG curves from a synthetic metrics.jsonl."""

from __future__ import annotations

import json
import math

import pytest

from rlkit.plot import ema, metric_series, plot_all, plot_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_metrics(run_dir, rows):
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "metrics.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def synthetic_rows(steps=30, with_kl=True):
    rows = []
    for step in range(1, steps + 1):
        row = {"step": step, "time": 1000.0 + step, "reward/mean": 0.1 + 0.02 * step + (0.05 if step % 2 else 0)}
        row["reward/success"] = min(1.0, 0.03 * step)
        if with_kl:
            row["loss/kl"] = 0.001 * step if step != 5 else None  # a NaN logged as null
        rows.append(row)
        if step % 10 == 0:
            rows.append({"step": step, "time": 1000.5 + step, "eval/accuracy": 0.02 * step})
    return rows


def is_png(path):
    return path.read_bytes()[:8] == PNG_MAGIC


def test_plot_run_writes_reward_accuracy_kl(tmp_path):
    write_metrics(tmp_path, synthetic_rows())
    paths = plot_run(tmp_path)
    assert sorted(p.name for p in paths) == ["accuracy.png", "kl.png", "reward.png"]
    assert all(p.parent == tmp_path / "plots" and is_png(p) for p in paths)
    assert paths.skipped == {}


def test_plot_run_skips_missing_keys_and_honours_out_dir(tmp_path):
    write_metrics(tmp_path / "run", synthetic_rows(with_kl=False))
    out = tmp_path / "figs"
    paths = plot_run(tmp_path / "run", out_dir=out)
    assert sorted(p.name for p in paths) == ["accuracy.png", "reward.png"]
    assert not (out / "kl.png").exists()
    assert set(paths.skipped) == {"kl"} and "kl" in paths.skipped["kl"]


def test_plot_run_with_explicit_keys(tmp_path):
    write_metrics(tmp_path, synthetic_rows())
    paths = plot_run(tmp_path, keys=["loss/kl", "sampler/absent"])
    assert [p.name for p in paths] == ["loss_kl.png"] and is_png(paths[0])
    assert list(paths.skipped) == ["sampler_absent"]


def test_plot_run_missing_run_dir_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"metrics\.jsonl.*rlkit run directory"):
        plot_run(tmp_path / "not_a_run")


def test_plot_all_one_png_per_numeric_key(tmp_path):
    rows = synthetic_rows(steps=12)
    rows[0]["sampler/name"] = "gvm"  # strings are not plotted
    write_metrics(tmp_path, rows)
    paths = plot_all(tmp_path)
    names = sorted(p.name for p in paths)
    assert names == ["eval_accuracy.png", "loss_kl.png", "reward_mean.png", "reward_success.png"]
    assert all(p.parent == tmp_path / "plots" / "all" and is_png(p) for p in paths)


def test_metric_series_last_value_per_step_and_drops_nonfinite():
    rows = [
        {"step": 1, "x": 1.0},
        {"step": 2, "x": 2.0},
        {"step": 3, "x": math.nan},
        {"step": 2, "x": 5.0},  # resumed run repeats step 2
    ]
    assert metric_series(rows) == {"x": ([1, 2], [1.0, 5.0])}


def test_ema_is_bias_corrected():
    # w = 0.5: s1 = 0.5*2 = 1 -> /0.5 = 2; s2 = 0.5*1 + 0.5*4 = 2.5 -> /0.75 = 3.333...
    assert ema([2.0, 4.0], weight=0.5) == pytest.approx([2.0, 10 / 3])
