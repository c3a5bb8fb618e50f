"""The pass registry: built-in passes, entry-point plugins (group ``compress_graph.passes``) and ``--plugin``."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import sys
from importlib.metadata import entry_points
from pathlib import Path

from compress_graph.ir.errors import UsageError
from compress_graph.passes.base import Pass

ENTRY_POINT_GROUP = "compress_graph.passes"
_NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


class Registry:
    def __init__(self) -> None:
        self._passes: dict[str, type[Pass]] = {}
        self._entry_points_loaded = False

    def register(self, cls: type[Pass]) -> None:
        if not (isinstance(cls, type) and issubclass(cls, Pass)):
            raise UsageError(f"{cls!r} is not a Pass subclass")
        name = cls.name
        if not name or not _NAME_RE.match(name):
            raise UsageError(f"pass class {cls.__qualname__} needs a kebab-case `name` (got {name!r})")
        existing = self._passes.get(name)
        if existing is not None and existing is not cls:
            same_origin = (existing.__module__, existing.__qualname__) == (cls.__module__, cls.__qualname__)
            if not same_origin:
                raise UsageError(
                    f"pass name '{name}' is already registered by {existing.__module__}.{existing.__qualname__}"
                )
        self._passes[name] = cls

    def get(self, name: str) -> type[Pass]:
        self.load_entry_points()
        try:
            return self._passes[name]
        except KeyError:
            raise UsageError(f"unknown pass '{name}' (known passes: {', '.join(self.names())})") from None

    def names(self) -> list[str]:
        self.load_entry_points()
        return sorted(self._passes)

    def items(self) -> list[tuple[str, type[Pass]]]:
        return [(n, self._passes[n]) for n in self.names()]

    def load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            try:
                obj = ep.load()
            except Exception as exc:
                raise UsageError(f"plugin entry point '{ep.name}' ({ep.value}) failed to load: {exc}") from None
            for cls in _pass_classes(obj):
                self.register(cls)


def _pass_classes(obj) -> list[type[Pass]]:
    if inspect.isclass(obj) and issubclass(obj, Pass) and obj is not Pass:
        return [obj]
    if inspect.ismodule(obj):
        return [
            c
            for _, c in sorted(vars(obj).items())
            if inspect.isclass(c) and issubclass(c, Pass) and c.__module__ == obj.__name__ and c.name
        ]
    raise UsageError(f"plugin object {obj!r} is neither a Pass subclass nor a module")


REGISTRY = Registry()


def import_source(target: str, what: str, prefix: str):
    """The module behind ``target``: a ``path/to/file.py`` (imported under ``prefix`` + its stem) or an importable
    module name. Failures are one-line UsageErrors naming ``what`` (plugin, metric)."""
    path = Path(target)
    if target.endswith(".py") or path.is_file():
        if not path.is_file():
            raise UsageError(f"{what} file '{target}' not found")
        mod_name = prefix + re.sub(r"\W", "_", path.stem)
        module_spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[mod_name] = module
        try:
            module_spec.loader.exec_module(module)
        except UsageError:
            raise
        except Exception as exc:
            raise UsageError(f"{what} '{target}' failed to import: {type(exc).__name__}: {exc}") from None
        return module
    try:
        return importlib.import_module(target)
    except Exception as exc:
        raise UsageError(f"{what} module '{target}' failed to import: {type(exc).__name__}: {exc}") from None


def load_plugin(spec: str) -> list[str]:
    """Load ``path/to/file.py`` or ``module:Class`` (or ``module``); register its passes; return their names."""
    if spec.endswith(".py") or Path(spec).is_file():
        obj = import_source(spec, "plugin", "compress_graph_plugin_")
    else:
        mod_name, _, attr = spec.partition(":")
        obj = import_source(mod_name, "plugin", "compress_graph_plugin_")
        if attr:
            if not hasattr(obj, attr):
                raise UsageError(f"plugin '{spec}': module has no attribute '{attr}'")
            obj = getattr(obj, attr)
    classes = _pass_classes(obj)
    if not classes:
        raise UsageError(f"plugin '{spec}' defines no pass (a Pass subclass with a `name`)")
    for cls in classes:
        REGISTRY.register(cls)
    return [c.name for c in classes]
