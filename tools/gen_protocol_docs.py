"""Writes docs/protocol.md, and the configuration table of docs/deployment.md, from their sources.

Why generated: the JSON Schemas (``schemas/``), the call state table (``protocol/call-states.yaml``)
and the ``Config`` fields are what the server runs on. A guide copied from them by hand drifts the
first time someone adds a field or an error code; one rendered from them cannot, because
``tests/test_docs.py`` regenerates both files and fails if the committed text differs.

The hand-written parts (transport rules, close codes, how the messages are grouped, what the
occupancy keys mean) live in this script, next to the code that checks they still fit the sources:
a message that belongs to no group, an enum value without an explanation, a schema keyword the
renderer does not know, an example that is missing, all stop the generator instead of silently
leaving a hole in the guide.

Usage (from the repository root, or anywhere)::

    python tools/gen_protocol_docs.py          # rewrite the files
    python tools/gen_protocol_docs.py --check  # exit 1 if they are stale (CI)

Output is deterministic: it depends only on the files it reads (no dates, no dict-order accidents:
messages follow ``client-message.json`` / ``server-message.json``, fields follow the schemas).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from callbox.config import environment_variables

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL_MD = Path("docs/protocol.md")
DEPLOYMENT_MD = Path("docs/deployment.md")
CONFIG_BEGIN = "<!-- BEGIN generated: configuration table (tools/gen_protocol_docs.py) -->"
CONFIG_END = "<!-- END generated: configuration table -->"

SAFE_INTEGER = 2**53 - 1
"""Every integer of the protocol is bounded by it; rendered as ``2^53-1`` instead of 16 digits."""
EN_DASH = "\u2013"
MINUS = "\u2212"
SAFE_INTEGER_TEXT = f"2^53{MINUS}1"

Schema = Mapping[str, Any]

# Keywords the renderer understands. Anything else in a schema stops the generator: a keyword it
# would skip is a rule the guide would silently leave out.
MESSAGE_KEYWORDS = frozenset(
    {
        "$schema",
        "$id",
        "title",
        "description",
        "type",
        "properties",
        "required",
        "additionalProperties",
        "oneOf",
        "anyOf",
        "dependentRequired",
    }
)
FIELD_KEYWORDS = frozenset(
    {
        "$ref",
        "title",
        "description",
        "type",
        "const",
        "enum",
        "anyOf",
        "items",
        "properties",
        "required",
        "additionalProperties",
        "propertyNames",
        "minLength",
        "maxLength",
        "pattern",
        "minimum",
        "maximum",
        "minItems",
        "maxItems",
        "uniqueItems",
        "maxProperties",
    }
)


# ---------------------------------------------------------------------------------------------
# Hand-written framing: how messages are grouped, and the prose around them


@dataclass(frozen=True)
class Group:
    """A section of the guide: the messages of one concern, both directions."""

    key: str
    title: str
    intro: str
    types: tuple[str, ...]


GROUPS: tuple[Group, ...] = (
    Group(
        "connection",
        "Connection",
        "A connection opens a session with `hello` and gets `welcome`; the session may outlive"
        " the connection (see [Resume](#resume)). `ping`/`pong` belong to the connection and carry"
        " no `seq`; `ice_servers` is a session message.",
        ("hello", "welcome", "ping", "pong", "ack", "bye", "ice_servers"),
    ),
    Group(
        "calls",
        "Calls",
        "The lifecycle of 1:1 and group calls. Who is told what is summed up in"
        " [Who is told what](#who-is-told-what); the states are in"
        " [The call state machine](#the-call-state-machine).",
        (
            "call_initiate",
            "call_answer",
            "call_reject",
            "call_invite",
            "call_join",
            "hangup",
            "call_ringing",
            "call_incoming",
            "call_accepted",
            "call_rejected",
            "participant_joined",
            "participant_left",
            "call_expiring",
            "call_ended",
        ),
    ),
    Group(
        "relay",
        "Relay",
        "SDP and ICE between two joined participants of an active call. The client names the"
        " recipient (`to`); the server checks it is another joined participant, replaces `to` with"
        " `from` and delivers the payload verbatim to the one device that joined. A relay before"
        " the call is active, or about one of the session's recently ended calls (the last 16),"
        " gets `invalid_state`.",
        ("sdp_offer", "sdp_answer", "ice_candidate"),
    ),
    Group(
        "rooms",
        "Rooms",
        "Named groups of sessions, created by the first `room_join` and gone with the last member."
        " Membership outlives a dropped connection for the resume grace period, like calls.",
        (
            "room_join",
            "room_leave",
            "room_broadcast",
            "room_joined",
            "room_left",
            "room_member_joined",
            "room_member_left",
            "room_message",
        ),
    ),
    Group(
        "presence",
        "Presence",
        "Any signed-in user may watch any user id; a user's status merges all of its devices.",
        ("presence_subscribe", "presence_unsubscribe", "presence_set", "presence"),
    ),
    Group(
        "errors",
        "Errors",
        "A refused message gets one `error` and is otherwise ignored: bad input never costs the"
        " connection, except where a close code is named below and in [Close codes](#close-codes).",
        ("error",),
    ),
)

DIRECTIONS = (("client", "Client → server"), ("server", "Server → client"))

OCCUPANCY = {
    "two_or_more_joined": "at least two parties have joined",
    "one_joined_and_ringing": "one party has joined and at least one invitation is still ringing",
    "deserted": "at most one joined party and nobody ringing: the call ends",
}
"""What the occupancy keys of ``call-states.yaml`` mean (the file says so only in a comment)."""

CLOSE_CODES: tuple[tuple[str, str, str, str], ...] = (
    (
        "1000",
        "`bye`",
        "The client sent `bye`: the session is over (its calls ended, `disconnected` for the"
        " others).",
        "No: the session is gone. Connect again with a plain `hello`.",
    ),
    (
        "1001",
        "server shutting down",
        "The server stops without draining (a second SIGTERM or Ctrl-C during a drain, or a"
        " drain past its 10 s): every connection still open gets it, each closing handshake"
        " time-boxed to 5 s.",
        "Reconnect and resume (a cluster's other nodes at once); after a single process's"
        " restart `welcome` says `resumed: false`: its sessions live in memory (see"
        " [Resume](#resume)).",
    ),
    (
        "1007",
        "(UTF-8 error)",
        "A text frame is not valid UTF-8.",
        "Fix the client; the session stays resumable.",
    ),
    (
        "1008",
        "too many sessions",
        "`hello` would exceed `MAX_SESSIONS_PER_USER` sessions for this user; `error`"
        " `session_limit` precedes it. No session was opened.",
        "Not until another device of the user ends its session.",
    ),
    (
        "1009",
        "(frame too large)",
        "A frame is larger than `limits.max_message_bytes`, or a message comes in more than 1,024"
        " fragments (reason `too many fragments`). The frame is not read and no `error` is sent.",
        "Resume; do not resend that frame.",
    ),
    (
        "1011",
        "heartbeat timeout / internal error",
        "Nothing at all (not even a pong to the server's WebSocket ping) arrived for twice"
        " `heartbeat_ms`; or the server failed while handling this connection.",
        "Resume.",
    ),
    (
        "1012",
        "service restart / node restarting / cluster state lost",
        "The server drains (SIGTERM or Ctrl-C to a single process, a node of a cluster, a worker"
        " of `callbox serve --workers N` or its parent): it has stopped accepting and closes"
        " every connection, then exits within 10 s; a cluster's node has detached their sessions"
        " in the store first, so their grace has started. Or a node of a cluster closes its"
        " connections because the others took it for dead (it could not reach the cluster's"
        " store for 5 s) and its sessions over; or the store lost its data (restarted empty).",
        "At once, and resume: on a cluster, on the next node (or the same port, where another"
        " worker answers); after a single process's restart, or once the store lost its data,"
        " `welcome` says `resumed: false`.",
    ),
    (
        "1013",
        "send buffer overflow / store unavailable",
        "The client let more than `SEND_BUFFER_BYTES` of server messages pile up unread; or, on a"
        " node of a cluster, `hello` came while the node could not reach the cluster's store (for"
        " 2 s): no session was opened or resumed.",
        "Resume (missed messages are replayed), and read faster; for a cluster, try another node"
        " or try again with backoff.",
    ),
    (
        "4001",
        "authentication failed",
        "`hello` did not prove its user (`error` `auth_failed` precedes it). No session was"
        " opened.",
        "Only with a new, valid token.",
    ),
    (
        "4002",
        "session taken over",
        "Another connection resumed this session.",
        "No: the other connection has the session now.",
    ),
    (
        "4003",
        "hello timeout",
        "The connection sent no `hello` within `HELLO_TIMEOUT_MS` of opening.",
        "Yes, sending `hello` first.",
    ),
    (
        "4004",
        "session terminated",
        "The deployer removed this user's sessions through the admin API"
        " (`DELETE /api/v1/users/{user_id}/sessions`, docs/backend.md); the user's calls ended"
        " (`terminated`) and the session is gone.",
        "Do not resume: the session is gone. A new `hello` with a valid token may start a new one.",
    ),
)
"""Every close code the server sends, with its close reason: `switchboard.py` (1000, 1008, 4001,
4002, 4003, 4004), `server/app.py` and `server/cluster.py` (1012) and `server/transport/` (1001,
1011, 1013; 1007 and 1009 come from the websockets library)."""

BAD_INPUT: tuple[tuple[str, str], ...] = (
    ("binary frame", "`error` `invalid_message`; the connection stays open"),
    ("text frame that is not UTF-8", "close 1007"),
    ("not JSON", "`error` `invalid_json`"),
    ("JSON but not an object with a string `type`", "`error` `invalid_message`"),
    ("`type` names no client message", "`error` `unknown_type`, `path` `/type`"),
    (
        "a field breaks the message's schema",
        "`error` `invalid_message`, `path` = JSON pointer of the field",
    ),
    (
        "a value nested deeper than `limits.max_nesting_depth` arrays and objects",
        "`error` `invalid_message`, `path` = the first container too deep",
    ),
    ("frame larger than `limits.max_message_bytes`", "close 1009, no `error`"),
    ("a valid message other than `hello` before `welcome`", "`error` `not_authenticated`"),
    (
        "a valid message beyond `limits.messages_per_second` (bursts of `limits.message_burst`)",
        "`error` `rate_limited`; the message is dropped, not queued",
    ),
)
"""What becomes of bad input: `codec.py`, `Switchboard.receive`, and `server/transport/`."""

TRANSPORT = """\
## Transport

