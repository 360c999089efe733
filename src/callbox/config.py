"""Server configuration: one frozen, validated object built from defaults, environment and flags.

Each setting is a field with its unit in its name; its metadata names its environment variable
and says what it means (the CLI's help table is generated from it). Unknown keys and unknown
``CALLBOX_*`` variables are refused: a typo fails at start-up instead of running on a default.
Why the defaults are what they are: docs/decisions/0003-configuration.md.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import ipaddress
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import attrs

from callbox.codec import MAX_NESTING_DEPTH
from callbox.messages import Limits

SECONDS_MS = 1000
MINUTES_MS = 60 * SECONDS_MS
HOURS_MS = 60 * MINUTES_MS
MINUTES_S = 60
HOURS_S = 60 * MINUTES_S
KIB = 1024
MIB = 1024 * KIB

ENV_PREFIX = "CALLBOX_"
"""Every variable with this prefix must be one of ours; the others are names shared with peers
(JWT_SECRET, TURN_SERVER...), so only near-misses of them are reported, by `env_warnings`."""

HMAC_MIN_SECRET_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
"""The token algorithms we accept (we hold a shared secret, not a public key) and the shortest
secret each allows: RFC 7518 §3.2 requires a key at least as long as the hash output."""

ADMIN_TOKEN_MIN_BYTES = 32
"""The shortest admin token accepted: 256 bits, as a random token should have, so that it cannot
be guessed (it is compared in constant time, so it cannot be found a byte at a time either)."""

MIN_TURN_TTL_S = 2 * MINUTES_S
"""Ephemeral TURN credentials are refreshed a minute before they expire (see `callbox.ice`), so
they must live longer than that."""

DEFAULT_EXPIRY_WARNING_MS = 1 * MINUTES_MS
"""`call_expiring` comes this long before the cap unless `CALL_EXPIRING_WARNING_MS` says
otherwise, and the cap is at least four times as long (see `default_expiry_warning_ms`)."""

MAX_WORKERS = 256
"""Worker processes one `callbox serve` may start: more than any machine has cores to give."""

WEBHOOK_EVENTS = (
    "call.initiated",
    "call.answered",
    "participant.joined",
    "participant.left",
    "call.ended",
    "call.ringing_offline",
)
"""Every webhook event type (schemas/webhooks/<type>.json), in the order a call sends them."""

WEBHOOK_SECRET_PREFIX = "whsec_"
WEBHOOK_SECRET_BYTES = (24, 64)
"""The length a Standard Webhooks secret has once decoded: the specification's bounds."""

Check = Callable[[Any, "attrs.Attribute[Any]", Any], None]


class ConfigError(ValueError):
    """A setting is malformed or inconsistent; the message names it and says what was expected."""


class EnvVar(NamedTuple):
    """One environment variable, as documented by ``callbox --help``."""

    name: str
    default: str
    meaning: str


# ---------------------------------------------------------------------------------------------
# Field checks and environment parsers


def _given(attribute: attrs.Attribute[Any]) -> str:
    """The name a setting is given by: its alias (attrs gives a field `_x` the alias `x`)."""
    assert attribute.alias is not None  # attrs sets it on every field of a finished class
    return attribute.alias


def _label(attribute: attrs.Attribute[Any]) -> str:
    env = attribute.metadata.get("env")
    return f"{_given(attribute)} ({env})" if env else _given(attribute)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_at_least(minimum: int) -> Check:
    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not _is_int(value) or value < minimum:
            expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise ConfigError(f"{_label(attribute)} must be {expected}, got {value!r}")

    return check


def _optional_int_at_least(minimum: int) -> Check:
    """`None` (unset: a default computed from other settings) or an integer >= `minimum`."""
    at_least = _int_at_least(minimum)

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None:
            at_least(instance, attribute, value)

    return check


def _int_between(minimum: int, maximum: int) -> Check:
    """Bounded above where a schema bounds what the value shapes (a list's maxItems)."""

    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not _is_int(value) or not minimum <= value <= maximum:
            raise ConfigError(
                f"{_label(attribute)} must be an integer from {minimum} to {maximum}, got {value!r}"
            )

    return check


