"""Every shipped recipe validates (all plug-ins build, options checked) and starts with its launch command."""

from pathlib import Path

import pytest

from rlkit.config import load_config
from rlkit.session import check_recipe

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_validates(recipe):
    first = recipe.read_text().splitlines()[0]
    assert first.startswith("# ") and ("rlkit" in first or "accelerate launch" in first or "bash " in first), first
    check_recipe(load_config(recipe), check_files=False)
