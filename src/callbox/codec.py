"""Wire codec: JSON frames to typed messages and back, checked against ``schemas/``.

Decoding validates each message against its own type's schema with jsonschema-rs (compiled once,
at import), then structures it with cattrs. Only a refused message pays for the reference
``jsonschema`` validator, whose ``best_match`` explains what is wrong and where. Encoding trusts the
typed message: it unstructures and serializes, nothing more, because it runs for every frame sent.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import cattrs
import jsonschema
import jsonschema.validators
import jsonschema_rs
import orjson
from attrs import fields, has
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from cattrs.strategies import configure_tagged_union
from jsonschema.exceptions import ValidationError, best_match
from jsonschema.protocols import Validator
from referencing import Registry, Resource
from referencing._core import Resolver

from callbox.core.errors import SignalingError
from callbox.messages import (
    CLIENT_MESSAGES,
    SERVER_MESSAGES,
    ClientMessage,
    ErrorCode,
    IceCandidate,
    RelayedIceCandidate,
    RelayedSdpAnswer,
    RelayedSdpOffer,
    SdpAnswer,
    SdpOffer,
    ServerMessage,
)

__all__ = [
    "ENCODE_BY_CLASS",
    "FAST",
    "REFERENCE",
    "REGISTRY",
    "SCHEMA_BASE",
    "SCHEMA_FILES",
    "STRUCTURE_BY_TYPE",
    "Direction",
    "ProtocolError",
    "decode_client",
    "decode_server",
    "encode",
    "positional_constructor",
    "python_pattern",
    "rid_of",
    "schema_dir",
    "with_seq",
]

Direction = Literal["client", "server"]
_T = TypeVar("_T")

SCHEMA_BASE = "https://callbox.dev/schemas/v1/"
"""Base of every schema's ``$id``: ``{SCHEMA_BASE}{direction}/{type}.json``."""

MAX_RID_LENGTH = 64
"""A longer (or non-string) ``rid`` is not echoed: the ``error`` reply must stay valid."""

MAX_NESTING_DEPTH = 32
"""Arrays and objects a value may be nested in, the message itself counted (``limits``
announces it). orjson reads 1,023 levels but writes only 254, so a deeper value the schemas let
through (``room_broadcast.data`` is any JSON) could not be relayed; 32 is far more than any
application data needs and keeps every walk over a message shallow."""


class ProtocolError(SignalingError):
    """A frame that is not a valid message, with what the ``error`` reply needs.

    ``rid`` is the frame's own, when one could be read, so that even a refusal is echoed.
    """

    def __init__(
        self, code: ErrorCode, message: str, *, path: str | None = None, rid: str | None = None
    ) -> None:
        super().__init__(code, message, path)
        self.rid = rid


def schema_dir() -> Path:
    """The installed schemas: in a wheel a copy, in a source tree a symlink to ``schemas/``."""
    return Path(str(resources.files("callbox") / "schemas"))


def _read_files(root: Path) -> dict[str, bytes]:
    """Every schema file under ``root`` by its path relative to it (``client/hello.json``)."""
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*.json"))
    }


SCHEMA_FILES: Mapping[str, bytes] = _read_files(schema_dir())
"""The schema files as read, by relative path: the validators are built from these bytes, and the
server serves the same bytes at ``/schemas/`` (the directory mirrors ``SCHEMA_BASE``)."""

_DOCUMENTS: dict[str, dict[str, Any]] = {
    document["$id"]: document for document in map(orjson.loads, SCHEMA_FILES.values())
}
_UNIONS: dict[Direction, Any] = {"client": ClientMessage, "server": ServerMessage}
_CLASSES: dict[Direction, Mapping[str, type]] = {
    "client": CLIENT_MESSAGES,
    "server": SERVER_MESSAGES,
}

REGISTRY: Registry[Any] = Registry().with_resources(
    (uri, Resource.from_contents(document)) for uri, document in _DOCUMENTS.items()
)
"""Every schema file for the reference validator, so ``$ref`` between files resolves offline."""

_RS_REGISTRY = jsonschema_rs.Registry(_DOCUMENTS.items())