def _port(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not _is_int(value) or not 0 <= value <= 65535:
        raise ConfigError(
            f"{_label(attribute)} must be a port number 0-65535 (0: any free port), got {value!r}"
        )


def _text(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """A non-empty string; never echoes the value, which may be a secret."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{_label(attribute)} must be a non-empty string")


def _optional_text(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        _text(instance, attribute, value)


def _path(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ConfigError(f"{_label(attribute)} must be a string starting with '/', got {value!r}")


def _redis_url(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not (
        value.startswith(("redis://", "rediss://")) or value.startswith("unix:///")
    ):
        raise ConfigError(
            f"{_label(attribute)} must be a redis://HOST:PORT/DB or unix:///PATH URL, got {value!r}"
        )


def _jwt_algorithm(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value not in HMAC_MIN_SECRET_BYTES:
        raise ConfigError(
            f"{_label(attribute)} must be one of {', '.join(HMAC_MIN_SECRET_BYTES)}, got {value!r}"
        )


def _urls(*schemes: str) -> Check:
    expected = " or ".join(f"{scheme}:" for scheme in schemes)

    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, tuple):
            raise ConfigError(f"{_label(attribute)} must be a list of {expected} URLs")
        for url in value:
            scheme, colon, rest = url.partition(":") if isinstance(url, str) else ("", "", "")
            if not colon or scheme not in schemes or not rest or any(c.isspace() for c in url):
                raise ConfigError(f"{_label(attribute)}: expected {expected} URLs, got {url!r}")

    return check


def _webhook_secret(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """A Standard Webhooks secret: `whsec_` and the base64 of 24 to 64 random bytes. Checked
    strictly (the library's decoder skips characters that are not base64, so a mangled secret
    would sign with other bytes than the receiver's); never echoes the value."""
    if value is None:
        return
    shortest, longest = WEBHOOK_SECRET_BYTES
    expected = (
        f"{_label(attribute)} must be {WEBHOOK_SECRET_PREFIX!r} followed by the base64 of"
        f" {shortest} to {longest} random bytes (a Standard Webhooks secret)"
    )
    if not isinstance(value, str) or not value.startswith(WEBHOOK_SECRET_PREFIX):
        raise ConfigError(expected)
    try:
        key = base64.b64decode(value.removeprefix(WEBHOOK_SECRET_PREFIX), validate=True)
    except binascii.Error:
        raise ConfigError(expected) from None
    if not shortest <= len(key) <= longest:
        raise ConfigError(f"{expected}; it decodes to {len(key)} bytes")


def _webhook_events(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, tuple):
        raise ConfigError(f"{_label(attribute)} must be a list of webhook event types")
    unknown = [event for event in value if event not in WEBHOOK_EVENTS]
    if unknown:
        raise ConfigError(
            f"{_label(attribute)}: {_unknown('event type', unknown, WEBHOOK_EVENTS)};"
            f" known: {', '.join(WEBHOOK_EVENTS)}"
        )


def _ip_addresses(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, tuple):
        raise ConfigError(f"{_label(attribute)} must be a list of IP addresses")
    for address in value:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ConfigError(f"{_label(attribute)}: not an IP address: {address!r}") from None


def serialized_origin(text: str) -> str | None:
    """`text` as a browser sends it in `Origin` (RFC 6454 §6.2: scheme, host and a non-default
    port, lower case, no path), or None if it is no http(s) origin at all."""
    try:
        parts = urllib.parse.urlsplit(text.strip())
        port = parts.port
    except ValueError:  # a port that is not a number, a bracket left open
        return None
    scheme, host = parts.scheme.lower(), parts.hostname
    if scheme not in _DEFAULT_PORTS or not host or parts.username is not None:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    host = f"[{host}]" if ":" in host else host
    return (
        f"{scheme}://{host}"
        if port in (None, _DEFAULT_PORTS[scheme])
        else f"{scheme}://{host}:{port}"
    )


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origins(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """Origins exactly as browsers send them: they are compared with `Origin` as strings."""
    if not isinstance(value, tuple):
        raise ConfigError(f"{_label(attribute)} must be a list of origins")
    for origin in value:
        serialized = serialized_origin(origin) if isinstance(origin, str) else None
        if serialized is None:
            raise ConfigError(
                f"{_label(attribute)}: expected origins like https://app.example.com"
                f" (scheme, host and port only), got {origin!r}"
            )
        if serialized != origin:
            raise ConfigError(
                f"{_label(attribute)}: browsers send {origin!r} as {serialized!r}; write that"
            )


def _tuple_of(value: Any) -> Any:
    """Lets a mapping (JSON, TOML) give a list where the config holds a tuple."""
    return tuple(value) if isinstance(value, list) else value


def _redacted(value: str | None) -> str:
    return "None" if value is None else "'<redacted>'"


def _parse_str(_env: str, raw: str) -> str:
    return raw


def _parse_int(env: str, raw: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise ConfigError(f"{env} must be an integer, got {raw!r}") from None


def _parse_list(env: str, raw: str) -> tuple[str, ...]:
    items = tuple(item.strip() for item in raw.split(","))
    if not all(items):
        raise ConfigError(
            f"{env} must be a comma-separated list without empty entries, got {raw!r}"
        )
    return items


def _setting(
    default: Any,
    *,
    env: str | None,
    meaning: str,
    check: Check,
    parse: Callable[[str, str], object] = _parse_str,
    secret: bool = False,
    shown_default: str | None = None,
) -> Any:
    """An attrs field carrying its environment variable, its parser and its documentation
    (`shown_default`: how the help and the README show a default that is not a plain value)."""
    return attrs.field(
        default=default,
        validator=check,
        converter=_tuple_of if isinstance(default, tuple) else None,
        repr=_redacted if secret else True,
        metadata={"env": env, "meaning": meaning, "parse": parse, "shown": shown_default},
    )


# ---------------------------------------------------------------------------------------------
# The configuration


@attrs.frozen(kw_only=True)
class Config:
    """Everything the server can be told; validated as a whole whenever one is built."""

    host: str = _setting(
        "127.0.0.1", env="CALLBOX_HOST", meaning="address to listen on", check=_text
    )
    port: int = _setting(
        8765,
        env="CALLBOX_PORT",
        meaning="TCP port (0: any free port)",
        check=_port,
        parse=_parse_int,
    )
    tls_cert_file: str | None = _setting(
        None,
        env="TLS_CERT_FILE",
        meaning="PEM certificate chain: the port serves wss:// and https:// (with TLS_KEY_FILE;"
        " both read again on SIGHUP)",
        check=_optional_text,
    )
    tls_key_file: str | None = _setting(
        None,
        env="TLS_KEY_FILE",
        meaning="PEM private key of TLS_CERT_FILE (unencrypted)",
        check=_optional_text,
    )
    path: str = _setting("/ws", env=None, meaning="WebSocket endpoint path", check=_path)
    trusted_proxies: tuple[str, ...] = _setting(
        ("127.0.0.1", "::1"),
        env="TRUSTED_PROXIES",
        meaning="comma-separated addresses of reverse proxies whose X-Forwarded-For names the"
        " client (failed sign-ins are throttled per client address)",
        check=_ip_addresses,
        parse=_parse_list,
    )
    redis_url: str | None = _setting(
        None,
        env="CALLBOX_REDIS_URL",
        meaning="Redis of a cluster (redis://HOST:PORT/DB or unix:///PATH): this process is one"
        " of its nodes (install with '.[cluster]'); unset: a single process with no broker",
        check=_redis_url,
        secret=True,
    )
    workers: int = _setting(
        1,
        env="CALLBOX_WORKERS",
        meaning="worker processes sharing the port, each a node of the cluster (more than 1"
        " needs CALLBOX_REDIS_URL); 1: this process serves, no parent",
        check=_int_between(1, MAX_WORKERS),
        parse=_parse_int,
    )
    allowed_origins: tuple[str, ...] = _setting(
        (),
        env="ALLOWED_ORIGINS",
        meaning="comma-separated origins (https://app.example.com) whose pages may open a"
        " WebSocket (others: 403; no Origin, as from apps, is allowed) and read the files and"
        " schemas (CORS); unset: any",
        check=_origins,
        parse=_parse_list,
    )

    jwt_secret: str | None = _setting(
        None,
        env="JWT_SECRET",
        meaning="HMAC key of hello tokens; unset: development mode (user_id trusted)",
        check=_optional_text,
        secret=True,
    )
    jwt_algorithm: str = _setting(
        "HS256", env="JWT_ALGORITHM", meaning="HS256, HS384 or HS512", check=_jwt_algorithm
    )
    admin_token: str | None = _setting(
        None,
        env="ADMIN_TOKEN",
        meaning="bearer token of the admin API under /api/v1/ (at least 32 bytes; see"
        " docs/backend.md); unset: the admin API is off (404)",
        check=_optional_text,
        secret=True,
    )

    stun_servers: tuple[str, ...] = _setting(
        (),
        env="STUN_SERVERS",
        meaning="comma-separated stun:/stuns: URLs for clients",
        check=_urls("stun", "stuns"),
        parse=_parse_list,
    )
    turn_servers: tuple[str, ...] = _setting(
        (),
        env="TURN_SERVER",
        meaning="comma-separated turn:/turns: URLs for clients",
        check=_urls("turn", "turns"),
        parse=_parse_list,
    )
    turn_username: str | None = _setting(
        None,
        env="TURN_USERNAME",
        meaning="static TURN username (with TURN_CREDENTIAL)",
        check=_optional_text,
    )
    turn_credential: str | None = _setting(
        None,
        env="TURN_CREDENTIAL",
        meaning="static TURN password (with TURN_USERNAME)",
        check=_optional_text,
        secret=True,
    )
    turn_secret: str | None = _setting(
        None,
        env="TURN_SECRET",
        meaning="coturn static-auth-secret, for ephemeral per-user credentials",
        check=_optional_text,
        secret=True,
    )
    turn_ttl_s: int = _setting(
        24 * HOURS_S,
        env="TURN_TTL_S",
        meaning="lifetime of ephemeral TURN credentials, s",
        check=_int_at_least(MIN_TURN_TTL_S),
        parse=_parse_int,
    )

    webhook_urls: tuple[str, ...] = _setting(
        (),
        env="WEBHOOK_URL",
        meaning="comma-separated http(s) URLs each event is POSTed to, signed with"
        " WEBHOOK_SECRET (docs/backend.md); unset: no webhooks",
        check=_urls("http", "https"),
        parse=_parse_list,
    )
    webhook_secret: str | None = _setting(
        None,
        env="WEBHOOK_SECRET",
        meaning="the webhooks' signing secret, whsec_ and the base64 of 24 to 64 random bytes"
        " (required with WEBHOOK_URL)",
        check=_webhook_secret,
        secret=True,
    )
    webhook_events: tuple[str, ...] = _setting(
        (),
        env="WEBHOOK_EVENTS",
        meaning="comma-separated event types to send (call.initiated, call.answered,"
        " participant.joined, participant.left, call.ended, call.ringing_offline); unset: all."
        " With call.ringing_offline sent, a callee with no device rings for RING_TIMEOUT_MS",
        check=_webhook_events,
        parse=_parse_list,
    )

    max_call_duration_ms: int = _setting(
        1 * HOURS_MS,
        env="MAX_CALL_DURATION_MS",
        meaning="a call is ended after this long, ms",
        check=_int_at_least(1),
        parse=_parse_int,
    )
    _call_expiring_warning_ms: int | None = _setting(
        None,
        env="CALL_EXPIRING_WARNING_MS",
        meaning="call_expiring is sent this long before the end (unset: 60000, or a quarter of"
        " MAX_CALL_DURATION_MS if less; set: less than MAX_CALL_DURATION_MS), ms",
        check=_optional_int_at_least(1),
        parse=_parse_int,
        shown_default="60000 or cap/4",
    )
    """As set (given as `call_expiring_warning_ms`); None: the default. What the server uses
    is `call_expiring_warning_ms`."""
    ring_timeout_ms: int = _setting(
        30 * SECONDS_MS,
        env="RING_TIMEOUT_MS",
        meaning="an unanswered invitation stops ringing after, ms",
        check=_int_at_least(1),
        parse=_parse_int,
    )
    reconnect_grace_ms: int = _setting(
        10 * SECONDS_MS,
        env="RECONNECT_GRACE_MS",
        meaning="a lost connection's session stays resumable for, ms",
        check=_int_at_least(1),
        parse=_parse_int,
    )
    hello_timeout_ms: int = _setting(
        10 * SECONDS_MS,
        env="HELLO_TIMEOUT_MS",
        meaning="a connection that has not sent hello after this long is closed (4003), ms",
        check=_int_at_least(1),
        parse=_parse_int,
    )
    heartbeat_ms: int = _setting(
        15 * SECONDS_MS,
        env="HEARTBEAT_MS",
        meaning="WebSocket ping interval; a client silent for twice this is dropped, ms",
        check=_int_at_least(1),
        parse=_parse_int,
    )
    max_message_bytes: int = _setting(
        256 * KIB,
        env="MAX_MESSAGE_BYTES",
        meaning="largest client message (larger: close 1009), bytes",
        check=_int_at_least(1),
        parse=_parse_int,
    )
    send_buffer_bytes: int = _setting(
        1 * MIB,
        env="SEND_BUFFER_BYTES",
        meaning="outbound data queued per connection, bytes",
        check=_int_at_least(1),
        parse=_parse_int,
    )
    replay_buffer_messages: int = _setting(
        256,
        env="REPLAY_BUFFER_MESSAGES",
        meaning="server messages kept per session for resume",
        check=_int_at_least(1),
        parse=_parse_int,
    )
    replay_buffer_bytes: int = _setting(
        64 * KIB,
        env="REPLAY_BUFFER_BYTES",
        meaning="bytes of server messages kept per session for resume",
        check=_int_at_least(1),
        parse=_parse_int,
    )
    max_participants: int = _setting(
        8,
        env="MAX_PARTICIPANTS",
        meaning="joined participants per call, caller included",
        check=_int_between(2, 64),
        parse=_parse_int,
    )
    max_calls_per_user: int = _setting(
        4,
        env="MAX_CALLS_PER_USER",
        meaning="calls a user may take part in at once",
        check=_int_at_least(1),
        parse=_parse_int,
    )
    max_sessions_per_user: int = _setting(
        8,
        env="MAX_SESSIONS_PER_USER",
        meaning="sessions (devices) a user may have at once",
        check=_int_at_least(1),
        parse=_parse_int,
    )
    messages_per_second: int = _setting(
        50,
        env="MESSAGES_PER_SECOND",
        meaning="sustained client messages per second, per connection",
        check=_int_at_least(1),
        parse=_parse_int,
    )
    message_burst: int = _setting(
        200,
        env="MESSAGE_BURST",
        meaning="client messages allowed at once above that rate",
        check=_int_at_least(1),
        parse=_parse_int,
    )
    max_rooms_per_session: int = _setting(
        16,
        env="MAX_ROOMS_PER_SESSION",
        meaning="rooms one session may be in at once",
        check=_int_at_least(1),
        parse=_parse_int,
    )
    max_room_members: int = _setting(
        100,
        env="MAX_ROOM_MEMBERS",
        meaning="users in one room",
        check=_int_between(2, 1000),
        parse=_parse_int,
    )
    max_broadcast_bytes: int = _setting(
        16 * KIB,
        env="MAX_BROADCAST_BYTES",
        meaning="encoded size of a room_broadcast's data, bytes",
        check=_int_at_least(1),
        parse=_parse_int,
    )
    broadcasts_per_second: int = _setting(
        10,
        env="BROADCASTS_PER_SECOND",
        meaning="room broadcasts per second per session (bursts of twice that)",
        check=_int_at_least(1),
        parse=_parse_int,
    )
    max_presence_subscriptions: int = _setting(
        256,
        env="MAX_PRESENCE_SUBSCRIPTIONS",
        meaning="users one session may watch the presence of",
        check=_int_at_least(1),
        parse=_parse_int,
    )

    @property
    def call_expiring_warning_ms(self) -> int:
        """How long before the cap `call_expiring` is sent: as set, else the default for the cap
        (`default_expiry_warning_ms`); always shorter than the cap."""
        if self._call_expiring_warning_ms is not None:
            return self._call_expiring_warning_ms
        return default_expiry_warning_ms(self.max_call_duration_ms)

    def __attrs_post_init__(self) -> None:
        """Checks between fields (each field has already passed its own check)."""
        if self.ring_timeout_ms >= self.max_call_duration_ms:
            raise ConfigError(
                f"{_name('ring_timeout_ms')} must be less than {_name('max_call_duration_ms')}"
                f" ({self.ring_timeout_ms} >= {self.max_call_duration_ms})"
            )
        warning = self._call_expiring_warning_ms
        if warning is not None and warning >= self.max_call_duration_ms:
            raise ConfigError(
                f"{_name('call_expiring_warning_ms')} must be less than"
                f" {_name('max_call_duration_ms')} ({warning} >= {self.max_call_duration_ms});"
                " unset it to warn a quarter of the cap (at most a minute) before the end"
            )
        if self.send_buffer_bytes < self.max_message_bytes:
            raise ConfigError(
                f"{_name('send_buffer_bytes')} must be at least {_name('max_message_bytes')}"
                f" ({self.send_buffer_bytes} < {self.max_message_bytes})"
            )
        if self.jwt_secret is not None:
            minimum = HMAC_MIN_SECRET_BYTES[self.jwt_algorithm]
            if len(self.jwt_secret.encode()) < minimum:
                raise ConfigError(
                    f"{_name('jwt_secret')} must be at least {minimum} bytes for"
                    f" {self.jwt_algorithm}, got {len(self.jwt_secret.encode())}"
                )
        if self.admin_token is not None and len(self.admin_token.encode()) < ADMIN_TOKEN_MIN_BYTES:
            raise ConfigError(
                f"{_name('admin_token')} must be at least {ADMIN_TOKEN_MIN_BYTES} bytes,"
                f" got {len(self.admin_token.encode())}"
            )
        self._check_turn()
        if self.workers > 1 and self.redis_url is None:
            raise ConfigError(
                f"{_name('workers')} = {self.workers} needs the Redis the workers share: install"
                " one (apt-get install redis-server) and set"
                " CALLBOX_REDIS_URL=redis://127.0.0.1:6379/0 (or --redis URL)"
            )
        self._check_webhooks()
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError(
                f"{_name('tls_cert_file')} and {_name('tls_key_file')} go together: set both"
                " to serve TLS, or neither"
            )

    def _check_turn(self) -> None:
        static = (self.turn_username, self.turn_credential)
        if not self.turn_servers:
            given = [name for name in _TURN_CREDENTIALS if getattr(self, name) is not None]
            if given:
                raise ConfigError(
                    f"{', '.join(map(_name, given))} set but {_name('turn_servers')} is not"
                )
        elif self.turn_secret is not None and static != (None, None):
            raise ConfigError(
                f"{_name('turn_secret')} (ephemeral credentials) and {_name('turn_username')}/"
                f"{_name('turn_credential')} (static credentials) exclude each other: set one"
            )
        elif self.turn_secret is None and None in static:
            raise ConfigError(
                f"{_name('turn_servers')} needs credentials: {_name('turn_secret')}, or both"
                f" {_name('turn_username')} and {_name('turn_credential')}"
            )

    def _check_webhooks(self) -> None:
        if self.webhook_urls and self.webhook_secret is None:
            raise ConfigError(
                f"{_name('webhook_urls')} needs {_name('webhook_secret')}: every event is signed"
            )
        unused = [name for name in ("webhook_secret", "webhook_events") if getattr(self, name)]
        if unused and not self.webhook_urls:
            raise ConfigError(
                f"{', '.join(map(_name, unused))} set but {_name('webhook_urls')} is not"
            )

    @property
    def webhook_events_sent(self) -> frozenset[str]:
        """The event types the core emits: none without a webhook URL, else those of
        `webhook_events` (all if it is empty)."""
        if not self.webhook_urls:
            return frozenset()
        return frozenset(self.webhook_events or WEBHOOK_EVENTS)

    @property
    def offline_ringing(self) -> bool:
        """Whether a callee with no connected device is rung through the deployer's backend
        (`call.ringing_offline`) for the ring timeout instead of dropping out at once."""
        return "call.ringing_offline" in self.webhook_events_sent

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Config:
        """Builds the config from environment variables; unset ones keep their default.

        An empty value is refused rather than taken as "unset": ``JWT_SECRET=`` from a missing
        deployment secret must not silently start the server in development mode.
        """
        by_env = {f.metadata["env"]: f for f in attrs.fields(cls) if f.metadata["env"]}
        unknown = [name for name in environ if name.startswith(ENV_PREFIX) and name not in by_env]
        if unknown:
            raise ConfigError(_unknown("environment variable", unknown, by_env))
        values: dict[str, Any] = {}
        for env, field in by_env.items():
            raw = environ.get(env)
            if raw is None:
                continue
            if not raw.strip():
                raise ConfigError(f"{env} is set but empty; unset it to use the default")
            values[_given(field)] = field.metadata["parse"](env, raw)
        return cls(**values)

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> Config:
        """Builds the config from field names (a parsed config file, a test); typos are refused."""
        _refuse_unknown(values)
        kwargs: dict[str, Any] = dict(values)
        return cls(**kwargs)

    def with_overrides(self, **overrides: Any) -> Config:
        """A copy with some fields replaced (the CLI passes only the flags the user gave)."""
        _refuse_unknown(overrides)
        return attrs.evolve(self, **overrides)

    def limits(self) -> Limits:
        """The limits ``welcome`` announces."""
        return Limits(
            max_message_bytes=self.max_message_bytes,
            max_call_duration_ms=self.max_call_duration_ms,
            ring_timeout_ms=self.ring_timeout_ms,
            reconnect_grace_ms=self.reconnect_grace_ms,
            max_participants=self.max_participants,
            max_calls_per_user=self.max_calls_per_user,
            messages_per_second=self.messages_per_second,
            message_burst=self.message_burst,
            max_rooms_per_session=self.max_rooms_per_session,
            max_room_members=self.max_room_members,
            max_broadcast_bytes=self.max_broadcast_bytes,
            broadcasts_per_second=self.broadcasts_per_second,
            max_presence_subscriptions=self.max_presence_subscriptions,
            replay_buffer_messages=self.replay_buffer_messages,
            replay_buffer_bytes=self.replay_buffer_bytes,
            max_nesting_depth=MAX_NESTING_DEPTH,
            hello_timeout_ms=self.hello_timeout_ms,
        )


_TURN_CREDENTIALS = ("turn_username", "turn_credential", "turn_secret")


def default_expiry_warning_ms(max_call_duration_ms: int) -> int:
    """The warning when `CALL_EXPIRING_WARNING_MS` is unset: a minute, or a quarter of the cap
    when that is less (always at least 1 ms, and shorter than any cap a ring fits in).

    A fixed minute would be longer than a short cap (a test or demo server's 5 s), and then
    `call_expiring` came as soon as every call was answered: a warning no one can act on, and
    noise to every client. A quarter keeps most of a short call unwarned and still leaves time
    to react; from a 4-minute cap on, it is the full minute.
    """
    return min(DEFAULT_EXPIRY_WARNING_MS, max(1, max_call_duration_ms // 4))


def _settings() -> dict[str, attrs.Attribute[Any]]:
    """Every setting by the name it is given with (its alias)."""
    return {_given(field): field for field in attrs.fields(Config)}


def _name(setting: str) -> str:
    return _label(_settings()[setting])


def _unknown(kind: str, names: Iterable[str], valid: Iterable[str]) -> str:
    valid = list(valid)
    described = []
    for name in sorted(names):
        close = difflib.get_close_matches(name, valid, n=1)
        described.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return f"unknown {kind}{'s' if len(described) > 1 else ''}: {', '.join(described)}"


def _refuse_unknown(values: Mapping[str, object]) -> None:
    settings = _settings()
    unknown = [key for key in values if key not in settings]
    if unknown:
        raise ConfigError(_unknown("setting", unknown, settings))


def environment_variable(setting: str) -> str:
    """The environment variable of `setting` (a field name: `redis_url`)."""
    env: str | None = _settings()[setting].metadata["env"]
    if env is None:
        raise ConfigError(f"{setting} is not read from the environment")
    return env


def environment_variables() -> list[EnvVar]:
    """Every variable `Config.from_env` reads, with its default and meaning, in field order."""
    return [
        EnvVar(
            f.metadata["env"],
            f.metadata["shown"] or _show_default(f.default),
            f.metadata["meaning"],
        )
        for f in attrs.fields(Config)
        if f.metadata["env"]
    ]


def _show_default(value: object) -> str:
    if value is None or value == ():
        return "-"
    return ",".join(value) if isinstance(value, tuple) else str(value)


def env_warnings(environ: Mapping[str, str]) -> list[str]:
    """Variables that look like misspellings of ours (``TURN_SERVERS``), to be logged.

    Not refused like unknown ``CALLBOX_*`` names: outside our prefix, a similar name may well
    belong to another program sharing the environment.
    """
    known = [var.name for var in environment_variables()]
    warnings = []
    for name in sorted(environ):
        if name in known or name.startswith(ENV_PREFIX):
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.85)
        if close:
            warnings.append(f"ignoring {name}: not a callbox setting (did you mean {close[0]}?)")
    return warnings
