"""One config base: dataclasses that round-trip to JSON, refuse unknown keys by name and validate their values.

Every saved setting (preprocessing, detector, LDM, training, generation, scan) is one of these. A
config is built by exactly one path, :meth:`Config.from_dict`, whether the dict came from the
command line, from a background job's record or from a file beside the weights, so the three can
never disagree. Option sets are :class:`enum.StrEnum` classes: they compare equal to their
strings, serialise as them, and give the CLI its ``choices`` (:func:`choices`).
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any, ClassVar, Self, TypeVar

from core.common.errors import MemoScopeError

E = TypeVar("E", bound=enum.StrEnum)


def choices(options: type[enum.StrEnum]) -> tuple[str, ...]:
    """The string values of an option set, in definition order (for argparse and select boxes)."""
    return tuple(member.value for member in options)


def parse_option(options: type[E], value: Any, field: str) -> E:
    """``value`` as a member of ``options``, or an error that names the field and the allowed values."""
    try:
        return options(value)
    except ValueError:
        raise MemoScopeError(f"{field} {value!r} must be one of {', '.join(choices(options))}.") from None


def _strip_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _coerce(hint: Any, value: Any, field: str) -> Any:
    """JSON values back to the declared type: lists to tuples, strings to enum members, dicts to configs."""
    if value is None:
        return None
    hint = _strip_optional(hint)
    origin = typing.get_origin(hint)
    if isinstance(hint, type) and issubclass(hint, enum.StrEnum):
        return parse_option(hint, value, field)
    if isinstance(hint, type) and issubclass(hint, Config) and isinstance(value, dict):
        return hint.from_dict(value, source=field)
    if origin is dict and isinstance(value, dict):
        _, inner = typing.get_args(hint) or (Any, Any)
        return {k: _coerce(inner, v, f"{field}.{k}") for k, v in value.items()}
    if origin is tuple and isinstance(value, list | tuple):
        args = typing.get_args(hint)
        inner = args[0] if args else Any
        return tuple(_coerce(inner, v, field) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


class Config:
    """Base of every config dataclass (subclasses are ``@dataclass``-decorated).

    Subclasses override :meth:`validate` to check ranges and raise :class:`MemoScopeError` naming
    the field; it runs after every construction, so an invalid config cannot exist.
    """

    required: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = _coerce(hints[f.name], getattr(self, f.name), f.name)
            object.__setattr__(self, f.name, value)
        self.validate()

    def validate(self) -> None:
        """Check values; raise :class:`MemoScopeError` naming the field and the allowed range."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (enums as strings, tuples as lists) that :meth:`from_dict` rebuilds exactly."""
        return typing.cast(dict[str, Any], _jsonable(dataclasses.asdict(self)))  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> Self:
        """Build from a dict; unknown keys are refused by name, missing required keys too."""
        where = source or cls.__name__
        if not isinstance(data, dict):
            raise MemoScopeError(f"{where}: expected a JSON object, got {type(data).__name__}.")
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise MemoScopeError(f"{where}: unknown field(s) {unknown}; known fields are {sorted(known)}.")
        missing = sorted(
            f.name
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]
            if f.name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        )
        if missing:
            raise MemoScopeError(f"{where}: missing field(s) {missing}.")
        try:
            return cls(**data)
        except TypeError as exc:
            raise MemoScopeError(f"{where}: {exc}.") from exc
        except MemoScopeError as exc:  # a value refused by validate(): say which file held it
            if source is None or str(exc).startswith(source):
                raise
            raise MemoScopeError(f"{source}: {exc}") from exc

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied (validated like any new config)."""
        return type(self).from_dict({**self.to_dict(), **changes})


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def check_range(field: str, value: float, low: float | None = None, high: float | None = None) -> None:
    """Raise naming ``field`` unless ``low <= value <= high`` (either bound may be open)."""
    if value != value or (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise MemoScopeError(f"{field} {value!r} must be in [{lo}, {hi}].")
