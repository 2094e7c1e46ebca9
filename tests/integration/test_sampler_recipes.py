"""The issue-6 sampler recipes (GVM, Reinforce-Ada, VADE) improve held-out accuracy on the quickstart task
(shortened to 40 steps), and report what their sampling did."""

import pytest

from tests.integration.conftest import train_recipe

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.mark.parametrize("recipe", ["gvm_quickstart", "reinforce_ada_quickstart", "vade_quickstart"])
def test_sampler_recipe_improves_heldout_accuracy(recipe, warm_start, tmp_path):
    rows, acc = train_recipe(recipe, warm_start, tmp_path / "run")
    assert acc[-1] - acc[0] >= 0.15, f"{recipe}: held-out accuracy {acc[0]:.3f} -> {acc[-1]:.3f}"
    steps = [r for r in rows if "loss/total" in r]
    if recipe == "gvm_quickstart":
        assert all(r["sampler/probe_rollouts"] == 64 * 8 for r in steps)
        assert all(r["rollout/completions"] == 64 * 8 for r in steps)          # the budget, exactly
        assert any(r["sampler/alloc_max"] > 8 for r in steps)                  # unequal allocation
    if recipe == "reinforce_ada_quickstart":
        assert all(r["rollout/completions"] <= 64 * 4 for r in steps)
        assert all(1 <= r["sampler/rounds"] <= 4 for r in steps)
        assert any(r["sampler/finished_frac"] > 0 for r in steps)
    if recipe == "vade_quickstart":
        assert all(r["rollout/completions"] == 64 * 8 for r in steps)
        assert steps[-1]["sampler/seen_frac"] > 0                              # the data came back: posteriors used
