"""The whole server over real WebSockets on 127.0.0.1; every timeout under MockClock."""

from __future__ import annotations

import time

import jwt
import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, open_websocket_url

from tests.helpers import SDP, accepted_call, initiate, start_server

from .wsclient import Client, connect

SECRET = "s" * 32


async def test_one_to_one_call_end_to_end(url: str) -> None:
    async with connect(url, "alice") as alice, connect(url, "bob") as bob:
        await alice.send(initiate("call-0001", "bob", rid="r1"))
        await alice.expect("call_ringing", to=["bob"], rid="r1")
        incoming = await bob.expect("call_incoming", call_id="call-0001")
        assert incoming["from"] == "alice"
        await bob.send({"type": "call_answer", "call_id": "call-0001"})
        await bob.expect("call_accepted", participants=["alice", "bob"])
        await alice.expect("call_accepted", by="bob")
        await bob.send({"type": "sdp_offer", "call_id": "call-0001", "to": "alice", "sdp": SDP})
        offer = await alice.expect("sdp_offer", sdp=SDP)
        assert offer["from"] == "bob"
        await alice.send({"type": "sdp_answer", "call_id": "call-0001", "to": "bob", "sdp": SDP})
        await bob.expect("sdp_answer", sdp=SDP)
        for candidate in ({"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host"}, None):
            message = {"type": "ice_candidate", "call_id": "call-0001", "to": "bob"}
            await alice.send({**message, "candidate": candidate})
            await bob.expect("ice_candidate", candidate=candidate)
        await bob.send({"type": "hangup", "call_id": "call-0001"})
        await bob.expect("call_ended", reason="hangup", by="bob")
        await alice.expect("call_ended", reason="hangup", by="bob")


async def test_bad_input_is_answered_and_the_connection_survives(url: str) -> None:
    async with connect(url, "alice") as alice:
        await alice.ws.send_message("{nope")
        await alice.expect("error", code="invalid_json")
        await alice.send({"type": "call_join", "call_id": "short", "rid": "x"})
        await alice.expect("error", code="invalid_message", path="/call_id", rid="x")
        await alice.send({"type": "dance", "rid": "y"})
        await alice.expect("error", code="unknown_type", path="/type", rid="y")
        await alice.ws.send_message(b"\x00binary")
        await alice.expect("error", code="invalid_message")
        await alice.send({"type": "ping", "ts": 1})
        await alice.expect("pong", ts=1)


async def test_oversize_frame_closes_with_1009(nursery: trio.Nursery) -> None:
    url = await start_server(nursery, max_message_bytes=1024)
    async with connect(url, "alice") as alice:
        await alice.send({"type": "ping", "rid": "x" * 2000})
        with pytest.raises(ConnectionClosed):
            await alice.ws.get_message()
        assert alice.ws.closed is not None
        assert alice.ws.closed.code == 1009


async def test_jwt_required_when_a_secret_is_configured(nursery: trio.Nursery) -> None:
    url = await start_server(nursery, jwt_secret=SECRET)
    async with connect(url) as mallory:
        await mallory.send({"type": "hello", "user_id": "alice"})
        await mallory.expect("error", code="auth_failed")
        with pytest.raises(ConnectionClosed):
            await mallory.ws.get_message()
        assert mallory.ws.closed is not None
        assert mallory.ws.closed.code == 4001
    token = jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    async with connect(url) as alice:
        await alice.send({"type": "hello", "token": token})
        await alice.expect("welcome", user_id="alice")


