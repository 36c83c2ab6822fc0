"""The local spool: the durable fact log plus the in-memory finaliser that joins its facts.

``reserve`` (the Check) appends a reserved fact and returns once it is fdatasynced; ``served``
(the access-log receiver) appends served facts without a waiter per entry. Every fact reaches
the finaliser (:class:`~tollhouse.metering.join.Join`) only once it is durable, in the writer's
one wake-up per batch. :meth:`Spool.open` replays what the log still holds (a crash loses
nothing that was acknowledged), carries over a previous release's ``spool.db``, and warms the
log before the process reports ready. See ``factlog.py`` for the durability argument.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

from tollhouse.logs import get_logger
from tollhouse.metering.deadlines import Deadlines
from tollhouse.metering.factlog import (
    DEFAULT_SEGMENT_BYTES,
    MAGIC,
    FactLog,
    SpoolError,
    Written,
    scan,
)
from tollhouse.metering.facts import (
    AccessLog,
    Fact,
    Reserved,
    Served,
    decode_fact,
    encode_final,
    encode_reserved,
    encode_served,
)
from tollhouse.metering.join import Applied, Join, void_entry
from tollhouse.metering.legacy import (
    LEGACY_SPOOL_FILE,
    legacy_payloads,
    read_legacy,
    retire_legacy,
)
from tollhouse.metering.metrics import FACTLOG_CORRUPT, USAGE_RESERVED
from tollhouse.metering.policy import Finalizer, LogEntry
from tollhouse.metering.schema import UsageRecord

__all__ = [
    "LEGACY_SPOOL_FILE",
    "Expand",
    "Joining",
    "Spool",
    "SpoolError",
    "expand_facts",
    "new_usage_id",
]

log = get_logger(__name__)


# Usage ids need uniqueness, not secrecy (a client never chooses one: Envoy carries ours in the
# ext_authz metadata): 80 bits from a PRNG seeded from the OS per process, instead of a getrandom
# syscall per Check (uuid4 cost ~8 us on this machine's VM).
Expand = Callable[[bytes], Sequence[LogEntry]]  # an access-log message -> its entries

_ids = random.Random(os.urandom(32))  # noqa: S311
os.register_at_fork(after_in_child=lambda: _ids.seed(os.urandom(32)))


def new_usage_id(now_s: float | None = None) -> str:
    """Return a fresh usage id: 32 hex digits, time-ordered prefix (uuid7-like), random tail."""
    ms = int((time.time() if now_s is None else now_s) * 1000) & 0xFFFF_FFFF_FFFF
    return f"{ms:012x}{_ids.getrandbits(80):020x}"


def _has_magic(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def _replay(directory: Path) -> tuple[list[tuple[int, Fact]], list[int], list[Fact] | None]:
    """Blocking: the log's facts (torn tails cut), its segments, and a legacy spool's facts."""
    facts: list[tuple[int, Fact]] = []
    bad = 0
    for seq, payload in scan(directory, repair=True):
        try:
            facts.append((seq, decode_fact(payload)))
        except ValueError:
            bad += 1
    if bad:
        FACTLOG_CORRUPT.inc(bad)
        log.error("spool.undecodable_facts", facts=bad)
    # A segment with an unreadable header is not tracked, so it is kept (logged), never deleted.
    segments = sorted(
        int(p.name[6:-4])
        for p in directory.glob("facts-*.log")
        if p.name[6:-4].isdigit() and _has_magic(p)
    )
    return facts, segments, read_legacy(directory)


def expand_facts(facts: Sequence[Fact], expand: Expand | None) -> list[Fact]:
    """Facts with each raw access-log message replaced by one served fact per entry.

    An entry without a usage id becomes a void by Envoy request id (its pending reservation,
    if any, is voided); one without either is skipped, as the in-process receiver skips it.
    """
    out: list[Fact] = []
    for fact in facts:
        if not isinstance(fact, AccessLog):
            out.append(fact)
            continue
        if expand is None:
            FACTLOG_CORRUPT.inc()
            log.error("spool.access_log_not_expanded")
            continue
        for e in expand(fact.message):
            if e.usage_id is None:
                if not e.request_id:
                    continue
                e = void_entry("", e.request_id, e.response_flags or "no_metadata")
            out.append(Served(e, fact.received_ms, fact.instance))
    return out


class Joining:
    """What both spools share: the local join (or the outbox to Redis) fed with durable facts."""

    def __init__(
        self,
        *,
        finalizer: Callable[[], Finalizer],
        on_applied: Callable[[Applied], None],
        clock: Callable[[], float],
        instance: str,
        remote: bool,
        expand: Expand | None = None,
    ) -> None:
        self._expand = expand
        self._finalizer = finalizer
        self._on_applied = on_applied
        self._clock = clock
        self._instance = instance
        self.join = Join(self._free_segment)
        self.remote = remote  # facts go to a shared finaliser (Redis), not to self.join
        self.outbox: deque[tuple[Fact, int]] = deque()

    async def barrier(self) -> None:
        """Return once every fact durable before the call has been applied."""
        raise NotImplementedError

    def _free_segment(self, seq: int) -> None:
        raise NotImplementedError

    def _take(self, facts: Sequence[Fact], seq: int, fin: Finalizer, now_ms: int) -> None:
        if any(isinstance(f, AccessLog) for f in facts):
            facts = expand_facts(facts, self._expand)
        if not self.remote:
            self._on_applied(self.join.apply(facts, seq, fin, now_ms))
            return
        for fact in facts:
            self.join.hold(seq)
            self.outbox.append((fact, seq))

    def forwarded(self, n: int) -> None:
        """The first ``n`` outbox facts were accepted by the shared finaliser: they are done."""
        for _ in range(n):
            _, seq = self.outbox.popleft()
            self.join.release(seq)

    async def counts(self) -> dict[str, int]:
        """Records by state, ``unsent`` and ``orphans``, once everything queued is applied."""
        await self.barrier()
        out = self.join.counts()
        out["outbox"] = len(self.outbox)
        if self.remote:
            out["unsent"] = len(self.outbox)  # not yet accepted by the shared finaliser
        return out

    async def get(self, usage_id: str) -> UsageRecord | None:
        """One record by id (pending, unsent or recently final), once queued facts are applied."""
        await self.barrier()
        return self.join.get(usage_id)


class Spool(Joining):
    """The durable local spool in ``directory`` (fact log segments). Call :meth:`open` first."""

    def __init__(
        self,
        directory: Path | str,
        *,
        finalizer: Callable[[], Finalizer],
        on_applied: Callable[[Applied], None],
        clock: Callable[[], float] = time.time,
        instance: str = "",
        group_commit_ms: float = 0.0,
        segment_bytes: int | None = None,
        remote: bool = False,
        expand: Expand | None = None,
    ) -> None:
        super().__init__(
            finalizer=finalizer,
            on_applied=on_applied,
            clock=clock,
            instance=instance,
            remote=remote,
            expand=expand,
        )
        self.directory = Path(directory)
        self.path = self.directory  # what logs and reports name
        self._deadlines = Deadlines()
        self.log = FactLog(
            self.directory,
            on_durable=self._durable,
            group_commit_ms=group_commit_ms,
            segment_bytes=segment_bytes or DEFAULT_SEGMENT_BYTES,
        )

    # ---- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Replay the log, carry over a legacy spool, open a warmed segment, start writing."""
        try:
            facts, segments, legacy = await asyncio.to_thread(_replay, self.directory)
        except FileNotFoundError:
            facts, segments, legacy = [], [], None
        except Exception as e:
            raise SpoolError(f"cannot read the spool in {self.directory}: {e}") from e
        await asyncio.to_thread(self.log.open)
        self.log.start()
        for seq in segments:
            self.join.register_segment(seq)
        now_ms = int(self._clock() * 1000)
        fin = self._finalizer()
        for seq, group in _by_segment(facts):
            self._take(group, seq, fin, now_ms)
        self.join.seal(self.log.active)
        if facts:
            log.info(
                "spool.replayed",
                facts=len(facts),
                pending=self.join.pending_count,
                unsent=self.join.unsent_count,
            )
        if legacy is not None:
            await self._carry_over(legacy)

    async def _carry_over(self, facts: list[Fact]) -> None:
        payloads = legacy_payloads(facts)
        if payloads:
            fut = self.log.append(payloads, facts)
            assert fut is not None
            await fut
        await asyncio.to_thread(retire_legacy, self.directory)
        log.info("spool.legacy_migrated", facts=len(payloads))

    async def close(self) -> None:
        """Write what is queued and close the log. Later calls raise :class:`SpoolError`."""
        await self.log.close()

    @property
    def closed(self) -> bool:
        """True before :meth:`open` and after :meth:`close`."""
        return self.log.closed

    # ---- writing ---------------------------------------------------------------------------

    async def reserve(self, record: UsageRecord, deadline_s: float | None = None) -> None:
        """Write a reserved fact; durable (fdatasynced) when this returns.

        With ``deadline_s``, raise :class:`TimeoutError` if it is not durable by then (the fact
        is then voided, as when the caller is cancelled).
        """
        uid = record.usage_id
        if not uid:
            raise SpoolError("a usage record needs a usage_id")
        if self.join.known(uid):
            raise SpoolError(f"duplicate usage_id {uid}")
        blob = record.SerializeToString()
        fut = self.log.append(
            (encode_reserved(blob),),
            (Reserved(uid, record.admitted_at_ms, record.request_id, blob),),
        )
        assert fut is not None
        if deadline_s is not None:
            self._deadlines.add(fut, deadline_s)
        try:
            await fut
        except (asyncio.CancelledError, TimeoutError):
            # The caller gave up (Check deadline): it will not answer OK, so the record, if it
            # was written at all, must never be billed. A void fact follows it in the log.
            self._void_quietly(uid, record.request_id)
            raise
        USAGE_RESERVED.inc()

    def _void_quietly(self, usage_id: str, request_id: str) -> None:
        entry = void_entry(usage_id, request_id, "check_cancelled")
        try:
            self.served([entry], int(self._clock() * 1000))
        except SpoolError:
            log.error("spool.void_failed", usage_id=usage_id)

    def served(self, entries: Sequence[LogEntry], now_ms: int) -> asyncio.Future[None] | None:
        """Queue served facts for entries; an entry without a usage id voids its request's.

        Returns the batch's future (None when no entry made a fact); a failed write is logged
        and counted by the log.
        """
        facts: list[Served] = []
        for e in entries:
            if e.usage_id is None and self.remote:  # the reservation may be another replica's
                e = void_entry("", e.request_id, e.response_flags or "no_metadata")
            elif e.usage_id is None:
                uid = self.join.pending_for_request(e.request_id)
                if uid is None:
                    continue
                e = void_entry(uid, e.request_id, e.response_flags or "no_metadata")
            facts.append(Served(e, now_ms, self._instance))
        if not facts:
            return None
        headers = self._finalizer().header_names
        return self.log.append([encode_served(f, headers) for f in facts], facts)

    async def expire(
        self, cutoff_ms: int, now_ms: int, fin: Finalizer, limit: int = 5000
    ) -> tuple[list[UsageRecord], int]:
        """Finalise reservations admitted at or before ``cutoff_ms`` as UNCONFIRMED.

        The decisions are written to the log as final facts (so a replay and ``tollhouse usage
        reconcile`` see them) before the records can be forwarded. Also drops served facts
        older than the cutoff whose reservation never came; returns the records and how many.
        """
        records, orphans = self.join.expire(cutoff_ms, now_ms, fin, limit)
        if records:
            fut = self.log.append([encode_final(r) for r in records], ())
            assert fut is not None
            await fut
        return records, orphans

    def _durable(self, w: Written) -> None:
        self._take(w.metas, w.segment, self._finalizer(), int(self._clock() * 1000))
        self.join.seal(w.active)

    def _free_segment(self, seq: int) -> None:
        with contextlib.suppress(SpoolError):  # closed: replayed (and freed) at the next start
            self.log.delete(seq)

    async def barrier(self) -> None:
        """Return once every fact queued before the call is written and applied."""
        await self.log.barrier()


def _by_segment(facts: list[tuple[int, Fact]]) -> list[tuple[int, list[Fact]]]:
    out: list[tuple[int, list[Fact]]] = []
    for seq, fact in facts:
        if not out or out[-1][0] != seq:
            out.append((seq, []))
        out[-1][1].append(fact)
    return out
