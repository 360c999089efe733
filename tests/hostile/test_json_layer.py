"""JSON layer: text frames that are not JSON, or JSON that is not a message.

Each frame must be answered with exactly one `error` (`invalid_json`, or `invalid_message` with
the `path` of the fault) and the connection must go on: a `ping` right after it is answered.
The expected answer is the codec's own verdict on the frame (`callbox.codec.decode_client`),
so the test checks that the server says what its codec decides, once, and survives.
"""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callbox.codec import MAX_NESTING_DEPTH, ProtocolError, decode_client
from tests.hostile.harness import FIGURES, NETWORK, ServerProcess, answers_to, attacker

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("guard")]

LAYER = "json"
_examples = itertools.count()


def verdict(frame: str) -> dict[str, Any]:
    """The one reply the server owes `frame`: an error as the codec words it, or (for a valid
    ping) a pong."""
    try:
        message = decode_client(frame)
    except ProtocolError as refused:
        return {"type": "error", "code": refused.code, "path": refused.path, "rid": refused.rid}
    assert message.TYPE == "ping", f"the strategy made a valid {message.TYPE}: {frame!r}"
    return {"type": "pong", "rid": message.rid}


def nested(depth: int, inner: str = "0", array: bool = True) -> str:
    opening, closing = ("[", "]") if array else ('{"a":', "}")
    return opening * depth + inner + closing * depth


def as_ping(ts: str, **fields: str) -> str:
    extra = "".join(f',"{name}":{value}' for name, value in fields.items())
    return f'{{"type":"ping","ts":{ts}{extra}}}'


NOT_JSON = st.text(max_size=200).filter(lambda text: not _parses(text))
DEEP = st.builds(nested, st.integers(1, 2_000), st.just("0"), st.booleans())
DEEP_DATA = st.builds(
    lambda depth, array: (
        f'{{"type":"room_broadcast","room":"r","data":{nested(depth, "1", array)}}}'
    ),
    st.integers(MAX_NESTING_DEPTH, 1_100),  # data inside the message: one level too many
    st.booleans(),
)
HUGE_NUMBERS = st.builds(
    as_ping,
    st.one_of(
        st.integers(min_value=2**53).map(str),
        st.integers(min_value=2**64).map(lambda n: f"-{n}"),
        st.sampled_from(["1e400", "-1e400", "1e-400", "NaN", "Infinity", "0.5e308", "9" * 400]),
    ),
)
SURROGATES = st.builds(
    lambda code, where: (
        as_ping("1", rid=f'"\\u{code:04x}"')
        if where
        else f'{{"type":"ping","ts":1,"\\u{code:04x}":1}}'
    ),
    st.integers(0xD800, 0xDFFF),
    st.booleans(),
)
DUPLICATE_KEYS = st.builds(
    lambda name, values: '{"type":"ping","ts":1' + "".join(f',"{name}":{v}' for v in values) + "}",
    st.sampled_from(["type", "ts", "rid", "extra"]),
    st.lists(st.sampled_from(['"ping"', '"hello"', "1", "null", '"x"', "[]"]), min_size=2),
)
NOT_AN_OBJECT = st.one_of(
    st.sampled_from(["[]", "null", "true", "1", '"ping"', '[{"type":"ping","ts":1}]']),
    st.lists(st.integers(-(2**63), 2**63 - 1)).map(orjson.dumps).map(bytes.decode),
)
FRAMES = st.one_of(
    NOT_JSON, DEEP, DEEP_DATA, HUGE_NUMBERS, SURROGATES, DUPLICATE_KEYS, NOT_AN_OBJECT
)


def _parses(text: str) -> bool:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


@settings(NETWORK, max_examples=150)
@given(frames=st.lists(FRAMES, min_size=1, max_size=8))
async def test_each_bad_frame_gets_one_error_and_the_connection_stays(
    server: ServerProcess, frames: list[str]
) -> None:
    async with attacker(server, f"json-{next(_examples)}") as client:
        for frame in frames:
            FIGURES.count(LAYER)
            replies = await answers_to(client, frame)
            assert [_shape(reply) for reply in replies] == [verdict(frame)], frame[:200]


def _shape(reply: dict[str, Any]) -> dict[str, Any]:
    if reply["type"] == "pong":
        return {"type": "pong", "rid": reply.get("rid")}
    return {key: reply.get(key) for key in ("type", "code", "path", "rid")}


NAMED = [
    # (frame, code, the start of the expected path or None for none)
    ("{", "invalid_json", None),
    (nested(300), "invalid_message", ""),
    (nested(5_000), "invalid_json", None),
    (f'{{"type":"room_broadcast","room":"r","data":{nested(300)}}}', "invalid_message", "/data/0/"),
    (as_ping("9" * 400), "invalid_json", None),
    (as_ping(str(2**64)), "invalid_message", "/ts"),
    (as_ping("1e400"), "invalid_json", None),
    (as_ping("1", rid='"\\ud800"'), "invalid_json", None),
    ('"hello"', "invalid_message", ""),
]
"""The cases the issue names, answered as docs/protocol.md says. A 300-deep
`room_broadcast.data` used to crash the handler."""


async def test_named_cases_get_the_documented_error(server: ServerProcess) -> None:
    async with attacker(server, "json-named") as client:
        for frame, code, path in NAMED:
            FIGURES.count(LAYER)
            [reply] = await answers_to(client, frame)
            assert (reply["type"], reply["code"]) == ("error", code), (frame[:100], reply)
            if path is None:
                assert "path" not in reply, reply
            else:
                assert reply["path"].startswith(path), reply