**Endpoint.** One WebSocket per client at `/ws`: `ws://127.0.0.1:8765/ws` by default, `wss://`
behind a TLS-terminating proxy ([deployment guide](deployment.md)). The same port answers
`GET /healthz`, `GET /metrics` and the bundled demo page and browser client (`/`, files of
`src/callbox/web/`), and with `ADMIN_TOKEN` set the admin API under `/api/v1/` (the deployer's
backend: [backend guide](backend.md)); other paths get 404. HEAD is answered as GET, without the
body; other methods get 405, and a request head that cannot be parsed 400, or 431 over 16 KiB.
The WebSocket upgrade must complete within 10 s of the TCP connection (408 if the request is
still incomplete).

**Frames.** JSON text frames, UTF-8, one message per frame; every message is an object with a string
`type`. Schemas set `additionalProperties: false`, so an unknown field (a typo) is refused, not
ignored. What happens to bad input:

| input | outcome |
|---|---|
{bad_input_rows}

**`rid`.** A client may add `rid` (a string of at most 64 characters) to any message. The server's
direct reply (`welcome`, `pong`, `call_ringing`, `room_joined`, `room_left`, the first `presence`
per watched user, `call_accepted`/`call_rejected`/`call_ended` caused by that request) and any
`error` about the message carry the same `rid`, on the requesting session only; other recipients
of the consequences never see it. A `rid` that is not a string of at most 64 characters is not
echoed.

