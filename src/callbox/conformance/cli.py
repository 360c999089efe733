"""`callbox conformance URL`: the subcommand. Its parser imports nothing heavy, so that
`callbox --help` works without the suite's dependencies; the suite loads when it runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from callbox.conformance.options import Options
from callbox.conformance.registry import SECTIONS

DEFAULTS = Options()
EXIT_FAILED = 1
EXIT_CANNOT_RUN = 2


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "conformance",
        help="check a running server against the protocol",
        description="Run the protocol conformance suite against the callbox server at URL"
        " (e.g. ws://127.0.0.1:8765/ws), which must be in development mode (no JWT_SECRET)."
        " Given several URLs (the nodes of one cluster), each connection the suite opens, and"
        " each resume, goes to a random one of them, drawn from --seed and the case's id: the"
        " same seed sends a case's connections to the same URLs again."
        " Prints a table of cases; exit status 0 if none failed, 1 if any did, 2 if the suite"
        " could not run. Cases waiting for a server timer longer than --max-wait are skipped.",
        epilog=f"sections: {', '.join(SECTIONS)}. See docs/conformance.md.",
    )
    parser.add_argument(
        "url",
        nargs="+",
        metavar="URL",
        help="the server's WebSocket URL; several: nodes of one cluster, sharing its sessions",
    )
    parser.add_argument(
        "--only",
        type=_sections,
        default=DEFAULTS.only,
        metavar="SECTION[,...]",
        help="run only these sections",
    )
    parser.add_argument(
        "--skip",
        type=_sections,
        default=DEFAULTS.skip,
        metavar="SECTION[,...]",
        help="skip these sections",
    )
    parser.add_argument(
        "--max-wait",
        type=float,
        default=DEFAULTS.max_wait,
        metavar="SECONDS",
        help=f"longest server timer a case may wait for (default {DEFAULTS.max_wait:g})",
    )
    parser.add_argument(
        "--examples",
        type=_positive,
        default=DEFAULTS.examples,
        metavar="N",
        help=f"generated messages per type in 'negative' (default {DEFAULTS.examples})",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULTS.seed,
        metavar="N",
        help="seed of the generated messages and of the URL each connection goes to, to"
        f" reproduce a run (default {DEFAULTS.seed})",
    )
    parser.add_argument(
        "--jobs",
        type=_positive,
        default=DEFAULTS.jobs,
        metavar="N",
        help=f"cases run at once (default {DEFAULTS.jobs})",
    )
    parser.add_argument(
        "--case-timeout",
        type=float,
        default=DEFAULTS.case_timeout,
        metavar="SECONDS",
        help="seconds a case may take besides the timers it waits for"
        f" (default {DEFAULTS.case_timeout:g})",
    )
    parser.add_argument(
        "--admin-token",
        metavar="TOKEN",
        help="the server's ADMIN_TOKEN: the cases that end a call or a user's sessions through"
        " its admin API (reason terminated, close 4004) run; without it they are skipped",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the report as JSON")
    parser.add_argument("--junit", type=Path, metavar="FILE", help="also write JUnit XML")
    parser.set_defaults(command=run)


def run(args: argparse.Namespace) -> int:
    try:
        import trio  # noqa: PLC0415

        from callbox.conformance.report import table, to_json, to_junit  # noqa: PLC0415
        from callbox.conformance.runner import SuiteAborted, run_suite  # noqa: PLC0415
    except ImportError as missing:
        print(
            f"callbox conformance needs {missing.name}: pip install 'callbox[conformance]'",
            file=sys.stderr,
        )
        return EXIT_CANNOT_RUN
    options = Options(
        only=args.only,
        skip=args.skip,
        max_wait=args.max_wait,
        examples=args.examples,
        seed=args.seed,
        jobs=args.jobs,
        case_timeout=args.case_timeout,
        admin_token=args.admin_token,
    )
    try:
        report = trio.run(run_suite, args.url, options)
    except SuiteAborted as aborted:
        print(f"callbox conformance: {aborted}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    print(table(report))
    if args.json is not None:
        args.json.write_bytes(to_json(report))
    if args.junit is not None:
        args.junit.write_bytes(to_junit(report))
    return EXIT_FAILED if report.failed else 0


def _sections(text: str) -> frozenset[str]:
    names = frozenset(name.strip() for name in text.split(",") if name.strip())
    unknown = sorted(names - set(SECTIONS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown section {', '.join(unknown) or '(none)'}; sections: {', '.join(SECTIONS)}"
        )
    return names


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
