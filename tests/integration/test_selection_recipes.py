"""The issue-5 recipes (ΔL, D³S, DAPO) improve held-out accuracy on the quickstart task (shortened to 40 steps),
and report what they select: D³S trains on at most half the tokens early on, DAPO filters and refills groups."""

import pytest

from tests.integration.conftest import train_recipe

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.mark.parametrize("recipe", ["grpo_delta_l_quickstart", "d3s_quickstart", "dapo_quickstart"])
def test_recipe_improves_heldout_accuracy(recipe, warm_start, tmp_path):
    rows, acc = train_recipe(recipe, warm_start, tmp_path / "run")
    assert acc[-1] - acc[0] >= 0.15, f"{recipe}: held-out accuracy {acc[0]:.3f} -> {acc[-1]:.3f}"
    steps = [r for r in rows if "loss/total" in r]
    if recipe == "d3s_quickstart":
        early = [r["selection/token_frac"] for r in steps[:10]]
        assert max(early) <= 0.5, early
        assert steps[-1]["selection/token_frac"] > max(early)            # the schedule relaxes it
        assert all(r["selection/var_after"] >= r["selection/var_before"] - 1e-6 for r in steps[:10])
    if recipe == "dapo_quickstart":
        assert all("sampler/filtered_frac" in r and "sampler/extra_rollouts" in r for r in steps)
        assert any(r["sampler/filtered_frac"] > 0 for r in steps)
        assert all(r["sampler/informative_groups"] <= 64 for r in steps)
