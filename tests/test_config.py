from __future__ import annotations

import re
from pathlib import Path

import attrs
import pytest
import yaml

from callbox.config import (
    MIB,
    Config,
    ConfigError,
    env_warnings,
    environment_variables,
)
from callbox.messages import Limits

SECRET = "k" * 32
INT_VARIABLES = [var.name for var in environment_variables() if var.default.split()[0].isdigit()]
"""Variables with a number for default (`60000 or cap/4` included)."""


def test_defaults_are_the_documented_ones() -> None:
    config = Config()
    assert (config.host, config.port, config.path) == ("127.0.0.1", 8765, "/ws")
    assert (config.jwt_secret, config.jwt_algorithm) == (None, "HS256")
    assert (config.stun_servers, config.turn_servers, config.turn_ttl_s) == ((), (), 86_400)
    assert config.max_call_duration_ms == 3_600_000
    assert config.call_expiring_warning_ms == 60_000
    assert config.ring_timeout_ms == 30_000
    assert config.reconnect_grace_ms == 10_000
    assert config.hello_timeout_ms == 10_000
    assert config.heartbeat_ms == 15_000
    assert config.max_message_bytes == 262_144
    assert config.send_buffer_bytes == MIB == 1_048_576
    assert (config.replay_buffer_messages, config.replay_buffer_bytes) == (256, 65_536)
    assert (config.max_participants, config.max_calls_per_user) == (8, 4)
    assert config.max_sessions_per_user == 8
    assert (config.messages_per_second, config.message_burst) == (50, 200)


def test_environment_variable_names_are_the_published_ones() -> None:
    assert [var.name for var in environment_variables()] == [
        "CALLBOX_HOST",
        "CALLBOX_PORT",
        "TLS_CERT_FILE",
        "TLS_KEY_FILE",
        "TRUSTED_PROXIES",
        "CALLBOX_REDIS_URL",
        "CALLBOX_WORKERS",
        "ALLOWED_ORIGINS",
        "JWT_SECRET",
        "JWT_ALGORITHM",
        "ADMIN_TOKEN",
        "STUN_SERVERS",
        "TURN_SERVER",
        "TURN_USERNAME",
        "TURN_CREDENTIAL",
        "TURN_SECRET",
        "TURN_TTL_S",
        "WEBHOOK_URL",
        "WEBHOOK_SECRET",
        "WEBHOOK_EVENTS",
        "MAX_CALL_DURATION_MS",
        "CALL_EXPIRING_WARNING_MS",
        "RING_TIMEOUT_MS",
        "RECONNECT_GRACE_MS",
        "HELLO_TIMEOUT_MS",
        "HEARTBEAT_MS",
        "MAX_MESSAGE_BYTES",
        "SEND_BUFFER_BYTES",
        "REPLAY_BUFFER_MESSAGES",
        "REPLAY_BUFFER_BYTES",
        "MAX_PARTICIPANTS",
        "MAX_CALLS_PER_USER",
        "MAX_SESSIONS_PER_USER",
        "MESSAGES_PER_SECOND",
        "MESSAGE_BURST",
        "MAX_ROOMS_PER_SESSION",
        "MAX_ROOM_MEMBERS",
        "MAX_BROADCAST_BYTES",
        "BROADCASTS_PER_SECOND",
        "MAX_PRESENCE_SUBSCRIPTIONS",
    ]


def test_from_env_without_variables_gives_the_defaults() -> None:
    assert Config.from_env({"HOME": "/root", "PATH": "/bin"}) == Config()


