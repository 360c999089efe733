"""Copying a record and putting the copy back: how `LocalStore` undoes an event that failed.

A record the event may change is copied once, before its first change (`LocalStore.begin`); a
rollback puts every field of the copy back into the live record, so whatever names the record
by key finds it unchanged, and the record stays the same object. Each record class's `copy()`
copies the containers the core changes in place; the immutable things they hold (frames, ids)
are shared.
"""

from __future__ import annotations

from collections import deque
from typing import Any, TypeVar

from attrs import fields

_R = TypeVar("_R")


def _field_names(cls: type) -> list[str]:
    """The names of an attrs class's fields (from the tuple attrs keeps on the class: no cache
    to fill, so a first copy costs what every copy does)."""
    return [attribute.name for attribute in fields(cls)]


def shallow_copy(record: _R) -> _R:
    """A new record whose fields are the same objects as `record`'s (no `__init__` run)."""
    cls = type(record)
    copy: Any = object.__new__(cls)
    for name in _field_names(cls):
        setattr(copy, name, getattr(record, name))
    return copy  # type: ignore[no-any-return]


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
