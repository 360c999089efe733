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

import trio

from callbox import __version__
from callbox.config import Config, ConfigError, env_warnings, environment_variables
from callbox.conformance.cli import add_parser as add_conformance_parser

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_LEVELS = ("debug", "info", "warning", "error")
SERVE_FLAGS = ("host", "port", "redis_url", "tls_cert_file", "tls_key_file")
"""`serve` flags that override the environment; argparse omits the ones not given."""

log = logging.getLogger("callbox")

Serve = Callable[[Config], Awaitable[None]]


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
        " override it. SIGTERM or Ctrl-C stops it cleanly, with exit status 0; SIGHUP reads the"
        " TLS certificate and key again. A configuration error, a certificate that cannot be"
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
    for warning in env_warnings(os.environ):
        log.warning("%s", warning)
    if config.jwt_secret is None:
        log.warning("JWT_SECRET is not set: development mode, clients say who they are")
    elif not config.allowed_origins:
        log.warning(
            "ALLOWED_ORIGINS is not set: pages from any site may open WebSockets here and"
            " sign in with the tokens they hold; list the sites of your clients"
        )

    tune_garbage_collector()
    status = 0
    try:
        trio.run(_serve_until_signalled, serve, config)
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


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception in `group` that is not itself a group (nurseries nest them)."""
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


async def _serve_until_signalled(serve: Serve, config: Config) -> None:
    """Runs `serve`; SIGTERM or SIGINT cancels it, so its cleanup (closing clients) still runs."""
    async with trio.open_nursery() as nursery:
        await nursery.start(_cancel_on_signal, nursery.cancel_scope)
        await serve(config)
        nursery.cancel_scope.cancel()  # the server stopped on its own: stop waiting for signals


async def _cancel_on_signal(
    scope: trio.CancelScope, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            log.info("%s received, shutting down", signal.Signals(signum).name)
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