FAST: Mapping[Direction, Mapping[str, jsonschema_rs.Validator]] = {
    direction: {
        tag: jsonschema_rs.Draft202012Validator(
            _DOCUMENTS[f"{SCHEMA_BASE}{direction}/{tag}.json"], registry=_RS_REGISTRY, offline=True
        )
        for tag in classes
    }
    for direction, classes in _CLASSES.items()
}
"""jsonschema-rs validators by direction and ``type``: they decide what is accepted."""


def python_pattern(ecma: str) -> str:
    """An ECMA-262 ``pattern`` written so Python's ``re`` reads it the same: ``$`` becomes ``\\Z``.

    JSON Schema patterns are ECMA-262 regular expressions, where ``$`` matches only at the very
    end; Python's ``$`` also matches before a final newline, so ``"alice\\n"`` would pass
    ``^[^\\s]+$`` in ``jsonschema`` and fail in jsonschema-rs. The schemas use nothing else that
    the two dialects read differently.
    """
    translated: list[str] = []
    escaped = in_class = False
    for char in ecma:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "[":
            in_class = True
        elif char == "]":
            in_class = False
        elif char == "$" and not in_class:
            translated.append("\\Z")
            continue
        translated.append(char)
    return "".join(translated)


@cache
def _compiled(ecma: str) -> re.Pattern[str]:
    return re.compile(python_pattern(ecma))


