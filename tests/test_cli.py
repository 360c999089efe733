"""The command line, through `main(argv)`; `serve` runs a stand-in for the server's app."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import types
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trio
import trustme

import callbox
import callbox.__main__ as cli
from callbox.__main__ import main
from callbox.config import ENV_PREFIX, Config, environment_variables
from tests.helpers import write_certificate

Serve = Callable[..., Awaitable[None]]
"""`callbox.server.app.serve`: a config, and the keywords `drain` and `parent`."""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host's own JWT_SECRET or CALLBOX_PORT must not leak into these tests."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX) or name in {v.name for v in environment_variables()}:
            monkeypatch.delenv(name)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """`serve` configures the root logger; put pytest's handlers back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def fake_app(monkeypatch: pytest.MonkeyPatch, restore_logging: None) -> Callable[[Serve], None]:
    """Installs `serve` as ``callbox.server.app.serve`` for the duration of the test."""

    def install(serve: Serve) -> None:
        module = types.ModuleType("callbox.server.app")
        module.serve = serve  # type: ignore[attr-defined]
        module.tune_garbage_collector = lambda: None  # type: ignore[attr-defined]  # keep pytest's
        monkeypatch.setitem(sys.modules, "callbox.server.app", module)

    return install


def test_help_explains_commands_and_every_environment_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for command in ("serve", "schemas", "version"):
        assert command in out
    for var in environment_variables():
        line = next(line for line in out.splitlines() if line.split()[:1] == [var.name])
        assert var.default in line
        assert var.meaning in line


def test_serve_help_documents_the_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--host", "--port", "--log-level", "SIGTERM"))


def test_a_command_is_required() -> None:
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 2


def test_a_port_that_is_not_a_number_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--port", "notaport"])
    assert exited.value.code == 2
    assert "--port" in capsys.readouterr().err


