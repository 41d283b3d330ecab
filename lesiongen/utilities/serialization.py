"""Typed JSON: dataclasses to plain dicts and back, without pickle.

``from_dict`` follows the type hints of a dataclass, so nested dataclasses inside lists and dicts come back as
the right classes. Unknown keys are an error, which catches plans written by an incompatible version.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from lesiongen.utilities.errors import LesiongenError
from lesiongen.utilities.files import read_json, write_json

T = TypeVar("T")


def _convert(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(options[0], value) if len(options) == 1 else value
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value)
    if origin in (list, tuple):
        args = typing.get_args(hint)
        item = args[0] if args else Any
        converted = [_convert(item, v) for v in value]
        return converted if origin is list else tuple(converted)
    if origin is dict:
        _, item = typing.get_args(hint) or (Any, Any)
        return {k: _convert(item, v) for k, v in value.items()}
    return value


def from_dict(cls: type[T], data: dict) -> T:
    """Build dataclass ``cls`` from ``data`` (as written by :func:`save_dataclass`)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise LesiongenError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}")
    return cls(**{k: _convert(hints[k], v) for k, v in data.items()})


def save_dataclass(path: str | Path, obj: Any) -> None:
    write_json(path, dataclasses.asdict(obj))


def load_dataclass(cls: type[T], path: str | Path) -> T:
    path = Path(path)
    if not path.is_file():
        raise LesiongenError(f"{path}: not found")
    try:
        return from_dict(cls, read_json(path))
    except (TypeError, KeyError, ValueError, LesiongenError) as exc:
        raise LesiongenError(f"{path}: cannot be read as {cls.__name__} ({exc})") from None
