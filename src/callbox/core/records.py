"""Copying a record and putting the copy back: how `LocalStore` undoes an event that failed.

A record the event may change is copied once, at its first lookup (`LocalStore.changing`); a
rollback puts every field of the copy back into the live record, so whatever names the record
by key finds it unchanged, and the record stays the same object. Each record class's `copy()`
copies the containers the core changes in place; the immutable things they hold (frames, ids)
are shared.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from attrs import fields

_R = TypeVar("_R")


def _field_names(cls: type) -> list[str]:
    """The names of an attrs class's fields (from the tuple attrs keeps on the class: no cache
    to fill, so a first rollback costs what every rollback does)."""
    return [attribute.name for attribute in fields(cls)]


def shallow_copier(cls: type[_R]) -> Callable[[_R], _R]:
    """A function returning a new `cls` whose fields are the same objects as its argument's,
    with no `__init__` run: generated once per record class, a field per line, because a call
    set-up copies about fifteen records (a loop of `getattr`/`setattr` took half its time)."""
    names = _field_names(cls)
    lines = [
        "def copy(record):",
        "    new = _new(_cls)",
        *(f"    new.{name} = record.{name}" for name in names),
        "    return new",
    ]
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    exec("\n".join(lines), namespace)  # generated from attrs' own field names
    copy: Callable[[_R], _R] = namespace["copy"]
    return copy


def put_back(live: object, copy: object) -> None:
    """Every field of `copy` into `live`: `live` is as it was when `copy` was made."""
    for name in _field_names(type(live)):
        setattr(live, name, getattr(copy, name))


def value_of(record: object) -> Any:
    """A comparable value of `record` and everything it holds (for the write set: a record
    whose value did not change in an event was only read)."""
    cls = type(record)
    if hasattr(cls, "__attrs_attrs__"):
        return (cls, tuple(value_of(getattr(record, name)) for name in _field_names(cls)))
    if isinstance(record, dict):
        return tuple((key, value_of(value)) for key, value in record.items())
    if isinstance(record, (set, frozenset)):
        return frozenset(record)
    if isinstance(record, (list, tuple, deque)):
        return tuple(value_of(item) for item in record)
    return record
