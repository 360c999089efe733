"""The benchmark, side by side with PeerJS: one command, one table.

    .venv/bin/python bench/run_bench.py [--quick] [--reps 3] [--json results.json]

Targets, started one at a time on 127.0.0.1 and pinned to core 0 (one server core):

- ``callbox``: ``python -m callbox serve`` (rate limits lifted: they would cap each client);
- ``peerjs``: the ``peer`` npm package (PeerJS's server), installed by this script into
  ``bench/.peerjs/`` from the npm registry on first use, run with node;
- ``bare``: bench/bare_relays.py on callbox's transport, the ceiling of our stack: it parses
  each message and forwards it, and does nothing else.

The load generator (bench/relay_load.py, raw WebSocket, separate processes) runs on core 1. Per
repetition, with the targets alternating so that drift hits them alike:

1. relay throughput with 100 and 1,000 active 1:1 calls, ~200 B (ICE candidate) then ~3 KB
   (SDP offer) messages, closed loop; and at 100 calls, relay latency at a fixed rate;
2. server memory per idle connected client: RSS after 1,000 and 5,000 clients, less the RSS
   after the first 50, per client (callbox clients have said `hello`, PeerJS ones got `OPEN`);
3. callbox alone (and ``--baseline``, another commit of it, for an A/B run): full call set-ups
   per second, and room broadcast fan-out.

``--webhooks`` adds ``callbox+hook`` and ``callbox+hook-down``: callbox with a webhook
(WEBHOOK_URL, every event type) POSTing to bench/webhook_sink.py (a receiver that answers 204 at
once, on the generator's core), and to a port where nothing listens (every POST refused and
retried until the queue is full). Relays send no webhook; call set-ups send seven events each.

``--tls`` adds ``callbox+tls`` and ``bare+tls``: the same servers serving ``wss://`` with a
certificate made for the run (trustme), the generator speaking TLS too; the table then has a
``TLS / plain`` column (callbox's), and every relay figure comes with the server's CPU time per
message, in which TLS's cost shows even when the generator, not the server, is the limit.

Each measured window also reports the server's CPU (from /proc), the generator's (its own
getrusage) and everyone else's on the two cores ("others", from /proc/stat): a window in which
others used more than CONTENDED_OTHERS_PCT of a core competed for the cores and is left out of
the medians (all windows are shown, marked, if none was clean). Every run is bounded in time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
from run_relay_bench import (
    BENCH,
    CONTENDED_OTHERS_PCT,
    GENERATOR_CORE,
    SERVER_CORE,
    cores_busy_seconds,
    cpu_seconds,
    free_port,
    generator_lines,
    machine_facts,
    stop,
    wait_listening,
)

PEERJS_VERSION = "1.0.2"
PEERJS_DIR = BENCH / ".peerjs"
PEERJS_BIN = PEERJS_DIR / "node_modules" / "peer" / "dist" / "bin" / "peerjs.js"
SMALL, LARGE = 200, 3000  # bytes per client message: an ICE candidate, an SDP offer
LATENCY_RATE = 5000  # messages a second, all clients together
IDLE_STEPS = (50, 1000, 5000)  # the first step is the baseline
IDLE_SETTLE_S = 1.0
SETUP_PAIRS = 100
ROOMS, ROOM_SIZE = 20, 10
RUN_TIMEOUT_S = 240.0  # one generator run, set-up and all phases


Cpu = tuple[float, float]
"""A window's server CPU and others' CPU, in % of one core."""


@dataclass(frozen=True)
class Target:
    name: str
    label: str
    protocol: str  # relay_load.py's
    command: Callable[[int], list[str]]
    env: dict[str, str] = field(default_factory=dict)
    generator_args: tuple[str, ...] = ()  # relay_load.py's, e.g. --tls CAFILE


def callbox_command(port: int) -> list[str]:
    return [sys.executable, "-m", "callbox", "serve", "--log-level", "warning", "--port", str(port)]


def peerjs_command(port: int) -> list[str]:
    return [
        "node", str(PEERJS_BIN), "--host", "127.0.0.1", "--port", str(port),
        # Its defaults would refuse the 5,001st client and drop clients silent for 60 s.
        "--concurrent_limit", "1000000", "--alive_timeout", "3600000",
    ]  # fmt: skip


def bare_command(port: int) -> list[str]:
    return [sys.executable, str(BENCH / "bare_relays.py"), "callbox-transport", "--port", str(port)]


def trio_websocket_command(port: int) -> list[str]:
    return [sys.executable, str(BENCH / "bare_relays.py"), "trio-websocket", "--port", str(port)]


UNLIMITED = {
    "MESSAGES_PER_SECOND": "1000000",
    "MESSAGE_BURST": "1000000",
    "BROADCASTS_PER_SECOND": "1000000",
}
TARGETS = {
    "callbox": Target("callbox", "callbox", "callbox", callbox_command, UNLIMITED),
    "peerjs": Target("peerjs", f"PeerJS {PEERJS_VERSION}", "peerjs", peerjs_command),
    "bare": Target("bare", "bare relay", "bare", bare_command),
    "trio-websocket": Target("trio-websocket", "trio-websocket", "bare", trio_websocket_command),
}


@dataclass
class Sample:
    """One measured figure of one run."""

    target: str
    figure: str  # e.g. "relay 100 calls 200 B"
    value: float
    server_cpu_pct: float = 0.0
    generator_cpu_pct: float = 0.0
    others_cpu_pct: float = 0.0
    clean: bool = True


@dataclass
class Bench:
    args: argparse.Namespace
    log_dir: Path
    samples: list[Sample] = field(default_factory=list)

    # -- one server, one generator -------------------------------------------------------------

    def run(
        self, target: Target, generator_args: list[str], on_result: Callable[..., None]
    ) -> None:
        port = free_port()
        log_path = self.log_dir / f"{target.name}-{port}.log"
        with log_path.open("wb") as log:
            server = subprocess.Popen(
                ["taskset", "-c", str(SERVER_CORE), *target.command(port)],
                env=os.environ | target.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                wait_listening(port, server)
                self._drive(target, port, server.pid, generator_args, on_result)
            except Exception as exc:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{target.name} {generator_args}: {exc}; log:\n{tail}") from exc
            finally:
                stop(server)

    def _drive(
        self,
        target: Target,
        port: int,
        pid: int,
        generator_args: list[str],
        on_result: Callable[..., None],
    ) -> None:
        command = generator_command(
            target.protocol, [port], self.args, [*target.generator_args, *generator_args]
        )

        def on_window(result: dict[str, Any], window: Window) -> None:
            server = window.pct("server")
            on_result(result, (server, window.others_pct(result["generator_cpu_pct"])))

        def on_idle_step(clients: int) -> None:
            time.sleep(IDLE_SETTLE_S)
            on_result({"clients": clients, "rss_kib": rss_kib(pid)}, (0.0, 0.0))

        drive(command, lambda: {"server": cpu_seconds(pid)}, on_window, on_idle_step)

    def add(
        self, target: Target, figure: str, value: float, result: dict[str, Any], cpu: Cpu
    ) -> Sample:
        server, others = cpu
        sample = Sample(
            target.name,
            figure,
            value,
            round(server, 1),
            result.get("generator_cpu_pct", 0.0),
            round(others, 1),
            others < CONTENDED_OTHERS_PCT,
        )
        self.samples.append(sample)
        if result.get("unexpected"):
            print(f"  unexpected frames: {result['unexpected']}: {result['unexpected_sample']}")
        print(
            f"  {target.name:<8} {figure:<34} {value:>10,.1f}   server {server:3.0f}%"
            f"  generator {sample.generator_cpu_pct:3.0f}%  others {others:3.0f}%"
            f"{'' if sample.clean else '  (contended)'}",
            flush=True,
        )
        return sample

    # -- the workloads ---------------------------------------------------------------------------

    def relay(self, target: Target, pairs: int) -> None:
        phases = [f"relay:{SMALL}", f"relay:{LARGE}"]
        if pairs == min(self.args.pairs):
            phases.append(f"latency:{SMALL}:{LATENCY_RATE}")
        names = {
            f"relay:{SMALL}": f"relay {pairs} calls {SMALL} B",
            f"relay:{LARGE}": f"relay {pairs} calls {LARGE} B",
        }

        def on_result(result: dict[str, Any], cpu: Cpu) -> None:
            phase = result["phase"]
            if phase.startswith("latency"):
                for name in ("p50", "p99"):
                    figure = f"latency {name} {pairs} calls {SMALL} B"
                    self.add(target, figure, result[f"{name}_us"], result, cpu)
            else:
                self.add(target, names[phase], result["per_s"], result, cpu)
                if result["per_s"]:
                    per_message = cpu[0] / 100 / result["per_s"] * 1e6
                    figure = f"{names[phase]} server CPU us/msg"
                    self.add(target, figure, per_message, result, cpu)

        args = ["--pairs", str(pairs), *(f"--phase={phase}" for phase in phases)]
        self.run(target, args, on_result)

    def idle(self, target: Target) -> None:
        steps: list[dict[str, Any]] = []
        self.run(
            target,
            ["--workload", "idle", "--steps", *map(str, self.args.idle_steps)],
            lambda result, cpu: steps.append(result),
        )
        base = steps[0]
        for step in steps[1:]:
            per_client = (step["rss_kib"] - base["rss_kib"]) / (step["clients"] - base["clients"])
            figure = f"memory KiB/idle client at {step['clients']}"
            self.add(target, figure, per_client, {}, (0.0, 0.0))

    def setups(self, target: Target) -> None:
        def on_result(result: dict[str, Any], cpu: Cpu) -> None:
            self.add(target, "call set-ups/s", result["per_s"], result, cpu)
            if result["per_s"]:
                cpu_ms = cpu[0] / 100 / result["per_s"] * 1000
                self.add(target, "call set-up server CPU ms", cpu_ms, result, cpu)

        args = ["--workload", "callers", "--pairs", str(SETUP_PAIRS), "--phase", "setups"]
        self.run(target, args, on_result)

    def fanout(self, target: Target) -> None:
        def on_result(result: dict[str, Any], cpu: Cpu) -> None:
            figure = f"fan-out deliveries/s (rooms of {ROOM_SIZE})"
            self.add(target, figure, result["per_s"], result, cpu)
            if result["per_s"]:
                per_delivery = cpu[0] / 100 / result["per_s"] * 1e6
                figure = "fan-out server CPU us/delivery"
                self.add(target, figure, per_delivery, result, cpu)

        args = [
            "--workload", "rooms", "--pairs", str(ROOMS), "--room-size", str(ROOM_SIZE),
            "--window", "4", "--phase", f"fanout:{SMALL}",
        ]  # fmt: skip
        self.run(target, args, on_result)


@dataclass(frozen=True)
class Window:
    """A measured window as the runner saw it: how long it was, the CPU time each measured
    process (by role) and the two cores used in it."""

    seconds: float
    cpu_s: dict[str, float]
    cores_s: float

    def pct(self, *roles: str) -> float:
        """CPU of these roles (all of them if none is named), % of one core."""
        return 100 * sum(self.cpu_s[role] for role in roles or self.cpu_s) / self.seconds

    def others_pct(self, generator_pct: float) -> float:
        """Everyone else's CPU on the two cores, % of one core (good to about +-10)."""
        return 100 * self.cores_s / self.seconds - self.pct() - generator_pct


