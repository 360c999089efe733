"""Relay-only WebRTC calls through a real coturn, with the ephemeral credentials from ``welcome``.

`tests/test_ice.py` checks that `callbox.ice` computes coturn's TURN REST credential; only coturn
itself can show that it accepts it. The peers use relay candidates only, so their call connects
only through allocations coturn granted with those credentials; and a server whose secret differs
from coturn's gets no call at all, which proves the credentials are what made the first one work.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from callbox.config import Config

from .peers import call, describe, run_call

pytestmark = pytest.mark.e2e

LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 10
REFUSED_PEER_TIMEOUT_S = 5
"""How long each relay-only peer with refused credentials runs: aiortc fails silently (ICE stays
``new``), so only a bounded wait ends the call. With valid ones the whole call takes ~1 s."""
STUN_BINDING_REQUEST = 0x0001
STUN_BINDING_SUCCESS = 0x0101
STUN_MAGIC_COOKIE = 0x2112A442


@attrs.frozen
class Coturn:
    """A running turnserver: where it listens, the secret it checks credentials with, its log."""

    url: str
    secret: str
    log: Path

    def callbox_config(self, turn_secret: str) -> Config:
        """A callbox server (any free port) handing out our credentials, made with `turn_secret`."""
        return Config(port=0, turn_servers=(self.url,), turn_secret=turn_secret)

    def describe(self) -> str:
        return f"--- coturn log:\n{self.log.read_text(errors='replace')}"


def _free_port() -> int:
    """A loopback port free for UDP and TCP both: coturn listens on both."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((LOOPBACK, 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((LOOPBACK, port))
                except OSError:
                    continue
                return port


def _answers_stun(port: int) -> bool:
    """Whether a STUN binding request to `port` gets a success response: coturn is serving."""
    transaction = os.urandom(12)
    request = struct.pack("!HHI12s", STUN_BINDING_REQUEST, 0, STUN_MAGIC_COOKIE, transaction)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        sock.sendto(request, (LOOPBACK, port))
        try:
            response = sock.recv(2048)
        except OSError:  # no answer yet
            return False
    return response[:2] == struct.pack("!H", STUN_BINDING_SUCCESS) and response[8:20] == transaction


def _turnserver_conf(directory: Path, port: int, secret: str) -> str:
    """coturn on loopback only, with TURN REST credentials, and every file it writes in `directory`.

    ``allow-loopback-peers``: the relayed peers are on 127.0.0.1, which coturn refuses by default.
    The relay ports are above Linux's ephemeral range, where `_free_port` and the peers' own
    sockets are. ``pidfile`` and ``userdb`` keep it out of /var, which a packaged (or non-root)
    setup may own; ``no-rfc5780`` drops a warning that it needs a second address for it.
    """
    return "\n".join(
        [
            f"listening-ip={LOOPBACK}",
            f"relay-ip={LOOPBACK}",
            f"listening-port={port}",
            "min-port=61000",
            "max-port=65535",
            "realm=callbox.test",
            "use-auth-secret",
            f"static-auth-secret={secret}",
            "allow-loopback-peers",
            "no-tls",
            "no-dtls",
            "no-cli",
            "no-rfc5780",
            "log-file=stdout",
            "simple-log",
            f"pidfile={directory / 'turnserver.pid'}",
            f"userdb={directory / 'turndb'}",
            "",
        ]
    )


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    """A turnserver of our own, started for these tests (not a system service) and killed after."""
    turnserver = shutil.which("turnserver")
    if turnserver is None:
        pytest.skip("coturn's turnserver is not installed (apt-get install -y coturn)")
    directory = tmp_path_factory.mktemp("coturn")
    port = _free_port()
    secret = secrets.token_hex(16)
    conf = directory / "turnserver.conf"
    conf.write_text(_turnserver_conf(directory, port, secret))
    server = Coturn(f"turn:{LOOPBACK}:{port}?transport=udp", secret, directory / "turnserver.log")
    with server.log.open("wb") as log:
        process = subprocess.Popen(
            [turnserver, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers_stun(port):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"coturn did not start (exit {process.poll()})\n{server.describe()}")
        yield server
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def test_relay_only_peers_connect_with_the_credentials_from_welcome(coturn: Coturn) -> None:
    outcomes = await call(
        "alice",
        ["bob"],
        "e2e-turn",
        config=coturn.callbox_config(coturn.secret),
        peer_args=["--relay-only"],
    )
    links = [link for outcome in outcomes.values() for link in outcome["ice"].values()]
    assert len(links) == 2, outcomes
    for link in links:
        assert set(link["candidates"]) == {"relay"}, f"{outcomes}\n{coturn.describe()}"
        assert link["types"] == "relay-relay", f"{outcomes}\n{coturn.describe()}"


async def test_relay_only_peers_do_not_connect_when_coturn_refuses_the_credentials(
    coturn: Coturn,
) -> None:
    """The same call, from a server whose TURN secret is not coturn's: no relay, so no call.

    Both peers opened their connection to the other (each link has an ICE state), so signaling
    went through and it is ICE that failed; and neither got a relay candidate: coturn refused
    the allocation.
    """
    peers = await run_call(
        "alice",
        ["bob"],
        "e2e-turn-refused",
        config=coturn.callbox_config(secrets.token_hex(16)),
        peer_args=["--relay-only"],
        peer_timeout_s=REFUSED_PEER_TIMEOUT_S,
    )
    details = f"{describe(peers)}\n{coturn.describe()}"
    for user, peer in peers.items():
        outcome = peer.outcome()
        other = next(other for other in peers if other != user)
        assert peer.returncode == 1, details
        assert not outcome["ok"], details
        link = outcome.get("ice", {}).get(other, {})
        assert link.get("state") not in (None, "connected", "completed"), details
        assert link["candidates"] == [], details
