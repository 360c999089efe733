"""A single process (no Redis URL) never loads coredis: cluster mode costs it nothing."""

from __future__ import annotations

import subprocess
import sys


def test_a_single_process_never_loads_coredis() -> None:
    code = (
        "import sys, callbox.__main__, callbox.server.app, callbox.cluster.backend; "
        "print('coredis' in sys.modules)"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "False"
