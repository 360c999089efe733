"""Real WebRTC calls between aiortc peers, 1:1 and a three-way mesh, signaled through the server.

The only tests here that prove the relayed SDP is good enough for WebRTC stacks to connect: unit
tests check messages, these check that ICE completes and data flows on every pair.
"""

from __future__ import annotations

import pytest

from .peers import call

pytestmark = pytest.mark.e2e


async def test_two_aiortc_peers_connect_and_exchange_data() -> None:
    outcomes = await call("alice", ["bob"], "e2e-aiortc-call")
    assert outcomes["alice"]["ended_by"] == outcomes["bob"]["ended_by"] == "alice"


async def test_three_aiortc_peers_in_a_mesh_exchange_data_on_every_pair() -> None:
    """Each callee offers to whoever joined before it; the caller leaves first, then bob."""
    outcomes = await call("alice", ["bob", "carol"], "e2e-aiortc-mesh")
    assert [outcomes[user]["ended_by"] for user in ("alice", "bob", "carol")] == [
        "alice",
        "bob",
        "bob",
    ]
    for user in ("bob", "carol"):
        assert outcomes[user]["server_messages"].count("participant_left") == 1
