"""The records as bytes: what a store shared by many nodes keeps of each `Session`, `User`,
`Call` (with its parties) and `Room`.

A record encoded and decoded again has the same value (`records.value_of`): tests/core/
test_encoding.py checks it for each kind, and `TrackingStore` for every record an event writes,
under the whole core suite. Frames held for replay are JSON text, so they are kept as strings.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import TypeVar

import cattrs
import orjson

from callbox.core.sessions import RECENTLY_ENDED_CALLS

_R = TypeVar("_R")

RECORDS = cattrs.Converter()
"""cattrs for the records; containers the records keep empty as `NOTHING` or `()` (most
sessions never ring, join a room or watch anyone) come back so."""
RECORDS.register_unstructure_hook(bytes, lambda frame: frame.decode())  # frames are JSON text
RECORDS.register_unstructure_hook_func(
    lambda cls: getattr(cls, "__origin__", cls) in (deque, set, frozenset),
    lambda items: [RECORDS.unstructure(item) for item in items],
)
RECORDS.register_structure_hook(deque[bytes] | None, lambda items, _: _frames(items))
RECORDS.register_structure_hook(
    deque[str] | tuple[()], lambda ids, _: deque(ids, RECENTLY_ENDED_CALLS) if ids else ()
)
RECORDS.register_structure_hook(
    set[str] | frozenset[str], lambda ids, _: set(ids) if ids else frozenset()
)
RECORDS.register_structure_hook_func(
    lambda cls: getattr(cls, "__origin__", None) is Counter, lambda counts, _: Counter(counts)
)


def _frames(texts: list[str] | None) -> deque[bytes] | None:
    return None if texts is None else deque(text.encode() for text in texts)


def encode_record(record: object) -> bytes:
    return orjson.dumps(RECORDS.unstructure(record))


def decode_record(cls: type[_R], data: bytes) -> _R:
    return RECORDS.structure(orjson.loads(data), cls)