def generator_command(
    protocol: str, ports: list[int], args: argparse.Namespace, extra: list[str], *, pin: bool = True
) -> list[str]:
    """bench/relay_load.py against `ports`, pinned to the generator's core unless not `pin`."""
    taskset = ["taskset", "-c", str(GENERATOR_CORE)] if pin else []
    return [
        *taskset, sys.executable, str(BENCH / "relay_load.py"), protocol,
        "--port", *map(str, ports), "--warmup", str(args.warmup), "--seconds", str(args.seconds),
        *extra,
    ]  # fmt: skip


def drive(
    command: list[str],
    cpu_now: Callable[[], dict[str, float]],
    on_result: Callable[[dict[str, Any], Window], None],
    on_idle_step: Callable[[int], None],
) -> None:
    """Runs the generator `command` to its end (at most RUN_TIMEOUT_S): `on_result` gets each
    phase's result with the CPU of its window (`cpu_now()`: CPU seconds by role, read at the
    window's edges), `on_idle_step` each idle step's client count, before the generator goes on.
    """
    deadline = time.monotonic() + RUN_TIMEOUT_S
    marks: dict[str, tuple[float, dict[str, float], float]] = {}
    with subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as generator:
        assert generator.stdout is not None and generator.stdin is not None
        try:
            for word, rest in generator_lines(generator, deadline):
                if word in ("window-start", "window-end"):
                    marks[word] = (time.monotonic(), cpu_now(), cores_busy_seconds())
                elif word == "result":
                    (t0, cpu0, cores0), (t1, cpu1, cores1) = (
                        marks["window-start"], marks["window-end"]
                    )  # fmt: skip
                    cpu = {role: cpu1[role] - cpu0[role] for role in cpu1}
                    on_result(orjson.loads(rest), Window(t1 - t0, cpu, cores1 - cores0))
                elif word == "idle-step":
                    on_idle_step(int(rest))
                    generator.stdin.write("\n")
                    generator.stdin.flush()
                elif word == "done":
                    break
        finally:
            if generator.poll() is None:
                generator.stdin.close()
                try:
                    generator.wait(15)
                except subprocess.TimeoutExpired:
                    generator.kill()
                    generator.wait()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def ensure_peerjs() -> str:
    """Install the PeerJS server from the npm registry into bench/.peerjs (once)."""
    if not PEERJS_BIN.exists():
        if shutil.which("npm") is None or shutil.which("node") is None:
            raise SystemExit("PeerJS needs node and npm on PATH")
        print(f"installing peer@{PEERJS_VERSION} from the npm registry into {PEERJS_DIR} ...")
        PEERJS_DIR.mkdir(exist_ok=True)
        subprocess.run(
            ["npm", "install", "--prefix", str(PEERJS_DIR), "--no-audit", "--no-fund",
             "--ignore-scripts", f"peer@{PEERJS_VERSION}"],
            check=True, timeout=300,
        )  # fmt: skip
    package = json.loads((PEERJS_DIR / "node_modules" / "peer" / "package.json").read_text())
    ws = json.loads((PEERJS_DIR / "node_modules" / "ws" / "package.json").read_text())
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True)
    return (
        f"PeerJS server: peer {package['version']} (ws {ws['version']}), node {node.stdout.strip()}"
    )


