"""The client library against the real server: typed messages, seq checks, resume, validation."""

from __future__ import annotations

import orjson
import pytest
import trio
from trio_websocket import WebSocketRequest, serve_websocket

from callbox.client import (
    Client,
    HelloRefused,
    ProtocolViolation,
    Traffic,
    connect,
)
from callbox.codec import ProtocolError, encode
from callbox.config import Config
from callbox.messages import (
    CallAccepted,
    CallEnded,
    CallIncoming,
    CallJoin,
    CallRinging,
    Error,
    IceServer,
    Media,
    Pong,
    RelayedIceCandidate,
    RelayedSdpAnswer,
    RelayedSdpOffer,
    Welcome,
)
from tests.helpers import SDP, start_server


async def test_a_whole_call(url: str) -> None:
    async with connect(url, user_id="alice") as alice, connect(url, user_id="bob") as bob:
        call_id = await alice.initiate(["bob"], media=Media(audio=True, video=False), rid="i")
        await alice.expect(CallRinging, call_id=call_id, to=["bob"], rid="i")
        incoming = await bob.expect(CallIncoming, call_id=call_id, from_="alice")
        assert incoming.media == Media(audio=True, video=False)
        await bob.answer(call_id)
        for client in (bob, alice):
            await client.expect(CallAccepted, call_id=call_id, by="bob")
        await bob.offer(call_id, "alice", SDP)
        await alice.expect(RelayedSdpOffer, from_="bob", sdp=SDP)
        await alice.answer_sdp(call_id, "bob", SDP)
        await bob.expect(RelayedSdpAnswer, from_="alice", sdp=SDP)
        await alice.candidate(call_id, "bob", None)
        await bob.expect(RelayedIceCandidate, from_="alice", candidate=None)
        await alice.hangup(call_id, "normal")
        for client in (alice, bob):
            await client.expect(CallEnded, call_id=call_id, reason="hangup", detail="normal")
        assert (alice.last_seq, bob.last_seq) == (4, 5)


async def test_resume_replays_through_receive(url: str) -> None:
    async with connect(url, user_id="alice") as alice, connect(url, user_id="bob") as bob:
        call_id = await alice.initiate(["bob"])
        await bob.expect(CallIncoming)
        await bob.answer(call_id)
        await bob.expect(CallAccepted)
        await bob.drop()
        await alice.expect(CallRinging)
        await alice.expect(CallAccepted)
        await alice.offer(call_id, "bob", SDP)
        await alice.ping()
        token = bob.welcome.resume_token
        welcome = await bob.resume()
        assert welcome.resumed and welcome.resume_token != token
        offer = await bob.expect(RelayedSdpOffer, sdp=SDP)
        assert offer.seq == bob.last_seq == 3