def test_from_env_parses_every_kind_of_value() -> None:
    config = Config.from_env(
        {
            "CALLBOX_HOST": "0.0.0.0",
            "CALLBOX_PORT": " 9000 ",
            "JWT_SECRET": "k" * 48,
            "JWT_ALGORITHM": "HS384",
            "STUN_SERVERS": "stun:a.example:3478, stuns:b.example",
            "TURN_SERVER": "turn:t.example:3478?transport=udp,turns:t.example:5349",
            "TURN_SECRET": "turn-secret",
            "TURN_TTL_S": "3600",
            "RING_TIMEOUT_MS": "45000",
            "MESSAGE_BURST": "1_000",
        }
    )
    assert config.host == "0.0.0.0"
    assert config.port == 9000
    assert (config.jwt_secret, config.jwt_algorithm) == ("k" * 48, "HS384")
    assert config.stun_servers == ("stun:a.example:3478", "stuns:b.example")
    assert config.turn_servers == ("turn:t.example:3478?transport=udp", "turns:t.example:5349")
    assert (config.turn_secret, config.turn_ttl_s) == ("turn-secret", 3600)
    assert config.ring_timeout_ms == 45_000
    assert config.message_burst == 1000


def test_a_secret_is_taken_verbatim() -> None:
    secret = f" {SECRET} "
    assert Config.from_env({"JWT_SECRET": secret}).jwt_secret == secret


@pytest.mark.parametrize("variable", INT_VARIABLES)
def test_an_int_variable_that_is_not_a_number_is_named(variable: str) -> None:
    with pytest.raises(ConfigError, match=f"^{variable} must be an integer, got 'ten'$"):
        Config.from_env({variable: "ten"})


@pytest.mark.parametrize("variable", [v for v in INT_VARIABLES if v != "CALLBOX_PORT"])
def test_an_int_variable_must_be_positive(variable: str) -> None:
    with pytest.raises(ConfigError, match=rf"\({variable}\) must be .* got -1$"):
        Config.from_env({variable: "-1"})


@pytest.mark.parametrize("port", ["-1", "65536"])
def test_port_is_range_checked(port: str) -> None:
    with pytest.raises(ConfigError, match=r"port \(CALLBOX_PORT\) must be a port number 0-65535"):
        Config.from_env({"CALLBOX_PORT": port})


def test_port_zero_means_any_free_port() -> None:
    assert Config.from_env({"CALLBOX_PORT": "0"}).port == 0


def test_an_empty_variable_is_refused_not_taken_as_unset() -> None:
    with pytest.raises(ConfigError, match=r"^JWT_SECRET is set but empty; unset it"):
        Config.from_env({"JWT_SECRET": ""})


def test_an_unknown_callbox_variable_is_refused_with_a_suggestion() -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"CALLBOX_PROT": "9000", "CALLBOX_HOST": "::1"})
    assert str(caught.value) == (
        "unknown environment variable: 'CALLBOX_PROT' (did you mean 'CALLBOX_PORT'?)"
    )


def test_several_unknown_variables_are_all_listed() -> None:
    with pytest.raises(ConfigError, match=r"variables: 'CALLBOX_HOTS' .*'CALLBOX_ZZZZZZZZZZZ'$"):
        Config.from_env({"CALLBOX_ZZZZZZZZZZZ": "1", "CALLBOX_HOTS": "x"})


@pytest.mark.parametrize(
    ("value", "bad"),
    [
        ("turn:t.example", "'turn:t.example'"),
        ("stun.example:3478", "'stun.example:3478'"),
        ("stun:", "'stun:'"),
        ("stun:a b", "'stun:a b'"),
    ],
)
def test_stun_urls_need_a_stun_scheme(value: str, bad: str) -> None:
    with pytest.raises(ConfigError, match=r"\(STUN_SERVERS\): expected stun: or stuns: URLs"):
        Config.from_env({"STUN_SERVERS": value})
    with pytest.raises(ConfigError, match=bad):
        Config.from_env({"STUN_SERVERS": value})


def test_turn_urls_need_a_turn_scheme() -> None:
    with pytest.raises(ConfigError, match=r"expected turn: or turns: URLs, got 'stun:x'"):
        Config.from_env({"TURN_SERVER": "stun:x", "TURN_SECRET": "s"})