def test_a_configuration_error_exits_2_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RING_TIMEOUT_MS", "soon")
    assert main(["serve"]) == 2
    captured = capsys.readouterr()
    assert captured.err == (
        "callbox: configuration error: RING_TIMEOUT_MS must be an integer, got 'soon'\n"
    )
    assert "Traceback" not in captured.err


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        (
            {"WEBHOOK_SECRET": "hunter2-not-a-whsec"},
            "webhook_secret (WEBHOOK_SECRET) must be 'whsec_' followed by the base64 of 24 to 64"
            " random bytes (a Standard Webhooks secret)",
        ),
        (
            {"WEBHOOK_SECRET": "whsec_c2hvcnQ="},
            "webhook_secret (WEBHOOK_SECRET) must be 'whsec_' followed by the base64 of 24 to 64"
            " random bytes (a Standard Webhooks secret); it decodes to 5 bytes",
        ),
        (
            {"WEBHOOK_EVENTS": "call.ended,call.rang"},
            "webhook_events (WEBHOOK_EVENTS): unknown event type: 'call.rang' (did you mean"
            " 'call.answered'?); known: call.initiated, call.answered, participant.joined,"
            " participant.left, call.ended, call.ringing_offline",
        ),
        (
            {"WEBHOOK_SECRET": None},
            "webhook_urls (WEBHOOK_URL) needs webhook_secret (WEBHOOK_SECRET): every event is"
            " signed",
        ),
    ],
)
def test_a_webhook_setting_that_is_wrong_stops_serve_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    settings: dict[str, str | None],
    error: str,
) -> None:
    environment = {
        "WEBHOOK_URL": "https://backend.example.com/hooks",
        "WEBHOOK_SECRET": "whsec_" + "e" * 32,
        **settings,
    }
    for name, value in environment.items():
        if value is not None:
            monkeypatch.setenv(name, value)
    assert main(["serve"]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"callbox: configuration error: {error}\n"
    assert "hunter2" not in captured.err


def test_an_expiry_warning_not_shorter_than_the_cap_stops_serve_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in [
        ("MAX_CALL_DURATION_MS", "5000"),
        ("RING_TIMEOUT_MS", "1000"),
        ("CALL_EXPIRING_WARNING_MS", "60000"),
    ]:
        monkeypatch.setenv(name, value)
    assert main(["serve"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "CALL_EXPIRING_WARNING_MS" in line and "MAX_CALL_DURATION_MS" in line


def test_a_short_admin_token_stops_serve_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ADMIN_TOKEN", "too-short-to-be-safe")
    assert main(["serve"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        "callbox: configuration error: admin_token (ADMIN_TOKEN) must be at least 32 bytes, got 20"
    )


def test_a_flag_out_of_range_is_a_configuration_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["serve", "--port", "70000"]) == 2
    assert "port (CALLBOX_PORT) must be a port number" in capsys.readouterr().err


def test_an_unknown_callbox_variable_stops_serve(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CALLBOX_PROT", "9000")
    assert main(["serve"]) == 2
    assert "did you mean 'CALLBOX_PORT'?" in capsys.readouterr().err


def test_serve_runs_the_app_with_env_and_flags(
    monkeypatch: pytest.MonkeyPatch, fake_app: Callable[[Serve], None]
) -> None:
    seen: list[Config] = []

    async def serve(config: Config, **_: object) -> None:
        seen.append(config)

    fake_app(serve)
    monkeypatch.setenv("CALLBOX_HOST", "0.0.0.0")
    monkeypatch.setenv("CALLBOX_PORT", "9000")
    monkeypatch.setenv("RING_TIMEOUT_MS", "20000")
    assert main(["serve", "--port", "9100"]) == 0
    assert seen == [Config(host="0.0.0.0", port=9100, ring_timeout_ms=20_000)]


def test_tls_flags_override_the_environment(
    monkeypatch: pytest.MonkeyPatch, fake_app: Callable[[Serve], None], tmp_path: Path
) -> None:
    seen: list[Config] = []

    async def serve(config: Config, **_: object) -> None:
        seen.append(config)

    fake_app(serve)
    cert, key = write_certificate(trustme.CA(), tmp_path)  # loaded before serving
    monkeypatch.setenv("TLS_CERT_FILE", "/env/cert.pem")
    monkeypatch.setenv("TLS_KEY_FILE", "/env/key.pem")
    assert main(["serve", "--tls-cert", cert, "--tls-key", key]) == 0
    assert (seen[0].tls_cert_file, seen[0].tls_key_file) == (cert, key)


def test_serve_warns_when_tokens_are_on_and_any_origin_may_use_them(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fake_app: Callable[[Serve], None],
) -> None:
    async def serve(config: Config, **_: object) -> None:
        pass

    fake_app(serve)
    monkeypatch.setenv("JWT_SECRET", "k" * 32)
    assert main(["serve"]) == 0
    (line,) = capsys.readouterr().err.splitlines()
    assert "WARNING callbox: ALLOWED_ORIGINS is not set: pages from any site" in line
    monkeypatch.setenv("ALLOWED_ORIGINS", "https://app.example.com")
    assert main(["serve"]) == 0
    assert capsys.readouterr().err == ""


def test_serve_logs_to_stderr_and_warns_about_development_mode_and_typos(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fake_app: Callable[[Serve], None],
) -> None:
    async def serve(config: Config, **_: object) -> None:
        logging.getLogger("callbox.server").debug("hidden at the default level")
        logging.getLogger("callbox.server").info("callbox listening on ws://h:1/ws")

    fake_app(serve)
    monkeypatch.setenv("TURN_SERVERS", "turn:t")
    assert main(["serve"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3
    assert lines[0].endswith(
        "WARNING callbox: ignoring TURN_SERVERS: not a callbox setting (did you mean TURN_SERVER?)"
    )
    assert "WARNING callbox: JWT_SECRET is not set: development mode" in lines[1]
    assert lines[2].endswith("INFO callbox.server: callbox listening on ws://h:1/ws")


def test_log_level_flag(
    capsys: pytest.CaptureFixture[str], fake_app: Callable[[Serve], None]
) -> None:
    async def serve(config: Config, **_: object) -> None:
        logging.getLogger("callbox.server").debug("now visible")

    fake_app(serve)
    assert main(["serve", "--log-level", "DEBUG"]) == 0
    assert "DEBUG callbox.server: now visible" in capsys.readouterr().err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_drains_the_server_and_a_second_cancels_it(
    signum: signal.Signals,
    capsys: pytest.CaptureFixture[str],
    fake_app: Callable[[Serve], None],
) -> None:
    events: list[str] = []

    async def serve(config: Config, *, drain: trio.Event, parent: object) -> None:
        try:
            os.kill(os.getpid(), signum)
            with trio.fail_after(5):  # fails the test, rather than hanging, if not drained
                await drain.wait()
            events.append("draining")
            os.kill(os.getpid(), signum)
            with trio.fail_after(5):  # the same, if not cancelled
                await trio.sleep_forever()
        finally:
            events.append("cleaned up")

    fake_app(serve)
    assert main(["serve"]) == 0
    assert events == ["draining", "cleaned up"]
    err = capsys.readouterr().err
    assert f"{signum.name} received, draining (again to stop at once)" in err
    assert f"{signum.name} received again, stopping at once" in err


def test_a_server_that_drains_exits_0(
    capsys: pytest.CaptureFixture[str], fake_app: Callable[[Serve], None]
) -> None:
    async def serve(config: Config, *, drain: trio.Event, parent: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        with trio.fail_after(5):
            await drain.wait()

    fake_app(serve)
    assert main(["serve"]) == 0
    assert "SIGTERM received, draining" in capsys.readouterr().err


def test_workers_without_redis_are_refused_with_how_to_get_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--workers", "2"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("callbox: configuration error: workers (CALLBOX_WORKERS) = 2 needs")
    assert "apt-get install redis-server" in line
    assert "CALLBOX_REDIS_URL=redis://127.0.0.1:6379/0" in line
    monkeypatch.setenv("CALLBOX_WORKERS", "3")
    assert main(["serve"]) == 2
    assert "= 3 needs the Redis" in capsys.readouterr().err


def test_keyboard_interrupt_exits_0_without_a_traceback(
    capsys: pytest.CaptureFixture[str], fake_app: Callable[[Serve], None]
) -> None:
    async def serve(config: Config, **_: object) -> None:
        raise KeyboardInterrupt

    fake_app(serve)
    assert main(["serve"]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_other_server_failures_are_not_swallowed(fake_app: Callable[[Serve], None]) -> None:
    async def serve(config: Config, **_: object) -> None:
        raise OSError("address already in use")

    fake_app(serve)
    with pytest.raises(BaseExceptionGroup) as caught:
        main(["serve"])
    assert caught.group_contains(OSError, match="address already in use")


def test_schemas_dir_is_inside_the_installed_package() -> None:
    assert Path(str(cli.schemas_dir())).parts[-2:] == ("callbox", "schemas")


def test_schemas_prints_the_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "schemas").mkdir()
    monkeypatch.setattr(cli, "schemas_dir", lambda: tmp_path / "schemas")
    assert main(["schemas"]) == 0
    assert capsys.readouterr().out == f"{tmp_path / 'schemas'}\n"


def test_schemas_exits_1_when_the_directory_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "schemas_dir", lambda: tmp_path / "schemas")
    assert main(["schemas"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"callbox: no schemas directory at {tmp_path / 'schemas'}\n"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    assert capsys.readouterr().out == f"callbox {callbox.__version__}\n"
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"callbox {callbox.__version__}\n"


def test_a_port_in_use_is_said_in_one_line_and_exits_2(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--host", "127.0.0.1", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"callbox: cannot listen on 127.0.0.1:{port}: " in err
    assert "Traceback" not in err and "ExceptionGroup" not in err
