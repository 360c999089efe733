"""The Python client given several URLs: it connects to the first that answers, and resumes a
lost connection on the next one, round-robin.

Two `callbox serve` processes do not share sessions (each is a cluster of one), so a client
that moves from one to the other gets a new session: `SessionLost`. The resume itself is tested
with one server behind a list that also holds a URL nobody answers.
"""

from __future__ import annotations

import logging

import pytest
import trio
from trio_websocket import ConnectionClosed, HandshakeError

import callbox.client
from callbox.client import Client, SessionLost, connect
from callbox.config import Config
from callbox.messages import RoomJoined, RoomMemberJoined, RoomMessage, Welcome
from tests.helpers import (
    ADMIN_TOKEN,
    admin_request,
    closed_port_url,
    closing_node,
    serve_process,
    start_server,
)


async def test_the_first_url_that_answers_is_used(url: str) -> None:
    dead = closed_port_url()
    async with connect([dead, url], user_id="alice") as alice:
        assert alice.url == url
        assert alice.urls == (dead, url)
        await alice.ping()


async def test_when_no_url_answers_the_last_failure_is_raised() -> None:
    with pytest.raises(HandshakeError):
        async with connect([closed_port_url(), closed_port_url()], user_id="alice"):
            pass


async def test_a_server_that_says_nothing_is_given_up_after_the_attempt_timeout(
    url: str, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A frozen node: the TCP connection is accepted (by the kernel) and nothing more."""
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    silent = f"ws://127.0.0.1:{listener.socket.getsockname()[1]}/ws"
    monkeypatch.setattr(callbox.client, "ATTEMPT_TIMEOUT_S", 0.5)
    try:
        async with connect([silent, url], user_id="alice") as alice:
            assert alice.url == url
    finally:
        await listener.aclose()


async def test_a_lost_connection_is_resumed_on_the_next_url_that_answers(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """alice is on the live server, the second of her URLs; the server closes her connection
    (a frame over its limit: 1009). She tries the next URL (nobody there), then the live one
    again, and resumes: the broadcast bob sent meanwhile arrives once, in order."""
    caplog.set_level(logging.DEBUG, logger="callbox.client")
    dead = closed_port_url()
    async with (
        connect([dead, url], user_id="alice", reconnect=True) as alice,
        connect(url, user_id="bob") as bob,
    ):
        await alice.room_join("lobby")
        await alice.expect(RoomJoined)
        await bob.room_join("lobby")
        await bob.expect(RoomJoined)
        await alice.expect(RoomMemberJoined, user_id="bob")
        first, session = alice.connection, alice.welcome.session_id

        await alice.connection.send_frame("x" * (alice.limits.max_message_bytes + 1))
        await bob.room_broadcast("lobby", {"n": 1})
        with trio.fail_after(10):
            message = await alice.expect(RoomMessage, from_="bob")
        assert message.data == {"n": 1}
        assert first.close_code == 1009
        assert alice.connection is not first and alice.url == url
        assert alice.welcome.resumed and alice.welcome.session_id == session
        assert f"could not reach {dead}" in caplog.text
        await alice.ping()  # nothing else came: the broadcast came once


async def test_resume_by_hand_goes_on_to_the_next_url(url: str) -> None:
    dead = closed_port_url()
    async with connect([dead, url], user_id="alice") as alice:
        await alice.drop()
        welcome = await alice.resume()
        assert welcome.resumed and alice.url == url


async def test_a_stopped_node_is_left_for_the_next_which_starts_a_new_session(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two real `callbox serve` processes; the first is stopped by its process id (SIGTERM: it
    drains). Its clients get 1012 (service restart), and alice moves to the second at once; it
    does not know her session, so she gets a new one, and the `receive` she was in says so:
    `SessionLost`."""
    caplog.set_level(logging.INFO, logger="callbox.client")
    async with (
        serve_process() as one,
        serve_process() as two,
        connect([one.url, two.url], user_id="alice", reconnect=True) as alice,
    ):
        assert alice.url == one.url
        old = alice.welcome.session_id
        await one.stop()
        with trio.fail_after(10), pytest.raises(SessionLost) as lost:
            await alice.receive()
        assert lost.value.url == two.url == alice.url
        assert f"connection to {one.url} closed (1012)" in caplog.text
        assert not lost.value.welcome.resumed
        assert alice.welcome == lost.value.welcome and alice.welcome.session_id != old
        assert alice.last_seq == 0
        await alice.room_join("lobby")  # the new session works
        await alice.expect(RoomJoined, seq=1)


WELCOME = Welcome(
    user_id="alice",
    session_id="s1",
    resume_token="t1",
    resumed=False,
    ice_servers=[],
    heartbeat_ms=15000,
    limits=Config().limits(),
)


class Enough(Exception):
    """Ends a client's endless following from inside its backoff."""


class Backoffs:
    """Stands in for `_backoff`: records the failure counts it is called with and waits not;
    `Enough` once it has been called `stop_after` times."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, stop_after: int | None = None) -> None:
        self.calls: list[int] = []
        self._stop_after = stop_after
        monkeypatch.setattr(callbox.client, "_backoff", self)

    def __call__(self, failures: int) -> float:
        self.calls.append(failures)
        if len(self.calls) == self._stop_after:
            raise Enough
        return 0.0


@pytest.mark.parametrize(("code", "waits"), [(1013, [0]), (1012, [0]), (1001, [0]), (1011, [0, 1])])
async def test_a_server_that_says_try_another_is_left_at_once(
    url: str, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, code: int, waits: list[int]
) -> None:
    """alice loses her connection and waits the backoff before trying the next URL, a node
    that closes with `code`. After 1013 (try again later), 1012 (service restart) or 1001
    (going away) she tries the one after at once; after another close she waits again."""
    backoffs = Backoffs(monkeypatch)
    refusing = await closing_node(nursery, code)
    async with connect([url, refusing], user_id="alice", reconnect=True) as alice:
        await alice.connection.send_frame("x" * (alice.limits.max_message_bytes + 1))
        with trio.fail_after(10):
            await alice.ping()
        assert alice.welcome.resumed and alice.url == url
    assert backoffs.calls == waits


async def test_when_every_url_says_try_another_the_backoff_applies(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A whole cluster restarting: each node closes with 1013. The first close sends the client
    to the other node at once, and so would the second, but every node has now said it: the
    client waits before the next round, and after every round."""
    backoffs = Backoffs(monkeypatch, stop_after=3)
    urls = [await closing_node(nursery, 1013, welcome=WELCOME), await closing_node(nursery, 1013)]
    client = await Client.open(nursery, urls, user_id="alice", reconnect=True)
    with trio.fail_after(10), pytest.raises(Enough):
        await client.receive()
    assert backoffs.calls == [1, 3, 5]
    await client.aclose()


@pytest.mark.parametrize("reconnect", [False, True])
async def test_a_connection_taken_over_is_not_followed(
    url: str, nursery: trio.Nursery, reconnect: bool
) -> None:
    """4002: another connection resumed the session; this one must not take it back."""
    alice = await Client.open(nursery, url, user_id="alice", reconnect=reconnect)
    thief = await Client.open(nursery, url, user_id="alice")
    await thief.resume(token=alice.welcome.resume_token, last_seq=0)
    with trio.fail_after(10), pytest.raises(ConnectionClosed):
        await alice.receive()
    assert alice.connection.close_code == 4002
    await thief.aclose()
    await alice.aclose()


async def test_a_session_the_deployer_removed_is_not_followed(nursery: trio.Nursery) -> None:
    """4004: the admin API removed the user's sessions; a resume would find nothing."""
    url = await start_server(nursery, admin_token=ADMIN_TOKEN)
    alice = await Client.open(nursery, url, user_id="alice", reconnect=True)
    removed = await admin_request(url, "DELETE", "/api/v1/users/alice/sessions")
    assert removed.status == 204
    with trio.fail_after(10), pytest.raises(ConnectionClosed):
        await alice.receive()
    assert alice.connection.close_code == 4004
    await alice.aclose()


@pytest.mark.parametrize("reconnect", [False, True])
async def test_bye_ends_the_session_even_when_following(url: str, reconnect: bool) -> None:
    async with connect(url, user_id="alice", reconnect=reconnect) as alice:
        assert await alice.bye() == 1000
        assert [message async for message in alice] == []


async def test_a_send_and_a_receive_that_both_find_the_connection_lost_resume_it_once(
    url: str, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An application reads in one task and sends from another, and both find the connection
    lost (bench/chaos.py: every client of a killed node). Only one of them may resume: two
    resumes racing would each take the session over, the later closing the earlier's connection
    with 4002 under the reader (which must not give up: the session lives on), and reset
    `last_seq` behind what the reader had read (a replay read twice). Here the sender finds the
    loss first and waits 0.3 s before resuming; the reader finds it next and would resume at
    once."""
    waits = iter([0.3, 0.0])
    monkeypatch.setattr(callbox.client, "_backoff", lambda failures: next(waits, 0.0))
    async with (
        connect(url, user_id="alice", reconnect=True) as alice,
        connect(url, user_id="bob") as bob,
    ):
        await alice.room_join("lobby")
        await alice.expect(RoomJoined)
        await bob.room_join("lobby")
        await bob.expect(RoomJoined)
        await alice.expect(RoomMemberJoined, user_id="bob")
        first = alice.connection
        await first.send_frame("x" * (alice.limits.max_message_bytes + 1))
        with trio.fail_after(10):
            while first.close_code is None:
                await trio.sleep(0.01)
        sent = trio.Event()

        async def sender() -> None:
            await alice.room_broadcast("lobby", {"from": "alice"})
            sent.set()

        nursery.start_soon(sender)
        await trio.sleep(0.05)  # the sender is in its backoff
        with trio.fail_after(10):
            await bob.room_broadcast("lobby", {"n": 1})
            message = await alice.expect(RoomMessage, from_="bob")
            assert message.data == {"n": 1}
            await sent.wait()
            assert (await bob.expect(RoomMessage, from_="alice")).data == {"from": "alice"}
            await bob.room_broadcast("lobby", {"n": 2})
            assert (await alice.expect(RoomMessage, from_="bob")).data == {"n": 2}
        assert alice.welcome.resumed
        await alice.ping()  # nothing else came: each broadcast came once


async def test_a_message_sent_while_another_task_resumes_goes_after_those_sent_again(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection swallowed three of alice's broadcasts; the reader's resume sends them
    again, and meanwhile the sender sends a fourth. The fourth must reach the server after
    them: the server applies a `cseq` only above the last it applied, so the three would be
    taken for repeats and never delivered (bench/chaos.py lost the messages a client sent to a
    frozen node this way)."""
    monkeypatch.setattr(callbox.client, "_backoff", lambda failures: 0.0)
    async with (
        connect(url, user_id="alice", reconnect=True) as alice,
        connect(url, user_id="bob") as bob,
        trio.open_nursery() as nursery,
    ):
        await alice.room_join("lobby")
        await alice.expect(RoomJoined)
        await bob.room_join("lobby")
        await bob.expect(RoomJoined)
        await alice.expect(RoomMemberJoined, user_id="bob")
        first, welcome = alice.connection, alice.welcome

        async def swallowed(message: object) -> None:
            pass

        monkeypatch.setattr(first, "send", swallowed)
        for n in (1, 2, 3):
            await alice.room_broadcast("lobby", {"n": n})

        async def reader() -> None:
            await alice.expect(RoomMessage, from_="bob")

        async def sender() -> None:
            while alice.welcome is welcome:  # the resume is under way: send at once
                await trio.sleep(0)
            await alice.room_broadcast("lobby", {"n": 4})

        nursery.start_soon(reader)
        nursery.start_soon(sender)
        await first.send_frame("x" * (alice.limits.max_message_bytes + 1))
        with trio.fail_after(10):
            for n in (1, 2, 3, 4):
                assert (await bob.expect(RoomMessage, from_="alice")).data == {"n": n}
            await bob.room_broadcast("lobby", {"from": "bob"})
