"""What a run found, and its three forms: a table for people, JSON and JUnit XML for tools."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from typing import Literal

import attrs
import orjson
from attrs import frozen

from callbox.client import Traffic
from callbox.conformance.options import Options
from callbox.conformance.registry import SECTIONS, Case
from callbox.messages import CLIENT_MESSAGES, SERVER_MESSAGES

Status = Literal["pass", "fail", "skip"]


@frozen
class Result:
    case: Case
    status: Status
    why: str
    """Why it failed or was skipped; for a pass, an optional note."""
    seconds: float
    tolerated: dict[str, int]
    """Asynchronous messages (`context.ASYNCHRONOUS`) the case's clients skipped, by type."""


@frozen
class Report:
    urls: tuple[str, ...]
    """The servers the run spread its connections over (usually one)."""
    run_id: str
    """The prefix of every name the run made on the server."""
    options: Options
    results: list[Result]
    traffic: Traffic
    seconds: float
    nodes: tuple[str | None, ...]
    """What each URL's `welcome.node` said (a node of a cluster names itself), in order."""
    connections: Counter[str]
    """The connections the cases opened (resumes too), by URL."""

    def count(self, status: Status) -> int:
        return sum(result.status == status for result in self.results)

    def tolerated(self) -> Counter[str]:
        """Asynchronous messages skipped over the whole run, by type."""
        return sum((Counter(result.tolerated) for result in self.results), Counter())

    @property
    def failed(self) -> bool:
        return self.count("fail") > 0 or self.traffic.invalid > 0


def table(report: Report) -> str:
    """The report as text: one line per case, then the totals."""
    options = report.options
    width = max([len("CASE"), *(len(r.case.id) for r in report.results)])
    lines = [
        f"callbox conformance {' '.join(report.urls)}: run {report.run_id}, seed {options.seed},"
        f" {options.examples} examples per message, max wait {options.max_wait:g} s",
        f"{'CASE':<{width}}  {'SECTION':<10}  RESULT  {'TIME':>7}  WHY",
    ]
    lines += [
        f"{r.case.id:<{width}}  {r.case.section:<10}  {r.status:<6}  {r.seconds:>6.2f}s  {r.why}"
        for r in report.results
    ]
    received, sent = report.traffic.received, report.traffic.sent
    unseen = sorted(set(SERVER_MESSAGES) - set(received))
    invalid = f", {report.traffic.invalid} INVALID" if report.traffic.invalid else ""
    lines += [
        f"{len(report.results)} cases: {report.count('pass')} passed, {report.count('fail')}"
        f" failed, {report.count('skip')} skipped, in {report.seconds:.1f} s",
        f"{received.total()} server messages valid against the schemas{invalid};"
        f" {len(received)} of {len(SERVER_MESSAGES)} types seen"
        + (f" (never: {', '.join(unseen)})" if unseen else ""),
        f"{sent.total()} client messages sent, {len(sent)} of {len(CLIENT_MESSAGES)} types",
    ]
    if tolerated := report.tolerated():
        shown = ", ".join(f"{count} {kind}" for kind, count in sorted(tolerated.items()))
        lines.append(f"asynchronous messages skipped by cases not about them: {shown}")
    if len(report.urls) > 1:
        lines.append(f"connections spread by seed {options.seed}: {_spread(report)}")
    return "\n".join(lines)


def _spread(report: Report) -> str:
    """How many connections went to each URL, and the node it named, if any."""
    return ", ".join(
        f"{report.connections[url]} to {url}" + (f" (node {node})" if node else "")
        for url, node in zip(report.urls, report.nodes, strict=True)
    )


def to_json(report: Report) -> bytes:
    return orjson.dumps(
        {
            "url": report.urls[0],
            "urls": list(report.urls),
            "nodes": list(report.nodes),
            "connections": {url: report.connections[url] for url in report.urls},
            "run_id": report.run_id,
            "options": {
                **attrs.asdict(report.options),
                "only": sorted(report.options.only),
                "skip": sorted(report.options.skip),
                "admin_token": None if report.options.admin_token is None else "<redacted>",
            },
            "seconds": report.seconds,
            "summary": {
                "cases": len(report.results),
                **{status: report.count(status) for status in ("pass", "fail", "skip")},
            },
            "messages": {
                "received": dict(report.traffic.received),
                "invalid": report.traffic.invalid,
                "sent": dict(report.traffic.sent),
                "tolerated": dict(report.tolerated()),
            },
            "cases": [
                {
                    "id": r.case.id,
                    "section": r.case.section,
                    "status": r.status,
                    "why": r.why,
                    "seconds": r.seconds,
                    "checks": r.case.doc,
                    "tolerated": r.tolerated,
                }
                for r in report.results
            ],
        },
        option=orjson.OPT_INDENT_2,
    )


def to_junit(report: Report) -> bytes:
    """JUnit XML: a test suite per section, a test case per case."""
    root = ET.Element(
        "testsuites",
        name="callbox conformance",
        tests=str(len(report.results)),
        failures=str(report.count("fail")),
        skipped=str(report.count("skip")),
        time=f"{report.seconds:.3f}",
    )
    for section in SECTIONS:
        results = [r for r in report.results if r.case.section == section]
        if not results:
            continue
        suite = ET.SubElement(
            root,
            "testsuite",
            name=section,
            tests=str(len(results)),
            failures=str(sum(r.status == "fail" for r in results)),
            skipped=str(sum(r.status == "skip" for r in results)),
            time=f"{sum(r.seconds for r in results):.3f}",
        )
        for result in results:
            testcase = ET.SubElement(
                suite,
                "testcase",
                classname=f"conformance.{section}",
                name=result.case.id,
                time=f"{result.seconds:.3f}",
            )
            if result.status == "fail":
                ET.SubElement(testcase, "failure", message=result.why).text = result.case.doc
            elif result.status == "skip":
                ET.SubElement(testcase, "skipped", message=result.why)
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))