def _ecma_pattern(
    validator: Validator, pattern: str, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    """The ``pattern`` keyword with ECMA-262's meaning of ``$`` (see `python_pattern`)."""
    if validator.is_type(instance, "string") and _compiled(pattern).search(instance) is None:
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _json_identity(value: Any) -> Hashable:
    """A key equal for two JSON values exactly when JSON Schema calls them equal.

    Numbers compare by value (``1`` equals ``1.0``), booleans are not numbers, arrays compare in
    order and objects by their members. Computing it costs time linear in the value's size.
    """
    if value is True or value is False:
        return ("boolean", value)
    if isinstance(value, list):
        return ("array", tuple(map(_json_identity, value)))
    if isinstance(value, dict):
        return ("object", frozenset((key, _json_identity(item)) for key, item in value.items()))
    scalar: Hashable = value  # strings, numbers, null: Python's equality and hash are JSON's
    return scalar


def _linear_unique_items(
    validator: Validator, unique: bool, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    """The ``uniqueItems`` keyword in linear time.

    ``jsonschema``'s own sorts the items and, when they do not sort (numbers mixed with
    strings), compares every pair: a 24 KiB array took 1.25 s, a whole frame minutes, all on
    the event loop. Hashing each item's `_json_identity` gives the same verdict in one pass.
    """
    if unique and validator.is_type(instance, "array"):
        identities = set(map(_json_identity, instance))
        if len(identities) < len(instance):
            yield ValidationError("items are not unique")


def _longest_array(schema: Any) -> int:
    """The largest ``maxItems`` in ``schema``, at any depth."""
    if isinstance(schema, list):
        return max(map(_longest_array, schema), default=0)
    if isinstance(schema, dict):
        own = schema.get("maxItems", 0)
        return max(own if isinstance(own, int) else 0, *map(_longest_array, schema.values()))
    return 0


def _depth_allowed(schema: Any, resolver: Resolver[Any]) -> float:
    """How deeply a value ``schema`` accepts may nest (a string: 0, ``[1]``: 1); ``inf`` when
    the schema leaves the value open, as ``{}`` does."""
    if not isinstance(schema, dict):
        return math.inf if schema is True else 0
    if "$ref" in schema:
        target = resolver.lookup(schema["$ref"])
        return _depth_allowed(target.contents, target.resolver)
    if "const" in schema or "enum" in schema:
        values = [schema["const"]] if "const" in schema else schema["enum"]
        return math.inf if any(isinstance(value, (dict, list)) for value in values) else 0
    branches = schema.get("anyOf", []) + schema.get("oneOf", [])
    if branches and "type" not in schema:
        return max(_depth_allowed(branch, resolver) for branch in branches)
    types = schema.get("type")
    if types is None:
        return math.inf
    depth = 0.0
    if "object" in types:
        members = [*schema.get("properties", {}).values(), schema.get("additionalProperties", {})]
        depth = 1 + max(_depth_allowed(member, resolver) for member in members)
    if "array" in types:
        depth = max(depth, 1 + _depth_allowed(schema.get("items", {}), resolver))
    return depth


DEPTH_CHECKED: Mapping[Direction, frozenset[str]] = {
    direction: frozenset(
        tag
        for tag in classes
        if _depth_allowed({"$ref": f"{SCHEMA_BASE}{direction}/{tag}.json"}, REGISTRY.resolver())
        > MAX_NESTING_DEPTH
    )
    for direction, classes in _CLASSES.items()
}
"""The messages whose schema allows nesting deeper than `MAX_NESTING_DEPTH` (``room_broadcast``):
only they are walked for it, so no relayed message pays for the check."""


def _too_deep(value: Any, levels: int) -> list[str | int] | None:
    """Where ``value`` nests more than ``levels`` deep: the path of the first container too many."""
    if isinstance(value, dict):
        children: Iterable[tuple[str | int, Any]] = value.items()
    elif isinstance(value, list):
        children = enumerate(value)
    else:
        return None
    if levels == 0:
        return []
    for key, child in children:
        below = _too_deep(child, levels - 1)
        if below is not None:
            return [key, *below]
    return None


_OTHER: Mapping[Direction, Direction] = {"client": "server", "server": "client"}
EXPLAINED_ITEMS: Mapping[Direction, int] = {
    direction: 1
    + _longest_array(
        [
            doc
            for uri, doc in _DOCUMENTS.items()
            if not uri.startswith((SCHEMA_BASE + other, SCHEMA_BASE + "webhooks/"))
        ]
    )
    for direction, other in _OTHER.items()
}
"""Per direction, one more item than any array of any message may have: how many items of an
array the reference validator is shown when it explains a refusal (see `_clipped`). The
webhooks' bodies are not messages of the WebSocket: they do not count."""


_ReferenceValidator: type[Validator] = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
    jsonschema.Draft202012Validator,
    {"pattern": _ecma_pattern, "uniqueItems": _linear_unique_items},
)

REFERENCE: Mapping[Direction, Mapping[str, Validator]] = {
    direction: {
        tag: _ReferenceValidator(
            _DOCUMENTS[f"{SCHEMA_BASE}{direction}/{tag}.json"], registry=REGISTRY
        )
        for tag in classes
    }
    for direction, classes in _CLASSES.items()
}
"""``jsonschema`` validators by direction and ``type``: they explain a refusal."""


def _wire_renames(cls: type) -> dict[str, Any]:
    """cattrs overrides for fields whose wire name is a Python keyword (``from_`` is ``from``)."""
    return {
        a.name: override(rename=a.metadata["wire"]) for a in fields(cls) if "wire" in a.metadata
    }


def _make_converter() -> cattrs.Converter:
    """The one converter: wire renames, default-None fields omitted when None, ``type`` tags."""
    converter = cattrs.Converter(omit_if_default=True, detailed_validation=False)
    converter.register_structure_hook_factory(
        has, lambda cls: make_dict_structure_fn(cls, converter, **_wire_renames(cls))
    )
    converter.register_unstructure_hook_factory(
        has,
        lambda cls: make_dict_unstructure_fn(
            cls, converter, _cattrs_omit_if_default=True, **_wire_renames(cls)
        ),
    )
    tags = {cls: tag for classes in _CLASSES.values() for tag, cls in classes.items()}
    for union in _UNIONS.values():
        configure_tagged_union(union, converter, tag_generator=tags.__getitem__, tag_name="type")
    return converter


def positional_constructor(cls: type[_T]) -> Callable[..., _T]:
    """``cls(**dict(zip(field_names, values)))`` as ``make(*values)``, values for every field.

    For the objects built for every relayed message: attrs' ``__init__`` for a frozen slotted
    class sets each field with ``object.__setattr__(self, name, value)``, which finds the slot
    by name every time; this sets the slots directly (~250 ns less per object). Only for a class
    whose ``__init__`` does nothing else (no validator, converter, factory or post-init hook);
    for any other it is the class itself, called by keyword. tests/test_codec_specialised.py
    proves what it builds equals what the class builds.
    """
    attributes = fields(cls)  # type: ignore[arg-type]
    names = [a.name for a in attributes]
    plain = (
        "__slots__" in cls.__dict__
        and not hasattr(cls, "__attrs_post_init__")
        and not hasattr(cls, "__attrs_pre_init__")
        and all(
            a.init and a.validator is None and a.converter is None and a.on_setattr is None
            for a in attributes
        )
        and all(isinstance(cls.__dict__.get(name), _MEMBER_DESCRIPTOR) for name in names)
    )
    if not plain:
        return lambda *values: cls(**dict(zip(names, values, strict=True)))
    setters = {f"_set_{name}": cls.__dict__[name].__set__ for name in names}
    lines = [
        f"def make({', '.join(names)}):",
        "    self = _new(_cls)",
        *(f"    _set_{name}(self, {name})" for name in names),
        "    return self",
    ]
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls, **setters}
    exec("\n".join(lines), namespace)  # generated from attrs' own field names
    make: Callable[..., _T] = namespace["make"]
    return make