def test_a_list_with_an_empty_entry_is_refused() -> None:
    with pytest.raises(ConfigError, match="STUN_SERVERS must be a comma-separated list without"):
        Config.from_env({"STUN_SERVERS": "stun:a,,stun:b"})


def test_turn_static_credentials() -> None:
    config = Config.from_env(
        {"TURN_SERVER": "turn:t", "TURN_USERNAME": "u", "TURN_CREDENTIAL": "p"}
    )
    assert (config.turn_servers, config.turn_username, config.turn_credential) == (
        ("turn:t",),
        "u",
        "p",
    )


def test_turn_server_without_credentials_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"turn_servers \(TURN_SERVER\) needs credentials"):
        Config.from_env({"TURN_SERVER": "turn:t"})


def test_turn_username_without_credential_is_refused() -> None:
    with pytest.raises(ConfigError, match="needs credentials"):
        Config.from_env({"TURN_SERVER": "turn:t", "TURN_USERNAME": "u"})


def test_static_and_ephemeral_turn_credentials_exclude_each_other() -> None:
    with pytest.raises(ConfigError, match="exclude each other"):
        Config.from_env({"TURN_SERVER": "turn:t", "TURN_SECRET": "s", "TURN_USERNAME": "u"})


def test_turn_credentials_without_a_turn_server_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"\(TURN_SECRET\) set but turn_servers \(TURN_SERVER\)"):
        Config.from_env({"TURN_SECRET": "s"})


@pytest.mark.parametrize(
    ("given", "env"),
    [({"TLS_CERT_FILE": "c.pem"}, "TLS_KEY_FILE"), ({"TLS_KEY_FILE": "k.pem"}, "")],
)
def test_a_tls_certificate_and_key_go_together(given: dict[str, str], env: str) -> None:
    with pytest.raises(ConfigError, match=r"\(TLS_CERT_FILE\) and .*\(TLS_KEY_FILE\) go together"):
        Config.from_env(given)
    both = Config.from_env({"TLS_CERT_FILE": "c.pem", "TLS_KEY_FILE": "k.pem"})
    assert (both.tls_cert_file, both.tls_key_file) == ("c.pem", "k.pem")


def test_allowed_origins_are_parsed() -> None:
    config = Config.from_env(
        {"ALLOWED_ORIGINS": "https://app.example.com, http://127.0.0.1:8080,https://[::1]:8443"}
    )
    assert config.allowed_origins == (
        "https://app.example.com",
        "http://127.0.0.1:8080",
        "https://[::1]:8443",
    )
    assert Config().allowed_origins == ()


@pytest.mark.parametrize(
    ("origin", "said"),
    [
        (
            "https://App.example.com",
            "browsers send 'https://App.example.com' as 'https://app.example.com'",
        ),
        ("https://app.example.com/", "as 'https://app.example.com'"),
        ("https://app.example.com:443", "as 'https://app.example.com'"),
        ("app.example.com", "expected origins like https://app.example.com"),
        ("https://app.example.com/page", "got 'https://app.example.com/page'"),
        ("ftp://app.example.com", "expected origins"),
        ("https://app.example.com:x", "expected origins"),
        ("*", "expected origins"),
    ],
)
def test_an_origin_must_be_written_as_browsers_send_it(origin: str, said: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(said)) as refused:
        Config.from_env({"ALLOWED_ORIGINS": origin})
    assert "ALLOWED_ORIGINS" in str(refused.value)


def test_turn_ttl_must_leave_room_for_the_refresh() -> None:
    with pytest.raises(ConfigError, match=r"\(TURN_TTL_S\) must be an integer >= 120"):
        Config.from_env({"TURN_TTL_S": "119"})


def test_ring_timeout_must_be_shorter_than_the_call_cap() -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"RING_TIMEOUT_MS": "60000", "MAX_CALL_DURATION_MS": "60000"})
    assert str(caught.value) == (
        "ring_timeout_ms (RING_TIMEOUT_MS) must be less than max_call_duration_ms"
        " (MAX_CALL_DURATION_MS) (60000 >= 60000)"
    )


