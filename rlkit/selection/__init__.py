"""Selections: which samples and tokens are trained on, as token_weights [N, T] in [0, 1].

Importing this package registers the built-in selections in ``rlkit.registry.SELECTIONS``.
"""

from rlkit.plugin_api import Selection
from rlkit.selection import all_tokens, d3s  # noqa: F401
from rlkit.selection.all_tokens import AllTokens
from rlkit.selection.d3s import D3SSelection

__all__ = ["AllTokens", "D3SSelection", "Selection"]
