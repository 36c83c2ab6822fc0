"""``tollhouse export stripe --push``: send meter events with the official ``stripe`` SDK.

Stripe's meter event stream (API v2): the secret key opens a meter event session
(``POST /v2/billing/meter_event_session``), whose short-lived token authenticates
``POST /v2/billing/meter_event_stream`` with at most 100 events per request. A batch that fails
with a connection error, a rate limit or a 5xx is sent again, unchanged (same identifiers, same
idempotency key), after a backoff, up to ``max_attempts`` times; an expired session (401) is
renewed first. A batch Stripe rejects (4xx) or that runs out of attempts stops the push: what was
sent is reported, and re-running is safe (Stripe drops repeated identifiers for at least 24 h).
The key is read from a file and never logged.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import stripe

from tollhouse.billing.export_stripe import MeterEvent
from tollhouse.logs import get_logger

__all__ = ["BATCH", "PushResult", "push_events", "read_api_key"]

log = get_logger(__name__)
BATCH = 100
_RETRY = (stripe.APIConnectionError, stripe.RateLimitError, stripe.APIError)


@dataclass(frozen=True, slots=True)
class PushResult:
    """Events Stripe accepted, batches sent, attempts made, and why it stopped (if it did)."""

    sent: int
    batches: int
    attempts: int
    error: str | None

    @property
    def ok(self) -> bool:
        """Every event was accepted."""
        return self.error is None


def read_api_key(path: str) -> str:
    """The secret key from its file (stripped); ``ValueError`` when empty or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            key = f.read().strip()
    except OSError as e:
        raise ValueError(f"cannot read the Stripe API key file {path}: {e.strerror}") from None
    if not key:
        raise ValueError(f"the Stripe API key file {path} is empty")
    return key


class _Session:
    def __init__(self, api_key: str, bases: dict[str, str]) -> None:
        self._bases = bases
        self._root = stripe.StripeClient(
            api_key,
            base_addresses=bases,  # type: ignore[arg-type]
            max_network_retries=0,
        )
        self._stream: stripe.StripeClient | None = None

    def stream(self) -> stripe.StripeClient:
        if self._stream is None:
            token = self._root.v2.billing.meter_event_session.create().authentication_token
            self._stream = stripe.StripeClient(
                token,
                base_addresses=self._bases,  # type: ignore[arg-type]
                max_network_retries=0,
            )
        return self._stream

    def expire(self) -> None:
        self._stream = None


def _send(
    session: _Session, batch: Sequence[MeterEvent], attempts: int, sleep: Callable[[float], None]
) -> tuple[int, str | None]:
    """Send one batch; return the attempts made and the error that stopped it (``None``: sent)."""
    events = [e.to_json() for e in batch]
    key = "th-" + hashlib.sha256("\n".join(e.identifier for e in batch).encode()).hexdigest()
    for n in range(1, attempts + 1):
        try:
            session.stream().v2.billing.meter_event_stream.create(
                {"events": events},  # type: ignore[typeddict-item]
                options={"idempotency_key": key},
            )
            return n, None
        except stripe.AuthenticationError as e:
            session.expire()  # the session token expired: a new one, same events
            err = f"authentication failed: {e.user_message or type(e).__name__}"
        except _RETRY as e:
            err = f"{type(e).__name__}: {e.user_message or e.http_status}"
        except stripe.StripeError as e:
            return n, f"Stripe refused the batch: {type(e).__name__}: {e.user_message}"
        log.warning("stripe.batch_retry", attempt=n, events=len(batch), error=err)
        if n < attempts:
            sleep(min(30.0, 0.5 * 2 ** (n - 1)))
    return attempts, f"gave up after {attempts} attempts: {err}"


def push_events(
    events: Sequence[MeterEvent],
    *,
    api_key: str,
    api_base: str,
    meter_events_base: str,
    max_attempts: int = 5,
    sleep: Callable[[float], None] = time.sleep,
) -> PushResult:
    """Send ``events`` in order, ``BATCH`` per request; stop at the first batch that fails."""
    session = _Session(api_key, {"api": api_base, "meter_events": meter_events_base})
    sent = batches = attempts = 0
    for i in range(0, len(events), BATCH):
        batch = events[i : i + BATCH]
        try:
            n, error = _send(session, batch, max_attempts, sleep)
        except stripe.StripeError as e:  # the session itself could not be opened
            n, error = 1, f"cannot open a meter event session: {type(e).__name__}: {e.user_message}"
        attempts += n
        if error is not None:
            log.error("stripe.push_stopped", sent=sent, remaining=len(events) - sent, error=error)
            return PushResult(sent, batches, attempts, error)
        sent += len(batch)
        batches += 1
    log.info("stripe.pushed", events=sent, batches=batches, attempts=attempts)
    return PushResult(sent, batches, attempts, None)
