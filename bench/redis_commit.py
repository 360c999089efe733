"""What a commit costs on Redis: commits/s, Redis CPU and client CPU per committed transaction.

    .venv/bin/python bench/redis_commit.py [--seconds 3] [--sessions 1000]

Starts its own ``redis-server`` (loopback, a free port, a temporary directory, nothing saved),
opens ``--sessions`` outboxes and as many call records, then commits relay-like transactions
(one read key, one delivery of a 200-byte frame, as a relayed ``ice_candidate`` is) in batches
of 1, 10 and 100, one batch at a time, for ``--seconds`` each, through `RedisBackend` (Redis
on one core, this process on the other, as bench/run_relay_bench.py places them). Redis's
CPU is read from ``INFO cpu`` (used_cpu_sys + used_cpu_user) before and after, the client's
with `time.process_time`. "held" runs below the outboxes' budgets, "full" with outboxes that
drop their oldest frame at every delivery. Bounded by the seconds; Redis is stopped by its PID.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import tempfile
import time
from collections.abc import Sequence

import trio
from run_relay_bench import GENERATOR_CORE, HOST, SERVER_CORE, free_port, stop, wait_listening

from callbox.cluster.backend import Committed, OpenOutbox, Transaction
from callbox.cluster.redis_backend import RedisBackend, connect

FRAME = b'{"type":"ice_candidate","call_id":"call-0001","from":"alice","candidate":' + b"x" * 128
FRAME = FRAME + b" " * (199 - len(FRAME)) + b"}"
BATCH_SIZES = (1, 10, 100)
BUDGETS = {"held": 1 << 20, "full": 16}
"""Outboxes' budgets in messages: "held" ones never reach theirs, "full" ones start full."""


async def redis_cpu_s(backend: RedisBackend) -> float:
    cpu = await backend.client.info("cpu")
    return float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


async def set_up(backend: RedisBackend, sessions: int, budget: int) -> list[int]:
    """`sessions` outboxes of `budget` messages, filled to it if it is small, and as many call
    records; returns the records' versions."""
    opened = Transaction(
        {},
        writes={f"call:{n}": b"{}" for n in range(sessions)},
        outbox_ops=[OpenOutbox(f"s{n}", budget, 1 << 30) for n in range(sessions)],
    )
    [outcome] = await backend.commit("set-up", [opened])
    assert isinstance(outcome, Committed), outcome
    if budget < BUDGETS["held"]:
        for start in range(0, sessions, 100):
            batch = [
                Transaction({}, deliveries=[(f"s{n}", FRAME)] * budget)
                for n in range(start, min(start + 100, sessions))
            ]
            outcomes = await backend.commit(f"fill-{start}", batch)
            assert all(isinstance(o, Committed) for o in outcomes)
    return [outcome.version] * sessions


async def run(
    backend: RedisBackend, outboxes: str, batch_size: int, seconds: float, sessions: int
) -> str:
    """Relays in batches of `batch_size` for `seconds`; one line of figures."""
    versions = await set_up(backend, sessions, BUDGETS[outboxes])
    pairs = itertools.cycle(range(sessions))
    ids = itertools.count()

    def batch() -> Sequence[Transaction]:
        return [
            Transaction({f"call:{n}": versions[n]}, deliveries=[(f"s{n}", FRAME)])
            for n in itertools.islice(pairs, batch_size)
        ]

    committed = 0
    redis_before, client_before = await redis_cpu_s(backend), time.process_time()
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        outcomes = await backend.commit(f"relay-{next(ids)}", batch())
        assert all(isinstance(o, Committed) for o in outcomes), outcomes
        committed += len(outcomes)
    client_s = time.process_time() - client_before
    redis_s = await redis_cpu_s(backend) - redis_before
    return (
        f"| {outboxes} | {batch_size} | {committed / elapsed:,.0f} "
        f"| {redis_s / committed * 1e6:.1f} | {client_s / committed * 1e6:.1f} |"
    )


async def main(args: argparse.Namespace) -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        os.sched_setaffinity(0, {GENERATOR_CORE})
        redis = subprocess.Popen(
            ["taskset", "-c", str(SERVER_CORE), "redis-server", "--bind", HOST,
             "--port", str(port), "--dir", directory, "--save", "", "--appendonly", "no",
             "--maxmemory-policy", "noeviction", "--daemonize", "no",
             "--logfile", f"{directory}/redis.log"],
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_listening(port, redis)
            print("| outboxes | transactions per commit | commits/s (transactions) "
                  "| Redis CPU µs per transaction | client CPU µs per transaction |")  # fmt: skip
            print("|---|---|---|---|---|")
            for outboxes, size in itertools.product(BUDGETS, BATCH_SIZES):
                url = f"redis://{HOST}:{port}/0"
                async with connect(url, prefix=f"{outboxes}-{size}:") as backend:
                    line = await run(backend, outboxes, size, args.seconds, args.sessions)
                    print(line, flush=True)
        finally:
            stop(redis)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per case")
    parser.add_argument("--sessions", type=int, default=1000)
    trio.run(main, parser.parse_args())
