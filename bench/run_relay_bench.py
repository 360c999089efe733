"""One command for the relay-throughput numbers behind docs/decisions/0001-transport.md.

(The full benchmark, against PeerJS too, is bench/run_bench.py; it reuses this file's machinery.)

For each target (the two bare relays of bench/bare_relays.py and the real ``callbox serve``)
and each pair count, REPS times with the targets alternating (so drift hits them alike): start
the server pinned to core 0, run bench/relay_load.py pinned to core 1, read the server's CPU
time from /proc over the generator's measured window, stop the server. Then print a table.

The machine may be shared, so each run also reports "others": CPU time spent on either core by
processes other than the server and the generator during the window (from /proc/stat, percent
of one core; tick sampling makes it good to about +-10). A run above CONTENDED_OTHERS_PCT
competed for its cores, and the table leaves it out.

    .venv/bin/python bench/run_relay_bench.py [--procs N] [--reps 3] [--pairs 100 1000]

``--tls`` adds a TLS twin of each callbox target (``+tls``: ``wss://``, a certificate made for the
run by trustme, the generator encrypting too), so the table shows what TLS costs the relay;
``--targets`` keeps only the named targets (e.g. ``--tls --targets "callbox serve" "callbox
serve+tls"``). The table's "server us/msg" is the server's CPU time per relayed message.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

BENCH = Path(__file__).resolve().parent
HOST = "127.0.0.1"
SERVER_CORE, GENERATOR_CORE = 0, 1
SERVER_START_TIMEOUT_S = 15.0
SERVER_STOP_TIMEOUT_S = 10.0
GENERATOR_SLACK_S = 120.0  # set-up and reporting, on top of warm-up + measured seconds
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CONTENDED_OTHERS_PCT = 15.0  # others' CPU% above which a run is left out of the table


@dataclass(frozen=True)
class Target:
    name: str
    protocol: str  # relay_load.py's protocol
    command: list[str]  # ends with "--port": the port follows
    env: dict[str, str]
    ca_file: str | None = None  # TLS: the generator connects with wss://, trusting this CA


TARGETS = [
    Target(
        "trio-websocket",
        "bare",
        [sys.executable, str(BENCH / "bare_relays.py"), "trio-websocket", "--port"],
        {},
    ),
    Target(
        "callbox-transport",
        "bare",
        [sys.executable, str(BENCH / "bare_relays.py"), "callbox-transport", "--port"],
        {},
    ),
    Target(
        "callbox serve",
        "callbox",
        [sys.executable, "-m", "callbox", "serve", "--log-level", "warning", "--port"],
        # Rate limiting would otherwise cap each connection at 50 msgs/s.
        {"MESSAGES_PER_SECOND": "1000000", "MESSAGE_BURST": "1000000"},
    ),
]


def tls_twins(directory: Path) -> list[Target]:
    """The callbox targets again, over TLS, with a certificate for 127.0.0.1 written in
    `directory` (trustme, from the test extra: the benchmark runs in the test environment)."""
    import trustme  # noqa: PLC0415

    ca = trustme.CA()
    leaf = ca.issue_cert(HOST)
    cert, key, ca_file = directory / "cert.pem", directory / "key.pem", directory / "ca.pem"
    leaf.private_key_and_cert_chain_pem.write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    by_name = {target.name: target for target in TARGETS}
    transport, serve = by_name["callbox-transport"], by_name["callbox serve"]
    return [
        Target(
            f"{transport.name}+tls",
            transport.protocol,
            [*transport.command[:-1], "--tls", str(cert), str(key), "--port"],
            transport.env,
            str(ca_file),
        ),
        Target(
            f"{serve.name}+tls",
            serve.protocol,
            serve.command,
            serve.env | {"TLS_CERT_FILE": str(cert), "TLS_KEY_FILE": str(key)},
            str(ca_file),
        ),
    ]


@dataclass(frozen=True)
class Run:
    target: str
    pairs: int
    msgs_per_s: float
    server_cpu_pct: float
    generator_cpu_pct: float
    others_cpu_pct: float


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_listening(port: int, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited with {server.returncode} before listening")
        try:
            socket.create_connection((HOST, port), timeout=1).close()
        except OSError:
            time.sleep(0.05)
        else:
            return
    raise RuntimeError(f"server not listening on {port} after {SERVER_START_TIMEOUT_S} s")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def cores_busy_seconds() -> float:
    """Non-idle time of the two benchmark cores, from /proc/stat.

    Interrupt time counts: the kernel books some of it into the processes' own CPU time too.
    """
    busy = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *ticks = line.split()
        if name in (f"cpu{SERVER_CORE}", f"cpu{GENERATOR_CORE}"):
            idle, iowait = int(ticks[3]), int(ticks[4])
            busy += sum(map(int, ticks[:8])) - idle - iowait  # through steal; guest is in user
    return busy / CLOCK_TICKS


def stop(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(SERVER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def run_once(target: Target, pairs: int, args: argparse.Namespace, log_dir: Path) -> Run:
    """One server, one generator run; the server is stopped whatever happens."""
    port = free_port()
    log_path = log_dir / f"{target.name.replace(' ', '-')}-{pairs}-{port}.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            ["taskset", "-c", str(SERVER_CORE), *target.command, str(port)],
            env=os.environ | target.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_listening(port, server)
            result, server_cpu_pct, cores_pct = drive(target, pairs, port, server.pid, args)
        except Exception as exc:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{target.name} x {pairs}: {exc}; server log:\n{tail}") from exc
        finally:
            stop(server)
    if result["unexpected"]:
        print(f"  unexpected frames: {result['unexpected']}, e.g. {result['unexpected_sample']}")
    return Run(
        target.name,
        pairs,
        result["per_s"],
        server_cpu_pct,
        result["generator_cpu_pct"],
        cores_pct - server_cpu_pct - result["generator_cpu_pct"],
    )


def drive(
    target: Target, pairs: int, port: int, server_pid: int, args: argparse.Namespace
) -> tuple[dict[str, Any], float, float]:
    """Run the generator; the server's and the two cores' CPU% over the window it announces."""
    command = [
        "taskset", "-c", str(GENERATOR_CORE),
        sys.executable, str(BENCH / "relay_load.py"), target.protocol,
        "--port", str(port), "--pairs", str(pairs), "--procs", str(args.procs),
        "--warmup", str(args.warmup), "--seconds", str(args.seconds),
        "--phase", f"relay:{args.size}",
        *(["--tls", target.ca_file] if target.ca_file else []),
    ]  # fmt: skip
    deadline = time.monotonic() + args.warmup + args.seconds + GENERATOR_SLACK_S
    marks: dict[str, tuple[float, float, float]] = {}
    result: dict[str, Any] | None = None
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as generator:
        try:
            for word, rest in generator_lines(generator, deadline):
                if word in ("window-start", "window-end"):
                    marks[word] = window_mark(server_pid)
                elif word == "result":
                    result = orjson.loads(rest)
                    break
        finally:
            if generator.poll() is None:
                generator.wait(10)
    assert result is not None  # generator_lines only ends by raising, so the loop broke on it
    (t0, server0, cores0), (t1, server1, cores1) = marks["window-start"], marks["window-end"]
    return result, 100 * (server1 - server0) / (t1 - t0), 100 * (cores1 - cores0) / (t1 - t0)


def generator_lines(generator: subprocess.Popen[str], deadline: float) -> Iterator[tuple[str, str]]:
    """The generator's report lines as (first word, rest); fails on exit or past `deadline`."""
    assert generator.stdout is not None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([generator.stdout], [], [], remaining)[0]:
            raise RuntimeError("generator timed out")
        line = generator.stdout.readline()
        if not line:
            raise RuntimeError(f"generator exited with {generator.wait()}")
        word, _, rest = line.strip().partition(" ")
        yield word, rest