@pytest.mark.parametrize(
    ("cap", "warning"),
    [(3_600_000, 60_000), (240_000, 60_000), (239_996, 59_999), (5000, 1250), (2, 1)],
)
def test_the_default_expiring_warning_shrinks_to_a_quarter_of_a_short_cap(
    cap: int, warning: int
) -> None:
    """So shortening the duration alone never breaks start-up, nor warns as soon as a call is
    answered."""
    config = Config.from_env({"MAX_CALL_DURATION_MS": str(cap), "RING_TIMEOUT_MS": "1"})
    assert config.call_expiring_warning_ms == warning < cap
    assert Config().with_overrides(max_call_duration_ms=cap, ring_timeout_ms=1) == config


def test_an_expiring_warning_set_is_kept_when_shorter_than_the_cap() -> None:
    config = Config.from_env({"MAX_CALL_DURATION_MS": "5000", "RING_TIMEOUT_MS": "1000"})
    assert config.with_overrides(call_expiring_warning_ms=4999).call_expiring_warning_ms == 4999
    assert Config.from_mapping({"call_expiring_warning_ms": 1}).call_expiring_warning_ms == 1


@pytest.mark.parametrize("warning", ["5000", "60000"])
def test_an_expiring_warning_set_not_shorter_than_the_cap_is_refused(warning: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_env(
            {
                "MAX_CALL_DURATION_MS": "5000",
                "RING_TIMEOUT_MS": "1000",
                "CALL_EXPIRING_WARNING_MS": warning,
            }
        )
    assert str(caught.value) == (
        "call_expiring_warning_ms (CALL_EXPIRING_WARNING_MS) must be less than"
        f" max_call_duration_ms (MAX_CALL_DURATION_MS) ({warning} >= 5000); unset it to warn a"
        " quarter of the cap (at most a minute) before the end"
    )


def test_the_send_buffer_must_hold_the_largest_message() -> None:
    with pytest.raises(ConfigError, match=r"send_buffer_bytes \(SEND_BUFFER_BYTES\) must be at"):
        Config.from_env({"MAX_MESSAGE_BYTES": "2000", "SEND_BUFFER_BYTES": "1000"})


def test_a_call_needs_room_for_two() -> None:
    expected = r"\(MAX_PARTICIPANTS\) must be an integer from 2 to 64, got 1"
    with pytest.raises(ConfigError, match=expected):
        Config.from_env({"MAX_PARTICIPANTS": "1"})


def test_participants_are_bounded_by_what_the_schemas_allow() -> None:
    with pytest.raises(ConfigError, match="from 2 to 64, got 65"):
        Config.from_env({"MAX_PARTICIPANTS": "65"})
    with pytest.raises(ConfigError, match="from 2 to 1000, got 1001"):
        Config.from_env({"MAX_ROOM_MEMBERS": "1001"})


def test_only_hmac_token_algorithms() -> None:
    with pytest.raises(ConfigError, match="must be one of HS256, HS384, HS512, got 'RS256'"):
        Config.from_env({"JWT_ALGORITHM": "RS256"})


def test_a_short_jwt_secret_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_env(
            {"JWT_SECRET": "hunter2hunter2hunter2hunter2hunter2", "JWT_ALGORITHM": "HS512"}
        )
    assert "at least 64 bytes for HS512, got 35" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_a_short_admin_token_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"ADMIN_TOKEN": "letmein-letmein-letmein"})
    assert str(caught.value) == "admin_token (ADMIN_TOKEN) must be at least 32 bytes, got 23"
    assert Config.from_env({"ADMIN_TOKEN": "a" * 32}).admin_token == "a" * 32
    assert "a" * 32 not in repr(Config.from_env({"ADMIN_TOKEN": "a" * 32}))


def test_repr_hides_secrets() -> None:
    config = Config(
        jwt_secret=SECRET, turn_servers=("turn:t",), turn_username="u", turn_credential="pw-1"
    )
    text = repr(config)
    assert SECRET not in text
    assert "pw-1" not in text
    assert "turn_username='u'" in text


