"""The local finaliser: joins reserved and served facts by usage id, in memory.

Fed (on the event loop) with every fact once it is durable in the fact log, and at start with
every fact the log still holds, so its state after a crash is rebuilt by replay. It keeps:

- pending reservations (serialized, ~150 bytes each), indexed by usage id, by Envoy request id
  (an entry without metadata voids the reservation of its request) and by admission time (the
  grace-period sweep);
- served facts whose reservation has not arrived ("orphans"), until the grace period ends: then
  they are counted (``tollhouse_usage_served_orphans_total``) and never billed;
- final records not yet acknowledged by the meter, and a bounded memory of recently finalised
  ids, so a second entry for a final record is a counted duplicate, never a second bill.

It also counts, per log segment, the facts that are not yet done (a reservation or served fact
is done when its final record is acknowledged by the meter; an orphan when it expires; a
duplicate at once), and reports a sealed segment whose count reaches zero so it is deleted.
"""

from __future__ import annotations

import heapq
from collections import Counter as Tally
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tollhouse.metering.facts import Fact, Final, Reserved, Served
from tollhouse.metering.policy import Finalizer, LogEntry
from tollhouse.metering.schema import UsageRecord

__all__ = ["Applied", "Join"]

_RECENT_MAX = 100_000  # finalised ids remembered for duplicate detection (and get())


@dataclass(slots=True)
class Applied:
    """What a batch of facts did: the records it finalised and what it ignored."""

    finalized: list[UsageRecord] = field(default_factory=list)
    duplicate: int = 0
    errors: int = 0


@dataclass(slots=True)
class _Pending:
    fact: Reserved
    segment: int


@dataclass(slots=True)
class _Unsent:
    record: bytes  # serialized: ~190 bytes, a parsed UsageRecord costs ~1.6 KB
    state: int
    segments: tuple[int, ...]


_NOWHERE = Applied()  # for records finalised outside a batch (the sweep returns its own list)


