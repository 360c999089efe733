"""The codec: decode errors, fast/reference validator agreement, encode round trips."""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from callbox import messages
from callbox.codec import (
    FAST,
    REFERENCE,
    Direction,
    ProtocolError,
    decode_client,
    decode_server,
    encode,
    python_pattern,
)
from callbox.conformance.generation import generator_schema, json_safe

DECODE = {"client": decode_client, "server": decode_server}
MESSAGES = [
    (direction, tag)
    for direction, classes in (
        ("client", messages.CLIENT_MESSAGES),
        ("server", messages.SERVER_MESSAGES),
    )
    for tag in classes
]
MESSAGE_IDS = [f"{direction}/{tag}" for direction, tag in MESSAGES]
CALL = "c_7f3a9b2e41d0"
MEDIA = {"audio": True, "video": True}
EXAMPLES = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def refusal(data: bytes | str, direction: Direction = "client") -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        DECODE[direction](data)
    return caught.value


def initiate(**fields: Any) -> bytes:
    return orjson.dumps(
        {"type": "call_initiate", "call_id": CALL, "to": ["bob"], "media": MEDIA, **fields}
    )


# ---------------------------------------------------------------------------------------------
# Decode errors


@pytest.mark.parametrize("data", [b"{", b"", b"\xff", "{'type': 'ping'}", b'{"type": "ping"} x'])
def test_not_json_is_invalid_json(data: bytes | str) -> None:
    error = refusal(data)
    assert (error.code, error.path, error.rid) == ("invalid_json", None, None)


@pytest.mark.parametrize("data", [b"[]", b'"ping"', b"3", b"null"])
def test_not_an_object_is_invalid_message(data: bytes) -> None:
    error = refusal(data)
    assert (error.code, error.path) == ("invalid_message", "")


@pytest.mark.parametrize("data", [b"{}", b'{"type": 5, "rid": "r1"}', b'{"type": null}'])
def test_type_missing_or_not_a_string_is_invalid_message(data: bytes) -> None:
    error = refusal(data)
    assert (error.code, error.path) == ("invalid_message", "/type")


def test_unknown_type() -> None:
    error = refusal(b'{"type": "welcome", "rid": "r1"}')
    assert (error.code, error.path, error.rid) == ("unknown_type", "/type", "r1")
    assert refusal(b'{"type": "hello", "user_id": "alice"}', "server").code == "unknown_type"


@pytest.mark.parametrize(
    ("data", "path"),
    [
        (initiate(to=["bob", "a b"]), "/to/1"),
        (initiate(media={"audio": True, "video": "yes"}), "/media/video"),
        (initiate(media={"audio": True}), "/media/video"),
        (initiate(call_id="short"), "/call_id"),
        (initiate(metadata={"a/b~c": [1]}), "/metadata/a~1b~0c"),
        (initiate(colour="blue"), "/colour"),
        (
            b'{"type": "call_initiate", "to": ["bob"], "media": {"audio": true, "video": true}}',
            "/call_id",
        ),
        (b'{"type": "hello", "token": "t", "last_seq": 3}', "/resume"),
        (b'{"type": "hello", "device_id": "phone"}', ""),
        (b'{"type": "ping", "ts": 1e300}', "/ts"),
        (initiate(room="design-review"), ""),  # `to` and `room`: exactly one is allowed
        (initiate(to=None), "/to"),
        (
            b'{"type": "call_initiate", "call_id": "c_7f3a9b2e41d0", "media": {"audio": true, '
            b'"video": true}}',
            "",
        ),
        (
            b'{"type": "call_initiate", "call_id": "c_7f3a9b2e41d0", "room": "a b", "media": '
            b'{"audio": true, "video": true}}',
            "/room",
        ),
        (b'{"type": "hangup", "call_id": "c_7f3a9b2e41d0", "reason": null}', "/reason"),
    ],
)
def test_schema_violation_points_at_the_bad_field(data: bytes, path: str) -> None:
    error = refusal(data)
    assert (error.code, error.path) == ("invalid_message", path)
    assert error.message.startswith(f"{path}: " if path else "")


def test_call_initiate_to_a_room() -> None:
    data = b'{"type": "call_initiate", "call_id": "c_7f3a9b2e41d0", "room": "design-review", '
    message = decode_client(data + b'"media": {"audio": true, "video": false}}')
    assert isinstance(message, messages.CallInitiate)
    assert (message.room, message.to) == ("design-review", None)


def test_hello_without_credentials_says_what_it_needs() -> None:
    assert refusal(b'{"type": "hello"}').message == "needs 'token' or 'user_id'"


def test_rid_is_echoed_even_on_a_schema_violation() -> None:
    assert refusal(initiate(to=[], rid="r-42")).rid == "r-42"
    assert refusal(b'{"type": "bogus", "rid": "r-43"}').rid == "r-43"


@pytest.mark.parametrize("rid", [7, "r" * 65, None])
def test_an_invalid_rid_is_not_echoed(rid: Any) -> None:
    error = refusal(orjson.dumps({"type": "ping", "rid": rid}))
    assert (error.path, error.rid) == ("/rid", None)


def test_error_reply_built_from_a_refusal_is_always_valid() -> None:
    """Huge bad values and keys are cut to the `error` message's bounds."""
    huge_value = orjson.dumps(
        {"type": "sdp_offer", "call_id": CALL, "to": "bob", "sdp": "v" * 70000, "rid": "r1"}
    )
    huge_key = initiate(metadata={"k" * 2000: []})
    for data in (huge_value, huge_key):
        error = refusal(data)
        reply = messages.Error(
            code=error.code, message=error.message, path=error.path, rid=error.rid
        )
        assert FAST["server"]["error"].is_valid(orjson.loads(encode(reply, seq=1)))
    assert refusal(huge_key).path == "/metadata"


