"""The cluster measured beside PeerJS and the single process (issue 13): one command, one table.

    .venv/bin/python bench/cluster_bench.py --json cluster.json     # full: ~17 minutes
    .venv/bin/python bench/cluster_bench.py --quick                 # 2-3.5 minutes

Targets, side by side in one run:

- ``peerjs`` and ``single``: PeerJS's server and ``callbox serve`` without Redis, exactly as
  bench/run_bench.py runs them (server pinned to core 0, the generator to core 1);
- ``cluster``, "2 workers": a ``redis-server`` of the run's own (Debian's; 127.0.0.1, a free port,
  a private directory, ``--save ''``, ``--appendonly no``, ``noeviction``: bench/chaos.py's) and,
  until ``callbox serve --workers`` exists, two ``callbox serve --redis URL`` processes on two
  ports; the generator puts half the calls' parties on different nodes (cross-node) and half
  with both parties on one node (same-node). ``--workers real`` (or ``auto``, the default,
  when ``callbox serve --help`` offers ``--workers``) runs ``callbox serve --workers 2 --redis
  URL`` on one port instead: the kernel then picks each client's worker, so same-node and
  cross-node cannot be told apart and only the mixed figures are measured. Nothing of the
  cluster is pinned: two nodes, Redis and the generator share the two cores, as they would
  share a deployment's machine. A fresh Redis and fresh nodes serve each generator run.

Per repetition (targets alternating in order, as in run_bench):

1. relay throughput, closed loop, 200 B and 3 KB messages, 100 and 1,000 calls; a total of
   about IN_FLIGHT messages in flight (16 per client would queue 32,000 events on the nodes at
   1,000 calls: ~20 s at today's cluster rate, past the nodes' queue bound);
2. CPU per relayed frame: for the single process, the server's; for the cluster, Python (the
   nodes', all their processes, from /proc/PID/stat) and Redis (redis-server's, /proc) apart,
   in one window with every call same-node, one with every call cross-node, and the mixed one;
3. relay latency at half load: at half the cluster's measured 100-call 200 B throughput (this
   repetition's), open loop, for the cluster and the single process at the same rate; then
   at LOW_LATENCY_RATE, the latency of a cluster with CPU to spare even on a crowded machine;
4. call set-ups per second (initiate, ring, answer, offer/answer, 8 candidates, hang-up),
   SETUP_PAIRS pairs calling back to back, cluster and single process;
5. Redis memory (``INFO memory`` ``used_memory``): per idle session (``hello`` only) after
   MEMORY_SESSIONS sessions, and per active one (MEMORY_SESSIONS / 2 calls), once set up and
   again after a relay window, with the frames the outboxes then hold and the batch-outcome
   (``idem:``) keys the window's commits left, each counted and sized apart.

Then a projection for 4, 8 and 16 cores with one Redis primary (`project`), and where Redis
becomes the limit. Every window also records everyone else's CPU on the two cores ("others",
as run_bench does); a window where others used more than CONTENDED_OTHERS_PCT of a core is
marked contended and left out of the medians while a clean one exists. Each generator run is
bounded (run_bench's RUN_TIMEOUT_S); every process started is stopped by its PID.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from chaos import Process, redis_cli, start_node, start_redis, used_memory
from run_bench import (
    LARGE,
    SMALL,
    TARGETS,
    UNLIMITED,
    Bench,
    Cpu,
    Sample,
    Target,
    Window,
    drive,
    ensure_peerjs,
    fmt,
    generator_command,
)
from run_relay_bench import (
    CONTENDED_OTHERS_PCT,
    HOST,
    cpu_seconds,
    machine_facts,
    wait_listening,
)

IN_FLIGHT = 800
"""Messages in flight in all, closed loop: at least one per client (so 2,000 at 1,000 calls)."""
CLUSTER_DRAIN_S = 30.0
"""How long a cluster run's phase waits for what is in flight at its end (relay_load.py's
--drain): IN_FLIGHT messages at a few hundred a second, contended, take several seconds, and
a leftover would be the next phase's unexpected frame."""
SETUP_PAIRS = 20
"""Pairs running calls back to back in the set-up phase, for both targets. run_bench's 100
would keep a call in set-up ~8 s at the cluster's ~12 calls/s, longer than the window."""
NODE_ENV = UNLIMITED | {"RING_TIMEOUT_MS": "60000", "HEARTBEAT_MS": "600000"}
"""Rate limits lifted as for the single process; a ring that outlasts chaos.py's 4 s timeout
on a saturated cluster is slow, not unanswered; and the generator's set-up clients answer
pings only while they are being read, which a cluster's slow set-up of 1,000 calls leaves
longer than twice the default 15 s heartbeat (closed: "heartbeat timeout")."""
MEMORY_SESSIONS = 1000
IDLE_BASE = 50
"""Idle sessions connected before the first memory reading (run_bench's baseline step)."""
PROJECTED_CORES = (2, 4, 8, 16)
PARTS = ("relay", "latency", "setups", "memory")
ROOT_SHARE = 0.6
"""`profile_summary`: frames in more than this share of a node's samples are its roots."""
LOW_LATENCY_RATE = 100
"""msgs/s of the second latency window (`ClusterBench.latency`)."""
WORKERS = 2
PLACEMENTS = ("half", "same", "cross")
"""The cluster's relay runs: half the calls across nodes (the throughput), then all within one
node, then all across two (the CPU per frame of each kind)."""
MEMORY_FIGURES = [
    f"Redis bytes/idle session at {MEMORY_SESSIONS}",
    f"Redis bytes/session in a call at {MEMORY_SESSIONS}, after relaying",
    "- of which outside outboxes and batch outcomes",
    "- frames held per session's outbox",
    f"- bytes per frame held ({SMALL} B sent)",
    "- batch outcomes (idem:) held",
    "- bytes per batch outcome",
]
ACTIVE_READINGS = ("after", "outside", "frames", "frame_bytes", "idem", "idem_bytes")
"""`ClusterBench.memory`'s readings of an active cluster, in MEMORY_FIGURES[1:]'s order."""
OUTBOXES = """
local prefix = ARGV[1]
local idem, idem_bytes, frames, frame_bytes = 0, 0, 0, 0
local cursor = '0'
repeat
  local page = redis.call('SCAN', cursor, 'MATCH', prefix .. '*', 'COUNT', 1000)
  cursor = page[1]
  for _, key in ipairs(page[2]) do
    local kind = string.sub(key, #prefix + 1, #prefix + 2)
    if kind == 'id' then
      idem = idem + 1
      idem_bytes = idem_bytes + redis.call('MEMORY', 'USAGE', key)
    elseif kind == 'o:' then
      frames = frames + redis.call('LLEN', key)
      frame_bytes = frame_bytes + redis.call('MEMORY', 'USAGE', key)
    end
  end
until cursor == '0'
return {idem, idem_bytes, frames, frame_bytes}
"""
"""The batch outcomes (``idem:``) and outboxes' frames (``o:``) held: counts and bytes
(``MEMORY USAGE``), one script so one consistent picture."""


