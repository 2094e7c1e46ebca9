"""Shared fixtures: a tiny local model and synthetic data, built once per test session (no hub access)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TESTS = Path(__file__).parent
TEST_PLUGINS = TEST_REWARDS = TESTS / "plugin_fixtures.py"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from rlkit.tiny_model import build_tiny_model
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", size="tiny", seed=0)


@pytest.fixture(scope="session")
def arith_data(tmp_path_factory) -> dict[str, Path]:
    from rlkit.tasks import write_task
    return write_task("arithmetic", tmp_path_factory.mktemp("data"), train=400, eval=40, seed=0, difficulties=(1, 2))


def recipe_dict(model_dir: Path, data: dict[str, Path], out_dir: Path, **train) -> dict:
    """A minimal recipe for integration tests: digit-count reward so a random model gets signal."""
    return {
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": str(data["train"]), "eval": str(data["eval"])},
        "reward": {"functions": [{"name": f"{TEST_REWARDS}:digit_fraction"}]},
        "rollout": {"n": 4, "max_new_tokens": 6, "temperature": 1.0},
        "train": {"output_dir": str(out_dir), "steps": 2, "prompts_per_step": 4, "micro_batch_size": 8,
                  "lr": 1e-3, "lr_scheduler": "constant", "sample_every": 0, "eval_at_end": False,
                  "seed": 0, **train},
        "logging": {"tensorboard": False},
    }


def accelerate_cpu_cmd(procs: int, port: int) -> tuple[list[str], dict[str, str]]:
    """`accelerate launch` of `procs` real CPU processes (gloo) running `rlkit.cli`, and its environment."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd(), "ACCELERATE_USE_CPU": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(procs),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           str(port), "-m", "rlkit.cli"]
    return cmd, env
