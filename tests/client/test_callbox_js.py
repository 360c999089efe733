"""callbox.js in node (its built-in WebSocket) against a real server: the parts of the browser
client that need no browser, tested where a browser test could not control the socket."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import trio

from tests.helpers import start_server

ROOT = Path(__file__).resolve().parents[2]


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


async def run_script(script: str, url: str, tmp_path: Path) -> dict[str, object]:
    """Runs tests/client/js/`script` with callbox.js beside it as a module; its last line of
    output is JSON."""
    (tmp_path / "callbox.mjs").write_bytes((ROOT / "src/callbox/web/callbox.js").read_bytes())
    (tmp_path / script).write_bytes((ROOT / "tests/client/js" / script).read_bytes())
    assert NODE is not None
    done = await trio.run_process(
        [NODE, "--experimental-websocket", str(tmp_path / script), url],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    result: dict[str, object] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


async def test_a_message_the_lost_socket_swallowed_is_sent_again_and_arrives_once(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    url = await start_server(nursery)
    result = await run_script("resend_after_resume.mjs", url, tmp_path)
    # room_join, 1, 2 and 3 were numbered before the drop (pings are not); 3 never arrived
    assert result["last_cseq"] == 3
    assert result["received"] == [1, 2, 3, 4]
    assert result["sent"] == 5
