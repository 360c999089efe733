"""protocol/openapi.yaml against the implementation, property by property (schemathesis).

A real `callbox serve` process with `ADMIN_TOKEN` set, on 127.0.0.1; schemathesis generates
requests for every operation of the document (path and query parameters, with and without the
token, methods the document does not list) and checks each response: no 5xx, a status, headers,
content type and body the document allows. Bounded: `EXAMPLES` per operation, and each request
times out."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import hypothesis
import pytest
import schemathesis

from tests.helpers import ADMIN_TOKEN as TOKEN

DOCUMENT = Path(__file__).resolve().parents[2] / "protocol/openapi.yaml"
EXAMPLES = 40
LISTENING = re.compile(rb"demo page at (http://\S+)/")

schema = schemathesis.openapi.from_path(DOCUMENT)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    """`callbox serve` with the admin token, in a process of its own, stopped by its pid."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CALLBOX_", "JWT_"))}
    command = [sys.executable, "-m", "callbox", "serve", "--host", "127.0.0.1", "--port", "0"]
    env = {**clean, "ADMIN_TOKEN": TOKEN}
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env)
    assert process.stderr is not None
    log = b""
    try:
        while not (match := LISTENING.search(log)):
            line = process.stderr.readline()
            assert line, f"the server exited before listening:\n{log.decode()}"
            log += line
        yield match.group(1).decode()
    finally:
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
        rest = process.stderr.read()
        assert b"Traceback" not in log + rest, (log + rest).decode()


@schema.parametrize()
@hypothesis.settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_every_response_is_one_the_document_allows(case: schemathesis.Case, base_url: str) -> None:
    case.call_and_validate(
        base_url=base_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    )
