"""Schema layer: messages generated from schemas/ (hypothesis-jsonschema), valid and spoilt.

A spoilt message gets exactly one `error invalid_message` pointing at the spoilt field (the
conformance suite's `mutants` spoil them), or `rate_limited` once the sender is over the rate;
a valid one whatever its meaning calls for; the connection stays either way. Huge arrays of
mixed types in the recipient lists used to take seconds to explain, on the event loop: the
sentinel's stall figure is what those tests are about.
"""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest
import trio
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from callbox.codec import MAX_RID_LENGTH
from callbox.conformance.cases.negative import mutants
from callbox.conformance.generation import generator_schema, json_safe
from callbox.messages import CLIENT_MESSAGES
from tests.hostile.harness import (
    FIGURES,
    HANG_GUARD_S,
    MAX_MESSAGE_BYTES,
    MESSAGE_BURST,
    NETWORK,
    ServerProcess,
    answers_to,
    as_text,
    attacker,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("guard")]

LAYER = "schema"
_users = itertools.count()
SENT_AS_IS = sorted(set(CLIENT_MESSAGES) - {"bye"})
"""Every client message but `bye`, which ends the session the test goes on with."""


@st.composite
def instances(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    tag = draw(st.sampled_from(SENT_AS_IS))
    return tag, draw(from_schema(generator_schema("client", tag)).map(json_safe))


def echoed_rid(message: dict[str, Any]) -> str | None:
    """The `rid` an error about `message` carries: only one the schema allows is echoed."""
    rid = message.get("rid")
    return rid if isinstance(rid, str) and len(rid) <= MAX_RID_LENGTH else None


def fits(message: dict[str, Any]) -> bool:
    return len(orjson.dumps(message)) <= MAX_MESSAGE_BYTES


@settings(NETWORK, max_examples=40)
@given(drawn=st.lists(instances(), min_size=1, max_size=3))
async def test_spoilt_messages_get_one_error_at_the_spoilt_field(
    server: ServerProcess, drawn: list[tuple[str, dict[str, Any]]]
) -> None:
    async with attacker(server, f"schema-{next(_users)}") as client:
        for tag, instance in drawn:
            for mutant in mutants(tag, [instance]):
                assume(fits(mutant.wire))
                FIGURES.count(LAYER)
                replies = await answers_to(client, as_text(mutant.wire))
                [error] = replies
                assert error["type"] == "error", (mutant.how, error)
                assert error.get("rid") == echoed_rid(mutant.wire), (mutant.how, error)
                if error["code"] != "rate_limited":
                    assert error["code"] == "invalid_message", (mutant.how, error)
                    path = error["path"]
                    assert path == mutant.path or path.startswith(mutant.path + "/"), (
                        mutant.how,
                        error,
                    )


@settings(NETWORK, max_examples=40)
@given(drawn=st.lists(instances(), min_size=1, max_size=3))
async def test_valid_messages_get_at_most_one_error_and_the_connection_stays(
    server: ServerProcess, drawn: list[tuple[str, dict[str, Any]]]
) -> None:
    """Valid but meaningless here (calls to users nobody signed in as, relays in calls that do
    not exist): refused at most once each, with an error the schema allows (wsclient checks)."""
    async with attacker(server, f"schema-{next(_users)}") as client:
        for _tag, instance in drawn:
            assume(fits(instance))
            FIGURES.count(LAYER)
            replies = await answers_to(client, as_text(instance))
            assert sum(reply["type"] == "error" for reply in replies) <= 1, replies


ITEM_KINDS: dict[str, Any] = {
    "int": lambda i: i,
    "float": lambda i: i + 0.5,
    "str": lambda i: f"u{i}",
    "same-str": lambda i: "dup",
    "bool": lambda i: i % 2 == 0,
    "null": lambda i: None,
    "list": lambda i: [i],
}


@st.composite
def mixed_items(draw: st.DrawFn) -> list[Any]:
    """Thousands of items of mixed JSON types, item `i` of kind `pattern[i % len(pattern)]`.
    (Drawing each of thousands of items from hypothesis would overrun its buffer.)"""
    pattern = draw(st.lists(st.sampled_from(sorted(ITEM_KINDS)), min_size=2, max_size=6))
    count = draw(st.integers(1_000, 5_000))
    return [ITEM_KINDS[pattern[i % len(pattern)]](i) for i in range(count)]


RECIPIENT_LISTS = {"call_initiate": "to", "call_invite": "to", "presence_subscribe": "users"}


def mixed_list_message(tag: str, items: list[Any]) -> dict[str, Any]:
    base: dict[str, Any] = {"type": tag, RECIPIENT_LISTS[tag]: items, "rid": "mixed"}
    if tag != "presence_subscribe":
        base["call_id"] = "mixed-list-call"
    if tag == "call_initiate":
        base["media"] = {"audio": True, "video": True}
    return base


@settings(NETWORK, max_examples=12)
@given(
    tag=st.sampled_from(sorted(RECIPIENT_LISTS)),
    items=mixed_items(),
)
async def test_thousands_of_mixed_recipients_are_refused_promptly(
    server: ServerProcess, tag: str, items: list[Any]
) -> None:
    """Issue 10 finding (a): numbers mixed with strings made `uniqueItems` compare every pair
    while explaining the refusal, freezing the server for seconds (the sentinel's stall)."""
    message = mixed_list_message(tag, items)
    assume(fits(message))
    async with attacker(server, f"schema-{next(_users)}") as client:
        FIGURES.count(LAYER)
        [error] = await answers_to(client, as_text(message))
    assert (error["type"], error["code"], error.get("rid")) == (
        "error",
        "invalid_message",
        "mixed",
    ), error
    assert error["path"].startswith("/" + RECIPIENT_LISTS[tag])


async def test_a_flood_of_invalid_messages_gets_one_answer_each_some_rate_limited(
    server: ServerProcess,
) -> None:
    """Issue 10 finding (e): invalid messages count toward the rate limit. A flood of them,
    sent without waiting, gets exactly one error each; past the burst, `rate_limited`."""
    flood = 3 * MESSAGE_BURST
    spoilt = orjson.dumps({"type": "ping", "ts": "not a number", "rid": "flood"}).decode()
    async with attacker(server, f"schema-{next(_users)}") as client:
        for _ in range(flood):
            await client.ws.send_message(spoilt)
        FIGURES.count(LAYER, flood)
        with trio.fail_after(HANG_GUARD_S):
            codes = [(await client.receive())["code"] for _ in range(flood)]
        assert set(codes) <= {"invalid_message", "rate_limited"}, set(codes)
        assert "rate_limited" in codes, "invalid messages do not count toward the rate limit"
        assert codes[: MESSAGE_BURST // 2] == ["invalid_message"] * (MESSAGE_BURST // 2)