@pytest.mark.parametrize(
    ("tag", "wire"),
    [
        ("call_join", {"type": "call_join", "call_id": "abcdefgh\n"}),
        ("room_join", {"type": "room_join", "room": "lobby\n"}),
    ],
)
def test_a_final_newline_is_refused_by_both_engines(tag: str, wire: dict[str, Any]) -> None:
    """Python's `$` also matches before a final newline; ECMA-262's (the schemas' dialect, and
    jsonschema-rs's) does not. The reference validator reads patterns as ECMA-262 does."""
    assert not FAST["client"][tag].is_valid(wire)
    assert not REFERENCE["client"][tag].is_valid(wire)
    error = refusal(orjson.dumps(wire))
    assert error.code == "invalid_message"
    assert "does not match" in error.message


def test_python_pattern_rewrites_only_end_anchors() -> None:
    assert python_pattern(r"^[^\s]+$") == r"^[^\s]+\Z"
    assert python_pattern(r"^(/|$)") == r"^(/|\Z)"
    assert python_pattern(r"a[$]b\$") == r"a[$]b\$"


# ---------------------------------------------------------------------------------------------
# Encode


def test_encode_writes_wire_names_nulls_and_seq_and_omits_absent_options() -> None:
    relay = messages.RelayedIceCandidate(call_id=CALL, from_="alice", candidate=None)
    assert orjson.loads(encode(relay, seq=5)) == {
        "type": "ice_candidate",
        "call_id": CALL,
        "from": "alice",
        "candidate": None,
        "seq": 5,
    }
    ended = messages.CallEnded(call_id=CALL, reason="offline", seq=3)
    assert orjson.loads(encode(ended)) == {
        "type": "call_ended",
        "call_id": CALL,
        "reason": "offline",
        "seq": 3,
    }
    assert orjson.loads(encode(ended, seq=4))["seq"] == 4


def test_encoded_welcome_is_valid() -> None:
    welcome = messages.Welcome(
        user_id="alice",
        session_id="s1",
        resume_token="r1",
        resumed=False,
        ice_servers=[messages.IceServer(urls=["stun:stun.example.com"])],
        heartbeat_ms=15000,
        limits=messages.Limits(
            65536, 14400000, 30000, 20000, 8, 4, 50, 100, 16, 100, 16384, 10, 256
        ),
    )
    wire = orjson.loads(encode(welcome))
    REFERENCE["server"]["welcome"].validate(wire)
    assert wire["ice_servers"] == [{"urls": ["stun:stun.example.com"]}]


# ---------------------------------------------------------------------------------------------
# Property tests: generated instances of every message schema


@cache
def instances(direction: Direction, tag: str) -> st.SearchStrategy[dict[str, Any]]:
    return from_schema(generator_schema(direction, tag)).map(json_safe)


def mutations(direction: Direction, tag: str) -> st.SearchStrategy[tuple[dict[str, Any], bool]]:
    """Valid instances spoilt in one realistic way: a required key dropped or an unknown key
    added (always invalid), or a field's value replaced by one of another JSON type (invalid
    unless the field allows that type too). Yields the instance and whether it must be refused."""
    schema = REFERENCE[direction][tag].schema
    assert isinstance(schema, dict)
    other_values = st.sampled_from([None, True, 0, -1, 2.5, "", "x y", [], ["a"], {}, {"a": 1}])

    @st.composite
    def spoil(draw: st.DrawFn) -> tuple[dict[str, Any], bool]:
        instance = copy.deepcopy(draw(instances(direction, tag)))
        how = draw(st.sampled_from(["drop", "add", "retype"]))
        if how == "drop":
            del instance[draw(st.sampled_from(schema["required"]))]
        elif how == "add":
            key = draw(st.text(max_size=10).filter(lambda key: key not in schema["properties"]))
            instance[key] = draw(other_values)
        else:
            key = draw(st.sampled_from(sorted(instance)))
            instance[key] = draw(other_values.filter(lambda v: type(v) is not type(instance[key])))
        return instance, how != "retype"

    return spoil()


@pytest.mark.parametrize(("direction", "tag"), MESSAGES, ids=MESSAGE_IDS)
@EXAMPLES
@given(data=st.data())
def test_validators_agree_on_mutated_instances(
    direction: Direction, tag: str, data: st.DataObject
) -> None:
    instance, must_fail = data.draw(mutations(direction, tag))
    accepted = FAST[direction][tag].is_valid(instance)
    assert REFERENCE[direction][tag].is_valid(instance) == accepted
    assert not (must_fail and accepted)
    if not accepted:
        error = refusal(orjson.dumps(instance), direction)
        assert error.code == "invalid_message"
        assert error.path is not None


@pytest.mark.parametrize(("direction", "tag"), MESSAGES, ids=MESSAGE_IDS)
@EXAMPLES
@given(data=st.data())
def test_generated_instances_are_accepted_and_round_trip(
    direction: Direction, tag: str, data: st.DataObject
) -> None:
    instance = data.draw(instances(direction, tag))
    assert FAST[direction][tag].is_valid(instance)
    assert REFERENCE[direction][tag].is_valid(instance)
    message = DECODE[direction](orjson.dumps(instance))
    assert orjson.loads(encode(message)) == instance
