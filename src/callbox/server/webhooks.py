"""Webhooks: the core's `Notify` actions as signed POSTs to the deployer's backend.

The core decides what happened (`callbox.core.actions.Notify`, emitted only for the event types
the config sends); this module delivers it, and never makes signaling wait:

- `Webhooks.notify` is synchronous and constant time: it encodes the body once and puts one
  delivery per URL on a bounded queue (`MAX_QUEUED_DELIVERIES`). A full queue drops the
  delivery, counted and logged: the core is never blocked.
- A small pool of sender tasks (`SENDERS`) takes deliveries from the queue. Each attempt is
  signed afresh, as the Standard Webhooks specification says (`webhook-id`, the same on every
  attempt, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 of id.timestamp.body>`),
  and given `DeliveryPolicy.timeout_s` in all. 2xx is delivered; 5xx, a network error or a
  timeout is retried with exponential backoff and full jitter until `give_up_after_s` has passed
  since the first attempt; anything else (4xx, a redirect) fails at once: sent again, it would
  be refused again.
- A delivery that can no longer matter is dropped before its next attempt: a
  `call.ringing_offline` whose ring has expired, or whose call this process has seen end.
- Outcomes are counted (`counts`, read by `/metrics` as `callbox_webhooks_total{outcome}`) and
  logged: failures and drops for a full queue as warnings (the latter at most one line every
  `OVERFLOW_LOG_EVERY_S`), retries and stale drops as info, deliveries as debug.

The queue lives in this process's memory: deliveries still queued or being retried when the
process dies are lost (at most once; docs/decisions/0015-webhooks.md says why). `httpx` is
imported only when `Webhooks.run` starts, so a server with no webhook never loads it.
"""

from __future__ import annotations

import logging
import math
import random
import secrets
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

import orjson
import trio
from attrs import define, field, frozen
from standardwebhooks import Webhook

from callbox.core.actions import Notify

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("callbox.webhooks")

MAX_QUEUED_DELIVERIES: Final = 1_000
"""Deliveries (an event for one URL) waiting for a sender; beyond, they are dropped. A body is
at most a few KiB (the largest is `call.initiated` with 63 invitees and its metadata), so the
queue holds a few MiB at worst."""
SENDERS: Final = 4
"""Deliveries in flight at once, retries included: a receiver that is down holds at most this
many senders, and the queue absorbs the rest until it fills."""
TIMEOUT_S: Final = 5.0
"""One attempt, connection to response, in all."""
FIRST_RETRY_S: Final = 0.5
MAX_RETRY_S: Final = 30.0
"""The longest wait between two attempts (backoff doubles from `FIRST_RETRY_S` up to it)."""
GIVE_UP_AFTER_S: Final = 120.0
"""No attempt starts this long after the first: the event is counted failed."""
ID_PREFIX: Final = "msg_"
OVERFLOW_LOG_EVERY_S: Final = 10.0

Outcome = str
"""`delivered`, `retried` (an attempt to be made again), `failed` or `dropped`."""


@frozen
class DeliveryPolicy:
    """How hard a delivery is tried (tests shorten it; the server runs the defaults)."""

    timeout_s: float = TIMEOUT_S
    first_retry_s: float = FIRST_RETRY_S
    max_retry_s: float = MAX_RETRY_S
    give_up_after_s: float = GIVE_UP_AFTER_S

    def backoff(self, attempt: int) -> float:
        """The wait after failed attempt number `attempt` (1, 2, ...): exponential, full jitter,
        so receivers coming back are not hit by every sender at once."""
        ceiling = min(self.max_retry_s, self.first_retry_s * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)


@frozen
class WebhookEvent:
    """One event, encoded once, delivered to every URL under the same id."""

    id: str
    type: str
    body: bytes
    call_id: str | None
    expires_at_ms: int | None
    """When the event stops mattering (the ring of `call.ringing_offline`), Unix ms."""


@frozen
class Delivery:
    event: WebhookEvent
    url: str