**`seq`.** Every server message of a session carries `seq`: 1 for the first message after a new
session's `welcome`, then +1 per message. `welcome` and `pong` belong to the connection and carry
none, and neither does an `error` sent before `welcome`, nor an `error` `unavailable` (a cluster
node that cannot reach the store that numbers messages). Process messages in `seq` order and
remember the last one: it is what you resume with.

**Heartbeat.** The server sends a WebSocket ping frame every `heartbeat_ms` (15 s by default).
Anything the client sends counts as a sign of life, including the pong its WebSocket stack returns
to those pings automatically; after twice `heartbeat_ms` of silence the server closes with 1011.
Application `ping`/`pong` are optional: use them to measure the round trip (`ts` is echoed), or to
keep traffic flowing from the client side.

**Authentication.** With `JWT_SECRET` set, `hello` must carry `token`, a JWT (HS256 by default)
whose `sub` is the user id and whose `exp` is in the future (an `nbf`, if present, must have passed;
no leeway). A `user_id` sent alongside must equal `sub`. Anything else gets `error` `auth_failed`
and close 4001. Without `JWT_SECRET` (development mode) `hello` says `user_id` and is trusted.

### Resume

A session outlives its connection. Any loss of the connection other than `bye` (a clean close
included) starts a grace period of `limits.reconnect_grace_ms`, during which the session still
counts as connected: it is rung, it stays in its calls and rooms, and what is sent to it is kept.

**What is held.** Every session keeps its newest messages for a resume: at most
`limits.replay_buffer_messages` messages and `limits.replay_buffer_bytes` bytes, oldest first out.
Messages sent before the connection was lost make room for those sent while it is away; only when a
message sent while away would have to go (the client cannot have it) does the session end at once,
the others told `disconnected`. A client may send `ack` with the last `seq` it processed, now and
then: the server then drops what it has confirmed and holds only the rest.

To resume, open a new connection and send `hello` with the credentials again (resuming never
bypasses authentication) plus `resume` (the `resume_token` of the **latest** `welcome`) and
`last_seq` (the last `seq` processed, 0 if none). If the session belongs to the same user and the
server still holds every message after `last_seq`, `welcome` says `resumed: true` with a new
`resume_token`, then the missed messages follow with their original `seq`. Should that `welcome`
be lost (the connection fails before the client reads it), the token the client still holds
resumes the session once more, within `limits.reconnect_grace_ms` of its replacement. Otherwise
(unknown or expired token, history no longer held, `last_seq` ahead of the server, or a server
restart) `welcome` says `resumed: false`: a new session has started, the old one ended as if it
had left, and the client must treat its calls as ended and rejoin rooms and presence
subscriptions. If the old connection is somehow still open, it is closed with 4002.

The other side of a call learns that a peer is gone (`participant_left` or `call_ended` with
`disconnected`) only when the grace period runs out; a presence watcher sees `offline` only then.

### Close codes

| code | close reason | when | reconnect? |
|---|---|---|---|
{close_rows}

Other RFC 6455 codes (1002 for malformed WebSocket framing) come from the WebSocket layer.

### Who is told what

- Every session involved in a call (joined, or one of its devices still ringing) gets exactly one
  `call_ended` when the call is over for it, the one who hangs up or rejects included.
- A 1:1 call is a call with one invitee: any refusal (`declined`, `busy`, `offline`,
  `ring_timeout`) gives the caller `call_rejected` and then `call_ended` (`rejected`, `busy`,
  `offline`, `ring_timeout`) for both sides; a hangup ends it for both with `hangup` and `by`.
- In a group call an invitee who refuses or does not answer drops out alone (`call_rejected` to the
  joined participants); a joined participant who hangs up or is disconnected leaves alone
  (`participant_left`). The call ends when at most one joined participant remains and no invitation
  is still ringing.
- The newcomer offers: whoever joins (`call_accepted.by`) sends an `sdp_offer` to each participant
  already in, so two peers never offer to each other at once.