# ---------------------------------------------------------------------------------------------
# The table

# figure -> (how to compare, target ratio to PeerJS, target ratio to bare)
HIGHER, LOWER = "higher is better", "lower is better"


def figure_rows(args: argparse.Namespace) -> list[tuple[str, str, str | None, str | None]]:
    """(figure, direction, PeerJS target, bare target) in table order."""
    rows: list[tuple[str, str, str | None, str | None]] = []
    for size, peerjs_target in ((SMALL, ">= 0.6"), (LARGE, ">= 1.0")):
        for pairs in args.pairs:
            rows.append((f"relay {pairs} calls {size} B", HIGHER, peerjs_target, ">= 0.75"))
    for size in (SMALL, LARGE):
        for pairs in args.pairs:
            rows.append((f"relay {pairs} calls {size} B server CPU us/msg", LOWER, None, None))
    small = min(args.pairs)
    rows.append((f"latency p50 {small} calls {SMALL} B", LOWER, None, None))
    rows.append((f"latency p99 {small} calls {SMALL} B", LOWER, "<= 1.5", None))
    for clients in args.idle_steps[1:]:
        rows.append((f"memory KiB/idle client at {clients}", LOWER, "<= 1.0", None))
    rows.append(("call set-ups/s", HIGHER, None, None))
    rows.append(("call set-up server CPU ms", LOWER, None, None))
    rows.append((f"fan-out deliveries/s (rooms of {ROOM_SIZE})", HIGHER, None, None))
    rows.append(("fan-out server CPU us/delivery", LOWER, None, None))
    return rows


