"""CLI: validate, show (batch arithmetic), list, error exit codes."""

import yaml

from rlkit.cli import main

RECIPE = {"model": {"name_or_path": "Qwen/Qwen2.5-0.5B"}, "data": {"train": "openai/gsm8k"},
          "reward": {"functions": [{"name": "math_verify"}]},
          "rollout": {"n": 8}, "train": {"prompts_per_step": 32, "mini_batches": 4, "micro_batch_size": 8, "epochs": 2}}


def _write(tmp_path, tree, name="r.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(tree))
    return str(path)


def test_validate_ok_and_bad(tmp_path, capsys):
    good = _write(tmp_path, RECIPE)
    assert main(["validate", good, "--no-files"]) == 0
    assert "OK" in capsys.readouterr().out
    bad = _write(tmp_path, {**RECIPE, "advantage": {"name": "grpo", "scael": "none"}}, "bad.yaml")
    assert main(["validate", bad, "--no-files"]) == 2
    assert "unknown option 'scael'" in capsys.readouterr().err


def test_show_prints_batch_arithmetic(tmp_path, capsys):
    assert main(["show", _write(tmp_path, RECIPE), "--num-processes", "4"]) == 0
    out = capsys.readouterr().out
    # 32 prompts x 8 = 256 completions; 4 processes -> 64 each; 4 mini-batches -> 16 per process per optimizer
    # step; micro 8 -> 2 micro-batches; 2 epochs x 4 mini-batches = 8 optimizer steps per rollout batch
    import re
    row = lambda name: re.search(re.escape(name) + r"\s*│\s*([\d.]+)", out).group(1)
    assert row("completions per step") == "256"
    assert row("completions per process") == "64"
    assert row("completions per optimizer step per process") == "16"
    assert row("micro-batches per optimizer step per process (grad accumulation)") == "2"
    assert row("optimizer steps per rollout batch (epochs x mini_batches)") == "8"
    assert "name_or_path: Qwen/Qwen2.5-0.5B" in out and "eps_high" not in out  # resolved config printed


def test_list(capsys):
    assert main(["list", "advantage"]) == 0
    assert "grpo" in capsys.readouterr().out
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for kind in ("aggregation:", "loss:", "reward:", "rollout:", "sampler:"):
        assert kind in out
    assert main(["list", "advantages"]) == 2


def test_train_missing_recipe(capsys, tmp_path):
    assert main(["train", str(tmp_path / "none.yaml")]) == 2
    assert "recipe not found" in capsys.readouterr().err


def test_validate_takes_dotted_overrides_like_train(tmp_path, capsys):
    good = _write(tmp_path, RECIPE)
    assert main(["validate", good, "advantage.name=grpo", "--no-files"]) == 0      # applied, not read as a path
    assert "advantage=grpo" in capsys.readouterr().out
    assert main(["validate", good, "advantage.scael=none", "--no-files"]) == 2
    assert "scael" in capsys.readouterr().err
