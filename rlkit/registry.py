"""Plug-in registries: one per kind, names for built-ins, ``module:attr`` for anything importable.

Resolution order for a name given in a recipe:

1. a built-in registered with ``@REGISTRY.register("name")``;
2. a third-party plug-in announced through the entry-point group ``rlkit.plugins`` with the entry-point
   name ``<kind>.<name>`` (e.g. ``advantage.my_adv = my_pkg.adv:MyAdv`` in the package's pyproject);
3. ``module:attr`` or ``path/to/file.py:attr`` -- anything importable.

``Registry.build(spec)`` checks the plug-in kwargs against the constructor signature before calling it, so a
misspelt kwarg fails at load time with the closest valid name.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any, Callable

ENTRY_POINT_GROUP = "rlkit.plugins"


class PluginError(ValueError):
    """A plug-in could not be found, imported or built from its recipe entry."""


def closest(word: str, options: list[str] | set[str]) -> str:
    """Return ' (did you mean 'x'?)' for the closest option, or ''."""
    match = difflib.get_close_matches(word, sorted(options), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def import_object(ref: str) -> Any:
    """Import ``module:attr`` or ``path/to/file.py:attr`` (dotted attr allowed)."""
    if ":" not in ref:
        raise PluginError(f"'{ref}' is neither a registered name nor 'module:attr'")
    module_name, _, attr = ref.rpartition(":")
    if module_name.endswith(".py") or "/" in module_name:
        path = Path(module_name)
        if not path.is_file():
            raise PluginError(f"plug-in file not found: '{path}' (from '{ref}'); check the path, relative to "
                              f"the directory you run from ({Path.cwd()})")
        mod_key = f"rlkit_user_{abs(hash(str(path.resolve())))}"
        if mod_key in sys.modules:
            module = sys.modules[mod_key]
        else:
            spec = importlib.util.spec_from_file_location(mod_key, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_key] = module
            spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            raise PluginError(f"cannot import module '{module_name}' (from '{ref}'): {exc}. Is it installed or "
                              f"on PYTHONPATH? A local file can be named as path/to/file.py:{attr}") from exc
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(module) if not n.startswith("_")]
            raise PluginError(f"module '{module_name}' has no attribute '{attr}'{closest(part, names)}")
        obj = getattr(obj, part)
    return obj


def check_kwargs(target: Callable, kwargs: dict[str, Any], where: str) -> None:
    """Raise PluginError if ``kwargs`` do not bind to ``target``'s signature (unknown or missing names)."""
    sig = inspect.signature(target)
    params = sig.parameters
    accepts_var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    named = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if not accepts_var_kw:
        for key in kwargs:
            if key not in named:
                raise PluginError(f"{where}: unknown option '{key}'{closest(key, named)}; valid options: "
                                  f"{', '.join(sorted(named)) or '(none)'}")
    missing = [n for n, p in params.items()
               if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is p.empty and n not in kwargs]
    if missing:
        raise PluginError(f"{where}: missing required option(s) {', '.join(missing)}")


class Registry:
    """Name -> plug-in factory for one plug-in kind."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        def deco(obj: Any) -> Any:
            old = self._entries.get(name)
            if old is not None and old is not obj:
                raise PluginError(
                    f"{self.kind} '{name}' is registered twice: by {old.__module__}.{old.__qualname__} and by "
                    f"{obj.__module__}.{obj.__qualname__}. If you copied a built-in, give your copy's "
                    f"register(...) a new name (or drop the decorator and name it as 'path/file.py:attr').")
            self._entries[name] = obj
            obj.plugin_name = name
            return obj
        return deco

    def names(self) -> list[str]:
        return sorted(set(self._entries) | set(self._entry_points()))

    def _entry_points(self) -> dict[str, importlib.metadata.EntryPoint]:
        prefix = f"{self.kind}."
        eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        return {ep.name[len(prefix):]: ep for ep in eps if ep.name.startswith(prefix)}

    def get(self, name: str) -> Any:
        if name in self._entries:
            return self._entries[name]
        eps = self._entry_points()
        if name in eps:
            return eps[name].load()
        if ":" in name:
            return import_object(name)
        raise PluginError(f"unknown {self.kind} '{name}'{closest(name, self.names())}; registered: "
                          f"{', '.join(self.names())}. Any importable object can be named as 'module:attr'.")

    def check(self, name: str, kwargs: dict[str, Any] | None = None, **context: Any) -> tuple[Any, dict[str, Any]]:
        """Resolve ``name`` and bind recipe ``kwargs`` + accepted trainer ``context``; returns (factory, kwargs).

        Context entries are passed only if the constructor accepts them (e.g. ``max_len``, ``model``).
        """
        kwargs = dict(kwargs or {})
        factory = self.get(name)
        where = f"{self.kind} '{name}'"
        target = factory.__init__ if inspect.isclass(factory) else factory
        params = inspect.signature(target).parameters
        for key in kwargs:
            if key in context:
                raise PluginError(f"{where}: option '{key}' is set by the trainer, not in the recipe")
        ctx = {k: v for k, v in context.items() if k in params}
        check_kwargs(factory, {**kwargs, **ctx}, where)
        return factory, {**kwargs, **ctx}

    def build(self, name: str, kwargs: dict[str, Any] | None = None, **context: Any) -> Any:
        """Build plug-in ``name`` with recipe ``kwargs`` (checked) plus trainer-provided ``context``."""
        factory, bound = self.check(name, kwargs, **context)
        try:
            return factory(**bound)
        except (TypeError, ValueError) as exc:
            raise PluginError(f"{self.kind} '{name}': {exc}") from exc

    def items(self) -> list[tuple[str, Any]]:
        return [(n, self.get(n)) for n in self.names()]


SAMPLERS = Registry("sampler")
OBJECTIVES = Registry("objective")
ADVANTAGES = Registry("advantage")
SELECTIONS = Registry("selection")
LOSSES = Registry("loss")
AGGREGATIONS = Registry("aggregation")
REWARDS = Registry("reward")
ENGINES = Registry("rollout")
ENVIRONMENTS = Registry("environment")
TOOL_PARSERS = Registry("tool_parser")

REGISTRIES: dict[str, Registry] = {r.kind: r for r in
                                   (SAMPLERS, OBJECTIVES, ADVANTAGES, SELECTIONS, LOSSES, AGGREGATIONS, REWARDS,
                                    ENGINES, ENVIRONMENTS, TOOL_PARSERS)}

