"""Keyword checks worded as vllm 0.22.0's classes word them."""

from __future__ import annotations

from typing import Any


def msgspec_kwargs(fields: list[str], args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A msgspec Struct's __init__: fields by position in order, or by name."""
    if len(args) > len(fields):
        raise TypeError("Extra positional arguments provided")
    for name, value in zip(fields, args):
        if name in kwargs:
            raise TypeError(f"Argument '{name}' given by name and position")
        kwargs[name] = value
    for name in kwargs:
        if name not in fields:
            raise TypeError(f"Unexpected keyword argument '{name}'")
    return kwargs


def dataclass_kwargs(cls_name: str, fields: list[str], kwargs: dict[str, Any]) -> dict[str, Any]:
    for name in kwargs:
        if name not in fields:
            raise TypeError(f"{cls_name}.__init__() got an unexpected keyword argument '{name}'")
    return kwargs
