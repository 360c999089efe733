"""The codec: decode errors, fast/reference validator agreement, encode round trips."""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from typing import Any

import jsonschema
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from callbox import messages
from callbox.codec import (
    DEPTH_CHECKED,
    EXPLAINED_ITEMS,
    FAST,
    MAX_NESTING_DEPTH,
    REFERENCE,
    Direction,
    ProtocolError,
    decode_client,
    decode_server,
    encode,
    python_pattern,
    schema_dir,
)
from callbox.config import Config
from tests.generated_messages import EXAMPLES, MESSAGE_IDS, MESSAGES, instances

DECODE = {"client": decode_client, "server": decode_server}
CALL = "c_7f3a9b2e41d0"
MEDIA = {"audio": True, "video": True}


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
        limits=Config(max_message_bytes=65536, max_call_duration_ms=14400000).limits(),
    )
    wire = orjson.loads(encode(welcome))
    REFERENCE["server"]["welcome"].validate(wire)
    assert wire["ice_servers"] == [{"urls": ["stun:stun.example.com"]}]


# ---------------------------------------------------------------------------------------------
# Property tests: generated instances of every message schema


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


@pytest.mark.slow
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


@pytest.mark.slow
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


# ---------------------------------------------------------------------------------------------
# What a refusal may cost, and what the server can re-encode


def _python_calls(action: Callable[[], object]) -> int:
    """Python function calls made while `action` runs: a measure of work that is not a clock."""
    calls = 0

    def count(frame: object, event: str, arg: object) -> None:
        nonlocal calls
        calls += event == "call"

    sys.setprofile(count)
    try:
        action()
    finally:
        sys.setprofile(None)
    return calls


def _mixed_recipients(count: int) -> bytes:
    """A `call_initiate` whose `to` mixes numbers and strings: items that do not sort."""
    return initiate(to=[index if index % 2 else str(index) for index in range(count)])


def test_explaining_a_long_array_costs_what_a_short_one_does() -> None:
    # jsonschema's uniqueItems compares every pair of items that do not sort, and checks each
    # item at ~30 us: 4,000 items held the event loop 1.25 s, a whole frame minutes.
    # Now the reference validator sees at most EXPLAINED_ITEMS of them: what is left per item
    # is one call of the depth walk.
    short = _python_calls(lambda: refusal(_mixed_recipients(400)))
    long = _python_calls(lambda: refusal(_mixed_recipients(4_000)))
    assert long - short < 2 * (4_000 - 400)
    explained = refusal(_mixed_recipients(4_000))
    assert (explained.code, explained.path) == ("invalid_message", "/to")
    assert "is too long" in explained.message


@given(
    st.lists(
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers(-3, 3)
            | st.floats(-2, 2)
            | st.sampled_from(["a", "b", "1"]),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.sampled_from(["a", "b"]), inner, max_size=2)
            ),
            max_leaves=6,
        ),
        max_size=6,
    )
)
@EXAMPLES
def test_linear_unique_items_agrees_with_jsonschema(items: list[Any]) -> None:
    schema = {"type": "array", "uniqueItems": True}
    reference = jsonschema.Draft202012Validator(schema)
    ours = REFERENCE["client"]["call_initiate"].evolve(schema=schema)
    assert ours.is_valid(items) == reference.is_valid(items)


def test_the_schemas_use_only_array_keywords_that_clipping_preserves() -> None:
    # _clipped shows the reference validator at most EXPLAINED_ITEMS items of an array: sound
    # only for keywords whose every error in the cut array is an error of the whole array.
    def keywords(schema: Any) -> set[str]:
        if isinstance(schema, list):
            return set().union(*map(keywords, schema))
        if isinstance(schema, dict):
            own = set(schema) if schema.get("type") == "array" else set()
            return own.union(*map(keywords, schema.values()))
        return set()

    documents = [orjson.loads(path.read_bytes()) for path in schema_dir().rglob("*.json")]
    harmless = {"type", "items", "minItems", "maxItems", "uniqueItems", "title", "description"}
    assert keywords(documents) <= harmless
    assert EXPLAINED_ITEMS["client"] == 101  # presence_subscribe's 100 users, plus one


def _nested(levels: int) -> Any:
    value: Any = "leaf"
    for _ in range(levels):
        value = [value]
    return value


def test_room_broadcast_data_nested_too_deep_is_refused_with_its_path() -> None:
    # orjson reads 1,023 levels and writes 254: 300 levels were accepted, then failed to relay.
    frame = b'{"type":"room_broadcast","room":"r","data":' + b"[" * 300 + b"]" * 300 + b"}"
    refused = refusal(frame)
    assert refused.code == "invalid_message"
    assert refused.path == "/data" + "/0" * (MAX_NESTING_DEPTH - 1)  # the first level too many
    assert f"deeper than {MAX_NESTING_DEPTH} levels" in refused.message


def test_data_as_deep_as_the_limit_is_accepted_and_re_encodes() -> None:
    # The message is one level: data may nest MAX_NESTING_DEPTH - 1 more.
    data = _nested(MAX_NESTING_DEPTH - 1)
    message = decode_client(orjson.dumps({"type": "room_broadcast", "room": "r", "data": data}))
    assert isinstance(message, messages.RoomBroadcast)
    relayed = messages.RoomMessage(room="r", from_="alice", data=message.data)
    assert orjson.loads(encode(relayed, seq=1))["data"] == data


def test_a_deep_value_where_the_schema_wants_none_is_refused_without_recursing() -> None:
    # Explaining walks the message: 1,000 levels would pass Python's recursion limit.
    deep = b"[" * 1_000 + b"]" * 1_000  # more than orjson writes: spelled out
    frame = initiate(to=["x"]).replace(b'["x"]', deep)
    refused = refusal(frame)
    assert refused.code == "invalid_message"
    assert refused.path == "/to" + "/0" * (MAX_NESTING_DEPTH - 1)


def test_only_messages_with_open_content_pay_for_the_depth_check() -> None:
    assert set(DEPTH_CHECKED["client"]) == {"room_broadcast"}
    assert set(DEPTH_CHECKED["server"]) == {"room_message"}