async def test_ring_timeout(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    url = await start_server(nursery)
    async with connect(url, "alice") as alice, connect(url, "bob") as bob:
        await alice.send(initiate("call-0001", "bob"))
        await alice.expect("call_ringing")
        await bob.expect("call_incoming", expires_in_ms=30_000)
        before = trio.current_time()
        await bob.expect("call_ended", reason="ring_timeout")
        await alice.expect("call_rejected", reason="ring_timeout")
        await alice.expect("call_ended", reason="ring_timeout")
        assert trio.current_time() - before == pytest.approx(30, abs=0.5)


async def test_duration_cap(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    url = await start_server(nursery)
    async with connect(url, "alice") as alice, connect(url, "bob") as bob:
        await accepted_call(alice, bob)
        started = trio.current_time()
        await alice.expect("call_expiring", ends_in_ms=60_000)
        await bob.expect("call_expiring", ends_in_ms=60_000)
        await alice.expect("call_ended", reason="max_duration")
        await bob.expect("call_ended", reason="max_duration")
        assert trio.current_time() - started == pytest.approx(3600, abs=1)


async def test_resume_within_grace_keeps_the_call(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    url = await start_server(nursery)
    async with connect(url, "alice") as alice:
        async with connect(url, "bob") as bob:
            await accepted_call(alice, bob)
            token, last_seq = bob.welcome["resume_token"], bob.last_seq
            await bob.ws.aclose()
        await trio.sleep(1)
        await alice.send({"type": "sdp_offer", "call_id": "call-0001", "to": "bob", "sdp": SDP})
        async with open_websocket_url(url) as ws:
            bob = Client(ws)
            bob.last_seq = last_seq
            await bob.hello("bob", resume=token, last_seq=last_seq)
            assert bob.welcome["resumed"] is True
            await bob.expect("sdp_offer", sdp=SDP)
            await bob.send(
                {"type": "sdp_answer", "call_id": "call-0001", "to": "alice", "sdp": SDP}
            )
            await alice.expect("sdp_answer")


async def test_peer_is_told_only_when_grace_ends(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    url = await start_server(nursery)
    async with connect(url, "alice") as alice:
        async with connect(url, "bob") as bob:
            await accepted_call(alice, bob)
        dropped = trio.current_time()
        await alice.expect("call_ended", reason="disconnected", by="bob")
        assert trio.current_time() - dropped == pytest.approx(10, abs=0.5)


async def test_shutdown_sends_1001(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        url = await start_server(nursery)
        async with connect(url, "alice") as alice:
            nursery.cancel_scope.cancel()
            with pytest.raises(ConnectionClosed):
                await alice.ws.get_message()
            assert alice.ws.closed is not None
            assert alice.ws.closed.code == 1001


async def test_other_users_are_undisturbed_by_a_misbehaving_one(url: str) -> None:
    async with connect(url, "alice") as alice, connect(url, "bob") as bob:
        await accepted_call(alice, bob)
        async with connect(url, "mallory") as mallory:
            for junk in ("{", "[]", '{"type": 5}', '{"type": "hangup", "call_id": "call-0001"}'):
                await mallory.ws.send_message(junk)
                await mallory.expect("error")
            await mallory.ws.aclose()
        await alice.send({"type": "sdp_offer", "call_id": "call-0001", "to": "bob", "sdp": SDP})
        await bob.expect("sdp_offer", sdp=SDP)


async def test_ephemeral_turn_credentials_are_handed_out_and_refreshed(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    url = await start_server(
        nursery, turn_servers=("turn:127.0.0.1:3478",), turn_secret="coturn-secret", turn_ttl_s=600
    )
    async with connect(url, "alice") as alice:
        (turn,) = alice.welcome["ice_servers"]
        expiry, user = turn["username"].split(":")
        assert user == "alice" and int(expiry) >= time.time() + 590
        assert turn["urls"] == ["turn:127.0.0.1:3478"]
        pushed_at = trio.current_time()
        update = await alice.expect("ice_servers")
        assert trio.current_time() - pushed_at == pytest.approx(480, abs=5)  # 80% of the TTL
        assert update["ice_servers"][0]["username"].endswith(":alice")


async def test_a_connection_that_never_says_hello_is_closed_4003(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    url = await start_server(nursery, hello_timeout_ms=5000)
    async with open_websocket_url(url) as ws:
        opened = trio.current_time()
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
        assert closed.value.reason.code == 4003
        assert closed.value.reason.reason == "hello timeout"
        assert trio.current_time() - opened == pytest.approx(5, abs=0.1)


async def failed_hello(url: str, forwarded_for: str) -> float:
    """A hello with a forged token from `forwarded_for` (as a proxy would say); how long its
    refusal took."""
    async with open_websocket_url(url, extra_headers=[("X-Forwarded-For", forwarded_for)]) as ws:
        asked = trio.current_time()
        await ws.send_message('{"type": "hello", "token": "forged"}')
        reply = await ws.get_message()
        assert '"auth_failed"' in reply
        return trio.current_time() - asked


async def test_failed_sign_ins_are_throttled_per_client_behind_a_trusted_proxy(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    url = await start_server(nursery, jwt_secret=SECRET)
    for _ in range(10):
        assert await failed_hello(url, "192.0.2.1, 203.0.113.7") == 0
    assert await failed_hello(url, "203.0.113.7") == pytest.approx(0.1)
    assert await failed_hello(url, "203.0.113.7") == pytest.approx(0.2)
    assert await failed_hello(url, "198.51.100.9") == 0  # another client behind the same proxy


async def test_x_forwarded_for_from_an_untrusted_peer_is_ignored(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    url = await start_server(nursery, jwt_secret=SECRET, trusted_proxies=())
    for n in range(10):
        assert await failed_hello(url, f"198.51.100.{n}") == 0
    assert await failed_hello(url, "198.51.100.99") == pytest.approx(0.1)  # all are 127.0.0.1
