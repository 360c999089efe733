"""A real WebRTC call between two aiortc peers, signaled through the real server.

The only test here that proves the relayed SDP is good enough for two WebRTC stacks to connect:
unit tests check messages, this one checks that ICE completes and data flows. Real clock on
purpose: it waits on real sockets and processes, so a MockClock would only make it hang.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from callbox.config import Config
from callbox.server.app import serve

pytestmark = pytest.mark.e2e

PEER_SCRIPT = Path(__file__).with_name("aiortc_peer.py")
PEER_TIMEOUT_S = 30
"""Each peer gives up (and says why) before the test's own limit, so a failure is explained."""
TEST_TIMEOUT_S = 60


def _outcome(result: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    """The peer's one JSON line, or a description of what it printed instead."""
    lines = result.stdout.decode(errors="replace").strip().splitlines()
    if len(lines) != 1:
        return {"ok": False, "error": f"expected one stdout line, got {lines!r}"}
    outcome: dict[str, Any] = json.loads(lines[0])
    return outcome


def _describe(name: str, result: subprocess.CompletedProcess[bytes] | None) -> str:
    if result is None:
        return f"--- {name}: did not finish"
    return (
        f"--- {name}: exit {result.returncode}\nstdout: {result.stdout.decode(errors='replace')}"
        f"stderr:\n{result.stderr.decode(errors='replace')}"
    )


async def test_two_aiortc_peers_connect_and_exchange_data() -> None:
    results: dict[str, subprocess.CompletedProcess[bytes] | None] = {"alice": None, "bob": None}
    async with trio.open_nursery() as server_nursery:
        listeners = await server_nursery.start(serve, Config(port=0))
        port = listeners[0].socket.getsockname()[1]
        url = f"ws://127.0.0.1:{port}/ws"

        async def run_peer(user: str, role: str, peer: str) -> None:
            """Runs one peer to completion; cancelling this kills the process."""
            command = [sys.executable, str(PEER_SCRIPT), "--url", url, "--user", user]
            command += ["--role", role, "--peer", peer, "--call-id", "e2e-aiortc-call"]
            command += ["--timeout", str(PEER_TIMEOUT_S)]
            results[user] = await trio.run_process(
                command, capture_stdout=True, capture_stderr=True, check=False
            )

        try:
            with trio.fail_after(TEST_TIMEOUT_S):
                async with trio.open_nursery() as peers:
                    peers.start_soon(run_peer, "bob", "callee", "alice")
                    peers.start_soon(run_peer, "alice", "caller", "bob")
        finally:
            server_nursery.cancel_scope.cancel()

    alice, bob = results["alice"], results["bob"]
    details = "\n".join(_describe(name, result) for name, result in results.items())
    assert alice is not None and bob is not None, details
    assert (alice.returncode, bob.returncode) == (0, 0), details
    caller, callee = _outcome(alice), _outcome(bob)
    assert caller["ok"] and callee["ok"], details
    assert caller["received"] == "hello from bob", details
    assert callee["received"] == "hello from alice", details
    assert caller["call_id"] == callee["call_id"], details
    assert caller["ended"] == callee["ended"] == "hangup", details
    for outcome in (caller, callee):
        assert outcome["ice"] in ("connected", "completed"), details
        assert outcome.get("pair"), details
