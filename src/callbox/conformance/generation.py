"""Schemas in the form hypothesis-jsonschema generates from, and what it generates made sendable.

Used by the conformance suite's negative cases and by the codec's property tests, so both generate
from exactly the published schemas.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import jsonschema_rs

from callbox.codec import REFERENCE, REGISTRY, Direction, python_pattern

MAX_SAFE_INTEGER = 2**53 - 1


@cache
def _registry() -> jsonschema_rs.Registry:
    return jsonschema_rs.Registry([(uri, REGISTRY.contents(uri)) for uri in REGISTRY])


def generator_schema(direction: Direction, tag: str) -> dict[str, Any]:
    """The message schema in the draft-07 form hypothesis-jsonschema understands.

    References are inlined (it does not follow references between files), `dependentRequired`
    becomes the equivalent draft-07 `dependencies`, and every `pattern` is written for Python's
    `re` (hypothesis generates with it), so no string valid only to Python is generated.
    """
    source = REFERENCE[direction][tag].schema
    assert isinstance(source, dict)
    schema: dict[str, Any] = jsonschema_rs.dereference(dict(source), registry=_registry())
    schema.pop("$schema", None)
    if "dependentRequired" in schema:
        schema["dependencies"] = schema.pop("dependentRequired")
    written_for_python: dict[str, Any] = _python_patterns(schema)
    return written_for_python


def _python_patterns(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            key: python_pattern(value) if key == "pattern" else _python_patterns(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_python_patterns(item) for item in node]
    return node


def json_safe(value: Any) -> Any:
    """`value` with every integer clamped to the JavaScript safe-integer range.

    A field the schema leaves free (`room_broadcast.data`) gets integers of any size from
    hypothesis-jsonschema, which orjson cannot encode (it stops at 64 bits). Constrained fields are
    already within the range, so only such free values change, and they stay valid.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return max(-MAX_SAFE_INTEGER, min(MAX_SAFE_INTEGER, value))
    if isinstance(value, list):
        return [json_safe(item) for item in value]
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    return value
