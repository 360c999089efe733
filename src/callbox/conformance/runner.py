"""Runs the cases against a server: a probe session for its limits, then every case in its own
nursery and time budget, a few at a time. A case's failure is reported, never raised."""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial

import attrs
import trio
from trio_websocket import HandshakeError

from callbox.client import (
    ConnectionClosed,
    HelloRefused,
    ProtocolViolation,
    Traffic,
    connect,
)
from callbox.codec import ProtocolError
from callbox.conformance import cases  # noqa: F401 (importing registers the cases)
from callbox.conformance.context import Context
from callbox.conformance.generation import Generated
from callbox.conformance.options import Options
from callbox.conformance.registry import CASES, SECTIONS, Case, Skip
from callbox.conformance.report import Report, Result, Status
from callbox.conformance.spread import Spread
from callbox.messages import Limits, Welcome

PROBE_TIMEOUT_S = 10.0

__all__ = ["Options", "Report", "SuiteAborted", "run_suite", "select"]


class SuiteAborted(Exception):
    """The suite cannot run against this server at all; the message says why."""


def select(options: Options) -> list[Case]:
    """The cases `--only` and `--skip` leave, in report order: by section, then as registered."""
    chosen = [
        case
        for case in CASES
        if (not options.only or case.section in options.only) and case.section not in options.skip
    ]
    return sorted(chosen, key=lambda case: SECTIONS.index(case.section))


async def run_suite(url: str | Sequence[str], options: Options | None = None) -> Report:
    """Runs the selected cases against the server at `url`, or spread over several URLs (the
    nodes of one cluster): each connection to a random one of them (see `Spread`)."""
    urls = (url,) if isinstance(url, str) else tuple(url)
    if not urls:
        raise SuiteAborted("no URL to run against")
    options = options or Options()
    run_id = secrets.token_hex(4)
    traffic = Traffic()
    started = trio.current_time()
    welcomes = [await _probe(each, run_id, traffic) for each in urls]
    limits = _same_limits(urls, welcomes)
    chosen = select(options)
    results: dict[int, Result] = {}
    limiter = trio.CapacityLimiter(options.jobs)
    connections: Counter[str] = Counter()
    new_context = partial(
        Context,
        limits=limits,
        options=options,
        traffic=traffic,
        generated=Generated(options.examples, options.seed),
    )

    async def run(index: int, case: Case) -> None:
        async with limiter:
            begun = trio.current_time()
            spread = Spread(urls, options.seed, case.id, connections)
            status, why, tolerated = await _outcome(
                case, partial(new_context, spread=spread), prefix=f"{run_id}-{index:03d}"
            )
            elapsed = trio.current_time() - begun
            results[index] = Result(case, status, why, elapsed, tolerated)

    async with trio.open_nursery() as nursery:
        for index, case in enumerate(chosen):
            nursery.start_soon(run, index, case)
    ordered = [results[index] for index in range(len(chosen))]
    return Report(
        urls,
        run_id,
        options,
        ordered,
        traffic,
        trio.current_time() - started,
        nodes=tuple(welcome.node for welcome in welcomes),
        connections=connections,
    )


async def _probe(url: str, run_id: str, traffic: Traffic) -> Welcome:
    """One session, for the server's limits; the suite needs a server that trusts `user_id`."""
    user_id = f"{run_id}-probe"
    try:
        with trio.fail_after(PROBE_TIMEOUT_S):
            async with connect(url, user_id=user_id, traffic=traffic) as probe:
                return probe.welcome
    except HelloRefused as refusal:
        raise SuiteAborted(
            f"the server refused hello {{user_id: {user_id!r}}} ({refusal.error.code}:"
            f" {refusal.error.message}); the suite needs a server in development mode"
        ) from None
    except (OSError, HandshakeError, ConnectionClosed, ProtocolViolation, trio.TooSlowError) as e:
        raise SuiteAborted(f"no session at {url}: {type(e).__name__}: {e}") from None


def _same_limits(urls: Sequence[str], welcomes: Sequence[Welcome]) -> Limits:
    """The limits every URL announces. The cases size and time themselves by them, so servers
    announcing different ones (nodes configured differently) cannot be run against as one:
    a case would fail or pass depending on where its connections went."""
    first = welcomes[0].limits
    for url, welcome in zip(urls[1:], welcomes[1:], strict=True):
        if welcome.limits != first:
            differ = [
                f"{name} {getattr(first, name)} at {urls[0]}, {getattr(welcome.limits, name)}"
                f" at {url}"
                for name in attrs.fields_dict(Limits)
                if getattr(welcome.limits, name) != getattr(first, name)
            ]
            raise SuiteAborted(f"the servers announce different limits: {'; '.join(differ)}")
    return first


async def _outcome(
    case: Case, new_context: Callable[..., Context], *, prefix: str
) -> tuple[Status, str, dict[str, int]]:
    """Runs `case` in a nursery of its own (its connections' tasks), then closes everything;
    also the asynchronous messages its clients skipped, by type."""
    tolerated: dict[str, int] = {}
    try:
        async with trio.open_nursery() as nursery:
            budget = trio.CancelScope()
            ctx = new_context(prefix=prefix, nursery=nursery, budget=budget, watches=case.watches)
            status, why = await _attempt(case, ctx, budget)
            tolerated = dict(ctx.skipped())
            await ctx.aclose()
            nursery.cancel_scope.cancel()
    except Exception as error:  # a connection's own task failed: the run goes on
        return "fail", f"{type(error).__name__}: {error}", tolerated
    return status, why, tolerated


async def _attempt(case: Case, ctx: Context, budget: trio.CancelScope) -> tuple[Status, str]:
    budget.deadline = trio.current_time() + ctx.options.case_timeout
    try:
        with budget:
            note = await case.run(ctx)
            await ctx.settle()
    except Skip as skip:
        return "skip", str(skip)
    except (ProtocolViolation, HelloRefused) as error:
        return "fail", str(error)
    except ConnectionClosed as closed:
        code, why = (closed.reason.code, closed.reason.reason) if closed.reason else ("-", "")
        return "fail", f"the server closed a connection: {code} {why or ''}".rstrip()
    except ProtocolError as error:
        return "fail", f"the suite built an invalid message (a bug of the suite's): {error}"
    except Exception as error:
        return "fail", f"{type(error).__name__}: {error}"
    if budget.cancelled_caught:
        return "fail", f"timed out: {ctx.awaiting()}"
    return "pass", note or ""