_MEMBER_DESCRIPTOR = type(type("_Slotted", (), {"__slots__": ("x",)}).__dict__["x"])

_CONVERTER = _make_converter()
_STRUCTURE: dict[Direction, Callable[[Any, Any], Any]] = {
    direction: _CONVERTER.get_structure_hook(union) for direction, union in _UNIONS.items()
}
"""cattrs' hooks for the tagged unions: the reference that `STRUCTURE_BY_TYPE` must match."""
_UNSTRUCTURE: dict[type, Callable[[Any], dict[str, Any]]] = {
    cls: _CONVERTER.get_unstructure_hook(_UNIONS[direction])
    for direction, classes in _CLASSES.items()
    for cls in classes.values()
}
"""cattrs' hooks, by class: the reference unstructuring, which `ENCODE_BY_CLASS` keeps."""

# Hand-specialised structuring and encoding for the relayed messages, the bulk of the traffic.
# They run only on what the fast validator has accepted, so every required key is there with
# its schema's type, and they produce exactly what cattrs would: tests/test_codec.py proves it
# on generated instances (equal messages, byte-identical frames). An object field (the ICE
# candidate) is taken as parsed rather than copied: the parsed frame is not used again.


_NEW_SDP_OFFER = positional_constructor(SdpOffer)
_NEW_SDP_ANSWER = positional_constructor(SdpAnswer)
_NEW_ICE_CANDIDATE = positional_constructor(IceCandidate)


def _structure_sdp_offer(obj: dict[str, Any]) -> SdpOffer:
    return _NEW_SDP_OFFER(obj["call_id"], obj["to"], obj["sdp"], obj.get("rid"), obj.get("cseq"))


def _structure_sdp_answer(obj: dict[str, Any]) -> SdpAnswer:
    return _NEW_SDP_ANSWER(obj["call_id"], obj["to"], obj["sdp"], obj.get("rid"), obj.get("cseq"))


def _structure_ice_candidate(obj: dict[str, Any]) -> IceCandidate:
    return _NEW_ICE_CANDIDATE(
        obj["call_id"], obj["to"], obj["candidate"], obj.get("rid"), obj.get("cseq")
    )


def _class_hook(cls: type) -> Callable[[dict[str, Any]], Any]:
    """cattrs' own hook for one class, as the tagged union would call it (the tag is ignored)."""
    hook = _CONVERTER.get_structure_hook(cls)
    return lambda obj: hook(obj, cls)


_SPECIALISED_STRUCTURE: dict[type, Callable[[dict[str, Any]], Any]] = {
    SdpOffer: _structure_sdp_offer,
    SdpAnswer: _structure_sdp_answer,
    IceCandidate: _structure_ice_candidate,
}
STRUCTURE_BY_TYPE: Mapping[Direction, Mapping[str, Callable[[dict[str, Any]], Any]]] = {
    direction: {
        tag: _SPECIALISED_STRUCTURE.get(cls) or _class_hook(cls) for tag, cls in classes.items()
    }
    for direction, classes in _CLASSES.items()
}
"""Structuring of a validated message, by direction and ``type``: no union dispatch per frame."""


