"""The codec's per-type fast paths do exactly what the generic cattrs path does.

`STRUCTURE_BY_TYPE` (hand-specialised for the relayed messages, cattrs' class hook otherwise) must
build the same message as cattrs' tagged-union hook, `ENCODE_BY_CLASS` must write the same bytes
as cattrs' unstructuring, `with_seq` the same bytes as encoding with the `seq`, and
`positional_constructor` the same object as the class, on generated instances of every published
schema.
"""

from __future__ import annotations

from typing import Any

import attrs
import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from callbox import codec, messages
from callbox.codec import (
    ENCODE_BY_CLASS,
    STRUCTURE_BY_TYPE,
    Direction,
    decode_client,
    encode,
    positional_constructor,
    with_seq,
)
from callbox.core.actions import Send
from tests.generated_messages import EXAMPLES, MESSAGE_IDS, MESSAGES, instances

SPECIALISED = [
    ("client", "sdp_offer"),
    ("client", "sdp_answer"),
    ("client", "ice_candidate"),
    ("server", "sdp_offer"),
    ("server", "sdp_answer"),
    ("server", "ice_candidate"),
]
ON_SPECIALISED = pytest.mark.parametrize(
    ("direction", "tag"), SPECIALISED, ids=[f"{d}/{t}" for d, t in SPECIALISED]
)
"""The relayed messages: structured and encoded by hand, and built by `positional_constructor`."""


def reference_structure(direction: Direction, obj: dict[str, Any]) -> Any:
    return codec._STRUCTURE[direction](obj, codec._UNIONS[direction])


def reference_encode(message: Any, seq: int | None) -> bytes:
    wire = codec._UNSTRUCTURE[message.__class__](message)
    if seq is not None:
        wire["seq"] = seq
    return orjson.dumps(wire)


def check(direction: Direction, tag: str, instance: dict[str, Any], seq: int | None) -> None:
    # The fast paths only ever see what the fast validator accepted. (hypothesis-jsonschema draws
    # patterns with Python's `re`, whose `$` also matches before a final newline: such an
    # instance is refused by jsonschema-rs, never structured, and not a case here.)
    assume(codec.FAST[direction][tag].is_valid(instance))
    expected = reference_structure(direction, orjson.loads(orjson.dumps(instance)))
    message = STRUCTURE_BY_TYPE[direction][tag](orjson.loads(orjson.dumps(instance)))
    assert message == expected
    assert type(message) is type(expected)
    assert ENCODE_BY_CLASS[type(message)](message, seq) == reference_encode(expected, seq)
    if seq is not None and getattr(message, "seq", None) is None:
        assert with_seq(encode(message), seq) == reference_encode(expected, seq)


SEQS = st.none() | st.integers(min_value=1, max_value=2**53 - 1)


@pytest.mark.slow
@pytest.mark.parametrize(("direction", "tag"), MESSAGES, ids=MESSAGE_IDS)
@EXAMPLES
@given(data=st.data(), seq=SEQS)
def test_fast_structure_and_encode_match_cattrs(
    direction: Direction, tag: str, data: st.DataObject, seq: int | None
) -> None:
    check(direction, tag, data.draw(instances(direction, tag)), seq)


@pytest.mark.slow
@ON_SPECIALISED
@settings(EXAMPLES, max_examples=200)
@given(data=st.data(), seq=SEQS)
def test_hand_specialised_paths_match_cattrs(
    direction: Direction, tag: str, data: st.DataObject, seq: int | None
) -> None:
    """More examples for the hand-written ones, which all relay traffic runs through."""
    check(direction, tag, data.draw(instances(direction, tag)), seq)


def test_specialised_encoders_keep_an_existing_seq_where_cattrs_puts_it() -> None:
    relayed = messages.RelayedSdpOffer(call_id="c_7f3a9b2e41d0", from_="alice", sdp="v=0", seq=4)
    for seq in (None, 9):
        assert encode(relayed, seq=seq) == reference_encode(relayed, seq)


def test_a_decoded_relay_message_is_the_cattrs_one() -> None:
    data = orjson.dumps(
        {
            "type": "ice_candidate",
            "call_id": "c_7f3a9b2e41d0",
            "to": "bob",
            "candidate": {"candidate": "candidate:1 1 udp 1 10.0.0.1 9 typ host", "sdpMid": "0"},
            "rid": "r1",
        }
    )
    assert decode_client(data) == reference_structure("client", orjson.loads(data))


@ON_SPECIALISED
@EXAMPLES
@given(data=st.data())
def test_positional_constructor_builds_what_the_class_builds(
    direction: Direction, tag: str, data: st.DataObject
) -> None:
    instance = data.draw(instances(direction, tag))
    assume(codec.FAST[direction][tag].is_valid(instance))
    expected = reference_structure(direction, instance)
    cls = type(expected)
    make = positional_constructor(cls)
    assert make.__name__ == "make"  # the fast path, not the keyword fallback
    built = make(*(getattr(expected, a.name) for a in attrs.fields(cls)))
    assert type(built) is cls
    assert built == expected
    assert repr(built) == repr(expected)
    frame = repr(built).encode()
    assert positional_constructor(Send)(7, frame) == Send(7, frame)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        built.call_id = "changed"


def test_positional_constructor_falls_back_to_the_class_when_init_does_more() -> None:
    @attrs.frozen
    class Checked:
        value: int = attrs.field(validator=attrs.validators.gt(0))

    make = positional_constructor(Checked)
    assert make(3) == Checked(3)
    with pytest.raises(ValueError, match="must be > 0"):
        make(0)