- Several devices: `call_incoming` rings every connected device of the user; the first to answer
  joins and the others get `call_ended` `answered_elsewhere`. Relays reach the joined device only.
- Glare: when two users call each other at once, the call with the lesser `call_id` survives, both
  get `call_accepted` for it, and the other call ends with `merged`.
- The deployer's backend may end a call (`call_ended` `terminated` for everyone involved), or
  remove a user: the user's calls end (`terminated`, `by` the user) and the user's connections are
  closed with 4004 (the admin API, docs/backend.md).
- `call_initiate` is answered with `call_ringing` naming the users being rung. Users who are
  offline or busy are not rung: they drop out at once (`call_rejected`, with the request's `rid`),
  and if nobody is left to ring the call ends (`call_ended`) without a `call_ringing`.
- Offline ringing: a server whose deployer's backend rings users whose app is closed (webhooks with
  `call.ringing_offline`, docs/backend.md) does not refuse an offline user at once. It rings them
  for `limits.ring_timeout_ms` and names them in `call_ringing.offline`; a device of theirs that
  connects meanwhile gets `call_incoming` and can answer. If none comes, they drop out with
  reason `offline`, not `ring_timeout` (a 1:1 call ends with `call_ended` `offline`).
"""

STATE_INTRO = """\
## The call state machine

Drawn from [`protocol/call-states.yaml`](../protocol/call-states.yaml), which
`src/callbox/core/states.py` runs (a test proves the two tables are identical). A call has a
state, and so has each party (a person in it). An event with no transition from the current state
is refused with `invalid_state` and changes nothing. Where an event can lead to more than one
state, the outcome depends on the call's *occupancy* after the event:

{occupancy}

