"""One real WebRTC peer (aiortc) in a call through callbox's signaling server: 1:1 or group (mesh).

A standalone script, run as its own process by the end-to-end tests: aiortc is asyncio-based and
does not mix with the trio server in one event loop. It connects over WebSocket, speaks the
protocol (docs: /work/shared/protocol-outline.md) and holds one RTCPeerConnection per other
participant. Whoever joins offers to everyone already in and creates the data channel; each
channel carries one greeting each way, each acknowledged. Once every greeting is in and its own
were acknowledged, the peers leave one at a time, the caller first, then by user id, so that each
gets exactly one ``call_ended``: the last one gets it when the one before hangs up. Then ``bye``.

stdout gets at most two JSON lines and nothing else: ``{"ready": USER}`` once signed in (the test
rings a callee only after it is ready), then the outcome: ``{"ok": true, "received": {PEER:
MESSAGE}, "ice": {PEER: {"state", "candidates", "pair", "types"}}, ...}`` with exit status 0, or
``{"ok": false, "error": ..., "ice": ...}`` with status 1. A trace of the signaling goes to
stderr, for the test to show when it fails.

Usage: aiortc_peer.py --url ws://127.0.0.1:PORT/ws --user NAME --role caller|callee
       --peers OTHER[,OTHER...] --call-id ID [--timeout S] [--relay-only]
``--peers`` names every other participant: the caller rings them all, a callee expects them.
``--relay-only`` gathers nothing but relay candidates from the TURN servers in ``welcome`` (ICE
transport policy "relay"), for the tests that prove the TURN credentials the server issues work.
``candidates`` lists the types of the candidates this peer offered, ``types`` those of the
nominated pair. A failure reports ``ice`` too: with bad TURN credentials aiortc fails silently, and
only the state and the candidates (none) tell that ICE, not signaling, is what failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import aioice.ice
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.sdp import candidate_from_sdp
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosedOK

CONNECTION_TYPES = frozenset({"welcome", "pong"})
"""Server messages that belong to the connection, not the session: they carry no ``seq``."""

LOOPBACK = "127.0.0.1"
ACK = "ack"
"""Sent back on a data channel once the other's greeting arrived. A peer hangs up only after all
its greetings were acknowledged, so no ``participant_left`` or ``call_ended`` it causes can reach
another peer before its greeting does."""


class PeerError(Exception):
    """The server or another peer did something this peer did not expect."""


def _patch_host_addresses() -> None:
    """Make aioice offer 127.0.0.1 as a host candidate.

    aioice skips loopback; on a loopback-only host it would then have no candidate at all, and
    the test must not depend on the machine's network set-up. aioice calls it with keywords.
    """
    original: Callable[..., list[str]] = aioice.ice.get_host_addresses

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        addresses = list(original(use_ipv4=use_ipv4, use_ipv6=use_ipv6))
        if use_ipv4 and LOOPBACK not in addresses:
            addresses.insert(0, LOOPBACK)
        return addresses

    aioice.ice.get_host_addresses = get_host_addresses


def trace(text: str) -> None:
    """Timestamped line on stderr: the test prints it when something fails."""
    print(f"{time.monotonic():.3f} {text}", file=sys.stderr, flush=True)


class Link:
    """The peer connection to one other participant, and the greetings exchanged over it."""

    def __init__(self, remote: str) -> None:
        self.remote = remote
        self.pc: RTCPeerConnection | None = None
        loop = asyncio.get_running_loop()
        self.received: asyncio.Future[str] = loop.create_future()
        self.acked: asyncio.Future[None] = loop.create_future()
        self.ice: dict[str, Any] = {}

    @property
    def complete(self) -> bool:
        return self.received.done() and self.acked.done()

    def note_ice(self) -> None:
        """Reads the ICE state and nominated pair now: the other side's close clears them."""
        assert self.pc is not None
        self.ice = {"state": self.pc.iceConnectionState, "candidates": _candidate_types(self.pc)}
        try:  # aioice internals
            connection = self.pc.sctp.transport.transport._connection  # type: ignore[union-attr]
            pair = connection._nominated[1]
        except (AttributeError, KeyError):
            return
        local, remote = pair.local_candidate, pair.remote_candidate
        self.ice["pair"] = f"{local.host}-{remote.host}"
        self.ice["types"] = f"{local.type}-{remote.type}"


