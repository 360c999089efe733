"""Negative cases generated from the schemas: bad input never costs the connection.

For each client message type, instances generated from its schema by hypothesis-jsonschema
(`--examples` of them, from the fixed `--seed`, so a run can be reproduced; in a child process,
see `generation`) are spoilt in one way each: a required key dropped, an unknown key added, a
value of another JSON type, a string over its maxLength. Every one is checked locally to be
invalid, sent, and must be answered with `error invalid_message` whose `path` points at the
spoilt key (or inside it) and which echoes the `rid`; the connection must still answer a
`ping` afterwards. Hand-written frames cover what is not JSON, not an object, or of no known
type.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
from attrs import frozen

from callbox.codec import FAST
from callbox.conformance.context import Context
from callbox.conformance.generation import generator_schema
from callbox.conformance.registry import Case, CaseFunction, Skip, add
from callbox.conformance.steps import Pacer, check
from callbox.messages import CLIENT_MESSAGES, Error, ErrorCode

UNKNOWN_KEY = "unexpected_field"
OTHER_VALUES: tuple[Any, ...] = (12345, "x", True, None, [], {})
"""Replacements for a value, one of each JSON type; the first of another type that makes the
instance invalid is used."""


@frozen
class Mutant:
    """A spoilt instance and the `path` its refusal must name (or a pointer inside it: a value
    of another type can be refused for what it holds)."""

    how: str
    wire: dict[str, Any]
    path: str


# Spoiling -----------------------------------------------------------------------------------------


def mutants(tag: str, instances: list[dict[str, Any]]) -> Iterator[Mutant]:
    """Each instance spoilt four ways (the key spoilt rotates with the instance); only those
    that the schema refuses."""
    schema = generator_schema("client", tag)
    for index, instance in enumerate(instances):
        for mutant in _spoil(schema, index, {**instance, "rid": f"n{index}"}):
            if not FAST["client"][tag].is_valid(mutant.wire):
                yield mutant


def _spoil(schema: dict[str, Any], index: int, instance: dict[str, Any]) -> Iterator[Mutant]:
    def pick(keys: list[str]) -> str | None:
        return keys[index % len(keys)] if keys else None

    if (key := pick(schema["required"])) is not None:
        yield Mutant(f"drop {key}", {k: v for k, v in instance.items() if k != key}, f"/{key}")
    yield Mutant(f"add {UNKNOWN_KEY}", {**instance, UNKNOWN_KEY: 1}, f"/{UNKNOWN_KEY}")
    if (key := pick(sorted(set(instance) - {"rid"}))) is not None:
        for value in OTHER_VALUES[index % len(OTHER_VALUES) :] + OTHER_VALUES:
            retyped = {**instance, key: value}
            if _json_type(value) != _json_type(instance[key]):
                yield Mutant(f"{key} as {_json_type(value)}", retyped, f"/{key}")
                break
    bounded = [
        k
        for k, v in instance.items()
        if k != "rid" and isinstance(v, str) and "maxLength" in schema["properties"][k]
    ]
    if (key := pick(bounded)) is not None:
        length = schema["properties"][key]["maxLength"] + 1
        yield Mutant(f"{key} of {length} chars", {**instance, key: "x" * length}, f"/{key}")


def _json_type(value: Any) -> str:
    match value:
        case bool():
            return "boolean"
        case int() | float():
            return "number"
        case str():
            return "string"
        case None:
            return "null"
        case list():
            return "array"
    return "object"


# Cases --------------------------------------------------------------------------------------------


def _generated(tag: str) -> CaseFunction:
    async def run(ctx: Context) -> str:
        try:
            instances = await ctx.generated.instances(tag)
        except ImportError as missing:
            raise Skip(
                f"{missing.name} is not installed (pip install 'callbox[conformance]')"
            ) from None
        alice = await ctx.client("alice")
        pacer, sent, too_big = Pacer(alice.limits), 0, 0
        for mutant in mutants(tag, instances):
            frame = orjson.dumps(mutant.wire).decode()
            if len(frame.encode()) > alice.limits.max_message_bytes:
                too_big += 1
                continue
            await pacer.tick()
            await alice.connection.send_frame(frame)
            error = await alice.expect(Error, code="invalid_message", rid=mutant.wire["rid"])
            check(
                error.path is not None
                and (error.path == mutant.path or error.path.startswith(f"{mutant.path}/")),
                f"{mutant.how}: the error's path is {error.path!r}, not {mutant.path!r} or below",
            )
            await pacer.tick()
            await alice.ping()
            sent += 1
        return f"{sent} spoilt {tag} refused" + (
            f", {too_big} too large to send" if too_big else ""
        )

    run.__doc__ = f"Generated {tag} messages, each spoilt one way: invalid_message at the spot."
    return run


for _tag in CLIENT_MESSAGES:
    add(
        Case(
            id=f"negative.{_tag}",
            section="negative",
            run=_generated(_tag),
            covers=frozenset({"error:invalid_message"}),
        )
    )


Frame = tuple[str, ErrorCode, str | None, str | None]
"""A frame, and the error code, path and rid of its refusal."""

FRAMES: dict[str, tuple[str, list[Frame]]] = {
    "negative.invalid_json": (
        "Frames that are not JSON get invalid_json (no path, no rid); the connection goes on.",
        [
            ("{", "invalid_json", None, None),
            ('{"type": "ping",}', "invalid_json", None, None),
            ('{"type": "ping"} {}', "invalid_json", None, None),
            ("", "invalid_json", None, None),
        ],
    ),
    "negative.not_an_object": (
        "JSON that is not an object gets invalid_message at path '' (the whole message).",
        [(frame, "invalid_message", "", None) for frame in ("[]", "42", '"ping"', "null", "true")],
    ),
    "negative.type": (
        "A missing or non-string type is invalid_message at /type; an unknown one, or a server"
        " message's, unknown_type at /type.",
        [
            ('{"rid": "t1"}', "invalid_message", "/type", "t1"),
            ('{"type": 5, "rid": "t2"}', "invalid_message", "/type", "t2"),
            ('{"type": "teleport", "rid": "t3"}', "unknown_type", "/type", "t3"),
            ('{"type": "welcome", "rid": "t4"}', "unknown_type", "/type", "t4"),
        ],
    ),
    "negative.rid": (
        "A rid that is not a string of at most 64 characters is invalid_message at /rid, and"
        " not echoed.",
        [
            ('{"type": "ping", "rid": "' + "x" * 65 + '"}', "invalid_message", "/rid", None),
            ('{"type": "ping", "rid": 7}', "invalid_message", "/rid", None),
        ],
    ),
}


def _frames(frames: list[Frame], doc: str) -> CaseFunction:
    async def run(ctx: Context) -> None:
        alice = await ctx.client("alice")
        for frame, code, path, rid in frames:
            await alice.connection.send_frame(frame)
            await alice.expect(Error, code=code, path=path, rid=rid)
            await alice.ping()

    run.__doc__ = doc
    return run


for _id, (_doc, _list) in FRAMES.items():
    _codes = frozenset(f"error:{code}" for _, code, _, _ in _list)
    add(Case(id=_id, section="negative", run=_frames(_list, _doc), covers=_codes))
