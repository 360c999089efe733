"""Runs the cases against a server: a probe session for its limits, then every case in its own
nursery and time budget, a few at a time. A case's failure is reported, never raised."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from functools import partial

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
from callbox.messages import Limits

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


async def run_suite(url: str, options: Options | None = None) -> Report:
    """Runs the selected cases against the server at `url`."""
    options = options or Options()
    run_id = secrets.token_hex(4)
    traffic = Traffic()
    started = trio.current_time()
    limits = await _probe(url, run_id, traffic)
    chosen = select(options)
    results: dict[int, Result] = {}
    limiter = trio.CapacityLimiter(options.jobs)
    new_context = partial(
        Context,
        url=url,
        limits=limits,
        options=options,
        traffic=traffic,
        generated=Generated(options.examples, options.seed),
    )

    async def run(index: int, case: Case) -> None:
        async with limiter:
            begun = trio.current_time()
            status, why, tolerated = await _outcome(
                case, new_context, prefix=f"{run_id}-{index:03d}"
            )
            elapsed = trio.current_time() - begun
            results[index] = Result(case, status, why, elapsed, tolerated)

    async with trio.open_nursery() as nursery:
        for index, case in enumerate(chosen):
            nursery.start_soon(run, index, case)
    ordered = [results[index] for index in range(len(chosen))]
    return Report(url, run_id, options, ordered, traffic, trio.current_time() - started)


async def _probe(url: str, run_id: str, traffic: Traffic) -> Limits:
    """One session, for the server's limits; the suite needs a server that trusts `user_id`."""
    user_id = f"{run_id}-probe"
    try:
        with trio.fail_after(PROBE_TIMEOUT_S):
            async with connect(url, user_id=user_id, traffic=traffic) as probe:
                return probe.limits
    except HelloRefused as refusal:
        raise SuiteAborted(
            f"the server refused hello {{user_id: {user_id!r}}} ({refusal.error.code}:"
            f" {refusal.error.message}); the suite needs a server in development mode"
        ) from None
    except (OSError, HandshakeError, ConnectionClosed, ProtocolViolation, trio.TooSlowError) as e:
        raise SuiteAborted(f"no session at {url}: {type(e).__name__}: {e}") from None


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