@dataclass
class ClusterSample(Sample):
    """A sample of the cluster: `server_cpu_pct` is its Python (every node), `redis_cpu_pct`
    Redis's."""

    redis_cpu_pct: float = 0.0


# ---------------------------------------------------------------------------------------------
# The cluster's processes


def process_tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and of all its live descendants (a worker pool's parent and its
    workers), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            total += cpu_seconds(current)
        except OSError:
            continue
        todo += children.get(current, [])
    return total


def has_workers_option() -> bool:
    """Whether this callbox's `serve` offers `--workers` (issue 13, another branch for now)."""
    help_text = subprocess.run(
        [sys.executable, "-m", "callbox", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return "--workers" in help_text


@dataclass
class Cluster:
    """A running cluster: its Redis, its node processes (two nodes, or one worker pool's
    parent), and the ports clients connect to."""

    redis: Process
    nodes: list[Process]

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    def cpu_now(self) -> dict[str, float]:
        """CPU seconds so far: "python" (every node process and its children), "redis"."""
        python = sum(process_tree_cpu_seconds(node.pid) for node in self.nodes)
        return {"python": python, "redis": cpu_seconds(self.redis.pid)}

    def used_memory(self) -> int:
        return used_memory(self.redis)

    def held(self) -> dict[str, int]:
        """Batch outcomes and outbox frames held in Redis (`OUTBOXES`)."""
        idem, idem_bytes, frames, frame_bytes = map(
            int, redis_cli(self.redis, "EVAL", OUTBOXES, "0", "cb:")
        )
        return {
            "idem": idem,
            "idem_bytes": idem_bytes,
            "frames": frames,
            "frame_bytes": frame_bytes,
        }


@contextmanager
def running_cluster(directory: Path, real_workers: bool) -> Iterator[Cluster]:
    """Redis and the nodes, stopped by their PIDs (nodes first) whatever happens."""
    processes: list[Process] = []
    try:
        redis = start_redis(directory)
        processes.append(redis)
        url = f"redis://{HOST}:{redis.port}/0"
        options = ["--log-level", "warning"]
        if real_workers:
            options += ["--workers", str(WORKERS)]
        count = 1 if real_workers else WORKERS
        nodes = [start_node(directory, n, url, env=NODE_ENV, options=options) for n in range(count)]
        processes += nodes
        for node in nodes:
            wait_listening(node.port, node.popen)
        yield Cluster(redis, nodes)
    except Exception as exc:
        logs = "".join(
            f"\n--- {p.name}:\n{p.log.read_text(errors='replace')[-1500:]}"
            for p in processes
            if p.log.exists()
        )
        raise RuntimeError(f"cluster run failed: {exc}{logs}") from exc
    finally:
        for process in reversed(processes):
            process.stop()


# ---------------------------------------------------------------------------------------------
# The runs


class ClusterBench(Bench):
    """run_bench's `Bench` (its runs of a single server, its samples) and the cluster's runs."""

    def __init__(self, args: argparse.Namespace, log_dir: Path, real_workers: bool) -> None:
        super().__init__(args, log_dir)
        self.real_workers = real_workers
        self.before = 0
        """Redis's used_memory before the current cluster run's first client."""
        self.failures: list[str] = []

    def attempt(self, run: Callable[[], None]) -> None:
        """Runs one part; a failed one (a generator or server that died, a timeout) is told
        and noted, and the benchmark goes on with the next: its figures are just missing."""
        try:
            run()
        except RuntimeError as exc:
            print(f"  FAILED: {exc}", flush=True)
            self.failures.append(str(exc).splitlines()[0])

    def run_cluster(
        self,
        placement: str,
        generator_args: list[str],
        on_result: Callable[[Cluster, dict[str, Any], Window], None],
        on_idle_step: Callable[[Cluster, int], None] | None = None,
        profile_as: str = "",
    ) -> Cluster:
        """A fresh cluster, the generator against it; returns it (stopped) for its readings.
        With --profile and a `profile_as` name, py-spy samples every node through the first
        measured window (`Profiler`)."""
        with (
            tempfile.TemporaryDirectory(prefix="callbox-cluster-", dir=self.log_dir) as directory,
            running_cluster(Path(directory), self.real_workers) as cluster,
        ):
            command = generator_command(
                "callbox",
                cluster.ports,
                self.args,
                ["--placement", placement, "--drain", str(CLUSTER_DRAIN_S), *generator_args],
                pin=False,
            )
            self.before = cluster.used_memory()
            profiler = None
            if self.args.profile and profile_as:
                profiler = Profiler(cluster, self.args.profile / profile_as, self.args.seconds)
            drive(
                command,
                profiler.cpu_now if profiler else cluster.cpu_now,
                lambda result, window: on_result(cluster, result, window),
                lambda clients: on_idle_step(cluster, clients) if on_idle_step else None,
            )
            if profiler:
                profiler.finish()
        return cluster

    def add_cluster(
        self, name: str, figure: str, value: float, result: dict[str, Any], window: Window
    ) -> None:
        generator = result.get("generator_cpu_pct", 0.0)
        others = window.others_pct(generator)
        sample = ClusterSample(
            name,
            figure,
            value,
            round(window.pct("python"), 1),
            generator,
            round(others, 1),
            others < CONTENDED_OTHERS_PCT,
            round(window.pct("redis"), 1),
        )
        self.samples.append(sample)
        if result.get("unexpected"):
            print(f"  unexpected frames: {result['unexpected']}: {result['unexpected_sample']}")
        print(
            f"  {name:<14} {figure:<40} {value:>10,.1f}   python {sample.server_cpu_pct:3.0f}%"
            f"  redis {sample.redis_cpu_pct:3.0f}%  generator {generator:3.0f}%"
            f"  others {others:3.0f}%{'' if sample.clean else '  (contended)'}",
            flush=True,
        )

    # -- relay ----------------------------------------------------------------------------------

    def relay_single(self, target: Target, pairs: int) -> None:
        def on_result(result: dict[str, Any], cpu: Cpu) -> None:
            figure = f"relay {pairs} calls {result['phase'].split(':')[1]} B"
            self.add(target, figure, result["per_s"], result, cpu)
            if result["per_s"] and target.protocol == "callbox":
                per_frame = cpu[0] / 100 / result["per_s"] * 1e6
                self.add(target, f"{figure} Python CPU us/frame", per_frame, result, cpu)

        self.run(target, relay_args(pairs), on_result)

    def relay_cluster(self, placement: str, pairs: int) -> None:
        name = cluster_name(placement)

        def on_result(_cluster: Cluster, result: dict[str, Any], window: Window) -> None:
            figure = f"relay {pairs} calls {result['phase'].split(':')[1]} B"
            self.add_cluster(name, figure, result["per_s"], result, window)
            if result["per_s"]:
                for role, label in (("python", "Python"), ("redis", "Redis")):
                    per_frame = window.cpu_s[role] / window.seconds / result["per_s"] * 1e6
                    row = f"{figure} {label} CPU us/frame"
                    self.add_cluster(name, row, per_frame, result, window)

        self.run_cluster(placement, relay_args(pairs), on_result, profile_as=f"{name}-{pairs}")

    # -- latency at half load -------------------------------------------------------------------

    def latency(self, rate: int) -> None:
        """At `rate` (half load), then at LOW_LATENCY_RATE if lower: on a machine whose other
        work leaves the cluster less than twice `rate`, the first measures a growing queue,
        and the second still shows what a relay's round trips through Redis cost."""
        rates = {f"latency:{SMALL}:{rate}": "at half load"}
        if rate > LOW_LATENCY_RATE:
            rates[f"latency:{SMALL}:{LOW_LATENCY_RATE}"] = f"at {LOW_LATENCY_RATE} msgs/s"
        args = ["--pairs", str(min(self.args.pairs)), *(f"--phase={phase}" for phase in rates)]

        def on_single(result: dict[str, Any], cpu: Cpu) -> None:
            label = rates[result["phase"]]
            for q in ("p50", "p99"):
                figure = f"latency {q} {label}"
                self.add(TARGETS["callbox"], figure, result[f"{q}_us"], result, cpu)
            if label == "at half load":
                self.add(TARGETS["callbox"], "latency rate msgs/s", rate, result, cpu)

        def on_cluster(_cluster: Cluster, result: dict[str, Any], window: Window) -> None:
            label = rates[result["phase"]]
            for q in ("p50", "p99"):
                figure = f"latency {q} {label}"
                self.add_cluster("cluster", figure, result[f"{q}_us"], result, window)
            if label == "at half load":
                self.add_cluster("cluster", "latency rate msgs/s", rate, result, window)

        self.run(TARGETS["callbox"], args, on_single)
        self.run_cluster("half", args, on_cluster)

    # -- call set-ups ---------------------------------------------------------------------------

    def setups_both(self) -> None:
        args = ["--workload", "callers", "--pairs", str(SETUP_PAIRS), "--phase", "setups"]

        def on_single(result: dict[str, Any], cpu: Cpu) -> None:
            self.add(TARGETS["callbox"], "call set-ups/s", result["per_s"], result, cpu)
            if result["per_s"]:
                per_call = cpu[0] / 100 / result["per_s"] * 1000
                self.add(TARGETS["callbox"], "call set-up Python CPU ms", per_call, result, cpu)

        def on_cluster(_cluster: Cluster, result: dict[str, Any], window: Window) -> None:
            self.add_cluster("cluster", "call set-ups/s", result["per_s"], result, window)
            if result["per_s"]:
                for role, label in (("python", "Python"), ("redis", "Redis")):
                    per_call = window.cpu_s[role] / window.seconds / result["per_s"] * 1000
                    figure = f"call set-up {label} CPU ms"
                    self.add_cluster("cluster", figure, per_call, result, window)

        self.run(TARGETS["callbox"], args, on_single)
        self.run_cluster("half", args, on_cluster)

    # -- Redis memory ---------------------------------------------------------------------------

    def memory(self, rate: int) -> None:
        """Per idle session, then per session of MEMORY_SESSIONS / 2 calls set up, and after a
        relay window at `rate` (what the outboxes and the batch outcomes then hold apart)."""
        readings: dict[int, int] = {}

        def on_idle_step(cluster: Cluster, clients: int) -> None:
            readings[clients] = cluster.used_memory()

        steps = [IDLE_BASE, MEMORY_SESSIONS]
        args = ["--workload", "idle", "--steps", *map(str, steps)]
        self.run_cluster("half", args, lambda *_: None, on_idle_step)
        per_idle = (readings[MEMORY_SESSIONS] - readings[IDLE_BASE]) / (MEMORY_SESSIONS - IDLE_BASE)
        self.add_memory(MEMORY_FIGURES[0], per_idle)

        sessions = MEMORY_SESSIONS
        in_call: dict[str, float] = {}

        def on_relay(cluster: Cluster, result: dict[str, Any], window: Window) -> None:
            held = cluster.held()
            used = cluster.used_memory()
            in_call["after"] = (used - self.before) / sessions
            in_call["outside"] = used - held["idem_bytes"] - held["frame_bytes"] - self.before
            in_call["outside"] /= sessions
            in_call["frames"] = held["frames"] / sessions
            in_call["frame_bytes"] = held["frame_bytes"] / max(1, held["frames"])
            in_call["idem"] = held["idem"]
            in_call["idem_bytes"] = held["idem_bytes"] / max(1, held["idem"])
            in_call["relayed"] = result["received"]

        phase = f"latency:{SMALL}:{rate}"
        args = ["--pairs", str(sessions // 2), "--phase", phase]
        self.run_cluster("half", args, on_relay)
        for figure, key in zip(MEMORY_FIGURES[1:], ACTIVE_READINGS, strict=True):
            self.add_memory(figure, in_call[key])

    def add_memory(self, figure: str, value: float) -> None:
        self.samples.append(ClusterSample("cluster", figure, value))
        print(f"  {'cluster':<14} {figure:<52} {value:>10,.1f}", flush=True)


class Profiler:
    """py-spy on each node process (and its children: a worker pool) through one measured
    window, started at the window's start: raw collapsed stacks in `{base}-node{n}.txt`.
    Its own CPU counts as others', so a profiled run's figures are not the measurement's."""

    def __init__(self, cluster: Cluster, base: Path, seconds: float) -> None:
        self.cluster, self.base, self.seconds = cluster, base, seconds
        self.spies: list[subprocess.Popen[bytes]] = []
        self.outputs: list[Path] = []

    def cpu_now(self) -> dict[str, float]:
        """`Cluster.cpu_now`, starting py-spy at its first call (the first window's start)."""
        if not self.spies:
            self.base.parent.mkdir(parents=True, exist_ok=True)
            for n, node in enumerate(self.cluster.nodes):
                output = self.base.with_name(f"{self.base.name}-node{n}.txt")
                self.spies.append(subprocess.Popen(
                    [py_spy(), "record", "--pid", str(node.pid), "--subprocesses",
                     "--duration", str(round(self.seconds)), "--rate", "200", "--nonblocking",
                     "--format", "raw", "--output", str(output)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                ))  # fmt: skip
                self.outputs.append(output)
        return self.cluster.cpu_now()

    def finish(self) -> None:
        """Waits for each py-spy (bounded), stops it by PID if need be, prints a summary."""
        for spy in self.spies:
            try:
                spy.wait(self.seconds + 15)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()
        for output in self.outputs:
            if output.exists():
                print(f"  profile {output}:")
                print("\n".join(f"    {line}" for line in profile_summary(output)), flush=True)


def py_spy() -> str:
    """py-spy's path: on PATH, or beside this Python (a venv's bin/, not on PATH)."""
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if found is None:
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    return found


def profile_summary(path: Path, top: int = 15) -> list[str]:
    """What py-spy's raw output (collapsed stacks, "a;b;c count") says: the functions with the
    most samples of their own, and those with the largest inclusive share (each counted once
    per stack) below the run loop (frames in more than ROOT_SHARE of the samples are the
    process's start and trio's loop: in everything, so telling nothing)."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [frame.split(" (")[0] for frame in stack.split(";")[1:]]  # [0]: the process
        if not frames:
            continue
        samples = int(count)
        total += samples
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + samples
        own[frames[-1]] = own.get(frames[-1], 0) + samples
    if not total:
        return ["no samples"]
    below = {name: n for name, n in inclusive.items() if n <= ROOT_SHARE * total}

    def ranked(counts: dict[str, int]) -> str:
        best = sorted(counts.items(), key=lambda item: -item[1])[:top]
        return ", ".join(f"{name} {100 * n / total:.0f}%" for name, n in best)

    return [f"{total:,} samples. Self: {ranked(own)}", f"Inclusive: {ranked(below)}"]


def relay_args(pairs: int) -> list[str]:
    window = max(1, IN_FLIGHT // (2 * pairs))
    return [
        "--pairs", str(pairs), "--window", str(window),
        f"--phase=relay:{SMALL}", f"--phase=relay:{LARGE}",
    ]  # fmt: skip


def cluster_name(placement: str) -> str:
    return "cluster" if placement == "half" else f"cluster {placement}"


# ---------------------------------------------------------------------------------------------
# The projection


@dataclass(frozen=True)
class Projection:
    cores: int
    msgs_per_s: float
    vs_single: float
    limit: str


def project(python_us: float, redis_us: float, single_us: float, cores: int) -> Projection:
    """Relayed frames per second of a cluster on `cores` cores with one Redis primary.

    With p = the nodes' Python CPU per relayed frame (both ends, all nodes), r = Redis's CPU per
    relayed frame and C cores shared by the nodes and Redis (clients elsewhere):

        T(C) = min(C / (p + r), 1 / r)

    The first term is every core busy (nodes and Redis); the second is Redis's single thread
    saturated: Redis runs its commands on one core, so no number of nodes relays more than
    1 / r frames a second. Redis becomes the limit from C* = (p + r) / r = 1 + p / r cores on.
    The single process (s = its CPU per frame, on one core) relays 1 / s: the projection's
    ratio to it is T(C) * s. It assumes CPU per frame does not grow with the number of nodes
    (a commit touches no more keys) and that the OS, the network and memory bandwidth are free.
    """
    per_core = 1e6 / (python_us + redis_us)
    redis_bound = 1e6 / redis_us
    msgs = min(cores * per_core, redis_bound)
    limit = "Redis (one core)" if cores * per_core >= redis_bound else "all cores"
    return Projection(cores, msgs, msgs * single_us / 1e6, limit)


def redis_limit_cores(python_us: float, redis_us: float) -> float:
    """C* of `project`: the core count from which Redis's one thread is the limit."""
    return 1 + python_us / redis_us


# ---------------------------------------------------------------------------------------------
# The table


def median_of(samples: list[Sample], target: str, figure: str) -> float | None:
    """Median over the clean samples, over all of them if none is clean."""
    these = [s for s in samples if s.target == target and s.figure == figure]
    used = [s for s in these if s.clean] or these
    return statistics.median(s.value for s in used) if used else None


def cell(samples: list[Sample], target: str, figure: str) -> str:
    these = [s for s in samples if s.target == target and s.figure == figure]
    if not these:
        return "-"
    clean = [s for s in these if s.clean]
    used = clean or these
    values = [s.value for s in used]
    spread = "" if len(values) == 1 else f" ({fmt(min(values))}-{fmt(max(values))})"
    note = "" if clean else " (contended)"
    return f"{fmt(statistics.median(values))}{spread}{note}"


def table(samples: list[Sample], args: argparse.Namespace) -> list[str]:
    """The figures' table, the CPU per window table, the projection, the targets."""
    columns = ["peerjs", "callbox", "cluster", "cluster same", "cluster cross"]
    labels = ["PeerJS", "single process", "cluster (half cross-node)", "cluster, all same-node",
              "cluster, all cross-node"]  # fmt: skip
    lines = [
        "| figure | " + " | ".join(labels) + " | cluster / single |",
        "|---" + "|---:" * (len(columns) + 1) + "|",
    ]
    figures = []
    for size in (SMALL, LARGE):
        for pairs in args.pairs:
            relay = f"relay {pairs} calls {size} B"
            figures += [relay, f"{relay} Python CPU us/frame", f"{relay} Redis CPU us/frame"]
    figures += [
        "latency rate msgs/s", "latency p50 at half load", "latency p99 at half load",
        f"latency p50 at {LOW_LATENCY_RATE} msgs/s", f"latency p99 at {LOW_LATENCY_RATE} msgs/s",
        "call set-ups/s", "call set-up Python CPU ms", "call set-up Redis CPU ms",
    ]  # fmt: skip
    figures += MEMORY_FIGURES
    for figure in figures:
        cells = [cell(samples, target, figure) for target in columns]
        if all(c == "-" for c in cells):
            continue
        single, cluster = (
            median_of(samples, "callbox", figure),
            median_of(samples, "cluster", figure),
        )
        ratio = f"{cluster / single:.2f}" if single and cluster is not None else ""
        lines.append(f"| {figure} | " + " | ".join(cells) + f" | {ratio} |")

    cpu_lines = [
        "| figure | target | Python CPU % | Redis CPU % | generator CPU % | others CPU % | clean |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for figure in figures:
        if "us/frame" in figure or " ms" in figure or "Redis bytes" in figure:
            continue
        for target in columns:
            these = [s for s in samples if s.target == target and s.figure == figure]
            used = [s for s in these if s.clean] or these
            if not used or not any(s.server_cpu_pct for s in used):
                continue
            redis = statistics.median(getattr(s, "redis_cpu_pct", 0.0) for s in used)
            cpu_lines.append(
                f"| {figure} | {target} | {statistics.median(s.server_cpu_pct for s in used):.0f}"
                f" | {redis:.0f} | {statistics.median(s.generator_cpu_pct for s in used):.0f}"
                f" | {statistics.median(s.others_cpu_pct for s in used):.0f}"
                f" | {sum(s.clean for s in these)}/{len(these)} |"
            )
    return [
        *lines,
        "",
        *cpu_lines,
        "",
        *projection_lines(samples, args),
        "",
        *targets(samples, args),
    ]


def per_frame(
    samples: list[Sample], target: str, role: str, args: argparse.Namespace
) -> float | None:
    figure = f"relay {min(args.pairs)} calls {SMALL} B {role} CPU us/frame"
    return median_of(samples, target, figure)


def projection_lines(samples: list[Sample], args: argparse.Namespace) -> list[str]:
    python, redis = (
        per_frame(samples, "cluster", "Python", args),
        per_frame(samples, "cluster", "Redis", args),
    )
    single = per_frame(samples, "callbox", "Python", args)
    if python is None or redis is None or single is None or not redis:
        return ["(no projection: a figure it needs is missing)"]
    lines = [
        f"Projection (`project`): from the cluster's {min(args.pairs)}-call {SMALL} B relay,"
        f" p = {python:.0f} us Python and r = {redis:.0f} us Redis CPU per frame; the single"
        f" process s = {single:.1f} us. Redis becomes the limit from"
        f" {redis_limit_cores(python, redis):.1f} cores on.",
        "",
        "| cores | relayed frames/s | x single process | bound by |",
        "|---:|---:|---:|---|",
    ]
    for cores in PROJECTED_CORES:
        p = project(python, redis, single, cores)
        lines.append(f"| {cores} | {p.msgs_per_s:,.0f} | {p.vs_single:.2f} | {p.limit} |")
    return lines


def targets(samples: list[Sample], args: argparse.Namespace) -> list[str]:
    """Issue 13's targets, each with its figure and met / NOT met."""
    small = f"relay {min(args.pairs)} calls {SMALL} B"
    python = median_of(samples, "cluster", f"{small} Python CPU us/frame")
    redis = median_of(samples, "cluster", f"{small} Redis CPU us/frame")
    single = median_of(samples, "callbox", f"{small} Python CPU us/frame")

    def added(figure: str) -> float | None:
        """The cluster's figure less the single process's."""
        ours, theirs = median_of(samples, "cluster", figure), median_of(samples, "callbox", figure)
        return None if ours is None or theirs is None else ours - theirs

    ratios = []
    for size in (SMALL, LARGE):
        for pairs in args.pairs:
            figure = f"relay {pairs} calls {size} B"
            ours, theirs = (
                median_of(samples, "cluster", figure),
                median_of(samples, "callbox", figure),
            )
            if ours is not None and theirs:
                ratios.append(ours / theirs)
    rows: list[tuple[str, float | None, float, str]] = [
        ("cluster overhead, Python CPU us/frame (cluster - single)",
         added(f"{small} Python CPU us/frame"), 10, "<="),
        ("Redis CPU us/frame", redis, 6, "<="),
        ("added latency p50 at half load, us", added("latency p50 at half load"), 500, "<="),
        ("added latency p99 at half load, us", added("latency p99 at half load"), 2000, "<="),
        ("2 workers / single process, relay (lowest of the rows)",
         min(ratios) if ratios else None, 0.8, ">="),
    ]  # fmt: skip
    if python is not None and redis and single is not None:
        rows.append(("projection at 4 cores, x single process",
                     project(python, redis, single, 4).vs_single, 2.2, ">="))  # fmt: skip
    lines = ["| target | figure | bound | verdict |", "|---|---:|---:|---|"]
    for name, value, bound, op in rows:
        if value is None:
            lines.append(f"| {name} | - | {op} {bound:g} | not measured |")
            continue
        met = value <= bound if op == "<=" else value >= bound
        lines.append(f"| {name} | {value:,.2f} | {op} {bound:g} | {'met' if met else 'NOT met'} |")
    return lines


# ---------------------------------------------------------------------------------------------


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="1 repetition, 100 calls, short windows (2-3.5 min)"
    )
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--pairs", type=int, nargs="+", default=[100, 1000])
    parser.add_argument(
        "--workers", choices=["auto", "emulate", "real"], default="auto",
        help="the cluster: two `callbox serve --redis` processes (emulate), one `callbox serve"
        " --workers 2 --redis` (real), or real if `callbox serve --help` offers --workers (auto)",
    )  # fmt: skip
    parser.add_argument("--no-peerjs", action="store_true", help="leave PeerJS out")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument(
        "--rate",
        type=int,
        default=500,
        help="msgs/s for latency and memory when the relay is not run (else half its figure)",
    )
    parser.add_argument("--json", type=Path, help="also write every sample here")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy (pip install py-spy) on the nodes through the first window of each cluster"
        " relay run, raw stacks written in DIR and summarised; its CPU makes those windows"
        " contended: profile in a run of its own (e.g. --only relay --reps 1)",
    )
    args = parser.parse_args()
    if args.quick:
        args.reps, args.warmup, args.seconds, args.pairs = 1, 0.5, 2.0, [100]
    return args


def main() -> None:
    args = parse_arguments()
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        raise SystemExit("redis-server and redis-cli are needed: apt-get install redis-server")
    if args.profile:
        py_spy()  # fails now rather than at the first window
    real_workers = args.workers == "real" or (args.workers == "auto" and has_workers_option())
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * max(args.pairs) + MEMORY_SESSIONS + 512
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SystemExit(f"RLIMIT_NOFILE hard limit {hard} < {needed} needed")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))

    facts = machine_facts()
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=True
    )
    facts.append(redis_version.stdout.strip())
    singles = [TARGETS["callbox"]]
    if not args.no_peerjs:
        facts.append(ensure_peerjs())
        singles.insert(0, TARGETS["peerjs"])
    cluster_kind = (
        f"`callbox serve --workers {WORKERS} --redis` (real workers)" if real_workers
        else f"{WORKERS} `callbox serve --redis` processes (emulating --workers {WORKERS})"
    )  # fmt: skip
    placements = ("half",) if real_workers else PLACEMENTS
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="callbox-cluster-bench-") as log_dir:
        bench = ClusterBench(args, Path(log_dir), real_workers)
        for rep in range(1, args.reps + 1):
            print(f"repetition {rep}/{args.reps} ({time.monotonic() - started:.0f} s)", flush=True)
            for pairs in args.pairs if "relay" in args.only else ():
                order: list[Callable[[], None]] = [
                    *(partial(bench.relay_single, target, pairs) for target in singles),
                    *(partial(bench.relay_cluster, placement, pairs) for placement in placements),
                ]
                for run in order if rep % 2 else reversed(order):
                    bench.attempt(run)
            throughput = [
                s.value for s in bench.samples
                if s.target == "cluster" and s.figure == f"relay {min(args.pairs)} calls {SMALL} B"
            ]  # fmt: skip
            rate = max(100, round(throughput[-1] / 2)) if throughput else args.rate
            if "latency" in args.only:
                bench.attempt(partial(bench.latency, rate))
            if "setups" in args.only:
                bench.attempt(bench.setups_both)
            if "memory" in args.only and rep == 1:
                bench.attempt(partial(bench.memory, rate))
    elapsed = time.monotonic() - started
    print(f"\n{len(bench.samples)} samples in {elapsed:.0f} s\n")
    print("\n".join(facts))
    print(
        f"\n{args.reps} repetition(s); {args.warmup:g} s warm-up + {args.seconds:g} s measured per"
        f" figure. Single process and PeerJS on core 0, their generator on core 1; the cluster:"
        f" {cluster_kind} on one redis-server, nothing pinned. Medians (min-max) over clean"
        f" windows (others < {CONTENDED_OTHERS_PCT:g}% of a core); relay in messages/s, closed"
        f" loop, {IN_FLIGHT} messages in flight in all (at least one per client); latency in us"
        f" at the rate shown, open loop, {min(args.pairs)} calls; Redis memory from INFO memory.\n"
    )
    print("\n".join(table(bench.samples, args)))
    if args.json:
        args.json.write_text(json.dumps([asdict(s) for s in bench.samples], indent=1))
    if bench.failures:
        print(f"\n{len(bench.failures)} runs failed:\n" + "\n".join(bench.failures))
        sys.exit(1)


if __name__ == "__main__":
    main()