def test_from_mapping_refuses_typos_with_the_closest_name() -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_mapping({"prot": 9000, "ring_timeout": 1, "host": "::1"})
    assert str(caught.value) == (
        "unknown settings: 'prot' (did you mean 'port'?),"
        " 'ring_timeout' (did you mean 'ring_timeout_ms'?)"
    )


def test_from_mapping_builds_a_config() -> None:
    config = Config.from_mapping({"port": 0, "stun_servers": ["stun:a"], "path": "/signal"})
    assert (config.port, config.stun_servers, config.path) == (0, ("stun:a",), "/signal")


@pytest.mark.parametrize(
    ("key", "value"), [("port", "80"), ("heartbeat_ms", True), ("stun_servers", "stun:a")]
)
def test_from_mapping_checks_types(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=key):
        Config.from_mapping({key: value})


def test_path_must_be_absolute() -> None:
    with pytest.raises(ConfigError, match="path must be a string starting with '/'"):
        Config.from_mapping({"path": "ws"})


def test_with_overrides_validates_and_refuses_unknown_names() -> None:
    with pytest.raises(ConfigError, match="port"):
        Config().with_overrides(port=70000)
    with pytest.raises(ConfigError, match="did you mean 'host'"):
        Config().with_overrides(hots="::1")


def test_limits_are_what_welcome_announces() -> None:
    config = Config.from_mapping({"max_participants": 3, "message_burst": 20})
    assert config.limits() == Limits(
        max_message_bytes=262_144,
        max_call_duration_ms=3_600_000,
        ring_timeout_ms=30_000,
        reconnect_grace_ms=10_000,
        max_participants=3,
        max_calls_per_user=4,
        messages_per_second=50,
        message_burst=20,
        max_rooms_per_session=16,
        max_room_members=100,
        max_broadcast_bytes=16_384,
        broadcasts_per_second=10,
        max_presence_subscriptions=256,
        replay_buffer_messages=256,
        replay_buffer_bytes=65_536,
        max_nesting_depth=32,
        hello_timeout_ms=10_000,
    )


def test_env_warnings_flag_near_misses_only() -> None:
    environ = {"TURN_SERVERS": "turn:t", "JWT_SECRET_KEY": "x", "HOME": "/", "TURN_SERVER": "y"}
    assert env_warnings(environ) == [
        "ignoring TURN_SERVERS: not a callbox setting (did you mean TURN_SERVER?)"
    ]


def test_environment_variables_document_defaults() -> None:
    documented = {var.name: var for var in environment_variables()}
    assert documented["CALLBOX_PORT"].default == "8765"
    assert documented["JWT_SECRET"].default == "-"
    assert all(var.meaning for var in documented.values())


def test_the_state_tables_timeouts_are_the_configurations_defaults() -> None:
    """`protocol/call-states.yaml` publishes each timer's default and variable by hand: they must
    be the ones `Config` really has."""
    spec = yaml.safe_load((Path(__file__).parents[1] / "protocol" / "call-states.yaml").read_text())
    settings = {field.metadata["env"]: field.alias for field in attrs.fields(Config)}
    published = {name: (t["env"], t["default_ms"]) for name, t in spec["timeouts"].items()}
    configured = {
        name: (env, getattr(Config(), settings[env]) if env in settings else None)
        for name, (env, _) in published.items()
    }
    assert configured == published


def test_workers_are_one_by_default_and_more_need_a_redis() -> None:
    assert Config().workers == 1
    url = "redis://127.0.0.1:6379/0"
    assert Config.from_env({"CALLBOX_WORKERS": "4", "CALLBOX_REDIS_URL": url}).workers == 4
    with pytest.raises(ConfigError, match=r"workers \(CALLBOX_WORKERS\) = 2 needs the Redis"):
        Config(workers=2)
    with pytest.raises(ConfigError, match="from 1 to 256, got 0"):
        Config(workers=0)
