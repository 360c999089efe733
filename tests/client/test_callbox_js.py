"""callbox.js in node (its built-in WebSocket) against a real server: the parts of the browser
client that need no browser, tested where a browser test could not control the socket."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel

from tests.helpers import (
    ADMIN_TOKEN,
    admin_request,
    closed_port_url,
    closing_node,
    serve_process,
    start_server,
)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT_TIMEOUT_S = 60


def _node_with_websocket() -> str | None:
    """node, if it has a built-in WebSocket (node 20.10 or newer, behind a flag until 22)."""
    node = shutil.which("node")
    if node is None:
        return None
    probe = [node, "--experimental-websocket", "-e", "new WebSocket('ws://127.0.0.1:9')"]
    done = subprocess.run(probe, capture_output=True, check=False, timeout=30)
    return node if done.returncode == 0 else None


NODE = _node_with_websocket()
pytestmark = pytest.mark.skipif(
    NODE is None, reason="no node with a built-in WebSocket (node >= 20.10: nodesource packages)"
)


async def run_script(
    script: str,
    tmp_path: Path,
    *args: str,
    on_ready: Callable[[], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """Runs tests/client/js/`script` with `args`, callbox.js beside it as a module; its last line
    of output is JSON. `on_ready` is awaited when the script prints a line "ready" (it waits
    for what the test does then, e.g. stopping a server)."""
    (tmp_path / "callbox.mjs").write_bytes((ROOT / "src/callbox/web/callbox.js").read_bytes())
    (tmp_path / script).write_bytes((ROOT / "tests/client/js" / script).read_bytes())
    assert NODE is not None
    command = [NODE, "--experimental-websocket", str(tmp_path / script), *args]
    process = await trio.lowlevel.open_process(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None and process.stderr is not None
    output, errors = b"", b""
    try:
        with trio.fail_after(SCRIPT_TIMEOUT_S):
            async with trio.open_nursery() as nursery:

                async def read_errors() -> None:
                    nonlocal errors
                    assert process.stderr is not None
                    while chunk := await process.stderr.receive_some():
                        errors += chunk

                nursery.start_soon(read_errors)
                while chunk := await process.stdout.receive_some():
                    output += chunk
                    if on_ready is not None and b"ready\n" in output:
                        await on_ready()
                        on_ready = None
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()  # by its process id
            with trio.CancelScope(shield=True):
                await process.wait()
    assert process.returncode == 0, errors.decode()
    result: dict[str, Any] = json.loads(output.decode().strip().splitlines()[-1])
    return result


async def test_a_message_the_lost_socket_swallowed_is_sent_again_and_arrives_once(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    url = await start_server(nursery)
    result = await run_script("resend_after_resume.mjs", tmp_path, url)
    # room_join, 1, 2 and 3 were numbered before the drop (pings are not); 3 never arrived
    assert result["last_cseq"] == 3
    assert result["received"] == [1, 2, 3, 4]
    assert result["sent"] == 5


async def test_a_message_sent_as_the_resumed_session_opens_goes_after_those_sent_again(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A "state" handler sends the moment the session is open again; the broadcast the lost
    socket swallowed is sent again by the resume, and must go first, or the server takes it for
    a repeat of the later one's `cseq` (callbox.client had the same hole; bench/chaos.py)."""
    url = await start_server(nursery)
    result = await run_script("send_on_open.mjs", tmp_path, url)
    assert result["received"] == [1, 2, 3]


# Several URLs -----------------------------------------------------------------------------------


async def test_connect_uses_the_first_url_that_answers(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    live = await start_server(nursery)
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")  # accepts, answers nothing
    silent = f"ws://127.0.0.1:{listener.socket.getsockname()[1]}/ws"
    refused = closed_port_url()
    try:
        result = await run_script("follow_connect.mjs", tmp_path, refused, silent, live)
    finally:
        await listener.aclose()
    assert result["refusedThenLive"] == live
    assert result["silentThenLive"] == live
    assert result["single"] == [live]
    assert (result["none"], result["noneState"]) == ("closed", "closed")


async def test_a_lost_connection_is_resumed_on_the_next_url_that_answers(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    live = await start_server(nursery)
    refused = closed_port_url()
    result = await run_script("follow_resume.mjs", tmp_path, refused, live)
    assert result["closeCode"] == 1009
    assert result["tried"] == [refused, live]  # round-robin from the live one
    assert result["url"] == live and result["resumed"] and result["sameSession"]
    assert result["received"] == [1]
    assert result["lost"] == []


@pytest.mark.parametrize(("code", "at_once"), [(1013, True), (1012, True), (1011, False)])
async def test_a_node_that_says_try_another_is_left_at_once(
    nursery: trio.Nursery, tmp_path: Path, code: int, at_once: bool
) -> None:
    live = await start_server(nursery)
    node = await closing_node(nursery, code)
    result = await run_script("follow_turned_away.mjs", tmp_path, live, str(node))
    attempts = result["attempts"]
    assert [attempt["url"] for attempt in attempts] == [node, live], attempts
    assert attempts[0]["delayMs"] > 0, attempts  # a plain loss (1009): the backoff
    assert (attempts[1]["delayMs"] == 0) is at_once, attempts
    assert result["resumed"] and result["url"] == live


async def test_a_stopped_node_is_left_for_the_next_which_starts_a_new_session(
    tmp_path: Path,
) -> None:
    """Two `callbox serve` processes; the test stops the first by its process id once the
    script is connected to it."""
    async with serve_process() as one, serve_process() as two:
        result = await run_script(
            "follow_stopped_node.mjs", tmp_path, one.url, two.url, on_ready=one.stop
        )
    assert (result["before"], result["after"]) == (one.url, two.url)
    assert result["closeCode"] == 1012  # the first drains
    assert result["attempts"] == [{"url": two.url, "delayMs": 0}]  # service restart: at once
    assert result["lost"] == ["not_resumed"]
    assert result["resumed"] is False and result["newSession"]
    assert result["rooms"] == ["lobby"]  # `restore`: rejoined in the new session


async def test_a_session_the_deployer_removed_is_not_resumed(tmp_path: Path) -> None:
    """The admin API removes bob's sessions: closed with 4004, and callbox.js does not resume."""
    async with serve_process(ADMIN_TOKEN=ADMIN_TOKEN) as server:

        async def remove_bob() -> None:
            removed = await admin_request(server.url, "DELETE", "/api/v1/users/bob/sessions")
            assert removed.status == 204

        result = await run_script(
            "terminated_session.mjs", tmp_path, server.url, on_ready=remove_bob
        )
    assert result == {"closeCode": 4004, "reason": "terminated", "attempts": [], "state": "closed"}