def _encode_relayed_sdp(message: RelayedSdpOffer | RelayedSdpAnswer, seq: int | None) -> bytes:
    wire: dict[str, Any] = {"call_id": message.call_id, "from": message.from_, "sdp": message.sdp}
    if message.seq is not None:
        wire["seq"] = message.seq
    wire["type"] = message.TYPE
    if seq is not None:
        wire["seq"] = seq
    return orjson.dumps(wire)


def _encode_relayed_ice_candidate(message: RelayedIceCandidate, seq: int | None) -> bytes:
    wire: dict[str, Any] = {
        "call_id": message.call_id,
        "from": message.from_,
        "candidate": message.candidate,
    }
    if message.seq is not None:
        wire["seq"] = message.seq
    wire["type"] = "ice_candidate"
    if seq is not None:
        wire["seq"] = seq
    return orjson.dumps(wire)


def _encode_generic(message: ClientMessage | ServerMessage, seq: int | None) -> bytes:
    wire = _UNSTRUCTURE[message.__class__](message)
    if seq is not None:
        wire["seq"] = seq
    return orjson.dumps(wire)


ENCODE_BY_CLASS: Mapping[type, Callable[[Any, int | None], bytes]] = {
    cls: _encode_generic for cls in _UNSTRUCTURE
} | {
    RelayedSdpOffer: _encode_relayed_sdp,
    RelayedSdpAnswer: _encode_relayed_sdp,
    RelayedIceCandidate: _encode_relayed_ice_candidate,
}
"""The encoder of each message class: cattrs' unstructuring, or a specialisation of it."""


_STEPS: Mapping[
    Direction, Mapping[str, tuple[Callable[[Any], bool], Callable[[Any], Any], bool]]
] = {
    direction: {
        tag: (
            FAST[direction][tag].is_valid,
            STRUCTURE_BY_TYPE[direction][tag],
            tag in DEPTH_CHECKED[direction],
        )
        for tag in classes
    }
    for direction, classes in _CLASSES.items()
}
"""Per direction and ``type``: the fast validator's check, the structuring, and whether the
nesting depth needs checking, found together."""


def decode_client(data: bytes | str) -> ClientMessage:
    """Parse, validate and type a frame received from a client; raise `ProtocolError` if bad."""
    message: ClientMessage = _decode(data, "client")
    return message


def rid_of(data: bytes | str) -> str | None:
    """The `rid` a frame carries, if it is JSON with one fit to echo; for a refusal that does
    not decode the frame (`rate_limited`)."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return _echoable(obj.get("rid")) if isinstance(obj, dict) else None


def _echoable(rid: object) -> str | None:
    """`rid` if a reply may echo it (see `MAX_RID_LENGTH`)."""
    return rid if isinstance(rid, str) and len(rid) <= MAX_RID_LENGTH else None


def decode_server(data: bytes | str) -> ServerMessage:
    """Parse, validate and type a frame received from the server; raise `ProtocolError` if bad."""
    message: ServerMessage = _decode(data, "server")
    return message


def encode(message: ClientMessage | ServerMessage, *, seq: int | None = None) -> bytes:
    """Serialize a message; ``seq``, when given, is written as its ``seq`` (the session stamps it).

    No validation: the typed message is trusted, and a test checks what this produces.
    """
    return ENCODE_BY_CLASS[message.__class__](message, seq)


def with_seq(unsequenced: bytes, seq: int) -> bytes:
    """``encode(message, seq=seq)`` from ``encode(message)``, for a message whose ``seq`` is None.

    ``encode`` writes ``seq`` as the last key, so this is a splice, not a re-encoding: one message
    sent to many sessions (a room broadcast, ``call_ended``) is serialized once. The result is
    also sized exactly: orjson's output keeps the capacity it grew to (4 KiB
    for a 300-byte frame), so a frame kept for replay must not be orjson's own.
    """
    return b'%b,"seq":%d}' % (unsequenced[:-1], seq)


def _decode(data: bytes | str, direction: Direction) -> Any:
    """Cheapest checks first; the schema picked by ``type``, never the whole ``oneOf``."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError("invalid_json", f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(
            "invalid_message", f"a message is a JSON object, not {type(obj).__name__}", path=""
        )
    rid = _echoable(obj.get("rid"))
    tag = obj.get("type")
    if not isinstance(tag, str):
        raise ProtocolError(
            "invalid_message", "/type: a message needs a string `type`", path="/type", rid=rid
        )
    found = _STEPS[direction].get(tag)
    if found is None:
        raise ProtocolError(
            "unknown_type", f"/type: no {direction} message has type {tag!r}", path="/type", rid=rid
        )
    is_valid, structure, depth_checked = found
    valid = is_valid(obj)
    if depth_checked or not valid:  # explaining walks the message too
        too_deep = _too_deep(obj, MAX_NESTING_DEPTH)
        if too_deep is not None:
            path = _pointer(too_deep)
            reason = f"{path}: nested deeper than {MAX_NESTING_DEPTH} levels, the most allowed"
            raise ProtocolError("invalid_message", reason, path=path, rid=rid)
    if not valid:
        location, text = _explain(direction, tag, obj)
        path = _pointer(location)
        raise ProtocolError(
            "invalid_message", f"{path}: {text}" if path else text, path=path, rid=rid
        )
    return structure(obj)


