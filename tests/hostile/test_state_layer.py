"""State layer: valid messages at the wrong moment.

Each is refused with the error docs/protocol.md names for it and nobody else notices: the
sentinel's call is a third party to all of it (its user ids are `sentinel-*`, its call ids
`sentinel-N`), and the guard fails the test if anything but its own candidates reaches it.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.hostile.harness import (
    FIGURES,
    HANG_GUARD_S,
    HELLO_TIMEOUT_MS,
    NETWORK,
    ServerProcess,
    answers_to,
    as_text,
    attacker,
    frames_until_close,
    ws_client,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("guard")]

LAYER = "state"
_users = itertools.count()
MEDIA = {"audio": True, "video": False}
CALL_IDS = ["state-call-1", "state-call-2", "sentinel-0", "sentinel-1"]
"""Call ids the attacker plays with: its own, and the sentinels' (whose ids it can guess)."""
STRANGERS = ["sentinel-a-0", "sentinel-b-0", "sentinel-a-1", "nobody-here"]
CANDIDATE = {"candidate": "candidate:1 1 udp 1 192.0.2.1 9 typ host", "sdpMid": "0"}


def out_of_order(call_id: str, to: str) -> list[dict[str, Any]]:
    """Every message that names a call, sent by someone who is not in it."""
    return [
        {"type": "call_answer", "call_id": call_id},
        {"type": "call_join", "call_id": call_id},
        {"type": "call_reject", "call_id": call_id, "reason": "declined"},
        {"type": "hangup", "call_id": call_id},
        {"type": "call_invite", "call_id": call_id, "to": ["nobody-here"]},
        {"type": "sdp_offer", "call_id": call_id, "to": to, "sdp": "v=0"},
        {"type": "sdp_answer", "call_id": call_id, "to": to, "sdp": "v=0"},
        {"type": "ice_candidate", "call_id": call_id, "to": to, "candidate": CANDIDATE},
    ]


REFUSALS = {"unknown_call", "not_in_call", "invalid_state"}


@settings(NETWORK, max_examples=40)
@given(
    messages=st.lists(
        st.builds(out_of_order, st.sampled_from(CALL_IDS), st.sampled_from(STRANGERS)).flatmap(
            st.sampled_from
        ),
        min_size=1,
        max_size=10,
    )
)
async def test_messages_about_calls_one_is_not_in_are_refused(
    server: ServerProcess, messages: list[dict[str, Any]]
) -> None:
    async with attacker(server, f"state-{next(_users)}") as client:
        for index, message in enumerate(messages):
            FIGURES.count(LAYER)
            [error] = await answers_to(client, as_text({**message, "rid": f"s{index}"}))
            assert error["type"] == "error", (message, error)
            assert error["code"] in REFUSALS, (message, error)
            assert error["rid"] == f"s{index}"


async def test_answer_before_ring_and_relay_before_accept(server: ServerProcess) -> None:
    """The callee answers a call that does not exist yet, then relays in a call still ringing."""
    async with (
        attacker(server, "early-caller") as caller,
        attacker(server, "early-callee") as callee,
    ):
        FIGURES.count(LAYER, 3)
        [error] = await answers_to(
            callee, as_text({"type": "call_answer", "call_id": "early-call"})
        )
        assert error["code"] == "unknown_call"
        initiate = {"type": "call_initiate", "call_id": "early-call", "to": ["early-callee"]}
        await caller.send({**initiate, "media": MEDIA})
        await caller.expect("call_ringing")
        await callee.expect("call_incoming")
        relay = {"type": "ice_candidate", "call_id": "early-call", "to": "early-callee"}
        [error] = await answers_to(caller, as_text({**relay, "candidate": CANDIDATE}))
        assert error["code"] == "invalid_state"


async def test_hello_twice_and_resumes_with_forged_stale_or_future_positions(
    server: ServerProcess,
) -> None:
    async with attacker(server, "resumer") as client:
        FIGURES.count(LAYER)
        [error] = await answers_to(client, as_text({"type": "hello", "user_id": "resumer"}))
        assert (error["code"], error["path"]) == ("invalid_state", "/type")
        token = client.welcome["resume_token"]
    cases = [
        ("forged-token-" + "x" * 20, 0),  # a token nobody was given
        (token, 10_000),  # a real token, with a last_seq ahead of anything sent
        (token, 0),  # the same token again (already used above, or stale)
    ]
    for resume, last_seq in cases:
        FIGURES.count(LAYER)
        async with attacker(server, None) as client:
            hello = {"type": "hello", "user_id": "resumer", "resume": resume, "last_seq": last_seq}
            await client.send(hello)
            welcome = await client.expect("welcome")
            assert welcome["user_id"] == "resumer"
    # A forged token naming another user resumes nothing of theirs.
    async with attacker(server, None) as client:
        FIGURES.count(LAYER)
        forged = {"resume": "x" * 24, "last_seq": 0}
        await client.send({"type": "hello", "user_id": "sentinel-a-0", **forged})
        welcome = await client.expect("welcome")
        assert welcome["resumed"] is False


async def test_a_connection_that_never_says_hello_is_closed_4003(server: ServerProcess) -> None:
    """Issue 10 finding (d): HELLO_TIMEOUT_MS closes it with 4003 "hello timeout" (the server
    here runs with HELLO_TIMEOUT_MS as harness.SERVER_ENV sets it)."""
    clients = [await ws_client(server) for _ in range(10)]
    FIGURES.count(LAYER, len(clients))
    started = trio.current_time()
    with trio.fail_after(HELLO_TIMEOUT_MS / 1000 + HANG_GUARD_S):
        for client in clients:
            close, _ = await frames_until_close(client)
            assert close is not None
            assert (close.code, close.reason) == (4003, "hello timeout")
    assert trio.current_time() - started < HELLO_TIMEOUT_MS / 1000 + 2
