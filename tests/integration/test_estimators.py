"""Every issue-4 estimator improves held-out accuracy on the quickstart task (its CPU recipe, shortened to 40
steps); PPO-GAE's value loss goes down; `rlkit eval` reports pass@k / max@k consistent with its own counts."""

import json
import statistics
from pathlib import Path

import pytest

from rlkit.functional import max_at_k_estimate, pass_at_k
from tests.integration.conftest import rlkit as _rlkit
from tests.integration.conftest import train_recipe

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
RECIPES = ["bnpo_quickstart", "rloo_quickstart", "reinforce_pp_quickstart", "ppo_gae_quickstart",
           "max_at_k_quickstart"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_estimator_improves_heldout_accuracy(recipe, warm_start, tmp_path):
    out = tmp_path / "run"
    rows, acc = train_recipe(recipe, warm_start, out)
    assert acc[-1] - acc[0] >= 0.15, f"{recipe}: held-out accuracy {acc[0]:.3f} -> {acc[-1]:.3f}"
    if recipe == "ppo_gae_quickstart":
        value = [r["loss/value_loss"] for r in rows if "loss/value_loss" in r]
        first, last = statistics.fmean(value[:8]), statistics.fmean(value[-8:])
        assert last < 0.7 * first, f"value loss {first:.4f} -> {last:.4f}"
        assert (out / "final/critic.safetensors").is_file()
    if recipe == "max_at_k_quickstart":
        _check_eval(out)


def _check_eval(run: Path) -> None:
    """rlkit eval on the finished run and on its step-20 checkpoint; the JSON agrees with its own counts."""
    text = _rlkit("eval", str(run), "--n", "8", "--k", "1,2,4,8", "--max-prompts", "60", "--engine", "hf")
    assert "pass@k" in text and "max@k" in text
    report = json.loads((run / "eval_at_k.json").read_text())
    assert report["prompts"] == 60 and report["n"] == 8 and report["model"].endswith("final")
    for k in ("1", "2", "4", "8"):
        want = statistics.fmean(pass_at_k(8, p["successes"], int(k)) for p in report["per_prompt"])
        assert report["pass@k"][k] == pytest.approx(want)
        assert report["max@k"][k] == pytest.approx(report["pass@k"][k])      # binary reward: max@k == pass@k
    p = [report["pass@k"][k] for k in ("1", "2", "4", "8")]
    assert p == sorted(p) and p[-1] > p[0]
    assert report["pass@k"]["1"] == pytest.approx(statistics.fmean(x["successes"] / 8 for x in report["per_prompt"]))
    one = report["per_prompt"][0]
    assert max_at_k_estimate([1.0] * one["successes"] + [0.0] * (8 - one["successes"]), 8) == float(one["successes"] > 0)
    ckpt = run / "checkpoints" / "step_000020"
    _rlkit("eval", str(ckpt), "--n", "4", "--k", "1,4", "--max-prompts", "30", "--engine", "hf",
           "--json", str(run / "ckpt_eval.json"))
    early = json.loads((run / "ckpt_eval.json").read_text())
    assert early["checkpoint"] == str(ckpt) and early["prompts"] == 30