async def test_what_a_lost_connection_swallowed_is_sent_again_after_the_resume(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """alice's offer is numbered and handed to a connection that dies before writing it (the
    test drops it on the floor): the resume's `welcome` says the server applied only the
    messages before it, so the client sends it again, and bob gets it once."""
    async with connect(url, user_id="alice") as alice, connect(url, user_id="bob") as bob:
        call_id = await alice.initiate(["bob"])
        await bob.expect(CallIncoming)
        await bob.answer(call_id)
        await alice.expect(CallRinging)
        await alice.expect(CallAccepted)
        await alice.candidate(call_id, "bob", None)  # applied: never sent again
        await bob.expect(CallAccepted)
        await bob.expect(RelayedIceCandidate)
        connection = alice.connection

        async def swallowed(message: object) -> None:
            pass

        monkeypatch.setattr(connection, "send", swallowed)
        await alice.offer(call_id, "bob", SDP)
        await alice.drop()
        welcome = await alice.resume()
        assert welcome.resumed and welcome.last_cseq == alice.last_cseq - 1
        offer = await bob.expect(RelayedSdpOffer, sdp=SDP)
        await bob.ping()  # the pong is next: the offer came once, the candidate not again
        assert offer.seq == bob.last_seq


async def test_a_refused_resume_starts_numbering_again(url: str) -> None:
    async with connect(url, user_id="bob") as bob:
        await bob.send(CallJoin(call_id="nonexistent"))
        await bob.expect(Error, code="unknown_call", seq=1)
        await bob.drop()
        welcome = await bob.resume(last_seq=9)
        assert not welcome.resumed and bob.last_seq == 0
        await bob.send(CallJoin(call_id="nonexistent"))
        await bob.expect(Error, code="unknown_call", seq=1)


async def test_an_invalid_message_is_refused_before_it_is_sent(url: str) -> None:
    traffic = Traffic()
    async with connect(url, user_id="alice", traffic=traffic) as alice:
        with pytest.raises(ProtocolError) as refused:
            await alice.send(CallJoin(call_id="short"))
        assert (refused.value.code, refused.value.path) == ("invalid_message", "/call_id")
        with pytest.raises(ProtocolError):
            await alice.initiate(["alice", "alice"])  # `to` must hold distinct users
        assert "call_join" not in traffic.sent and "call_initiate" not in traffic.sent
        await alice.ping()  # the next message is the pong: the server got nothing to refuse


async def test_expect_says_what_came_instead(url: str) -> None:
    async with connect(url, user_id="alice") as alice:
        await alice.send(CallJoin(call_id="nonexistent"))
        with pytest.raises(
            ProtocolViolation,
            match=r"alice expected call_ended \{reason: 'hangup'\}, got .*unknown_call",
        ):
            await alice.expect(CallEnded, reason="hangup")
        with pytest.raises(TypeError, match="no field colour"):
            await alice.expect(CallEnded, colour="red")


async def test_hello_refused(nursery: trio.Nursery) -> None:
    url = await start_server(nursery, jwt_secret="s" * 32)
    with pytest.raises(HelloRefused) as refused:
        async with connect(url, user_id="alice"):
            pass
    assert refused.value.error.code == "auth_failed"


async def test_an_error_in_the_block_comes_out_unwrapped(url: str) -> None:
    with pytest.raises(KeyError):
        async with connect(url, user_id="alice"):
            raise KeyError("mine")


async def test_leaving_the_block_ends_the_session_at_once(url: str) -> None:
    async with connect(url, user_id="alice") as alice:
        async with connect(url, user_id="bob") as bob:
            call_id = await alice.initiate(["bob"])
            await bob.expect(CallIncoming)
            await bob.answer(call_id)
            await bob.expect(CallAccepted)
        await alice.expect(CallRinging)
        await alice.expect(CallAccepted)
        with trio.fail_after(2):  # no grace period: bye
            await alice.expect(CallEnded, reason="disconnected", by="bob")


async def test_iteration_ends_when_the_session_does(url: str) -> None:
    async with connect(url, user_id="alice") as alice:
        await alice.ping(ts=1)
        await alice.bye()
        assert [message async for message in alice] == []
        assert alice.connection.close_code == 1000


# A server that misbehaves on purpose --------------------------------------------------------------

WELCOME = Welcome(
    user_id="alice",
    session_id="s1",
    resume_token="t1",
    resumed=False,
    ice_servers=[IceServer(urls=["stun:stun.example.org"])],
    heartbeat_ms=15000,
    limits=Config().limits(),
)


async def fake_server(nursery: trio.Nursery, *frames: bytes) -> str:
    """Answers hello with a welcome, then sends `frames`, then waits."""

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.get_message()
        for frame in (encode(WELCOME), *frames):
            await ws.send_message(frame.decode())
        await trio.sleep_forever()

    server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
    return f"ws://127.0.0.1:{server.port}/ws"


@pytest.mark.parametrize(
    ("frame", "complaint"),
    [
        (encode(Pong(), seq=None), None),
        (b'{"type": "pong", "seq": 1}', "invalid message"),
        (encode(Error(code="unknown_call", message="no"), seq=2), "expected seq 1"),
        (encode(Error(code="unknown_call", message="no")), "expected seq 1"),
        (encode(WELCOME), "welcome without a hello"),
        (orjson.dumps({"type": "call_ended", "call_id": "abcdefgh", "seq": 1}), "reason"),
    ],
)
async def test_what_the_server_sends_is_checked(
    nursery: trio.Nursery, frame: bytes, complaint: str | None
) -> None:
    url = await fake_server(nursery, frame)
    async with trio.open_nursery() as inner:
        alice = await Client.open(inner, url, user_id="alice")
        if complaint is None:
            assert await alice.receive() == Pong()
        else:
            with pytest.raises(ProtocolViolation, match=complaint):
                await alice.receive()
        inner.cancel_scope.cancel()
