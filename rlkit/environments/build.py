"""Recipe ``environment:`` section -> Environment: registered plug-ins, or TRL-style classes wrapped unchanged."""

from __future__ import annotations

import inspect
from typing import Any

from rlkit.environments.base import Environment
from rlkit.environments.trl_adapter import ClassEnvironment
from rlkit.plugins import load_builtins
from rlkit.registry import ENVIRONMENTS, PluginError, check_kwargs


def build_environment(name: str, kwargs: dict[str, Any] | None = None) -> Environment:
    """``name``: a registered environment, an ``environment.<name>`` entry point, or ``module:attr`` /
    ``path/file.py:attr`` naming an rlkit Environment subclass or a TRL-style class (``reset`` + tool methods)."""
    load_builtins()
    kwargs = dict(kwargs or {})
    target = ENVIRONMENTS.get(name)
    if inspect.isclass(target) and issubclass(target, Environment):
        env = ENVIRONMENTS.build(name, kwargs)
    elif callable(target):
        check_kwargs(ClassEnvironment, {"factory": target, **kwargs}, f"environment '{name}'")
        try:
            env = ClassEnvironment(target, **kwargs)
        except (TypeError, ValueError) as exc:
            raise PluginError(str(exc)) from exc
    else:
        raise PluginError(f"environment '{name}' is a {type(target).__name__}; name an rlkit Environment subclass "
                          "or a TRL-style environment class (reset(**row) plus public tool methods)")
    if not getattr(env, "plugin_name", None):
        env.plugin_name = name
    return env
