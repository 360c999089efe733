"""Fixtures of the hostile-input suite: the server process (one per module) and the guard
that surrounds every attack with a sentinel call, memory sampling and a log check."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from tests.hostile.harness import (
    AFTER_RSS_SLACK_KIB,
    FIGURES,
    MAX_STALL_MS,
    PEAK_RSS_SLACK_KIB,
    AttackFigures,
    RssSampler,
    ServerProcess,
    sentinel_call,
    settled_rss_kib,
)

_sentinels = itertools.count()
"""Numbers the sentinel calls, so each has user ids of its own."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("server") / "server.log")
    FIGURES.baselines_kib.append(process.baseline_kib)
    try:
        yield process
    finally:
        status = process.stop()
    log = process.log()
    FIGURES.tracebacks += log.count("Traceback")
    assert "Traceback" not in log, log
    assert status == 0, log


@pytest.fixture
def guard(server: ServerProcess, request: pytest.FixtureRequest) -> Iterator[None]:
    """Around the test: the sentinel call relays throughout, the RSS is sampled; afterwards the
    sentinel must have seen every candidate, in order, none later than `MAX_STALL_MS`, the RSS
    must have stayed bounded and come back down, and the log must hold no traceback."""
    before = server.rss_kib()
    sampler = RssSampler(server)
    try:
        with sentinel_call(server.url, str(next(_sentinels))) as reports:
            yield
    finally:
        peak = sampler.stop()
    after = settled_rss_kib(server, before + AFTER_RSS_SLACK_KIB)
    [report] = reports
    FIGURES.attacks.append(AttackFigures(request.node.nodeid, report, before, peak, after))
    print(
        f"\nsentinel: {report.received}/{report.sent} candidates, worst relay"
        f" {report.worst_ms:.1f} ms; server RSS {before} KiB before, {peak} peak, {after} after"
    )
    log = server.log()
    assert "Traceback" not in log, log[log.index("Traceback") - 2000 :]
    assert report.sent > 0
    assert report.unexpected == [], "the attack reached the sentinel's users"
    assert report.out_of_order == [], "the sentinel's candidates were reordered or lost"
    assert report.received == report.sent, "the sentinel's last candidates never arrived"
    assert report.worst_ms < MAX_STALL_MS, f"the sentinel stalled {report.worst_ms:.0f} ms"
    assert peak < server.baseline_kib + PEAK_RSS_SLACK_KIB, f"RSS peaked at {peak} KiB"
    assert after <= before + AFTER_RSS_SLACK_KIB, f"RSS stayed at {after} KiB (from {before})"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The suite's figures, for the issue: inputs tried, tracebacks, stalls, memory."""
    if not FIGURES.inputs and not FIGURES.attacks:
        return
    write = terminalreporter.write_line
    terminalreporter.section("hostile-input figures")
    for layer, count in sorted(FIGURES.inputs.items()):
        write(f"{layer}: {count} inputs")
    write(
        f"inputs in all: {sum(FIGURES.inputs.values())}; tracebacks in server logs:"
        f" {FIGURES.tracebacks}"
    )
    if FIGURES.attacks:
        worst = max(FIGURES.attacks, key=lambda a: a.sentinel.worst_ms)
        write(f"worst sentinel stall: {worst.sentinel.worst_ms:.1f} ms ({worst.test})")
        peak = max(FIGURES.attacks, key=lambda a: a.rss_peak_kib - a.rss_before_kib)
        write(
            f"server RSS: baselines {min(FIGURES.baselines_kib)}-{max(FIGURES.baselines_kib)} KiB;"
            f" largest peak {peak.rss_peak_kib} KiB (from {peak.rss_before_kib}, {peak.test});"
            f" after attacks at most"
            f" {max(a.rss_after_kib - a.rss_before_kib for a in FIGURES.attacks):+d} KiB"
        )