def _explain(direction: Direction, tag: str, obj: dict[str, Any]) -> tuple[list[str | int], str]:
    """Where ``obj`` breaks its schema and why, from the reference validator's best match."""
    clipped = _clipped(obj, EXPLAINED_ITEMS[direction])
    error = best_match(REFERENCE[direction][tag].iter_errors(clipped))
    if error is None:
        # Should the engines still disagree somewhere (`python_pattern` covers the difference
        # known here), trust the validator that refused: it is the one that decides.
        fast_error = next(iter(FAST[direction][tag].iter_errors(obj)))
        return list(fast_error.instance_path), fast_error.message
    return _locate(error)


def _clipped(value: Any, items: int) -> Any:
    """``value`` with every array cut to ``items`` items, for the reference validator.

    ``jsonschema`` spends ~30 us on each array item it checks, so a frame of 30,000 one-byte
    items would hold the event loop for a second to explain itself. Every array a schema
    describes allows fewer than `EXPLAINED_ITEMS`, so a longer one still fails ``maxItems`` after
    the cut, at a shallower path than any of its items' errors (which `best_match` prefers), and
    every other error in the cut value is one of the whole value too (tests/test_codec.py checks
    that the schemas use no array keyword for which that would not hold).
    """
    if isinstance(value, list):
        return [_clipped(item, items) for item in value[:items]]
    if isinstance(value, dict):
        return {key: _clipped(item, items) for key, item in value.items()}
    return value


def _locate(error: ValidationError) -> tuple[list[str | int], str]:
    """Point at the bad field itself, even a missing or unexpected one, not at its parent."""
    location: list[str | int] = list(error.absolute_path)
    instance: Any = error.instance  # the object the failing keyword applies to
    value: Any = error.validator_value
    match error.validator:
        case "required":
            name = next(name for name in value if name not in instance)
            return [*location, name], "required field is missing"
        case "dependentRequired":
            owner, name = next(
                (owner, name)
                for owner, names in value.items()
                if owner in instance
                for name in names
                if name not in instance
            )
            return [*location, name], f"required together with {owner!r}"
        case "additionalProperties":
            schema: Any = error.schema
            known = schema.get("properties", {})
            return [*location, next(name for name in instance if name not in known)], (
                "unexpected field"
            )
        case "anyOf" | "oneOf" if all(set(branch) == {"required"} for branch in value):
            names = " or ".join(repr(name) for branch in value for name in branch["required"])
            exactly = "exactly one of " if error.validator == "oneOf" else ""
            return location, f"needs {exactly}{names}"
    return location, error.message


def _pointer(location: Iterable[str | int]) -> str:
    """RFC 6901 JSON pointer: ``""`` is the whole message."""
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in location)
