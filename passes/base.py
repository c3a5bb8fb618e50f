"""The pass contract: a small class with a registered name, declared options and ``run(model, ctx)``."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from compress_graph.ir.errors import UsageError
from compress_graph.ir.model import Model


def option(default: Any, help: str, *, choices: Iterable[str] | None = None) -> Any:
    """Declare a pass option: ``ratio: float = option(0.3, "fraction removed")``.

    List-typed options take ``|``-separated values in pipeline text (``exclude=head*|*.cls``).
    """
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class NoOptions:
    pass


@dataclass
class PassResult:
    model: Model
    modified: bool
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class PassContext:
    """What a pass may use besides the model: data, seed, warnings and a progress hook (set by the front end)."""

    calib: Any = None  # default calibration data: a path, or a passes.data.CalibData
    seed: int = 0
    original: Model | None = None  # the pipeline's input model, untouched
    warnings: list[str] = field(default_factory=list)
    progress_hook: Callable[[Iterable, str, int | None], Iterable] | None = None
    # what the compile target prefers, for options the user left at their default: e.g. {"channel_block": 16},
    # the channel count a pruned tensor should be a multiple of to fill the target's packed kernels
    preferences: dict[str, Any] = field(default_factory=dict)
    # the concrete shapes dynamic inputs are analysed at (a passes.data.InputShapes, set by the pipeline)
    input_shapes: Any = None
    # --metric / --max-drop: a passes.metric.AccuracyBudget (None without a metric)
    accuracy: Any = None
    _calib_cache: dict[str, Any] = field(default_factory=dict)

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def progress(self, iterable: Iterable, desc: str = "", total: int | None = None) -> Iterable:
        if self.progress_hook is None:
            return iterable
        return self.progress_hook(iterable, desc, total)

    def calib_data(self, override: Any = None, model: Model | None = None):
        """The calibration data a pass should use: its own ``calib=`` option if set, else the pipeline's ``--calib``.

        Returns a :class:`compress_graph.passes.data.CalibData` or None when no data was given.
        """
        from compress_graph.passes.data import CalibData

        source = override if override not in (None, "") else self.calib
        if source is None:
            return None
        if isinstance(source, CalibData):
            return source
        key = str(source)
        if key not in self._calib_cache:
            self._calib_cache[key] = CalibData.from_path(source, model or self.original)
        return self._calib_cache[key]


class Pass:
    """Base class. Subclasses set ``name``, ``description``, optionally an ``Options`` dataclass, and ``run``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    #: the pass meets ``ctx.accuracy``'s ``--max-drop`` itself (quant keeps layers in float); the pipeline does not
    #: back it off
    meets_accuracy_budget: ClassVar[bool] = False

    def __init__(self, options: Any = None, *, given: list[tuple[str, str]] | None = None, **kwargs: Any):
        if options is None:
            options = self.Options(**kwargs)
        self.options = options
        # The option items as the user wrote them, in order: printing a pipeline back reproduces its text.
        self.given = list(given) if given is not None else [(k, format_value(v)) for k, v in kwargs.items()]

    def run(self, model: Model, ctx: PassContext) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def milder(self, level: float) -> Pass | None:
        """This pass cutting ``level`` (0 < level < 1) of what it is configured to cut, for ``--max-drop``: the
        pipeline bisects the level until the task metric is within budget. None: the pass has no such knob."""
        return None

    def with_options(self, **changes: Any) -> Pass:
        """A copy with some options changed (the text shows them as given)."""
        options = dataclasses.replace(self.options, **changes)
        given = [(k, v) for k, v in self.given if k not in changes]
        given += [(k, format_value(round(v, 4) if isinstance(v, float) else v)) for k, v in changes.items()]
        return type(self)(options, given=given)

    def needs_macs(self) -> bool:
        """True when the options need the model's MAC count (a ``macs=`` target): the pipeline then refuses a model
        whose dynamic input dims it cannot resolve instead of letting the pass count 0 MACs and do nothing."""
        return getattr(self.options, "macs", None) is not None

    # ----------------------------------------------------------------------------------- text form
    @classmethod
    def from_items(cls, items: list[tuple[str, str]]) -> Pass:
        """Build from ``(key, text value)`` pairs, converting each value to its declared type."""
        fields = {f.name: f for f in dataclasses.fields(cls.Options)}
        hints = typing.get_type_hints(cls.Options)
        values: dict[str, Any] = {}
        for key, text in items:
            if key not in fields:
                known = ", ".join(fields) or "none"
                raise UsageError(f"pass '{cls.name}': unknown option '{key}' (options: {known})")
            if key in values:
                raise UsageError(f"pass '{cls.name}': option '{key}' given twice")
            values[key] = parse_value(cls.name, key, text, hints[key], fields[key].metadata.get("choices"))
        return cls(cls.Options(**values), given=items)

    def text(self) -> str:
        if not self.given:
            return self.name
        return self.name + "{" + ",".join(f"{k}={quote(v)}" for k, v in self.given) + "}"

    def options_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.options)

    @classmethod
    def describe_options(cls) -> list[dict[str, Any]]:
        """Declared options as dicts (name, type, default, help, choices) for --help, `passes` and docs."""
        hints = typing.get_type_hints(cls.Options)
        out = []
        for f in dataclasses.fields(cls.Options):
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = None
            out.append(
                {
                    "name": f.name,
                    "type": type_name(hints[f.name]),
                    "default": default,
                    "help": f.metadata.get("help", ""),
                    "choices": list(f.metadata.get("choices", ())),
                }
            )
        return out

    def __repr__(self) -> str:
        return f"<pass {self.text()}>"


# --------------------------------------------------------------------------------------------- values
def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def type_name(tp: Any) -> str:
    base, optional = _unwrap_optional(tp)
    origin = typing.get_origin(base)
    if origin in (list, tuple):
        inner = typing.get_args(base)
        name = f"list[{getattr(inner[0], '__name__', 'str') if inner else 'str'}]"
    else:
        name = getattr(base, "__name__", str(base))
    return name + ("?" if optional else "")


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_value(pass_name: str, key: str, text: str, tp: Any, choices: tuple[str, ...] | None) -> Any:
    base, optional = _unwrap_optional(tp)
    if optional and text.lower() in ("none", "null", ""):
        return None
    try:
        if typing.get_origin(base) in (list, tuple):
            inner = (typing.get_args(base) or (str,))[0]
            return [_scalar(p, inner) for p in text.split("|") if p != ""]
        value = _scalar(text, base)
    except ValueError:
        raise UsageError(f"pass '{pass_name}': option '{key}' expects {type_name(tp)}, got '{text}'") from None
    if choices and value not in choices:
        raise UsageError(f"pass '{pass_name}': option '{key}' must be one of {', '.join(choices)}; got '{text}'")
    return value


def _scalar(text: str, tp: Any) -> Any:
    if tp is bool:
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(text)
    if tp is int:
        return int(text)
    if tp is float:
        return float(text)
    return text


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "|".join(format_value(v) for v in value)
    return str(value)


_SPECIAL = set(",{}=\" ")


def quote(text: str) -> str:
    if text == "" or any(c in _SPECIAL for c in text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


# --------------------------------------------------------------------------------------------- registry shortcut
def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: register a pass under its ``name`` (duplicate names raise)."""
    from compress_graph.passes.registry import REGISTRY

    REGISTRY.register(cls)
    return cls