def event_body(notify: Notify) -> bytes:
    """The JSON body, as the specification's convention has it: `{type, timestamp, data}`,
    the timestamp in ISO 8601 (UTC, milliseconds)."""
    at = datetime.fromtimestamp(notify.at_ms / 1000, tz=UTC)
    timestamp = at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return orjson.dumps({"type": notify.event_type, "timestamp": timestamp, "data": notify.data})


@define(eq=False)
class Webhooks:
    """The delivery of webhook events: `notify` from the shell's actions, `run` in a nursery."""

    urls: Sequence[str]
    secret: str
    """`whsec_...`, checked by the config."""
    policy: DeliveryPolicy = field(factory=DeliveryPolicy)
    wall: Callable[[], float] = time.time
    """Unix time, s: when a ring has expired."""
    counts: Counter[Outcome] = field(factory=Counter, init=False)
    """Deliveries by outcome (a retried one counts `retried` at each attempt made again)."""
    _signer: Webhook = field(init=False)
    _parsed: dict[str, httpx.URL] = field(factory=dict, init=False)
    """Each URL parsed once (httpx parses a string at every request)."""
    _send: trio.MemorySendChannel[Delivery] = field(init=False)
    _receive: trio.MemoryReceiveChannel[Delivery] = field(init=False)
    _rings: Counter[str] = field(factory=Counter, init=False)
    """Per call, its `call.ringing_offline` deliveries not yet done with."""
    _overflow_logged_at: float = field(default=-math.inf, init=False)
    _overflow_unlogged: int = field(default=0, init=False)
    _ended: set[str] = field(factory=set, init=False)
    """Calls seen ending that have such deliveries left: those are dropped. A call leaves
    this set with its last one, so it holds no more calls than there are deliveries."""

    def __attrs_post_init__(self) -> None:
        self._signer = Webhook(self.secret)
        self._send, self._receive = trio.open_memory_channel[Delivery](MAX_QUEUED_DELIVERIES)

    def statistics(self) -> dict[str, int]:
        return {"queued": self._send.statistics().current_buffer_used, **self.counts}

    # What the shell calls, synchronously -----------------------------------------------------

    def notify(self, notify: Notify) -> None:
        """Queue `notify` for every URL; never waits (a full queue drops it, counted)."""
        data = notify.data
        call_id: str | None = data.get("call_id")
        if notify.event_type == "call.ended" and call_id is not None and call_id in self._rings:
            self._ended.add(call_id)
        ringing = notify.event_type == "call.ringing_offline"
        event = WebhookEvent(
            id=ID_PREFIX + secrets.token_urlsafe(16),
            type=notify.event_type,
            body=event_body(notify),
            call_id=call_id,
            expires_at_ms=data["expires_at"] if ringing else None,
        )
        for url in self.urls:
            try:
                self._send.send_nowait(Delivery(event, url))
            except trio.WouldBlock:
                self._count("dropped")
                self._overflowed(event, url)
            else:
                if ringing and call_id is not None:
                    self._rings[call_id] += 1

    def _overflowed(self, event: WebhookEvent, url: str) -> None:
        """Logs a delivery dropped for a full queue: the first, then at most one line every
        `OVERFLOW_LOG_EVERY_S` with how many since (a receiver down under load would
        otherwise write a line per event)."""
        self._overflow_unlogged += 1
        now = trio.current_time()
        if now < self._overflow_logged_at + OVERFLOW_LOG_EVERY_S:
            return
        log.warning(
            "webhook %s %s to %s dropped: %d deliveries already queued (%d dropped since the"
            " last such line)",
            event.type,
            event.id,
            url,
            MAX_QUEUED_DELIVERIES,
            self._overflow_unlogged,
        )
        self._overflow_logged_at, self._overflow_unlogged = now, 0

    # The senders --------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The senders, until cancelled (what is queued then is lost)."""
        import httpx  # noqa: PLC0415 (only a server with webhooks needs it)

        limits = httpx.Limits(max_connections=SENDERS, max_keepalive_connections=SENDERS)
        self._parsed = {url: httpx.URL(url) for url in self.urls}
        async with (
            # HTTP(S)_PROXY and the like are honoured, as by other HTTP clients: an egress
            # proxy may be the deployer's only way out.
            httpx.AsyncClient(limits=limits, timeout=self.policy.timeout_s) as client,
            trio.open_nursery() as nursery,
        ):
            for number in range(SENDERS):
                nursery.start_soon(self._sender, client, name=f"webhook sender {number}")
            task_status.started()

    async def _sender(self, client: httpx.AsyncClient) -> None:
        async for delivery in self._receive:
            try:
                await self._deliver(client, delivery)
            finally:
                self._done_with(delivery.event)

    async def _deliver(self, client: httpx.AsyncClient, delivery: Delivery) -> None:
        """Attempt `delivery` until it is delivered, fails, gives up or stops mattering."""
        event, policy = delivery.event, self.policy
        give_up_at = trio.current_time() + policy.give_up_after_s
        attempt = 0
        while True:
            stale = self._stale(event)
            if stale is not None:
                self._count("dropped")
                url = delivery.url
                log.info("webhook %s %s to %s dropped: %s", event.type, event.id, url, stale)
                return
            attempt += 1
            problem = await self._attempt(client, delivery)
            if problem is None:
                self._count("delivered")
                log.debug(
                    "webhook %s %s delivered to %s (attempt %d)",
                    event.type,
                    event.id,
                    delivery.url,
                    attempt,
                )
                return
            reason, retriable = problem
            wait = policy.backoff(attempt)
            if not retriable or trio.current_time() + wait > give_up_at:
                self._count("failed")
                why = reason if not retriable else f"{reason}; gave up after {attempt} attempts"
                log.warning(
                    "webhook %s %s to %s failed: %s", event.type, event.id, delivery.url, why
                )
                return
            self._count("retried")
            log.info(
                "webhook %s %s to %s: %s; attempt %d in %.1f s",
                event.type,
                event.id,
                delivery.url,
                reason,
                attempt + 1,
                wait,
            )
            await trio.sleep(wait)

    async def _attempt(
        self, client: httpx.AsyncClient, delivery: Delivery
    ) -> tuple[str, bool] | None:
        """One signed POST: None if delivered, else (why not, whether to try again)."""
        import httpx  # noqa: PLC0415 (loaded already by `run`)

        event = delivery.event
        now = datetime.now(tz=UTC)
        headers = {
            "content-type": "application/json",
            "webhook-id": event.id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self._signer.sign(event.id, now, event.body),
        }
        with trio.move_on_after(self.policy.timeout_s) as scope:
            try:
                url = self._parsed[delivery.url]
                response = await client.post(url, content=event.body, headers=headers)
            except httpx.TimeoutException:
                return f"no response in {self.policy.timeout_s:g} s", True
            except httpx.TransportError as error:
                return f"{type(error).__name__}: {error}", True
        if scope.cancelled_caught:
            return f"no response in {self.policy.timeout_s:g} s", True
        status = response.status_code
        if 200 <= status < 300:
            return None
        return f"HTTP {status}", status >= 500

    def _stale(self, event: WebhookEvent) -> str | None:
        """Why `event` no longer matters, if it does not."""
        if event.call_id in self._ended and event.type == "call.ringing_offline":
            return f"call {event.call_id} has ended"
        if event.expires_at_ms is not None and self.wall() * 1000 >= event.expires_at_ms:
            return "the ring has expired"
        return None

    def _done_with(self, event: WebhookEvent) -> None:
        call_id = event.call_id
        if event.type != "call.ringing_offline" or call_id is None:
            return
        self._rings[call_id] -= 1
        if self._rings[call_id] <= 0:
            del self._rings[call_id]
            self._ended.discard(call_id)

    def _count(self, outcome: Outcome) -> None:
        self.counts[outcome] += 1
