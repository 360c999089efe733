"""docs/backend.md stays true: each webhook event has its section, whose example is valid against
the event's schema, and the Node verification it shows accepts what callbox signs (and nothing
else)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from callbox.config import WEBHOOK_EVENTS
from callbox.core.actions import Notify
from callbox.server.webhooks import event_body
from tests.helpers import check_webhook_body

ROOT = Path(__file__).resolve().parent.parent
BACKEND_MD = (ROOT / "docs" / "backend.md").read_text(encoding="utf-8")
SECRET = "whsec_" + "c2VjcmV0IGtleSBvZiB0aGUgZG9jIHRlc3Q="


def section(heading: str) -> str:
    """The text under `heading` (a line of the page), up to the next heading of any level."""
    start = BACKEND_MD.index(f"\n{heading}\n") + len(heading) + 2
    following = re.search(r"^#", BACKEND_MD[start:], re.MULTILINE)
    return BACKEND_MD[start : start + following.start() if following else None]


def code_block(text: str, language: str) -> str:
    found = re.search(rf"```{language}\n(.*?)```", text, re.DOTALL)
    assert found, f"no {language} block"
    return found.group(1)


def test_the_sections_merge_with_the_admin_api_under_their_own_headings() -> None:
    assert "\n## Webhooks\n" in BACKEND_MD
    assert "\n## Ringing users whose app is closed\n" in BACKEND_MD


@pytest.mark.parametrize("event", WEBHOOK_EVENTS)
def test_each_event_has_a_section_with_a_valid_example(event: str) -> None:
    example = json.loads(code_block(section(f"#### `{event}`"), "json"))
    assert example["type"] == event
    check_webhook_body(example)


def test_the_node_verification_accepts_what_callbox_signs_and_nothing_else(
    tmp_path: Path,
) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("no node on PATH")
    from standardwebhooks import Webhook  # noqa: PLC0415 (what the server signs with)

    (tmp_path / "verify.mjs").write_text(code_block(BACKEND_MD, "javascript"))
    now = datetime.now(tz=UTC)
    notify = Notify("participant.joined", 1_764_842_404_120, {"call_id": "c-1", "user_id": "bob"})
    body = event_body(notify)
    headers = {
        "webhook-id": "msg_doc",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(SECRET).sign("msg_doc", now, body),
    }
    driver = """
        import { verifyWebhook } from "./verify.mjs";
        const [secret, body, headers] = JSON.parse(process.argv[2]);
        const good = verifyWebhook(secret, Buffer.from(body), headers);
        const tampered = verifyWebhook(secret, Buffer.from(body.replace("bob", "eve")), headers);
        const otherKey = verifyWebhook("whsec_" + "b3RoZXIga2V5IG9mIHRoZSBkb2MgdGVzdCE=",
            Buffer.from(body), headers);
        console.log(JSON.stringify([good, tampered, otherKey]));
    """
    (tmp_path / "driver.mjs").write_text(driver)
    arguments = json.dumps([SECRET, body.decode(), headers])
    done = subprocess.run(
        [node, "driver.mjs", arguments],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    good, tampered, other_key = json.loads(done.stdout)
    assert good == orjson.loads(body)
    assert (tampered, other_key) == (None, None)