class Join:
    """The join state of one process. Not thread-safe: use it from the event loop only."""

    def __init__(self, on_segment_free: Callable[[int], None]) -> None:
        self._on_free = on_segment_free
        self._pending: dict[str, _Pending] = {}
        self._by_request: dict[str, str] = {}
        self._due: list[tuple[int, str]] = []  # (admitted_ms, usage_id), lazily cleaned
        self._orphans: dict[str, tuple[Served, int]] = {}
        self._orphans_due: list[tuple[int, str]] = []
        self._unsent: dict[str, _Unsent] = {}
        self._unsent_states: Tally[int] = Tally()
        self._recent: OrderedDict[str, tuple[int, bytes]] = OrderedDict()
        self._recent_states: Tally[int] = Tally()
        self._open: dict[int, int] = {}
        self._active = 0

    # ---- segments ---------------------------------------------------------------------------

    def register_segment(self, seq: int) -> None:
        """Track a segment that exists on disk (it is deleted once sealed and empty of work)."""
        self._open.setdefault(seq, 0)

    def seal(self, active: int) -> None:
        """Segments below ``active`` are sealed: free those with no open fact."""
        if active <= self._active:
            return
        self._active = active
        for seq in [s for s, n in self._open.items() if n == 0 and s < active]:
            del self._open[seq]
            self._on_free(seq)

    def hold(self, seq: int) -> None:
        """One more open fact in segment ``seq`` (facts forwarded rather than joined here)."""
        self._hold(seq)

    def release(self, seq: int) -> None:
        """A fact of segment ``seq`` is done (acknowledged downstream)."""
        self._done(seq)

    def _hold(self, seq: int) -> None:
        self._open[seq] = self._open.get(seq, 0) + 1

    def _done(self, seq: int) -> None:
        n = self._open.get(seq, 0) - 1
        if n > 0:
            self._open[seq] = n
            return
        self._open[seq] = 0
        if seq < self._active:
            del self._open[seq]
            self._on_free(seq)

    # ---- facts ------------------------------------------------------------------------------

    def known(self, usage_id: str) -> bool:
        """True when a reservation with this id is pending, unsent or recently final."""
        return usage_id in self._pending or usage_id in self._unsent or usage_id in self._recent

    def pending_for_request(self, request_id: str) -> str | None:
        """The usage id of the pending reservation of this Envoy request id, if any."""
        return self._by_request.get(request_id) if request_id else None

    def apply(self, facts: Sequence[Fact], segment: int, fin: Finalizer, now_ms: int) -> Applied:
        """Apply durable facts written in ``segment``; return what they finalised."""
        out = Applied()
        for fact in facts:
            self._hold(segment)
            try:
                if isinstance(fact, Reserved):
                    self._reserved(fact, segment, fin, now_ms, out)
                elif isinstance(fact, Served):
                    self._served(fact, segment, fin, now_ms, out)
                elif isinstance(fact, Final):
                    self._final(fact, segment, out)
                else:  # an access-log batch is expanded into served facts before it gets here
                    raise TypeError(f"cannot join a {type(fact).__name__} fact")
            except Exception:  # a corrupt record or a bad entry: count it, keep the rest
                out.errors += 1
                self._done(segment)
        return out

    def _reserved(
        self, fact: Reserved, seg: int, fin: Finalizer, now_ms: int, out: Applied
    ) -> None:
        uid = fact.usage_id
        if self.known(uid):  # replayed twice (an interrupted upgrade): one record only
            out.duplicate += 1
            self._done(seg)
            return
        orphan = self._orphans.pop(uid, None)
        if orphan is not None:
            served, served_seg = orphan
            self._finish(
                fin.confirm(UsageRecord.FromString(fact.record), served.entry, now_ms),
                (seg, served_seg),
                out,
            )
            return
        self._pending[uid] = _Pending(fact, seg)
        if fact.request_id:
            self._by_request[fact.request_id] = uid
        heapq.heappush(self._due, (fact.admitted_ms, uid))

    def _served(self, fact: Served, seg: int, fin: Finalizer, now_ms: int, out: Applied) -> None:
        uid = fact.entry.usage_id or self.pending_for_request(fact.entry.request_id) or ""
        if not uid:  # a void by request id (written in redis mode) with nothing to void here
            self._done(seg)
            return
        pending = self._take_pending(uid)
        if pending is not None:
            rec = fin.confirm(UsageRecord.FromString(pending.fact.record), fact.entry, now_ms)
            self._finish(rec, (pending.segment, seg), out)
            return
        if uid in self._unsent or uid in self._recent or uid in self._orphans:
            out.duplicate += 1  # already final (or already waiting): never bills twice
            self._done(seg)
            return
        self._orphans[uid] = (fact, seg)
        heapq.heappush(self._orphans_due, (fact.received_ms, uid))

    def _final(self, fact: Final, seg: int, out: Applied) -> None:
        pending = self._take_pending(fact.record.usage_id)
        if pending is not None:  # the grace-period decision, replayed
            self._finish(fact.record, (pending.segment, seg), out, count=False)
            return
        if self.known(fact.record.usage_id):
            out.duplicate += 1
            self._done(seg)
            return
        self._finish(fact.record, (seg,), out, count=False)

    def _take_pending(self, uid: str) -> _Pending | None:
        p = self._pending.pop(uid, None)
        if p is not None and p.fact.request_id and self._by_request.get(p.fact.request_id) == uid:
            del self._by_request[p.fact.request_id]
        return p

    def _finish(
        self, rec: UsageRecord, segs: tuple[int, ...], out: Applied, *, count: bool = True
    ) -> None:
        self._unsent[rec.usage_id] = _Unsent(rec.SerializeToString(), int(rec.state), segs)
        self._unsent_states[int(rec.state)] += 1
        if count:
            out.finalized.append(rec)

    # ---- the grace period -------------------------------------------------------------------

    def expire(
        self, cutoff_ms: int, now_ms: int, fin: Finalizer, limit: int = 5000
    ) -> tuple[list[UsageRecord], int]:
        """Finalise reservations admitted at or before ``cutoff_ms`` as UNCONFIRMED.

        Also drops served facts received at or before it whose reservation never came; returns
        the records and how many such orphans were dropped.
        """
        records: list[UsageRecord] = []
        while self._due and self._due[0][0] <= cutoff_ms and len(records) < limit:
            _, uid = heapq.heappop(self._due)
            pending = self._take_pending(uid)
            if pending is None:
                continue  # joined meanwhile
            rec = fin.expire(UsageRecord.FromString(pending.fact.record), now_ms)
            self._finish(rec, (pending.segment,), _NOWHERE, count=False)
            records.append(rec)
        orphans = 0
        while self._orphans_due and self._orphans_due[0][0] <= cutoff_ms:
            _, uid = heapq.heappop(self._orphans_due)
            orphan = self._orphans.pop(uid, None)
            if orphan is not None:
                orphans += 1
                self._done(orphan[1])
        return records, orphans

    # ---- forwarding -------------------------------------------------------------------------

    def unsent(self, limit: int) -> list[UsageRecord]:
        """Up to ``limit`` final records not yet acknowledged by the meter, oldest first."""
        out: list[UsageRecord] = []
        for u in self._unsent.values():
            if len(out) >= limit:
                break
            out.append(UsageRecord.FromString(u.record))
        return out

    def acknowledged(self, usage_ids: Sequence[str]) -> None:
        """The meter has these records: their facts are done, remember them as recent."""
        for uid in usage_ids:
            u = self._unsent.pop(uid, None)
            if u is None:
                continue
            state = u.state
            self._unsent_states[state] -= 1
            self._recent[uid] = (state, u.record)
            self._recent_states[state] += 1
            for seg in u.segments:
                self._done(seg)
        while len(self._recent) > _RECENT_MAX:
            _, (state, _) = self._recent.popitem(last=False)
            self._recent_states[state] -= 1

    # ---- inspection -------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Records by state (pending, unsent, recent), ``unsent`` and ``orphans``."""
        out = {name: 0 for name in UsageRecord.State.keys()}  # noqa: SIM118 (proto enum API)
        out["RESERVED"] = len(self._pending)
        for state, n in (self._unsent_states + self._recent_states).items():
            out[UsageRecord.State.Name(state)] += n  # type: ignore[arg-type,unused-ignore]
        out["unsent"] = len(self._unsent)
        out["orphans"] = len(self._orphans)
        return out

    def get(self, usage_id: str) -> UsageRecord | None:
        """The record of this id: pending, unsent or recently final; else None."""
        p = self._pending.get(usage_id)
        if p is not None:
            return UsageRecord.FromString(p.fact.record)
        u = self._unsent.get(usage_id)
        if u is not None:
            return UsageRecord.FromString(u.record)
        recent = self._recent.get(usage_id)
        return None if recent is None else UsageRecord.FromString(recent[1])

    def records(self) -> list[UsageRecord]:
        """Every pending and unsent record (the report reads a replayed log this way)."""
        out = [UsageRecord.FromString(p.fact.record) for p in self._pending.values()]
        return out + [UsageRecord.FromString(u.record) for u in self._unsent.values()]

    @property
    def pending_count(self) -> int:
        """Reservations waiting for their served fact."""
        return len(self._pending)

    @property
    def unsent_count(self) -> int:
        """Final records waiting for the meter's acknowledgement."""
        return len(self._unsent)


def void_entry(usage_id: str, request_id: str, reason: str) -> LogEntry:
    """A served entry that voids a reservation (Envoy never used the OK, or the Check gave up)."""
    return LogEntry(
        usage_id=usage_id, request_id=request_id, upstream_served=False, response_flags=reason
    )