def window_mark(server_pid: int) -> tuple[float, float, float]:
    """When, and how much CPU the server and both cores had used, at a window's edge."""
    return time.monotonic(), cpu_seconds(server_pid), cores_busy_seconds()


def machine_facts() -> list[str]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line), "?")
    return [
        f"nproc: {os.cpu_count()}",
        f"CPU: {model}",
        f"Python: {platform.python_version()} ({platform.python_implementation()})",
        f"kernel: {platform.release()}",
    ]


def table(runs: list[Run], targets: list[Target], args: argparse.Namespace) -> list[str]:
    """Medians over the clean runs (all runs, marked, if none was clean)."""
    lines = [
        f"{args.reps} runs each, {args.warmup:g} s warm-up + {args.seconds:g} s measured,"
        f" {args.size} B messages, generator processes: {args.procs}; server on core"
        f" {SERVER_CORE}, generator on core {GENERATOR_CORE}; medians over clean runs (others"
        f" CPU% < {CONTENDED_OTHERS_PCT:g})",
        "",
        "| target | pairs | msgs/s | min-max | server us/msg | server CPU% | generator CPU%"
        " | clean runs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for pairs in args.pairs:
        for target in targets:
            these = [run for run in runs if run.target == target.name and run.pairs == pairs]
            clean = [run for run in these if run.others_cpu_pct < CONTENDED_OTHERS_PCT]
            used = clean or these
            rates = [run.msgs_per_s for run in used]
            server = statistics.median(run.server_cpu_pct for run in used)
            generator = statistics.median(run.generator_cpu_pct for run in used)
            per_message = statistics.median(1e4 * r.server_cpu_pct / r.msgs_per_s for r in used)
            lines.append(
                f"| {target.name} | {pairs} | {statistics.median(rates):,.0f}"
                f" | {min(rates):,.0f}-{max(rates):,.0f} | {per_message:.1f} | {server:.0f}"
                f" | {generator:.0f}"
                f" | {len(clean)}/{len(these)}{'' if clean else ' (all shown)'} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--procs", type=int, default=1, help="generator processes")
    parser.add_argument("--size", type=int, default=256, help="bytes per client message")
    parser.add_argument("--tls", action="store_true", help="add the callbox targets over TLS")
    parser.add_argument("--targets", nargs="+", metavar="NAME", help="run only these targets")
    args = parser.parse_args()

    # 1000 pairs are 2000 sockets in the server and in the generator; children inherit this.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * max(args.pairs) + 256
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SystemExit(f"RLIMIT_NOFILE hard limit {hard} < {needed} needed")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))

    started = time.monotonic()
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as log_dir:
        targets = TARGETS + (tls_twins(Path(log_dir)) if args.tls else [])
        if args.targets:
            unknown = set(args.targets) - {target.name for target in targets}
            if unknown:
                raise SystemExit(f"unknown targets: {sorted(unknown)} (--tls adds the +tls ones)")
            targets = [target for target in targets if target.name in args.targets]
        for rep in range(1, args.reps + 1):
            for pairs in args.pairs:
                for target in targets:
                    run = run_once(target, pairs, args, Path(log_dir))
                    runs.append(run)
                    print(
                        f"rep {rep}: {target.name:<17} {pairs:>5} pairs: {run.msgs_per_s:>8,.0f}"
                        f" msgs/s, server CPU {run.server_cpu_pct:3.0f}%,"
                        f" generator CPU {run.generator_cpu_pct:3.0f}%,"
                        f" others {run.others_cpu_pct:3.0f}%",
                        flush=True,
                    )
    print(f"\n{len(runs)} runs in {time.monotonic() - started:.0f} s\n")
    print("\n".join([*machine_facts(), "", *table(runs, targets, args)]))


if __name__ == "__main__":
    main()