class Peer:
    """The signaling client of one user in one call, and its links to the other participants."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.url: str = args.url
        self.user: str = args.user
        self.role: str = args.role
        self.call_id: str = args.call_id
        self.links = {remote: Link(remote) for remote in args.peers}
        self.caller: str | None = self.user if self.role == "caller" else None
        self.joined: list[str] = []
        """Who is in the call now, as the server said (``call_accepted``, ``participant_*``)."""
        self.hung_up = False
        self.ws: ClientConnection | None = None
        self.ice_servers: list[RTCIceServer] = []
        self.ice_policy = (
            RTCIceTransportPolicy.RELAY if args.relay_only else RTCIceTransportPolicy.ALL
        )
        self.next_seq = 1
        self.seen: list[str] = []
        self.done = asyncio.gather(
            *(future for link in self.links.values() for future in (link.received, link.acked))
        )
        self.ended: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    # -- signaling ------------------------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        assert self.ws is not None
        trace(f"-> {_brief(message)}")
        await self.ws.send(json.dumps(message))

    async def receive(self) -> dict[str, Any]:
        """The next server message, checked: an object with a ``type``, ``seq`` in order."""
        assert self.ws is not None
        raw = await self.ws.recv()
        if not isinstance(raw, str):
            raise PeerError(f"binary frame from the server: {raw!r:.80}")
        message = json.loads(raw)
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise PeerError(f"server message without a string type: {raw:.200}")
        kind = message["type"]
        self.seen.append(kind)
        trace(f"<- {_brief(message)}")
        seq = message.get("seq")
        if kind in CONNECTION_TYPES:
            if seq is not None:
                raise PeerError(f"{kind} carries seq {seq!r}; it belongs to the connection")
        elif not isinstance(seq, int) or isinstance(seq, bool) or seq != self.next_seq:
            raise PeerError(f"{kind} has seq {seq!r}, expected {self.next_seq}: {raw:.200}")
        else:
            self.next_seq += 1
        return message

    async def run(self) -> dict[str, Any]:
        """The whole call; returns what the peer reports on success."""
        async with connect(self.url, open_timeout=10, max_size=2**20) as ws:
            self.ws = ws
            await self.send({"type": "hello", "user_id": self.user})
            welcome = await self.receive()
            if welcome["type"] != "welcome" or welcome.get("user_id") != self.user:
                raise PeerError(f"expected welcome for {self.user}, got {welcome}")
            self.ice_servers = [_ice_server(server) for server in welcome.get("ice_servers", [])]
            print(json.dumps({"ready": self.user}), flush=True)
            if self.role == "caller":
                await self.send(
                    {
                        "type": "call_initiate",
                        "call_id": self.call_id,
                        "to": list(self.links),
                        "media": {"audio": False, "video": False},
                    }
                )
            reader = asyncio.create_task(self.read_loop())
            try:
                await self.until(self.done, reader)
                await self.hang_up_if_due()
                ended = await self.until(self.ended, reader)
                await self.send({"type": "bye"})
                await reader  # up to the server's close: anything more about the call fails it
            finally:
                if not reader.done():
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reader
        return {
            "ok": True,
            "call_id": self.call_id,
            "received": {remote: link.received.result() for remote, link in self.links.items()},
            "ice": {remote: link.ice for remote, link in self.links.items()},
            "ended": ended.get("reason"),
            "ended_by": ended.get("by"),
            "server_messages": self.seen,
        }

    async def until(self, future: asyncio.Future[Any], reader: asyncio.Task[None]) -> Any:
        """Waits for ``future``; a failure of the reader (or the connection) ends the wait."""
        await asyncio.wait({future, reader}, return_when=asyncio.FIRST_COMPLETED)
        if not future.done():
            reader.result()  # raises the reader's error
            raise PeerError("the server connection ended early")
        return future.result()

    async def hang_up_if_due(self) -> None:
        """Hangs up once done, if first in line: the caller, then the others by user id.

        One at a time, so that the call ends exactly once (for the last two, when the first of
        them hangs up), and nobody hangs up a call that has already ended for it.
        """
        if self.hung_up or self.ended.done() or not self.done.done() or len(self.joined) < 2:
            return
        first = min(self.joined, key=lambda user: (user != self.caller, user))
        if first == self.user:
            self.hung_up = True
            await self.send({"type": "hangup", "call_id": self.call_id})

    async def read_loop(self) -> None:
        """Handles server messages one at a time, in order (an answer waits for its offer)."""
        with contextlib.suppress(ConnectionClosedOK):
            while True:
                await self.handle(await self.receive())

    async def handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "error":
            raise PeerError(f"server error: {message}")
        if kind in ("ice_servers", "call_expiring"):
            return
        if "call_id" not in message:
            trace(f"ignoring {kind}")
            return
        if message["call_id"] != self.call_id:
            raise PeerError(f"{kind} for unknown call {message['call_id']!r}")
        if self.ended.done():
            raise PeerError(f"{kind} after call_ended: {message}")
        if kind == "call_incoming":
            await self.on_call_incoming(message)
        elif kind == "call_ringing":
            if self.role != "caller" or sorted(message["to"]) != sorted(self.links):
                raise PeerError(f"unexpected call_ringing: {message}")
        elif kind == "call_accepted":
            await self.on_call_accepted(message)
        elif kind == "participant_joined":
            user = self.link_of(message["user_id"]).remote
            if user not in self.joined:
                self.joined.append(user)
        elif kind == "participant_left":
            link = self.link_of(message["user_id"])
            if not link.received.done() or link.remote not in self.joined:
                raise PeerError(f"participant_left before its greeting arrived: {message}")
            self.joined.remove(link.remote)
            await self.hang_up_if_due()
        elif kind == "call_ended":
            if not all(link.received.done() for link in self.links.values()):
                raise PeerError(f"call ended before every greeting arrived: {message}")
            self.ended.set_result(message)
        elif kind in ("sdp_offer", "sdp_answer", "ice_candidate"):
            link = self.link_of(message["from"])
            await getattr(self, f"on_{kind}")(link, message)
        else:
            trace(f"ignoring {kind}")

    def link_of(self, user: Any) -> Link:
        if user not in self.links:
            raise PeerError(f"{user!r} is not one of the expected participants")
        return self.links[user]

    async def on_call_incoming(self, message: dict[str, Any]) -> None:
        expected = {self.user, *self.links}
        if self.role != "callee" or self.caller is not None:
            raise PeerError(f"unexpected call_incoming: {message}")
        if set(message["participants"]) != expected or message["from"] not in self.links:
            raise PeerError(f"call_incoming with other participants than {expected}: {message}")
        self.caller = message["from"]
        await self.send({"type": "call_answer", "call_id": self.call_id})

    async def on_call_accepted(self, message: dict[str, Any]) -> None:
        """Whoever joined offers to everyone already in: two peers never offer to each other."""
        participants: list[str] = message["participants"]
        if self.user not in participants:
            raise PeerError(f"call_accepted without us: {message}")
        for user in participants:
            if user != self.user:
                self.link_of(user)
        self.joined = list(participants)
        if message["by"] == self.user:
            for user in participants:
                if user != self.user:
                    await self.offer(self.links[user])

    # -- WebRTC ---------------------------------------------------------------------------------

    def open_link(self, link: Link) -> RTCPeerConnection:
        """A connection using ``welcome``'s ICE servers, and nothing else.

        The list is explicit even when empty (None would add Google's STUN): without TURN
        servers, only host candidates are used.
        """
        if link.pc is not None:
            raise PeerError(f"a second offer/answer round with {link.remote} was not expected")
        configuration = RTCConfiguration(
            iceServers=self.ice_servers, iceTransportPolicy=self.ice_policy
        )
        pc = RTCPeerConnection(configuration)

        @pc.on("iceconnectionstatechange")
        def on_ice_state() -> None:
            trace(f"ice with {link.remote}: {pc.iceConnectionState}")
            if pc.iceConnectionState == "failed" and not link.complete:
                self.fail(PeerError(f"ICE with {link.remote} failed"))

        @pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            self.attach(link, channel)

        link.pc = pc
        return pc

    def attach(self, link: Link, channel: RTCDataChannel) -> None:
        """Greets on open, then checks the other's greeting and acknowledges it."""

        def greet() -> None:
            trace(f"data channel with {link.remote} open")
            channel.send(f"hello from {self.user}")

        @channel.on("message")
        def on_message(data: str | bytes) -> None:
            trace(f"data channel from {link.remote} got {data!r:.80}")
            if data == ACK and not link.acked.done():
                link.acked.set_result(None)
            elif data == f"hello from {link.remote}" and not link.received.done():
                channel.send(ACK)  # queued before whatever this result wakes up (a hangup)
                link.received.set_result(data)
            else:
                self.fail(PeerError(f"unexpected message from {link.remote}: {data!r:.80}"))
            if link.complete:
                link.note_ice()

        if channel.readyState == "open":
            greet()
        else:
            channel.on("open", greet)

    def fail(self, error: Exception) -> None:
        """Ends every wait with ``error`` (for failures seen in aiortc's callbacks)."""
        futures = [f for link in self.links.values() for f in (link.received, link.acked)]
        for future in (*futures, self.ended):
            if not future.done():
                future.set_exception(error)
                future.exception()  # retrieved: no "never retrieved" noise for unawaited ones

    async def offer(self, link: Link) -> None:
        pc = self.open_link(link)
        self.attach(link, pc.createDataChannel("callbox-e2e"))
        await pc.setLocalDescription(await pc.createOffer())
        await self.relay(link, "sdp_offer", sdp=pc.localDescription.sdp)
        await self.relay(link, "ice_candidate", candidate=None)

    async def on_sdp_offer(self, link: Link, message: dict[str, Any]) -> None:
        pc = self.open_link(link)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=message["sdp"], type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        await self.relay(link, "sdp_answer", sdp=pc.localDescription.sdp)
        await self.relay(link, "ice_candidate", candidate=None)

    async def on_sdp_answer(self, link: Link, message: dict[str, Any]) -> None:
        if link.pc is None or link.pc.signalingState != "have-local-offer":
            raise PeerError(f"sdp_answer from {link.remote} without an offer of ours")
        await link.pc.setRemoteDescription(RTCSessionDescription(sdp=message["sdp"], type="answer"))

    async def on_ice_candidate(self, link: Link, message: dict[str, Any]) -> None:
        """Candidates are in the SDP already; a relayed one is still applied, as a browser would."""
        if link.pc is None:
            raise PeerError(f"ice_candidate from {link.remote} before any description")
        init = message["candidate"]
        if init is None:
            await link.pc.addIceCandidate(None)
            return
        candidate = candidate_from_sdp(init["candidate"].removeprefix("candidate:"))
        candidate.sdpMid = init.get("sdpMid")
        candidate.sdpMLineIndex = init.get("sdpMLineIndex")
        await link.pc.addIceCandidate(candidate)

    async def relay(self, link: Link, kind: str, **fields: Any) -> None:
        await self.send({"type": kind, "call_id": self.call_id, "to": link.remote, **fields})

    def failure(self, error: str) -> dict[str, Any]:
        """The outcome of a failed call, with each opened link's ICE state as it is now."""
        for link in self.links.values():
            if link.pc is not None and not link.complete:
                link.note_ice()
        ice = {remote: link.ice for remote, link in self.links.items()}
        return {"ok": False, "error": error, "seen": self.seen, "ice": ice}

    async def close(self) -> None:
        pcs = [link.pc for link in self.links.values() if link.pc is not None]
        await asyncio.gather(
            *(asyncio.wait_for(pc.close(), 5) for pc in pcs), return_exceptions=True
        )


def _ice_server(server: dict[str, Any]) -> RTCIceServer:
    return RTCIceServer(
        urls=server["urls"], username=server.get("username"), credential=server.get("credential")
    )


def _candidate_types(pc: RTCPeerConnection) -> list[str]:
    """The types of the candidates in our description, as the other side was offered them."""
    if pc.localDescription is None:
        return []
    lines = pc.localDescription.sdp.splitlines()
    prefix = "a=candidate:"
    return [
        candidate_from_sdp(line.removeprefix(prefix)).type
        for line in lines
        if line.startswith(prefix)
    ]


def _brief(message: dict[str, Any]) -> str:
    shown = {k: (f"<{len(v)} chars>" if k == "sdp" else v) for k, v in message.items()}
    return json.dumps(shown)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--role", required=True, choices=("caller", "callee"))
    parser.add_argument("--peers", required=True, type=lambda text: text.split(","))
    parser.add_argument("--call-id", required=True)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--relay-only", action="store_true")
    args = parser.parse_args(argv)
    if "" in args.peers or args.user in args.peers or len(set(args.peers)) != len(args.peers):
        parser.error("--peers: distinct user ids other than --user, separated by commas")
    return args


async def main(args: argparse.Namespace) -> int:
    _patch_host_addresses()
    peer = Peer(args)
    try:
        async with asyncio.timeout(args.timeout):
            report = await peer.run()
    except TimeoutError:
        report = peer.failure(f"timed out after {args.timeout} s")
    except Exception as error:  # every failure becomes the outcome line
        report = peer.failure(f"{type(error).__name__}: {error}")
    finally:
        await peer.close()
    print(json.dumps(report), flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