1:1 and group calls share the table: a 1:1 call is a call with one invitee.
"""

TIMEOUTS_NOTE = """\
Call and party timers are cancelled when the call ends, whatever the reason. `expiry_warning` fires
`CALL_EXPIRING_WARNING_MS` before `max_duration`: unset, 60000 ms or a quarter of
`MAX_CALL_DURATION_MS` if that is less (the default shown is the one for the default cap); set, it
must be less than `MAX_CALL_DURATION_MS`. `max_duration` is counted from the call's first answer
and is not reset when the call falls back to `ringing`.
"""


# ---------------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True)
class Message:
    direction: str
    type: str
    schema: Schema

    @property
    def path(self) -> str:
        return f"{self.direction}/{self.type}"

    @property
    def anchor(self) -> str:
        return f"{self.direction}-{self.type}".replace("_", "-")


@dataclass(frozen=True)
class Sources:
    common: Schema
    messages: dict[str, list[Message]]
    """By direction, in the order of ``client-message.json`` / ``server-message.json``."""
    invalid_index: Mapping[str, Mapping[str, str]]
    states: Mapping[str, Any]

    @property
    def defs(self) -> Mapping[str, Schema]:
        defs: Mapping[str, Schema] = self.common["$defs"]
        return defs


class SourceError(Exception):
    """The sources hold something the guide cannot render faithfully; the message says what."""


def _load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def load_sources(root: Path) -> Sources:
    """Reads every source, checking the message lists name exactly the schema files present."""
    messages: dict[str, list[Message]] = {}
    for direction, _ in DIRECTIONS:
        union = _load_json(root / "schemas" / f"{direction}-message.json")
        refs = [entry["$ref"] for entry in union["oneOf"]]
        listed = [ref.removeprefix(f"{direction}/").removesuffix(".json") for ref in refs]
        on_disk = sorted(p.stem for p in (root / "schemas" / direction).glob("*.json"))
        if sorted(listed) != on_disk:
            raise SourceError(
                f"{direction}-message.json lists {sorted(listed)}, schemas/{direction}/ holds"
                f" {on_disk}"
            )
        messages[direction] = [
            Message(direction, name, _load_json(root / "schemas" / direction / f"{name}.json"))
            for name in listed
        ]
    return Sources(
        common=_load_json(root / "schemas" / "common.json"),
        messages=messages,
        invalid_index=_load_json(root / "protocol" / "examples" / "invalid" / "index.json"),
        states=yaml.safe_load((root / "protocol" / "call-states.yaml").read_text("utf-8")),
    )


# ---------------------------------------------------------------------------------------------
# Rendering helpers


def cell(text: str) -> str:
    """Table-cell safe: one line, pipes escaped (GFM honours ``\\|`` inside code spans too)."""
    return " ".join(text.split()).replace("|", "\\|")


def def_anchor(name: str) -> str:
    return f"def-{name.lower()}"


def ref_name(ref: str) -> str:
    match = re.fullmatch(r"(?:\.\./common\.json)?#/\$defs/(\w+)", ref)
    if match is None:
        raise SourceError(f"unsupported $ref {ref!r}: only common.json definitions are rendered")
    return match.group(1)


def check_keywords(where: str, schema: Schema, allowed: frozenset[str]) -> None:
    unknown = sorted(set(schema) - allowed)
    if unknown:
        raise SourceError(f"{where}: keywords {unknown} are not rendered by the generator")


def number(value: float) -> str:
    if abs(value) == SAFE_INTEGER:
        return (MINUS if value < 0 else "") + SAFE_INTEGER_TEXT
    return str(value)


def split_enum_description(name: str, schema: Schema) -> tuple[str, list[tuple[str, str]]]:
    """An enum's description is a summary, then one ``- `value`: meaning`` line per value.

    Refuses a description that misses a value, explains one that does not exist, or orders them
    differently from the enum: the guide must explain every value the wire can carry.
    """
    summary, _, rest = schema.get("description", "").partition("\n\n")
    explained: list[tuple[str, str]] = []
    for line in rest.splitlines():
        match = re.fullmatch(r"- `([^`]+)`: (.+)", line.strip())
        if match is None:
            raise SourceError(f"{name}: description line {line!r} is not '- `value`: meaning'")
        explained.append((match.group(1), match.group(2)))
    if [value for value, _ in explained] != list(schema["enum"]):
        raise SourceError(
            f"{name}: description explains {[v for v, _ in explained]}, enum is {schema['enum']}"
        )
    return summary, explained


class Renderer:
    """Turns schema fragments into the type, constraint and requirement texts of the tables."""

    def __init__(self, sources: Sources) -> None:
        self.sources = sources
        self.defs = sources.defs

    def resolve(self, schema: Schema) -> tuple[str | None, Schema]:
        """(definition name, effective schema): local keywords override the referenced ones."""
        if "$ref" not in schema:
            return None, schema
        name = ref_name(schema["$ref"])
        merged = {**self.defs[name], **{k: v for k, v in schema.items() if k != "$ref"}}
        return name, merged

    def type_text(self, schema: Schema, *, link: bool = True) -> str:
        """``[userId](#def-userid): string``; definitions nested deeper are named, not linked."""
        if "const" in schema:
            return f"`{json.dumps(schema['const'])}`"
        name, effective = self.resolve(schema)
        if name is not None:
            if not link:
                return name
            return f"[{name}](#{def_anchor(name)}): {self.type_text(self.defs[name], link=False)}"
        if "anyOf" in effective:
            return _or([self.type_text(option, link=False) for option in effective["anyOf"]])
        kind = effective.get("type")
        if kind is None:
            return "any JSON"
        if isinstance(kind, list):
            return _or(kind)
        if kind == "array":
            return f"array of {self.type_text(effective['items'], link=False)}"
        return str(kind)

    def constraints(self, schema: Schema, *, enum_inline: bool = False) -> str:
        _, s = self.resolve(schema)
        parts: list[str] = []
        if "minLength" in s or "maxLength" in s:
            parts.append(_range(s.get("minLength"), s.get("maxLength"), "chars"))
        if "pattern" in s:
            parts.append(f"pattern `{s['pattern']}`")
        if "minimum" in s or "maximum" in s:
            parts.append(_range(s.get("minimum"), s.get("maximum"), ""))
        if "minItems" in s or "maxItems" in s:
            parts.append(_range(s.get("minItems"), s.get("maxItems"), "items"))
        if s.get("uniqueItems"):
            parts.append("distinct")
        if "maxProperties" in s:
            parts.append(f"≤ {s['maxProperties']} properties")
        if "propertyNames" in s:
            names = s["propertyNames"]
            check_keywords("propertyNames", names, frozenset({"maxLength"}))
            parts.append(f"names ≤ {names['maxLength']} chars")
        extra = s.get("additionalProperties")
        if isinstance(extra, Mapping):
            parts.append(f"each value: {self.type_text(extra)}; {self.constraints(extra)}")
        if "enum" in s:
            values = ", ".join(f"`{v}`" for v in s["enum"])
            parts.append(f"one of {values}" if enum_inline else "enum, see below")
        return "; ".join(parts) if parts else ""

    def description(self, schema: Schema) -> str:
        """The field's own description, else the first sentence of its definition's: the whole
        text is in [Shared definitions](#shared-definitions), once, not in every table."""
        if "const" in schema:
            return "The message type."
        if "description" in schema:
            return str(schema["description"])
        _, effective = self.resolve(schema)
        return first_sentence(str(effective.get("description", "")))


def _or(options: Sequence[str]) -> str:
    return options[0] if len(options) == 1 else ", ".join(options[:-1]) + " or " + options[-1]


def first_sentence(text: str) -> str:
    return re.split(r"(?<=\.)\s", text.partition("\n\n")[0], maxsplit=1)[0]


def _range(low: float | None, high: float | None, unit: str) -> str:
    """``1-64 chars`` (with an en dash), ``≤ 64 chars``; a number bounded only by the safe
    integer range reads ``≥ 0``, since every integer of the protocol shares that bound."""
    suffix = f" {unit}" if unit else ""
    if not unit and high == SAFE_INTEGER:
        if low == -SAFE_INTEGER:
            return f"within ±({SAFE_INTEGER_TEXT})"
        high = None
    if low is not None and high is not None:
        joiner = EN_DASH if unit else " to "
        return f"{number(low)}{joiner}{number(high)}{suffix}"
    if high is not None:
        return f"≤ {number(high)}{suffix}"
    assert low is not None
    return f"≥ {number(low)}{suffix}"


def requirement(message: Schema) -> dict[str, str]:
    """Per field, when it is required: plain ``required``, or a ``oneOf``/``anyOf`` of
    ``required`` lists, or ``dependentRequired``; any other combinator is refused."""
    labels = {name: "yes" for name in message.get("required", ())}
    for keyword, wording in (("oneOf", "exactly one of"), ("anyOf", "at least one of")):
        options = message.get(keyword)
        if options is None:
            continue
        names: list[str] = []
        for option in options:
            if set(option) != {"required"} or len(option["required"]) != 1:
                raise SourceError(f"{keyword} option {option} is not a single required field")
            names.append(option["required"][0])
        for name in names:
            labels[name] = f"{wording} " + ", ".join(f"`{n}`" for n in names)
    for name, needs in message.get("dependentRequired", {}).items():
        labels[name] = labels.get(name, "no") + "; with " + ", ".join(f"`{n}`" for n in needs)
    return labels


def fields_table(renderer: Renderer, schema: Schema, where: str) -> Iterator[str]:
    required = requirement(schema)
    yield "| field | type | required | constraints | description |"
    yield "|---|---|---|---|---|"
    for name, prop in schema["properties"].items():
        check_keywords(f"{where}/{name}", prop, FIELD_KEYWORDS)
        if "$ref" in prop:
            check_keywords(f"{where}/{name}", renderer.resolve(prop)[1], FIELD_KEYWORDS)
        yield (
            f"| `{name}` | {cell(renderer.type_text(prop))} | {cell(required.get(name, 'no'))}"
            f" | {cell(renderer.constraints(prop))} | {cell(renderer.description(prop))} |"
        )


def enum_tables(renderer: Renderer, schema: Schema) -> Iterator[str]:
    for name, prop in schema["properties"].items():
        def_name, effective = renderer.resolve(prop)
        if "enum" not in effective:
            continue
        # The explanations live in the definition; a field's own description only adds context.
        source = renderer.defs[def_name] if def_name else effective
        summary, explained = split_enum_description(def_name or name, source)
        origin = f" ([{def_name}](#{def_anchor(def_name)}))" if def_name else ""
        # The table already shows the summary unless the field has a description of its own.
        context = f" {summary}" if "description" in prop else ""
        yield ""
        yield f"Values of `{name}`{origin}:{context}"
        yield ""
        yield "| value | meaning |"
        yield "|---|---|"
        for value, meaning in explained:
            yield f"| `{value}` | {cell(meaning)} |"


def example_block(root: Path, message: Message, invalid_index: Mapping[str, Any]) -> Iterator[str]:
    valid = Path("protocol/examples/valid") / f"{message.path}.json"
    invalid = Path("protocol/examples/invalid") / f"{message.path}.json"
    for path in (valid, invalid):
        if not (root / path).is_file():
            raise SourceError(f"{message.path}: example {path} is missing")
    if message.path not in invalid_index:
        raise SourceError(f"{message.path}: protocol/examples/invalid/index.json has no entry")
    example = _load_json(root / valid)
    compact = json.dumps(example, ensure_ascii=False)
    text = compact if len(compact) <= 100 else json.dumps(example, ensure_ascii=False, indent=2)
    why = invalid_index[message.path]
    yield ""
    yield f"Example ([valid](../{valid})):"
    yield ""
    yield "```json"
    yield text
    yield "```"
    yield ""
    yield (
        f"[Invalid example](../{invalid}): {why['why']} (refused at `{why['path']}`)."
        if why.get("path")
        else f"[Invalid example](../{invalid}): {why['why']}."
    )


# ---------------------------------------------------------------------------------------------
# Sections


def grouped(sources: Sources) -> list[tuple[Group, list[Message]]]:
    """Messages by group, each group client messages first; every message placed exactly once."""
    placed: dict[str, str] = {}
    for group in GROUPS:
        for name in group.types:
            if name in placed:
                raise SourceError(f"{name} is in groups {placed[name]} and {group.key}")
            placed[name] = group.key
    result: list[tuple[Group, list[Message]]] = []
    every = [m for direction, _ in DIRECTIONS for m in sources.messages[direction]]
    unplaced = sorted({m.type for m in every} - set(placed))
    if unplaced:
        raise SourceError(f"messages in no group of GROUPS: {unplaced}")
    orphans = sorted(set(placed) - {m.type for m in every})
    if orphans:
        raise SourceError(f"GROUPS names messages with no schema: {orphans}")
    for group in GROUPS:
        result.append((group, [m for m in every if m.type in group.types]))
    return result


def message_index(sources: Sources) -> Iterator[str]:
    yield "| group | client → server | server → client |"
    yield "|---|---|---|"
    for group, members in grouped(sources):
        columns = []
        for direction, _ in DIRECTIONS:
            links = [f"[`{m.type}`](#{m.anchor})" for m in members if m.direction == direction]
            columns.append(", ".join(links) or "—")
        yield f"| [{group.title}](#{group.key}) | {columns[0]} | {columns[1]} |"


def message_sections(root: Path, sources: Sources, renderer: Renderer) -> Iterator[str]:
    for group, members in grouped(sources):
        yield ""
        yield f'<a id="{group.key}"></a>'
        yield ""
        yield f"## {group.title}"
        yield ""
        yield group.intro
        for direction, heading in DIRECTIONS:
            of_direction = [m for m in members if m.direction == direction]
            if not of_direction:
                continue
            yield ""
            yield f"### {group.title}: {heading.lower()}"
            for message in of_direction:
                schema = message.schema
                check_keywords(message.path, schema, MESSAGE_KEYWORDS)
                if schema.get("additionalProperties") is not False:
                    raise SourceError(f"{message.path}: additionalProperties must be false")
                arrow = "→ server" if direction == "client" else "→ client"
                yield ""
                yield f'<a id="{message.anchor}"></a>'
                yield ""
                yield f"#### `{message.type}` ({arrow})"
                yield ""
                link = f"[`schemas/{message.path}.json`](../schemas/{message.path}.json)"
                yield f"{schema['description']} Schema: {link}."
                yield ""
                yield from fields_table(renderer, schema, message.path)
                yield from enum_tables(renderer, schema)
                yield from example_block(root, message, sources.invalid_index)


def definitions_section(renderer: Renderer) -> Iterator[str]:
    yield ""
    yield '<a id="shared-definitions"></a>'
    yield ""
    yield "## Shared definitions"
    yield ""
    yield (
        "From [`schemas/common.json`](../schemas/common.json). Every integer of the protocol stays"
        f" within the JavaScript safe-integer range ({SAFE_INTEGER_TEXT}). Enum values are"
        " explained with the"
        " messages that carry them."
    )
    yield ""
    yield "| definition | type | constraints | description |"
    yield "|---|---|---|---|"
    objects: list[tuple[str, Schema]] = []
    for name, schema in renderer.defs.items():
        check_keywords(f"common.json#/$defs/{name}", schema, FIELD_KEYWORDS)
        if schema.get("type") == "object" and "properties" in schema:
            objects.append((name, schema))
            anchor_cell = f'<a id="{def_anchor(name)}"></a>`{name}`'
            see = f"see [below](#{def_anchor(name)}-fields)"
            description = cell(str(schema.get("description", "")))
            yield f"| {anchor_cell} | object | {see} | {description} |"
            continue
        description = str(schema.get("description", ""))
        if "enum" in schema:
            description = description.partition("\n\n")[0]
        yield (
            f'| <a id="{def_anchor(name)}"></a>`{name}` | {cell(renderer.type_text(schema))}'
            f" | {cell(renderer.constraints(schema, enum_inline=True))} | {cell(description)} |"
        )
    for name, schema in objects:
        yield ""
        yield f'<a id="{def_anchor(name)}-fields"></a>'
        yield ""
        yield f"### `{name}`: {schema.get('title', name)}"
        yield ""
        yield str(schema.get("description", ""))
        extra = schema.get("additionalProperties")
        if isinstance(extra, Mapping):
            yield ""
            yield f"Also: any other property, {renderer.constraints(schema)}."
        yield ""
        yield from fields_table(renderer, schema, f"common.json#/$defs/{name}")


def _transition_label(event: str, occupancy: str | None) -> str:
    return event if occupancy is None else f"{event} [{occupancy}]"


def call_edges(call: Mapping[str, Any]) -> list[tuple[str, str, str, str | None]]:
    """(from, to, event, occupancy) for every call transition, in file order."""
    edges: list[tuple[str, str, str, str | None]] = []
    for source, row in call["transitions"].items():
        for event, outcome in (row or {}).items():
            if isinstance(outcome, Mapping):
                unknown = sorted(set(outcome) - set(OCCUPANCY))
                if unknown:
                    raise SourceError(f"occupancy keys {unknown} are not explained in OCCUPANCY")
                edges.extend((source, target, event, occ) for occ, target in outcome.items())
            else:
                edges.append((source, outcome, event, None))
    return edges


def mermaid(
    edges: Iterable[tuple[str, str, str]], starts: Iterable[tuple[str, str]], finals: Iterable[str]
) -> Iterator[str]:
    """A stateDiagram-v2, one arrow per (from, to) pair with its labels stacked."""
    yield "```mermaid"
    yield "stateDiagram-v2"
    for target, label in starts:
        yield f"    [*] --> {target}" + (f" : {label}" if label else "")
    labels: dict[tuple[str, str], list[str]] = {}
    for source, target, label in edges:
        labels.setdefault((source, target), []).append(label)
    for (source, target), texts in labels.items():
        yield f"    {source} --> {target} : " + "<br/>".join(texts)
    for final in finals:
        yield f"    {final} --> [*]"
    yield "```"


def state_section(sources: Sources) -> Iterator[str]:
    states = sources.states
    call, party, timeouts = states["call"], states["party"], states["timeouts"]
    occupancy = "\n".join(f"- `{key}`: {meaning}." for key, meaning in OCCUPANCY.items())
    yield ""
    yield STATE_INTRO.format(occupancy=occupancy).rstrip("\n")
    edges = call_edges(call)

    yield ""
    yield "### Call states"
    yield ""
    yield from mermaid(
        ((s, t, _transition_label(e, o)) for s, t, e, o in edges),
        [(call["initial"], "")],
        call["final"],
    )
    yield ""
    yield "| state | meaning |"
    yield "|---|---|"
    for name, meaning in call["states"].items():
        yield f"| `{name}` | {cell(meaning)} |"
    yield ""
    yield "| event | meaning |"
    yield "|---|---|"
    for name, meaning in call["events"].items():
        yield f"| `{name}` | {cell(meaning)} |"
    yield ""
    yield "Every transition (a state missing from a row refuses that event):"
    yield ""
    yield "| from | event | occupancy after the event | to |"
    yield "|---|---|---|---|"
    for source, target, event, occ in edges:
        yield f"| `{source}` | `{event}` | {f'`{occ}`' if occ else 'any'} | `{target}` |"
    for source, row in call["transitions"].items():
        if not row:
            yield f"| `{source}` | (none: final) | | |"

    yield ""
    yield "### Party states"
    yield ""
    initial: Mapping[str, str] = party["initial"]
    party_edges = [
        (source, target, event)
        for source, row in party["transitions"].items()
        for event, target in row.items()
    ]
    yield from mermaid(party_edges, [(state, role) for role, state in initial.items()], [])
    yield ""
    yield "| state | meaning |"
    yield "|---|---|"
    for name, meaning in party["states"].items():
        yield f"| `{name}` | {cell(meaning)} |"
    yield ""
    roles = ", ".join(f"the {role} enters as `{state}`" for role, state in initial.items())
    yield (
        f"A party is created by the call: {roles}. A room member who was never rung joins the"
        " room's call (`call_join`) as `invite` then `join`."
    )

    yield ""
    yield "### Timeouts"
    yield ""
    yield "| timer | scope | armed | cancelled | default | setting | fires |"
    yield "|---|---|---|---|---|---|---|"
    for name, timer in timeouts.items():
        fires = "; ".join(_fires(key, value) for key, value in timer["fires"].items())
        yield (
            f"| `{name}` | {timer['scope']} | {cell(timer['armed'])}"
            f" | {cell(timer.get('cancelled', 'when the call ends'))}"
            f" | {number(timer['default_ms'])} ms | `{timer['env']}` | {cell(fires)} |"
        )
    yield ""
    yield TIMEOUTS_NOTE.rstrip("\n")


def _fires(key: str, value: object) -> str:
    """``event `dropout```, ``session ends``, ``then: <prose>``: what a timer does, readably."""
    name = key.replace("_", " ")
    if isinstance(value, bool):
        return name if value else f"no {name}"
    if re.fullmatch(r"\w+", str(value)):
        return f"{name} `{value}`"
    return f"{name}: {value}"


def render_protocol(root: Path = ROOT) -> str:
    """The whole of docs/protocol.md."""
    sources = load_sources(root)
    renderer = Renderer(sources)
    bad_input_rows = "\n".join(f"| {what} | {outcome} |" for what, outcome in BAD_INPUT)
    close_rows = "\n".join(
        f"| {code} | {reason} | {cell(when)} | {cell(retry)} |"
        for code, reason, when, retry in CLOSE_CODES
    )
    lines: list[str] = [
        "<!-- Generated by tools/gen_protocol_docs.py from schemas/ and protocol/call-states.yaml."
        " Do not edit: change the sources or the script, then run it. -->",
        "",
        "# The callbox signaling protocol (v1)",
        "",
        "The wire protocol between a callbox server and its clients: transport rules, then every"
        " message with its fields, then the call state machine. The JSON Schemas in"
        " [`schemas/`](../schemas/) are the authority (the server validates every inbound message"
        " against them); this guide is generated from them. A machine-readable description is"
        " [`protocol/asyncapi.yaml`](../protocol/asyncapi.yaml); running a server is in"
        " [deployment.md](deployment.md).",
        "",
        "Contents: [Transport](#transport) · [Resume](#resume) · [Close codes](#close-codes) ·"
        " [Who is told what](#who-is-told-what) · [Messages](#messages) ·"
        " [Shared definitions](#shared-definitions) ·"
        " [The call state machine](#the-call-state-machine)",
        "",
        TRANSPORT.format(close_rows=close_rows, bad_input_rows=bad_input_rows).rstrip("\n"),
        "",
        "## Messages",
        "",
        "Fields marked *no* under *required* may be left out; `null` is never a stand-in for an"
        " absent field unless the type says so. Every message refuses unknown fields.",
        "",
        *message_index(sources),
        *message_sections(root, sources, renderer),
        *definitions_section(renderer),
        *state_section(sources),
    ]
    return "\n".join(lines) + "\n"


def render_config_table() -> str:
    """The configuration table of docs/deployment.md, from `environment_variables()`."""
    rows = [
        "| variable | default | meaning |",
        "|---|---|---|",
        *(
            f"| `{var.name}` | {cell(var.default)} | {cell(var.meaning)} |"
            for var in environment_variables()
        ),
    ]
    return "\n".join(rows)


def splice(text: str, block: str) -> str:
    """`text` with the part between the configuration markers replaced by `block`."""
    begin, end = text.find(CONFIG_BEGIN), text.find(CONFIG_END)
    if begin < 0 or end < begin:
        raise SourceError(f"{DEPLOYMENT_MD}: markers {CONFIG_BEGIN!r} ... {CONFIG_END!r} missing")
    return text[: begin + len(CONFIG_BEGIN)] + "\n" + block + "\n" + text[end:]


def render_all(root: Path = ROOT) -> dict[Path, str]:
    """Every generated file, by path relative to `root`, as it should be now."""
    deployment = (root / DEPLOYMENT_MD).read_text(encoding="utf-8")
    return {
        PROTOCOL_MD: render_protocol(root),
        DEPLOYMENT_MD: splice(deployment, render_config_table()),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if a file is stale")
    args = parser.parse_args(argv)
    stale = []
    for relative, text in render_all().items():
        path = ROOT / relative
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(str(relative))
        if not args.check:
            path.write_text(text, encoding="utf-8")
    if args.check and stale:
        print(f"stale: {', '.join(stale)}; run python tools/gen_protocol_docs.py", file=sys.stderr)
        return 1
    for name in stale:
        print(f"wrote {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
