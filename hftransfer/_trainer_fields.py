"""The installed `transformers.TrainingArguments`, introspected once: which fields a recipe may pass through, their
types, and checking a YAML or command-line value against one of them.

A recipe passes any `TrainingArguments` field hftransfer does not set itself straight to the Trainer
(`hftransfer.recipes`); the field list and annotations come from the installed transformers, so a newer version's
fields work without a change here.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any


def transformers_training_fields() -> dict[str, dataclasses.Field]:
    """The fields of the installed `transformers.TrainingArguments` a recipe may set, by name (read once)."""
    global _TRAINER_FIELDS
    if _TRAINER_FIELDS is None:
        import transformers

        _TRAINER_FIELDS = {f.name: f for f in dataclasses.fields(transformers.TrainingArguments) if f.init}
    return _TRAINER_FIELDS


_TRAINER_FIELDS: dict[str, dataclasses.Field] | None = None
_TRAINER_HINTS: dict[str, Any] | None = None


def _trainer_type(name: str) -> Any:
    global _TRAINER_HINTS
    if _TRAINER_HINTS is None:
        import typing

        import transformers

        try:
            _TRAINER_HINTS = typing.get_type_hints(transformers.TrainingArguments)
        except Exception:  # noqa: BLE001 - a forward reference of another version: fall back to the raw annotations
            _TRAINER_HINTS = {n: f.type for n, f in transformers_training_fields().items()}
    return _TRAINER_HINTS.get(name, Any)


def trainer_type_name(annotation: Any) -> str:
    """`int`, `float`, `str`, `bool`, `dict | str`, `list[str]`, `choice of a, b` ... for help and errors."""
    import enum
    import typing

    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        enums = [a for a in args if isinstance(a, type) and issubclass(a, enum.Enum)]
        if enums:
            return "one of " + ", ".join(str(m.value) for m in enums[0])
        return " | ".join(trainer_type_name(a) for a in args)
    if typing.get_origin(annotation) is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if typing.get_origin(annotation) in (list, dict):
        return f"{typing.get_origin(annotation).__name__}[{', '.join(trainer_type_name(a) for a in args)}]"
    return getattr(annotation, "__name__", str(annotation))


def _coerce_to(value: Any, annotation: Any) -> Any:
    """`value` as `annotation` (a TrainingArguments type); ValueError when it is not one."""
    import enum
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any or annotation is typing.Any:
        return value
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None:
            if type(None) in args:
                return None
            raise ValueError
        enums = [a for a in args if isinstance(a, type) and issubclass(a, enum.Enum)]
        if enums and isinstance(value, str):
            choices = [m.value for m in enums[0]]
            if value not in choices:
                raise ValueError(f"expected one of {', '.join(map(str, choices))}")
            return value
        # Exact type first (a bool stays a bool, 2 stays an int), then conversions.
        for arg in args:
            if isinstance(arg, type) and not issubclass(arg, enum.Enum) and type(value) is arg:
                return value
        for arg in args:
            if arg is type(None) or (isinstance(arg, type) and issubclass(arg, enum.Enum)):
                continue
            try:
                return _coerce_to(value, arg)
            except (TypeError, ValueError):
                continue
        raise ValueError
    if origin is typing.Literal:
        if value in args:
            return value
        raise ValueError(f"expected one of {', '.join(map(repr, args))}")
    if value is None:
        raise ValueError
    if origin is list or annotation is list:
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        if not isinstance(value, (list, tuple)):
            raise ValueError
        return [_coerce_to(v, args[0]) if args else v for v in value]
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ValueError
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ValueError
    if annotation is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        return int(value)
    if annotation is float:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
        if not math.isfinite(number):
            raise ValueError("expected a finite number")
        return number
    if annotation is str:
        if isinstance(value, (dict, list, bool)):
            raise ValueError
        return str(value)
    return value  # a type hftransfer does not know how to check (e.g. ParallelismConfig): transformers checks it


__all__ = ["trainer_type_name", "transformers_training_fields"]
