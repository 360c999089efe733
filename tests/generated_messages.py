"""Generated wire messages for the codec's property tests, from the published schemas.

Kept apart from `tests/helpers.py` because importing hypothesis-jsonschema builds strategies,
which hypothesis warns about when it happens while conftest files load.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from callbox import messages
from callbox.codec import Direction
from callbox.conformance.generation import generator_schema, json_safe

MESSAGES: list[tuple[Direction, str]] = [
    (direction, tag)
    for direction, classes in (
        ("client", messages.CLIENT_MESSAGES),
        ("server", messages.SERVER_MESSAGES),
    )
    for tag in classes
]
"""Every published message type, by direction: what the property tests are parametrised over."""
MESSAGE_IDS = [f"{direction}/{tag}" for direction, tag in MESSAGES]
EXAMPLES = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
"""Hypothesis settings of the codec's property tests: generating from the schemas is slow, so
no deadline and few examples per message type (there are 39 types)."""


@cache
def instances(direction: Direction, tag: str) -> st.SearchStrategy[dict[str, Any]]:
    """Valid wire instances of one message type, generated from its published schema."""
    return from_schema(generator_schema(direction, tag)).map(json_safe)
