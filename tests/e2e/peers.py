"""Running calls among aiortc peer processes (`aiortc_peer.py`) through a real server.

Shared by the end-to-end tests that differ only in the server's configuration and the peers'
options (host candidates, relay-only through TURN). `run_call` runs a call whatever its outcome,
for tests that expect a failure; `call` also checks that it succeeded on every pair. Real clock on
purpose: they wait on real sockets and processes, so a MockClock would only make them hang.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import trio

from callbox.config import Config
from callbox.server.app import serve

PEER_SCRIPT = Path(__file__).with_name("aiortc_peer.py")
PEER_TIMEOUT_S = 30
"""Each peer gives up (and says why) before the test's own limit, so a failure is explained."""
TEST_TIMEOUT_S = 60


@attrs.define
class PeerProcess:
    """What one peer process printed, and whether it has signed in yet."""

    user: str
    stdout: bytearray = attrs.field(factory=bytearray)
    stderr: bytearray = attrs.field(factory=bytearray)
    first_line: trio.Event = attrs.field(factory=trio.Event)
    """Set on its first stdout line: ``ready``, or the outcome if it failed first; or on exit."""
    returncode: int | None = None

    def outcome(self) -> dict[str, Any]:
        """The outcome line after ``ready``, or a description of what was printed instead."""
        lines = self.stdout.decode(errors="replace").splitlines()
        if len(lines) != 2 or json.loads(lines[0]) != {"ready": self.user}:
            return {"ok": False, "error": f"expected a ready line and an outcome, got {lines!r}"}
        outcome: dict[str, Any] = json.loads(lines[1])
        return outcome

    def describe(self) -> str:
        return (
            f"--- {self.user}: exit {self.returncode}\n"
            f"stdout: {self.stdout.decode(errors='replace')}"
            f"stderr:\n{self.stderr.decode(errors='replace')}"
        )


def describe(peers: dict[str, PeerProcess]) -> str:
    """Everything the peers printed: the message of any failed assertion about them."""
    return "\n".join(peer.describe() for peer in peers.values())


async def _collect(stream: trio.abc.ReceiveStream, into: bytearray, line: trio.Event) -> None:
    async for chunk in stream:
        into += chunk
        if b"\n" in chunk:
            line.set()
    line.set()


async def _run_peer(peer: PeerProcess, command: list[str]) -> None:
    """Runs one peer to completion; cancelling this kills the process."""
    async with trio.open_nursery() as nursery:
        start = partial(
            trio.run_process, command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False
        )
        process: trio.Process = await nursery.start(start)
        assert process.stdout is not None and process.stderr is not None
        nursery.start_soon(_collect, process.stdout, peer.stdout, peer.first_line)
        nursery.start_soon(_collect, process.stderr, peer.stderr, trio.Event())
    peer.returncode = process.returncode


async def run_call(
    caller: str,
    callees: list[str],
    call_id: str,
    *,
    config: Config,
    peer_args: Sequence[str] = (),
    peer_timeout_s: float = PEER_TIMEOUT_S,
) -> dict[str, PeerProcess]:
    """Runs a call among aiortc peers through a server with `config` (port 0: any free one).

    Returns every peer once exited, whatever the outcome. The caller starts only once every
    callee is signed in: nobody is rung while offline.
    """
    everyone = [caller, *callees]
    peers = {user: PeerProcess(user) for user in everyone}
    async with trio.open_nursery() as server_nursery:
        listeners = await server_nursery.start(serve, config)
        port = listeners[0].socket.getsockname()[1]

        def command(user: str, role: str) -> list[str]:
            others = ",".join(other for other in everyone if other != user)
            return [
                *(sys.executable, str(PEER_SCRIPT), "--url", f"ws://127.0.0.1:{port}/ws"),
                *("--user", user, "--role", role, "--peers", others, "--call-id", call_id),
                *("--timeout", str(peer_timeout_s), *peer_args),
            ]

        try:
            with trio.fail_after(TEST_TIMEOUT_S):
                async with trio.open_nursery() as nursery:
                    for callee in callees:
                        nursery.start_soon(_run_peer, peers[callee], command(callee, "callee"))
                    for callee in callees:
                        await peers[callee].first_line.wait()
                    nursery.start_soon(_run_peer, peers[caller], command(caller, "caller"))
        finally:
            server_nursery.cancel_scope.cancel()
    return peers


async def call(
    caller: str,
    callees: list[str],
    call_id: str,
    *,
    config: Config | None = None,
    peer_args: Sequence[str] = (),
) -> dict[str, dict[str, Any]]:
    """`run_call` (by default: default settings, any free port), checked; each peer's outcome.

    Every peer must have exchanged greetings with every other over a connected ICE pair and got
    exactly one ``call_ended``.
    """
    peers = await run_call(
        caller, callees, call_id, config=config or Config(port=0), peer_args=peer_args
    )
    details = describe(peers)
    outcomes = {user: peer.outcome() for user, peer in peers.items()}
    assert all(peer.returncode == 0 for peer in peers.values()), details
    for user, outcome in outcomes.items():
        others = [other for other in peers if other != user]
        assert outcome["ok"], details
        assert outcome["call_id"] == call_id, details
        assert outcome["received"] == {other: f"hello from {other}" for other in others}, details
        assert outcome["ended"] == "hangup", details
        assert outcome["server_messages"].count("call_ended") == 1, details
        for link in outcome["ice"].values():
            assert link["state"] in ("connected", "completed"), details
            assert link.get("pair"), details
    return outcomes
