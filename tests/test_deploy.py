"""deploy/callbox.service: the unit docs/deployment.md quotes, hardened, and callbox works in it.

`systemd-analyze security --offline=yes` rates a unit file without a running systemd; the
exposure must stay at most 2.5 ("OK"). Then callbox serves a call in the unit's sandbox, rebuilt
without systemd by tests/systemd_sandbox.py: its system call filter, address families and
memory protection, in a mount namespace with a read-only root and a private /tmp, with no
capabilities. Each test skips, saying why, where this machine lacks what it needs.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests.helpers import accepted_call
from tests.server.test_http import scrape, value
from tests.server.wsclient import connect

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy/callbox.service"
GUIDE = ROOT / "docs/deployment.md"
MAX_EXPOSURE = 2.5
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
SYSTEM_PYTHON = Path("/usr/bin/python3")
"""The interpreter Debian's python3-seccomp is built for (the sandbox script needs it)."""
PR_GET_MDWE = 66


def test_the_guide_quotes_the_unit_file() -> None:
    guide = GUIDE.read_text(encoding="utf-8")
    quoted = re.search(r"^`deploy/callbox\.service`:\n\n```ini\n(.*?)^```$", guide, re.M | re.S)
    assert quoted is not None, "docs/deployment.md does not quote deploy/callbox.service"
    assert quoted.group(1) == UNIT.read_text(encoding="utf-8")


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="no systemd-analyze (Debian package systemd)")
def test_systemd_analyze_rates_the_unit_ok(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    rated = re.search(r"Overall exposure level for callbox\.service: (\d+\.\d+)", done.stdout)
    if rated is None:
        pytest.skip(f"systemd-analyze cannot rate a unit file offline here: {done.stderr.strip()}")
    assert float(rated.group(1)) <= MAX_EXPOSURE, done.stdout


def _sandbox_missing() -> str | None:
    """Why callbox cannot be run in the unit's sandbox here, or None if it can."""
    if os.geteuid() != 0:
        return "needs root (a mount namespace, and dropping capabilities)"
    for tool in ("unshare", "setpriv", "systemd-analyze"):
        if shutil.which(tool) is None:
            return f"no {tool}"
    probe = [str(SYSTEM_PYTHON), "-c", "import seccomp"]
    if (
        not SYSTEM_PYTHON.exists()
        or subprocess.run(probe, capture_output=True, check=False).returncode
    ):
        return "no libseccomp binding for /usr/bin/python3 (Debian package python3-seccomp)"
    if ctypes.CDLL(None, use_errno=True).prctl(PR_GET_MDWE, 0, 0, 0, 0) < 0:
        return "the kernel has no PR_SET_MDWE (MemoryDenyWriteExecute; Linux 6.3 or newer)"
    return None


SANDBOX_MISSING = _sandbox_missing()


@pytest.mark.e2e
@pytest.mark.skipif(SANDBOX_MISSING is not None, reason=str(SANDBOX_MISSING))
async def test_callbox_serves_a_call_in_the_unit_s_sandbox() -> None:
    sandboxed = [str(SYSTEM_PYTHON), str(ROOT / "tests/systemd_sandbox.py"), str(UNIT)]
    # ProtectSystem=strict and PrivateTmp=, roughly; then no capabilities at all, which
    # CapabilityBoundingSet= and a non-root User= give. A checkout or a virtual environment
    # under /tmp (a CI's clean clone) would vanish under a private /tmp: then /tmp stays.
    in_tmp = any(Path(path).resolve().is_relative_to("/tmp") for path in (ROOT, sys.prefix))
    private_tmp = "" if in_tmp else " && mount -t tmpfs tmpfs /tmp"
    script = (
        f"mount -o remount,bind,ro /{private_tmp} && exec setpriv "
        '--bounding-set -all --inh-caps -all --ambient-caps -all "$@"'
    )
    command = ["unshare", "--mount", "sh", "-c", script, "sh", *sandboxed]
    command += [sys.executable, "-m", "callbox", "serve", "--port", "0", "--log-level", "info"]
    process = await trio.lowlevel.open_process(command, stderr=subprocess.PIPE)
    try:
        assert process.stderr is not None
        log = b""
        with trio.fail_after(30):
            while (found := re.search(rb"listening on (ws://\S+)", log)) is None:
                chunk = await process.stderr.receive_some()
                assert chunk, f"callbox did not start in the sandbox:\n{log.decode()}"
                log += chunk
        url = found.group(1).decode()
        status = Path(f"/proc/{process.pid}/status").read_text()
        assert re.search(r"^Seccomp:\s+2$", status, re.M), status
        assert re.search(r"^CapEff:\s+0+$", status, re.M), status
        async with connect(url, "alice") as alice, connect(url, "bob") as bob:
            await accepted_call(alice, bob)
            await bob.send({"type": "hangup", "call_id": "call-0001"})
            await alice.expect("call_ended")
        families = await scrape(url)
        assert value(families["callbox_calls_ended"], reason="hangup") == 1
        assert value(families["process_resident_memory_bytes"]) > 0
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
