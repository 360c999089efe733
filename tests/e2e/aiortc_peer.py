"""One real WebRTC peer (aiortc) that places or takes a call through callbox's signaling server.

A standalone script, run as its own process by the end-to-end test: aiortc is asyncio-based and
does not mix with the trio server in one event loop. It connects over WebSocket, speaks the
protocol (docs: /work/shared/protocol-outline.md), opens a data channel to the other peer and
exchanges one greeting each way, then hangs up (the caller) and waits for ``call_ended``.

stdout gets exactly one JSON line, the outcome, and nothing else: ``{"ok": true, "received": ...,
"ice": ..., "pair": ...}`` with exit status 0, or ``{"ok": false, "error": ...}`` with status 1.
A trace of the signaling goes to stderr, for the test to show when it fails.

Usage: aiortc_peer.py --url ws://127.0.0.1:PORT/ws --user NAME --role caller|callee
       --peer OTHER --call-id ID [--timeout S]
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
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.sdp import candidate_from_sdp
from websockets.asyncio.client import ClientConnection, connect

CONNECTION_TYPES = frozenset({"welcome", "pong"})
"""Server messages that belong to the connection, not the session: they carry no ``seq``."""

LOOPBACK = "127.0.0.1"
ACK = "ack"
"""Sent back on the data channel once the other's greeting arrived: the caller hangs up only
after the callee acknowledged the caller's greeting, so the relayed ``call_ended`` cannot reach
the callee before that greeting does."""

RETRY_DELAY_S = 0.2
"""The two peers start together: the callee may not be connected yet when the caller first calls
(``offline``); the caller then calls again, with a new call id, until its timeout."""


class PeerError(Exception):
    """The server or the other peer did something this peer did not expect."""


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


class Peer:
    """The signaling client and the peer connection of one user, in one call."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.url: str = args.url
        self.user: str = args.user
        self.role: str = args.role
        self.peer: str = args.peer
        self.base_call_id: str = args.call_id
        self.call_id: str | None = args.call_id if self.role == "caller" else None
        self.attempt = 1
        self.ws: ClientConnection | None = None
        self.pc: RTCPeerConnection | None = None
        self.ice_servers: list[RTCIceServer] = []
        self.next_seq = 1
        self.seen: list[str] = []
        loop = asyncio.get_running_loop()
        self.received: asyncio.Future[str] = loop.create_future()
        self.acked: asyncio.Future[None] = loop.create_future()
        self.ended: asyncio.Future[dict[str, Any]] = loop.create_future()

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
            if self.role == "caller":
                await self.initiate()
            reader = asyncio.create_task(self.read_loop())
            try:
                received = await self.until(self.received, reader)
                # Read now: once the call ends, the other side's close clears the ICE state.
                ice_state = self.pc.iceConnectionState if self.pc else "none"
                pair = self.selected_pair()
                if self.role == "caller":
                    await self.until(self.acked, reader)
                    await self.send({"type": "hangup", "call_id": self.call_id})
                ended = await self.until(self.ended, reader)
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
        report: dict[str, Any] = {
            "ok": True,
            "received": received,
            "ice": ice_state,
            "call_id": self.call_id,
            "ended": ended.get("reason"),
            "server_messages": self.seen,
        }
        if pair:
            report["pair"], report["pair_types"] = pair
        return report

    async def until(self, future: asyncio.Future[Any], reader: asyncio.Task[None]) -> Any:
        """Waits for ``future``; a failure of the reader (or the connection) ends the wait."""
        await asyncio.wait({future, reader}, return_when=asyncio.FIRST_COMPLETED)
        if not future.done():
            reader.result()  # raises the reader's error
            raise PeerError("the server connection ended early")
        return future.result()

    async def initiate(self) -> None:
        await self.send(
            {
                "type": "call_initiate",
                "call_id": self.call_id,
                "to": [self.peer],
                "media": {"audio": False, "video": False},
                "rid": f"initiate-{self.attempt}",
            }
        )

    async def retry(self, why: str) -> None:
        """The callee was not connected yet: call again under a fresh call id."""
        trace(f"{why}; calling again")
        await asyncio.sleep(RETRY_DELAY_S)
        self.attempt += 1
        self.call_id = f"{self.base_call_id}-{self.attempt}"
        await self.initiate()

    async def read_loop(self) -> None:
        """Handles server messages one at a time, in order (an answer waits for its offer)."""
        while True:
            message = await self.receive()
            await self.handle(message)

    async def handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        call_id = message.get("call_id")
        if kind == "error":
            if message.get("code") == "user_offline" and self.pc is None:
                await self.retry("error user_offline")
                return
            raise PeerError(f"server error: {message}")
        if kind in ("ice_servers", "call_expiring"):
            return
        if call_id is None:
            trace(f"ignoring {kind}")
            return
        if kind == "call_incoming" and self.role == "callee" and self.call_id is None:
            if message.get("from") != self.peer or not call_id.startswith(self.base_call_id):
                raise PeerError(f"unexpected call_incoming: {message}")
            self.call_id = call_id
            await self.send({"type": "call_answer", "call_id": call_id})
            return
        if call_id != self.call_id:
            raise PeerError(f"{kind} for unknown call {call_id!r} (ours: {self.call_id!r})")
        if kind == "call_ringing":
            return
        if kind == "call_accepted":
            by = message.get("by")
            if by not in (self.user, self.peer) or self.peer not in message["participants"]:
                raise PeerError(f"unexpected call_accepted: {message}")
            if by == self.user:  # the one who answered offers
                await self.offer()
        elif kind == "call_ended":
            reason = message.get("reason")
            if self.role == "caller" and reason == "offline" and self.pc is None:
                await self.retry("call_ended offline")
            elif not (self.acked if self.role == "caller" else self.received).done():
                raise PeerError(f"call ended before the greetings were exchanged: {message}")
            elif not self.ended.done():
                self.ended.set_result(message)
        elif kind in ("sdp_offer", "sdp_answer", "ice_candidate"):
            if message.get("from") != self.peer:
                raise PeerError(f"{kind} not from {self.peer}: {message}")
            await getattr(self, f"on_{kind}")(message)
        else:
            trace(f"ignoring {kind}")

    # -- WebRTC ---------------------------------------------------------------------------------

    def new_peer_connection(self) -> RTCPeerConnection:
        """Host candidates only: an explicit empty server list (None would add Google's STUN)."""
        if self.pc is not None:
            raise PeerError("a second offer/answer round was not expected")
        pc = RTCPeerConnection(RTCConfiguration(iceServers=self.ice_servers))

        @pc.on("iceconnectionstatechange")
        def on_ice_state() -> None:
            trace(f"ice {pc.iceConnectionState}")
            if pc.iceConnectionState == "failed":
                self.fail(PeerError("ICE failed"))

        @pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            self.attach(channel)

        self.pc = pc
        return pc

    def attach(self, channel: RTCDataChannel) -> None:
        """Greets on open, then checks the other's greeting and acknowledges it."""

        def greet() -> None:
            trace(f"data channel {channel.label!r} open")
            channel.send(f"hello from {self.user}")

        @channel.on("message")
        def on_message(data: str | bytes) -> None:
            trace(f"data channel got {data!r:.80}")
            if data == ACK:
                if not self.acked.done():
                    self.acked.set_result(None)
            elif data == f"hello from {self.peer}" and not self.received.done():
                self.received.set_result(data)
                channel.send(ACK)
            else:
                self.fail(PeerError(f"unexpected data channel message {data!r:.80}"))

        if channel.readyState == "open":
            greet()
        else:
            channel.on("open", greet)

    def fail(self, error: Exception) -> None:
        """Ends every wait with ``error`` (for failures seen in aiortc's callbacks)."""
        for future in (self.received, self.acked, self.ended):
            if not future.done():
                future.set_exception(error)
                future.exception()  # retrieved: no "never retrieved" noise for unawaited ones

    async def offer(self) -> None:
        pc = self.new_peer_connection()
        self.attach(pc.createDataChannel("callbox-e2e"))
        await pc.setLocalDescription(await pc.createOffer())
        await self.relay("sdp_offer", sdp=pc.localDescription.sdp)
        await self.relay("ice_candidate", candidate=None)

    async def on_sdp_offer(self, message: dict[str, Any]) -> None:
        pc = self.new_peer_connection()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=message["sdp"], type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        await self.relay("sdp_answer", sdp=pc.localDescription.sdp)
        await self.relay("ice_candidate", candidate=None)

    async def on_sdp_answer(self, message: dict[str, Any]) -> None:
        if self.pc is None or self.pc.signalingState != "have-local-offer":
            raise PeerError("sdp_answer without an offer of ours")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=message["sdp"], type="answer"))

    async def on_ice_candidate(self, message: dict[str, Any]) -> None:
        """Candidates are in the SDP already; a relayed one is still applied, as a browser would."""
        if self.pc is None:
            raise PeerError("ice_candidate before any description")
        init = message["candidate"]
        if init is None:
            await self.pc.addIceCandidate(None)
            return
        candidate = candidate_from_sdp(init["candidate"].removeprefix("candidate:"))
        candidate.sdpMid = init.get("sdpMid")
        candidate.sdpMLineIndex = init.get("sdpMLineIndex")
        await self.pc.addIceCandidate(candidate)

    async def relay(self, kind: str, **fields: Any) -> None:
        await self.send({"type": kind, "call_id": self.call_id, "to": self.peer, **fields})

    def selected_pair(self) -> tuple[str, str] | None:
        """``local-remote`` addresses and types of the nominated pair (aioice internals)."""
        try:
            connection = self.pc.sctp.transport.transport._connection  # type: ignore[union-attr]
            pair = connection._nominated[1]
        except (AttributeError, KeyError):
            return None
        local, remote = pair.local_candidate, pair.remote_candidate
        return f"{local.host}-{remote.host}", f"{local.type}-{remote.type}"

    async def close(self) -> None:
        if self.pc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.pc.close(), 5)


def _ice_server(server: dict[str, Any]) -> RTCIceServer:
    return RTCIceServer(
        urls=server["urls"], username=server.get("username"), credential=server.get("credential")
    )


def _brief(message: dict[str, Any]) -> str:
    shown = {k: (f"<{len(v)} chars>" if k == "sdp" else v) for k, v in message.items()}
    return json.dumps(shown)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--role", required=True, choices=("caller", "callee"))
    parser.add_argument("--peer", required=True)
    parser.add_argument("--call-id", required=True)
    parser.add_argument("--timeout", type=float, default=30.0)
    return parser.parse_args(argv)


async def main(args: argparse.Namespace) -> int:
    _patch_host_addresses()
    peer = Peer(args)
    try:
        async with asyncio.timeout(args.timeout):
            report = await peer.run()
    except TimeoutError:
        report = {"ok": False, "error": f"timed out after {args.timeout} s", "seen": peer.seen}
    except Exception as error:  # every failure becomes the one JSON line
        report = {"ok": False, "error": f"{type(error).__name__}: {error}", "seen": peer.seen}
    finally:
        await peer.close()
    print(json.dumps(report), flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
