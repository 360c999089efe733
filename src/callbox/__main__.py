"""Command line: ``callbox serve | schemas | version | conformance``.

`main` returns the exit status rather than exiting, so tests call it without a subprocess;
argparse itself still exits for ``--help`` (0) and malformed flags (2).
"""

from __future__ import annotations

import argparse
import importlib.resources
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from importlib.resources.abc import Traversable
from typing import TYPE_CHECKING

import trio

from callbox import __version__
from callbox.config import (
    Config,
    ConfigError,
    env_warnings,
    environment_variable,
    environment_variables,
)
from callbox.conformance.cli import add_parser as add_conformance_parser

if TYPE_CHECKING:
    from callbox.server.app import Parent

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_LEVELS = ("debug", "info", "warning", "error")
SERVE_FLAGS = ("host", "port", "redis_url", "workers", "tls_cert_file", "tls_key_file")
"""`serve` flags that override the environment; argparse omits the ones not given."""

log = logging.getLogger("callbox")

Serve = Callable[[Config, trio.Event], Awaitable[None]]
"""Runs the server until cancelled, or until the event is set and its drain is over."""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``callbox`` script; `argv` defaults to ``sys.argv[1:]``."""
    args = _parser().parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.command
    return command(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="callbox",
        description="callbox, a WebRTC signaling server: authenticated 1:1 and group calls,\n"
        "SDP/ICE relay, rooms and presence over one WebSocket per client.",
        epilog=_environment_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"callbox {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the server until SIGTERM or Ctrl-C",
        description="Run the server at ws://HOST:PORT/ws (wss://, with https:// for the demo"
        " page and the schemas, given a TLS certificate and key); the server logs that line once"
        " it listens. Settings come from the environment (see 'callbox --help'); the flags below"
        " override it. SIGTERM or Ctrl-C drains it: it stops accepting, closes every WebSocket"
        " with 1012 (service restart) so that clients resume elsewhere, and exits with status 0"
        " once they are closed or within 10 s; a second one stops it at once. SIGHUP reads the"
        " TLS certificate and key again. With --workers N, a parent binds the port and starts N"
        " worker processes (each a node of the cluster: N > 1 needs --redis), restarts those"
        " that crash and passes signals on. A configuration error, a certificate that cannot be"
        " loaded or an address it cannot listen on exits with status 2 and one line on stderr."
        " Logs go to stderr, one line per event.",
    )
    serve.add_argument("--host", default=argparse.SUPPRESS, help="address to listen on")
    serve.add_argument("--port", type=int, default=argparse.SUPPRESS, help="TCP port (0: any)")
    serve.add_argument(
        "--redis",
        dest="redis_url",
        default=argparse.SUPPRESS,
        metavar="URL",
        help="be a node of the cluster on this Redis (CALLBOX_REDIS_URL)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=argparse.SUPPRESS,
        metavar="N",
        help="worker processes sharing the port, each a node of the cluster (CALLBOX_WORKERS;"
        " default 1: this process serves)",
    )
    # A worker's descriptors, passed down by its parent (callbox.server.workers): not for users.
    serve.add_argument("--parent-fd", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--listen-fds", type=_descriptors, help=argparse.SUPPRESS)
    serve.add_argument(
        "--tls-cert",
        dest="tls_cert_file",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="PEM certificate chain: serve wss:// and https:// (with --tls-key; SIGHUP reloads)",
    )
    serve.add_argument(
        "--tls-key",
        dest="tls_key_file",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="PEM private key of the certificate",
    )
    serve.add_argument(
        "--log-level", type=str.lower, choices=LOG_LEVELS, default="info", help="default: info"
    )
    serve.set_defaults(command=_serve)

    schemas = commands.add_parser(
        "schemas",
        help="print the directory of the installed JSON Schemas of the protocol",
        description="Print the directory holding the protocol's JSON Schemas, one file per"
        " message; exit status 1 if this installation has none.",
    )
    schemas.set_defaults(command=_schemas)

    version = commands.add_parser("version", help="print the version")
    version.set_defaults(command=_version)

    add_conformance_parser(commands)
    return parser


def _descriptors(text: str) -> list[int]:
    return [int(fd) for fd in text.split(",")]


def _environment_help() -> str:
    rows = environment_variables()
    name_width = max(len(row.name) for row in rows)
    default_width = max(len(row.default) for row in rows)
    lines = [
        "environment variables ('serve' flags take precedence; unknown CALLBOX_* names and",
        "empty values are refused: unset a variable to get its default):",
        f"  {'NAME':<{name_width}}  {'DEFAULT':<{default_width}}  MEANING",
    ]
    lines += [
        f"  {row.name:<{name_width}}  {row.default:<{default_width}}  {row.meaning}" for row in rows
    ]
    return "\n".join(lines)


def _serve(args: argparse.Namespace) -> int:
    overrides = {name: getattr(args, name) for name in SERVE_FLAGS if hasattr(args, name)}
    try:
        config = Config.from_env(os.environ).with_overrides(**overrides)
    except ConfigError as error:
        print(f"callbox: configuration error: {error}", file=sys.stderr)
        return 2

    # Imported here so that --help, schemas and version work without the server's dependencies.
    from callbox.cluster.backend import ClusterUnavailable  # noqa: PLC0415
    from callbox.server.app import serve, tune_garbage_collector  # noqa: PLC0415
    from callbox.server.transport.listener import ListenError  # noqa: PLC0415
    from callbox.server.transport.tls import CertificateError, load_context  # noqa: PLC0415

    parent: Parent | None = None
    if args.parent_fd is not None:  # a worker of a pool: the parent checked and said it all
        from callbox.server.workers import ParentLink  # noqa: PLC0415

        parent = ParentLink.inherited(args.parent_fd, args.listen_fds or [])
        config = config.with_overrides(workers=1)

    if config.tls_cert_file is not None and config.tls_key_file is not None:
        try:  # before any log line, so that the error is the only one (`serve` loads it again)
            load_context(config.tls_cert_file, config.tls_key_file)
        except CertificateError as error:
            print(f"callbox: {error}", file=sys.stderr)
            return 2
    logging.basicConfig(
        level=args.log_level.upper(), format=LOG_FORMAT, stream=sys.stderr, force=True
    )
    if args.log_level != "debug":  # websockets logs every connection open and close at INFO
        logging.getLogger("callbox.transport.protocol").setLevel(logging.WARNING)
    if parent is None:
        _warn_of(config)
    if config.workers > 1:
        return _serve_pool(config, args.log_level, overrides)

    async def serve_until_drained(config: Config, drain: trio.Event) -> None:
        await serve(config, drain=drain, parent=parent)

    tune_garbage_collector()
    status = 0
    try:
        trio.run(_serve_until_signalled, serve_until_drained, config)
    except* KeyboardInterrupt:
        pass  # a second Ctrl-C during shutdown, or one before the signal handler was installed
    except* (ListenError, CertificateError) as failed:  # start-up errors, like configuration
        print(f"callbox: {_first_leaf(failed)}", file=sys.stderr)
        status = 2
    except* ClusterUnavailable as failed:  # a cluster's Redis: unusable (2), or out of reach (1)
        unreachable = _first_leaf(failed)
        print(f"callbox: {unreachable}", file=sys.stderr)
        status = 2 if getattr(unreachable, "permanent", False) else 1
    return status


def _warn_of(config: Config) -> None:
    for warning in env_warnings(os.environ):
        log.warning("%s", warning)
    if config.jwt_secret is None:
        log.warning("JWT_SECRET is not set: development mode, clients say who they are")
    elif not config.allowed_origins:
        log.warning(
            "ALLOWED_ORIGINS is not set: pages from any site may open WebSockets here and"
            " sign in with the tokens they hold; list the sites of your clients"
        )


def _serve_pool(config: Config, log_level: str, overrides: dict[str, object]) -> int:
    """The parent of `config.workers` worker processes (callbox.server.workers)."""
    from callbox.server.transport.listener import ListenError  # noqa: PLC0415
    from callbox.server.workers import run_pool  # noqa: PLC0415

    command = [sys.executable, "-m", "callbox", "serve", "--log-level", log_level]
    env = {**os.environ}
    env |= {environment_variable(name): str(value) for name, value in overrides.items()}
    env.pop("CALLBOX_WORKERS")  # a worker serves (the flag was written there too, if given)
    try:
        return trio.run(run_pool, config, command, env)
    except ListenError as error:
        print(f"callbox: {error}", file=sys.stderr)
        return 2


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception in `group` that is not itself a group (nurseries nest them)."""
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


async def _serve_until_signalled(serve: Serve, config: Config) -> None:
    """Runs `serve`; the first SIGTERM or SIGINT drains it, the second cancels it (its cleanup,
    closing clients with 1001, still runs)."""
    drain = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(_drain_on_signal, drain, nursery.cancel_scope)
        await serve(config, drain)
        nursery.cancel_scope.cancel()  # the server stopped on its own: stop waiting for signals


async def _drain_on_signal(
    drain: trio.Event,
    scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            name = signal.Signals(signum).name
            if not drain.is_set():
                log.info("%s received, draining (again to stop at once)", name)
                drain.set()
                continue
            log.info("%s received again, stopping at once", name)
            scope.cancel()
            return


def schemas_dir() -> Traversable:
    """Where the installed package keeps the schemas (the wheel maps ``schemas/`` there)."""
    return importlib.resources.files("callbox") / "schemas"


def _schemas(_args: argparse.Namespace) -> int:
    path = schemas_dir()
    if not path.is_dir():
        print(f"callbox: no schemas directory at {path}", file=sys.stderr)
        return 1
    print(path)
    return 0


def _version(_args: argparse.Namespace) -> int:
    print(f"callbox {__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
