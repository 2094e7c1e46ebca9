"""The GSPO and CISPO CPU recipes lift held-out accuracy on the quickstart task (shortened to 40 steps), as every
other algorithm's recipe does, and log their losses' clip fractions."""

import pytest

from tests.integration.conftest import train_recipe

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.mark.parametrize("recipe", ["gspo_quickstart", "cispo_quickstart"])
def test_policy_loss_recipe_improves_heldout_accuracy(recipe, warm_start, tmp_path):
    rows, acc = train_recipe(recipe, warm_start, tmp_path / "run")
    assert acc[-1] - acc[0] >= 0.15, f"{recipe}: held-out accuracy {acc[0]:.3f} -> {acc[-1]:.3f}"
    clip = [r["loss/clip_frac"] for r in rows if "loss/clip_frac" in r]
    assert len(clip) == 40 and all(0.0 <= c <= 1.0 for c in clip)
