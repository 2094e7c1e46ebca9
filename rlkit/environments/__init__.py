"""Environments: what happens between model turns (DESIGN.md "Plug-in kinds").

Built-ins: ``single_turn`` (default; one completion per prompt) and ``tools`` (tool-calling episodes). A
TRL-style environment class (``reset``, public methods as tools, optional ``get_reward``) is used unchanged
when named as ``environment: {name: path/file.py:MyEnv}`` (:mod:`rlkit.environments.trl_adapter`).
Third-party environments register under the entry-point group ``rlkit.plugins`` as ``environment.<name>``.

Modules: ``base`` (plug-in and episode interfaces, typed messages), ``parsers`` (tool-call parsers),
``toolbox`` (tool schemas and execution), ``render`` (token-exact chat-template insertions), ``runner`` (the
concurrent episode loop over any engine), ``canary`` (tokenization drift), ``build`` (recipe -> environment).
"""

from rlkit.environments.base import (Environment, Episode, ParseResult, Reply, ToolCall,  # noqa: F401
                                     ToolStats)
from rlkit.environments import parsers, single_turn, tools  # noqa: F401  (register the built-ins)
