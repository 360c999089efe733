"""Schemas in the form hypothesis-jsonschema generates from, what it generates made sendable, and
the negative section's instances generated in a process of their own.

Used by the conformance suite's negative cases and by the codec's property tests, so both generate
from exactly the published schemas.

Why a process of its own: besides its seeded choices, hypothesis draws about one value in twenty
from a pool of constants it collects from the source of every *local* (not installed) module
imported so far, and collects again whenever `sys.modules` grows. In the suite's process the
pool depends on what was imported before (the CLI, pytest, an editable install), so a seed did
not always give the same messages; and generation ran in a worker thread while the event loop
went on importing, so the pool could change between a draw and hypothesis's replay of it, which
hypothesis reports as a `FlakyFailure` (one run in eight of `negative.room_broadcast`). A child
running `python -m callbox.conformance.generation` imports the same modules every time, nothing
else runs in it, and the event loop is not slowed by generation.
"""

from __future__ import annotations

import sys
from functools import cache
from typing import Any

import jsonschema_rs
import orjson
import trio

from callbox.codec import REFERENCE, REGISTRY, Direction, python_pattern

MAX_SAFE_INTEGER = 2**53 - 1
EXIT_MISSING_MODULE = 3
"""The child's exit status when hypothesis or hypothesis-jsonschema is not installed; it prints
the module's name."""


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


def generate(tag: str, count: int, seed: int) -> list[dict[str, Any]]:
    """`count` valid instances of the client message `tag`, the same for the same seed (in a
    process that imported the same modules: see the module's docstring)."""
    from hypothesis import HealthCheck, Phase, given, settings  # noqa: PLC0415
    from hypothesis import seed as hypothesis_seed  # noqa: PLC0415
    from hypothesis_jsonschema import from_schema  # noqa: PLC0415

    found: list[dict[str, Any]] = []

    @hypothesis_seed(seed)
    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(from_schema(generator_schema("client", tag)).map(json_safe))
    def collect(instance: dict[str, Any]) -> None:
        found.append(instance)

    collect()
    return found[:count]


class Generated:
    """The valid instances the negative section spoils, for one run: generated once, by the
    first case that asks, in a child process (see the module's docstring); the others wait."""

    def __init__(self, count: int, seed: int) -> None:
        self.count, self.seed = count, seed
        self._lock = trio.Lock()
        self._instances: dict[str, list[dict[str, Any]]] | None = None

    async def instances(self, tag: str) -> list[dict[str, Any]]:
        """`count` instances of client message `tag`. Raises `ImportError` (with its `name`)
        when hypothesis or hypothesis-jsonschema is missing, `RuntimeError` if the child fails."""
        async with self._lock:
            if self._instances is None:
                self._instances = await self._generate()
        return self._instances[tag]

    async def _generate(self) -> dict[str, list[dict[str, Any]]]:
        command = [sys.executable, "-m", __name__, str(self.seed), str(self.count)]
        done = await trio.run_process(
            command, capture_stdout=True, capture_stderr=True, check=False
        )
        if done.returncode == EXIT_MISSING_MODULE:
            name = done.stderr.decode().strip()
            raise ImportError(f"No module named {name!r}", name=name)
        if done.returncode != 0:
            failure = done.stderr.decode()[-400:]
            raise RuntimeError(f"generating messages failed (exit {done.returncode}): {failure}")
        instances: dict[str, list[dict[str, Any]]] = orjson.loads(done.stdout)
        return instances


def main(argv: list[str]) -> int:
    """`python -m callbox.conformance.generation SEED COUNT`: every client message type's
    instances, as a JSON object by type, on stdout."""
    from callbox.messages import CLIENT_MESSAGES  # noqa: PLC0415

    seed, count = int(argv[0]), int(argv[1])
    try:
        instances = {tag: generate(tag, count, seed) for tag in CLIENT_MESSAGES}
    except ImportError as missing:
        print(missing.name, file=sys.stderr)
        return EXIT_MISSING_MODULE
    sys.stdout.buffer.write(orjson.dumps(instances))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
