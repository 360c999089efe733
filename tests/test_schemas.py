"""The schemas, the message classes and the examples describe the same protocol."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import attrs
import jsonschema
import orjson
import pytest
import yaml
from attrs import NOTHING

from callbox import messages
from callbox.codec import (
    FAST,
    REFERENCE,
    REGISTRY,
    SCHEMA_BASE,
    Direction,
    ProtocolError,
    decode_client,
    decode_server,
    encode,
    schema_dir,
)
from callbox.config import WEBHOOK_EVENTS

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "protocol" / "examples"
INVALID_INDEX: dict[str, dict[str, str]] = orjson.loads(
    (EXAMPLES / "invalid" / "index.json").read_bytes()
)
CLASSES: dict[Direction, dict[str, type]] = {
    "client": dict(messages.CLIENT_MESSAGES),
    "server": dict(messages.SERVER_MESSAGES),
}
DECODE = {"client": decode_client, "server": decode_server}
MESSAGES = [(direction, tag) for direction, classes in CLASSES.items() for tag in classes]
MESSAGE_IDS = [f"{direction}/{tag}" for direction, tag in MESSAGES]
SCHEMA_FILES = sorted(schema_dir().rglob("*.json"))
DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
ENUM_LITERALS = {
    "rejectReason": messages.RejectReason,
    "hangupReason": messages.HangupReason,
    "dropoutReason": messages.DropoutReason,
    "leaveReason": messages.LeaveReason,
    "presenceStatus": messages.PresenceStatus,
    "userStatus": messages.UserStatus,
    "endReason": messages.EndReason,
    "errorCode": messages.ErrorCode,
}


def load(path: Path) -> Any:
    return orjson.loads(path.read_bytes())


def wire_name(field: attrs.Attribute[Any]) -> str:
    return str(field.metadata.get("wire", field.name))


def subschemas(schema: Any) -> typing.Iterator[dict[str, Any]]:
    """Every schema object nested in ``schema``, itself included."""
    if isinstance(schema, dict):
        yield schema
        for value in schema.values():
            yield from subschemas(value)
    elif isinstance(schema, list):
        for item in schema:
            yield from subschemas(item)


def test_schemas_are_installed_with_the_package() -> None:
    assert (schema_dir() / "common.json").is_file()
    assert {path.relative_to(schema_dir()).as_posix() for path in SCHEMA_FILES} >= {
        "common.json",
        "client-message.json",
        "server-message.json",
    }


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda path: path.name)
def test_schema_is_valid_2020_12_with_id_title_description(path: Path) -> None:
    schema = load(path)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == DRAFT_2020_12
    assert schema["$id"] == SCHEMA_BASE + path.relative_to(schema_dir()).as_posix()
    assert schema["title"]
    assert schema["description"]


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda path: path.name)
def test_every_string_and_list_is_bounded(path: Path) -> None:
    for schema in subschemas(load(path)):
        types = schema.get("type", [])
        types = [types] if isinstance(types, str) else types
        if "string" in types:
            assert "maxLength" in schema or "enum" in schema, schema
        if "array" in types:
            assert "maxItems" in schema, schema
        if "object" in types:
            assert schema.get("additionalProperties") is False or "maxProperties" in schema


@pytest.mark.parametrize(("direction", "tag"), MESSAGES, ids=MESSAGE_IDS)
def test_message_schema_mirrors_its_class(direction: Direction, tag: str) -> None:
    schema = REFERENCE[direction][tag].schema
    assert isinstance(schema, dict)
    assert schema["type"] == "object"
    assert schema["properties"]["type"] == {"const": tag}
    assert schema["additionalProperties"] is False

    fields = attrs.fields(CLASSES[direction][tag])
    assert set(schema["properties"]) == {"type"} | {wire_name(field) for field in fields}
    required = {"type"} | {wire_name(field) for field in fields if field.default is NOTHING}
    if direction == "server" and "seq" in schema["properties"] and tag != "error":
        required.add("seq")  # optional in the class (the session stamps it), always on the wire
    assert set(schema["required"]) == required


def test_every_message_has_a_schema_and_every_schema_a_message() -> None:
    for direction, classes in CLASSES.items():
        files = {path.stem for path in (schema_dir() / direction).glob("*.json")}
        assert files == set(classes), direction
        index = load(schema_dir() / f"{direction}-message.json")
        assert {branch["$ref"] for branch in index["oneOf"]} == {
            f"{direction}/{tag}.json" for tag in classes
        }


@pytest.mark.parametrize(("name", "literal"), ENUM_LITERALS.items())
def test_enums_match_messages_and_every_value_is_explained(name: str, literal: Any) -> None:
    definition = load(schema_dir() / "common.json")["$defs"][name]
    assert definition["enum"] == list(typing.get_args(literal))
    for value in definition["enum"]:
        assert f"- `{value}`: " in definition["description"], value


def test_examples_exist_for_every_message() -> None:
    expected = set(MESSAGE_IDS)
    for kind in ("valid", "invalid"):
        found = {
            path.relative_to(EXAMPLES / kind).with_suffix("").as_posix()
            for path in (EXAMPLES / kind).glob("*/*.json")
        }
        assert found == expected, kind
    assert set(INVALID_INDEX) == expected


def index_validator(direction: Direction) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(
        REGISTRY.contents(f"{SCHEMA_BASE}{direction}-message.json"), registry=REGISTRY
    )


@pytest.mark.parametrize(("direction", "tag"), MESSAGES, ids=MESSAGE_IDS)
def test_valid_example_validates_decodes_and_encodes_back(direction: Direction, tag: str) -> None:
    raw = (EXAMPLES / "valid" / direction / f"{tag}.json").read_bytes()
    example = orjson.loads(raw)
    assert FAST[direction][tag].is_valid(example)
    REFERENCE[direction][tag].validate(example)
    index_validator(direction).validate(example)
    message = DECODE[direction](raw)
    assert type(message) is CLASSES[direction][tag]
    assert orjson.loads(encode(message)) == example


@pytest.mark.parametrize(("direction", "tag"), MESSAGES, ids=MESSAGE_IDS)
def test_invalid_example_is_refused_for_its_documented_reason(
    direction: Direction, tag: str
) -> None:
    raw = (EXAMPLES / "invalid" / direction / f"{tag}.json").read_bytes()
    example = orjson.loads(raw)
    assert example["type"] == tag
    assert not FAST[direction][tag].is_valid(example)
    assert not REFERENCE[direction][tag].is_valid(example)
    assert not index_validator(direction).is_valid(example)
    with pytest.raises(ProtocolError) as caught:
        DECODE[direction](raw)
    assert caught.value.code == "invalid_message"
    assert caught.value.path == INVALID_INDEX[f"{direction}/{tag}"]["path"]
    assert caught.value.rid == example.get("rid")


def test_asyncapi_document_covers_every_message_and_its_refs_resolve() -> None:
    path = REPO / "protocol" / "asyncapi.yaml"
    document = yaml.safe_load(path.read_text())
    assert document["asyncapi"] == "3.0.0"
    channels = document["channels"]
    assert {name: channel["address"] for name, channel in channels.items()} == {
        "signaling": "/ws",
        "webhooks": None,  # the deployer's WEBHOOK_URLs
    }

    payloads = {}
    for name, message in document["components"]["messages"].items():
        assert message["payload"]["schemaFormat"] == "application/schema+json;version=draft-2020-12"
        schema_path = (path.parent / message["payload"]["schema"]["$ref"]).resolve()
        schema = load(schema_path)
        payloads[name] = schema_path.relative_to(schema_dir().resolve()).with_suffix("").as_posix()
        assert name == payloads[name].replace("/", ".", 1)
        assert ("correlationId" in message) == ("rid" in schema["properties"]), name
    webhooks = sorted(f"webhooks/{event}" for event in WEBHOOK_EVENTS)
    assert sorted(payloads.values()) == sorted(MESSAGE_IDS + webhooks)
    for channel_name, channel in channels.items():
        for name, ref in channel["messages"].items():
            assert ref == {"$ref": f"#/components/messages/{name}"}
            assert (channel_name == "webhooks") == name.startswith("webhooks."), name
    assert {path.stem for path in (schema_dir() / "webhooks").glob("*.json")} == set(WEBHOOK_EVENTS)

    for ref in (s["$ref"] for s in subschemas(document) if "$ref" in s):
        if ref.startswith("#/"):
            target: Any = document
            for part in ref[2:].split("/"):
                target = target[part]
        else:
            assert (path.parent / ref).is_file(), ref
