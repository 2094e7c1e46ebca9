"""TRL-style environment classes, unchanged: ``environment: {name: path/file.py:MyEnv, max_turns: 4}``.

A class written for TRL's ``GRPOTrainer(environment_factory=MyEnv)``:

* ``MyEnv()`` makes one instance; rlkit makes **one per episode**, so episodes never share state;
* ``reset(**row)`` gets every column of the dataset row and returns None or a string that is appended to the
  last user message (TRL's rule);
* every public method (no leading ``_``) other than ``reset`` and ``get_reward`` is a tool, described to the
  model from its type hints and Google-style docstring (``transformers.utils.get_json_schema``);
* ``get_reward()``, if defined, is called once when the episode has finished; its value is one more reward
  component of weight 1, named after the class (``reward/<ClassName>/mean``), added to the recipe's
  ``reward.functions`` (which may then be empty).

Tool methods run in threads (the instance's state lives in the trainer process and cannot cross into a worker
process); ``tool_timeout_s`` bounds every call and ``get_reward``: a hung method is reported as a timeout and its
thread is abandoned (Python cannot kill a thread) -- put code that may hang into a plain function tool of
``environment: tools``, which runs in killable processes. ``async def`` methods work. The loop options are those
of ``environment: tools`` (``max_turns``, ``max_tool_calls``, ``max_total_tokens``, ``tool_timeout_s``,
``parser``, the canary's two options).
"""

from __future__ import annotations

import inspect
import types
from typing import Any, Callable

from rlkit.environments.base import Environment, Episode
from rlkit.environments.toolbox import Tool, Toolbox, make_tool
from rlkit.environments.tools import ToolEpisode, ToolLoopOptions
from rlkit.sandbox import SandboxError, SandboxLimits, make_executor

RESERVED = ("reset", "get_reward")


def tool_methods(cls: type) -> list[str]:
    """Names of the public methods of ``cls`` that become tools (TRL's rule)."""
    return [name for name, member in inspect.getmembers(cls, callable)
            if not name.startswith("_") and name not in RESERVED and not inspect.isclass(member)]


def check_environment_class(factory: Callable[..., Any], where: str) -> type:
    """Validate a TRL-style class without instantiating it: reset exists, every tool method is describable."""
    cls = factory if inspect.isclass(factory) else type(factory)
    if not callable(getattr(cls, "reset", None)):
        raise ValueError(f"{where}: {cls.__name__} has no reset method. A TRL-style environment class needs "
                         "reset(self, **row) -> str | None (called at the start of every episode with the dataset "
                         "row), plus its tools as public methods")
    names = tool_methods(cls)
    if not names:
        raise ValueError(f"{where}: {cls.__name__} has no public methods besides reset/get_reward, so the model "
                         "would have no tools; add typed, docstringed methods, or use `environment: tools`")
    for name in names:   # a bound method with a stand-in self has the signature the model will see
        make_tool(types.MethodType(getattr(cls, name), object()))
    return cls


class ClassEpisode(ToolEpisode):
    """A fresh instance of the user's class, its methods as this episode's toolbox."""

    def __init__(self, instance: Any, row: dict[str, Any], env: "ClassEnvironment"):
        bound = [getattr(instance, name) for name in env.method_names]   # schemas: parsed once, from the class
        tools = [Tool(s["function"]["name"], s, fn, fn) for s, fn in zip(env.tool_schemas(), bound)]
        super().__init__(Toolbox(tools, env.executor), env.parser, env.max_tool_calls)
        self.instance, self.row, self.env = instance, row, env

    def reset(self) -> str | None:
        extra = self.env.call(self.instance.reset, self.row, "reset")
        if extra is not None and not isinstance(extra, str):
            raise ValueError(f"{self.env.reward_name}.reset returned {type(extra).__name__}; it must return None "
                             "or a string (appended to the last user message)")
        return extra

    def reward(self) -> float | None:
        if not self.env.has_reward:
            return None
        try:
            return self.env.call(self.instance.get_reward, {}, "get_reward")
        except SandboxError as exc:   # the episode stays, unscored by this component (counted as unscorable)
            self.env.log_failure("get_reward", exc)
            return None


class ClassEnvironment(Environment):
    """Adapter for a TRL ``environment_factory`` class (module docstring)."""

    def __init__(self, factory: Callable[..., Any], max_turns: int = 4, max_tool_calls: int = 8,
                 max_total_tokens: int | None = None, tool_timeout_s: float = 30.0, parser: str = "hermes",
                 drift_check_episodes: int = 16, max_token_drift: float = 0.5):
        cls = check_environment_class(factory, "environment")
        opts = ToolLoopOptions(f"environment '{cls.__name__}'", max_turns, max_tool_calls, max_total_tokens,
                               tool_timeout_s, parser, drift_check_episodes, max_token_drift)
        self.__dict__.update(vars(opts))
        self.factory, self.method_names = factory, tool_methods(cls)
        self.has_reward = callable(getattr(cls, "get_reward", None))
        self.reward_name = cls.__name__ if self.has_reward else None
        self.plugin_name = cls.__name__
        self.executor = make_executor("thread", SandboxLimits(timeout_s=self.tool_timeout_s), workers=8,
                                      name=cls.__name__)
        self._failed: set[str] = set()
        self._schemas = [make_tool(types.MethodType(getattr(cls, n), object())).schema for n in self.method_names]

    def call(self, fn: Callable[..., Any], kwargs: dict[str, Any], what: str) -> Any:
        """``fn(**kwargs)`` on the episode's instance, bounded by tool_timeout_s (a SandboxError names ``what``)."""
        try:
            return self.executor.call(fn, kwargs, timeout_s=self.tool_timeout_s)
        except SandboxError as exc:
            raise type(exc)(f"{self.plugin_name}.{what}: {exc}") from exc

    def log_failure(self, what: str, exc: Exception) -> None:
        import logging
        if what not in self._failed:
            self._failed.add(what)
            logging.getLogger("rlkit").warning("environment %s.%s failed (later failures only counted): %s",
                                               self.plugin_name, what, exc)

    def tool_schemas(self) -> list[dict[str, Any]]:
        return self._schemas

    def episode(self, row: dict[str, Any]) -> Episode:
        return ClassEpisode(self.factory(), row, self)

    def close(self) -> None:
        self.executor.close()