def summary(samples: list[Sample]) -> tuple[float, str, int, int] | None:
    """(median, "min-max", clean, all) over the clean samples, or all if none is clean."""
    if not samples:
        return None
    clean = [s for s in samples if s.clean]
    used = clean or samples
    values = [s.value for s in used]
    spread = f"{fmt(min(values))}-{fmt(max(values))}"
    return statistics.median(values), spread, len(clean), len(samples)


def fmt(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}"


def verdict(ratio: float | None, target: str | None) -> str:
    if target is None or ratio is None:
        return ""
    op, bound = target.split()
    met = ratio >= float(bound) if op == ">=" else ratio <= float(bound)
    return f"{target}: {'met' if met else 'NOT met'}"


def table(samples: list[Sample], args: argparse.Namespace) -> list[str]:
    targets = [t for t in args.targets]
    header = ["figure", *(TARGETS[t].label for t in targets)]
    with_callbox = "callbox" in targets  # the ratios are callbox's: without it, there are none
    has_peerjs = with_callbox and "peerjs" in targets
    has_bare = with_callbox and "bare" in targets
    if has_peerjs:
        header.append("callbox / PeerJS")
    if has_bare:
        header.append("callbox / bare")
    has_tls = with_callbox and "callbox+tls" in targets
    if has_tls:
        header.append("TLS / plain")
    if with_callbox:
        header.append("target (callbox's ratio)")
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 2) + "|---|"]
    cpu_lines = [
        "| figure | target | server CPU % | generator CPU % | others CPU % | clean runs |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for figure, _direction, peerjs_target, bare_target in figure_rows(args):
        medians: dict[str, float] = {}
        cells = []
        for name in targets:
            these = [s for s in samples if s.target == name and s.figure == figure]
            stats = summary(these)
            if stats is None:
                cells.append("-")
                continue
            median, spread, clean, total = stats
            medians[name] = median
            note = "" if clean else " (contended)"
            cells.append(f"{fmt(median)} ({spread}){note}")
            used = [s for s in these if s.clean] or these
            if any(s.server_cpu_pct for s in used):
                cpu_lines.append(
                    f"| {figure} | {TARGETS[name].label}"
                    f" | {statistics.median(s.server_cpu_pct for s in used):.0f}"
                    f" | {statistics.median(s.generator_cpu_pct for s in used):.0f}"
                    f" | {statistics.median(s.others_cpu_pct for s in used):.0f}"
                    f" | {clean}/{total} |"
                )
        ours = medians.get("callbox")
        verdicts = []
        for present, other, target in ((has_peerjs, "peerjs", peerjs_target),
                                       (has_bare, "bare", bare_target)):  # fmt: skip
            if not present:
                continue
            ratio = ours / medians[other] if ours is not None and medians.get(other) else None
            cells.append("-" if ratio is None else f"{ratio:.2f}")
            if target is not None:
                label = "PeerJS" if other == "peerjs" else "bare"
                verdicts.append(f"vs {label} {verdict(ratio, target)}")
        if has_tls:
            tls = medians.get("callbox+tls")
            cells.append(f"{tls / ours:.2f}" if tls is not None and ours else "-")
        if with_callbox:
            cells.append("; ".join(verdicts))
        lines.append(f"| {figure} | " + " | ".join(cells) + " |")
    return [*lines, "", *cpu_lines]


# ---------------------------------------------------------------------------------------------


def add_tls(directory: Path, targets: list[str]) -> None:
    """`callbox+tls` and `bare+tls` (see --tls), with a certificate written in `directory`
    (trustme, from the test extra: the benchmark runs in the test environment)."""
    import trustme  # noqa: PLC0415

    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    cert, key, ca_file = directory / "cert.pem", directory / "key.pem", directory / "ca.pem"
    leaf.private_key_and_cert_chain_pem.write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    trust = ("--tls", str(ca_file))
    tls_env = UNLIMITED | {"TLS_CERT_FILE": str(cert), "TLS_KEY_FILE": str(key)}

    def bare_tls_command(port: int) -> list[str]:
        return [*bare_command(port), "--tls", str(cert), str(key)]

    TARGETS["callbox+tls"] = Target(
        "callbox+tls", "callbox, TLS", "callbox", callbox_command, tls_env, trust
    )
    TARGETS["bare+tls"] = Target("bare+tls", "bare relay, TLS", "bare", bare_tls_command, {}, trust)
    targets += [name for name in ("callbox+tls", "bare+tls") if name not in targets]


WEBHOOK_SECRET = "whsec_Y2FsbGJveCBiZW5jaDogd2ViaG9vayBzaWduaW5nIGtleQ=="


def add_webhooks(targets: list[str]) -> subprocess.Popen[bytes]:
    """`callbox+hook` and `callbox+hook-down` (see --webhooks); returns the sink's process,
    which the caller stops."""
    port, down = free_port(), free_port()
    sink = subprocess.Popen(
        ["taskset", "-c", str(GENERATOR_CORE), sys.executable, str(BENCH / "webhook_sink.py"),
         "--port", str(port)],
    )  # fmt: skip
    wait_listening(port, sink)
    for name, url, label in (
        ("callbox+hook", f"http://127.0.0.1:{port}/hooks", "callbox, webhook up"),
        ("callbox+hook-down", f"http://127.0.0.1:{down}/hooks", "callbox, webhook down"),
    ):
        env = UNLIMITED | {"WEBHOOK_URL": url, "WEBHOOK_SECRET": WEBHOOK_SECRET}
        TARGETS[name] = Target(name, label, "callbox", callbox_command, env)
        if name not in targets:
            targets.append(name)
    return sink


def add_baseline(src: Path, targets: list[str]) -> None:
    """callbox imported from `src`, as target 'baseline' (see --baseline)."""
    env = UNLIMITED | {"PYTHONPATH": str(src.resolve())}
    TARGETS["baseline"] = Target("baseline", f"callbox at {src}", "callbox", callbox_command, env)
    targets.append("baseline")


def parse_arguments() -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """The parser (for its errors) and the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 repetition, short windows")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--pairs", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--idle-steps", type=int, nargs="+", default=list(IDLE_STEPS))
    parser.add_argument(
        "--targets",
        nargs="+",
        choices=[*sorted(TARGETS), "callbox+tls", "bare+tls", "callbox+hook", "callbox+hook-down"],
        default=["callbox", "peerjs", "bare"],
        help="callbox+tls and bare+tls need --tls",
    )
    parser.add_argument(
        "--tls", action="store_true", help="also run callbox and the bare relay over TLS"
    )
    parser.add_argument(
        "--webhooks",
        action="store_true",
        help="also run callbox with a webhook receiver up, and with one down",
    )
    parser.add_argument(
        "--only", nargs="+", choices=["relay", "idle", "setups", "fanout"],
        default=["relay", "idle", "setups", "fanout"],
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write every sample here")
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="SRC",
        help="also run callbox imported from SRC (a src/ directory, e.g. of a `git worktree` of"
        " the commit before a change), as target 'baseline', for an A/B comparison in one run",
    )
    return parser, parser.parse_args()


def main() -> None:
    parser, args = parse_arguments()
    certificates = tempfile.TemporaryDirectory(prefix="callbox-bench-tls-")
    if args.tls:
        add_tls(Path(certificates.name), args.targets)
    elif {"callbox+tls", "bare+tls"} & set(args.targets):
        parser.error("the +tls targets need --tls")
    if args.baseline is not None:
        add_baseline(args.baseline, args.targets)
    sink = add_webhooks(args.targets) if args.webhooks else None
    if args.quick:
        args.reps, args.warmup, args.seconds = 1, 0.5, 2.0

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * max(args.pairs) + max(args.idle_steps) + 512
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SystemExit(f"RLIMIT_NOFILE hard limit {hard} < {needed} needed")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))

    facts = machine_facts()
    if "peerjs" in args.targets:
        facts.append(ensure_peerjs())
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="callbox-bench-") as log_dir:
        bench = Bench(args, Path(log_dir))
        for rep in range(1, args.reps + 1):
            print(f"repetition {rep}/{args.reps}", flush=True)
            targets = [TARGETS[name] for name in args.targets]
            if rep % 2 == 0:
                targets.reverse()  # alternate the order, so no target always goes first
            if "relay" in args.only:
                for pairs in args.pairs:
                    for target in targets:
                        bench.relay(target, pairs)
            if "idle" in args.only:
                for target in targets:
                    bench.idle(target)
            for target in targets:
                if target.protocol != "callbox":
                    continue
                if "setups" in args.only:
                    bench.setups(target)
                if "fanout" in args.only:
                    bench.fanout(target)
    elapsed = time.monotonic() - started
    print(f"\n{len(bench.samples)} samples in {elapsed:.0f} s\n")
    print("\n".join(facts))
    print(
        f"\n{args.reps} repetition(s); {args.warmup:g} s warm-up + {args.seconds:g} s measured"
        f" per figure; server on core {SERVER_CORE}, generator on core {GENERATOR_CORE};"
        f" median (min-max) over clean runs (others < {CONTENDED_OTHERS_PCT:g}% of a core);"
        f" latency at {LATENCY_RATE:,} msgs/s in all, in us; relay in messages/s.\n"
    )
    print("\n".join(table(bench.samples, args)))
    if args.json:
        args.json.write_text(json.dumps([asdict(s) for s in bench.samples], indent=1))
    if sink is not None:
        stop(sink)
    certificates.cleanup()


if __name__ == "__main__":
    main()
