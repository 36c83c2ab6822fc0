"""The Check: named phases that produce one :data:`Decision`, failing closed.

credentials+authenticate -> identify -> entitle -> cap -> admit -> pay -> record -> answer
(cap: the customer's own spend cap; pay: the prepaid credit balance, ``tollhouse.credits``).
Every phase returns a value; an exception anywhere becomes a 503 ``internal_error`` (never an OK).
Nothing here does network or disk I/O except the awaited spool write and, rarely, a quota or
credit lease.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

from tollhouse.authn import AuthnFailure, Principal
from tollhouse.config import PlanConfig
from tollhouse.credits.book import CreditBook, Shortfall, Spend
from tollhouse.credits.prices import CreditPrices
from tollhouse.credits.spend_caps import Capped, SpendCaps
from tollhouse.decision import USAGE_ID_KEY, Allow, Decision, Deny, RequestInfo, unavailable
from tollhouse.entitlements import Catalog
from tollhouse.limits import standing_headers
from tollhouse.logs import get_logger
from tollhouse.quota.limiter import Admission, Limiter, Limits
from tollhouse.store.credit_models import MILLI
from tollhouse.subscriber import Subscriber

if TYPE_CHECKING:
    from tollhouse._pb.tollhouse.v1.usage_pb2 import UsageRecord

__all__ = ["Checker", "CustomerSource", "Recorder", "State"]

log = get_logger(__name__)
Headers = tuple[tuple[str, str], ...]

H_CUSTOMER = "x-tollhouse-customer"
H_PLAN = "x-tollhouse-plan"
H_FEATURE = "x-tollhouse-feature"
H_USAGE_ID = "x-tollhouse-usage-id"
IDENTITY_HEADERS = (H_CUSTOMER, H_PLAN, H_FEATURE, H_USAGE_ID)


class CustomerSource(Protocol):
    """The live entitlement store's in-memory view (``store.Directory``)."""

    def customer(self, customer_id: str) -> Subscriber | None:
        """The customer's subscription, or None if the store does not know it."""


class Recorder(Protocol):
    """What the Checker needs of metering: a reservation, written durably before the OK."""

    def build_reservation(
        self,
        *,
        customer: str,
        plan: str,
        feature: str,
        method: str,
        path: str,
        request_id: str,
        decision_id: str,
        degraded: bool = False,
        units: Mapping[str, int] | None = None,
    ) -> UsageRecord:
        """A RESERVED record with a fresh usage id, for the request being admitted."""
        ...

    async def reserve(self, record: UsageRecord, deadline_s: float | None = None) -> None:
        """Write ``record`` durably, or raise (``TimeoutError`` past ``deadline_s``)."""
        ...


class AuthnLike(Protocol):
    """What the Checker needs of :class:`tollhouse.authn.Authenticator`."""

    def authenticate(self, headers: Mapping[str, str]) -> Principal | AuthnFailure: ...
    def www_authenticate(self, failure: AuthnFailure) -> str: ...


class State:
    """The current snapshot, swapped atomically by the reloader (a single attribute store)."""

    __slots__ = ("catalog",)

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog


class Checker:
    """Turns a :class:`RequestInfo` into a :data:`Decision`."""

    def __init__(
        self,
        state: State,
        authenticator: AuthnLike,
        *,
        limiter: Limiter | None = None,
        metering: Recorder | None = None,
        credits: CreditBook | None = None,
        spend_caps: SpendCaps | None = None,
        directory: CustomerSource | None = None,
        limits_for: Callable[[Catalog, Subscriber, PlanConfig], Limits] | None = None,
        clock: Callable[[], float] = time.time,
        past_due_grace_s: float = 7 * 86400,
        deadline_s: float = 0.15,
    ) -> None:
        self.state = state
        self.authn = authenticator
        self.limiter = limiter
        self.metering = metering
        self.credits = credits  # tollhouse.credits.CreditBook, when a plan is prepaid
        self.spend_caps = spend_caps  # tollhouse.credits.SpendCaps, when there is a store
        self.directory = directory
        self.limits_for = limits_for
        self.clock = clock
        self.past_due_grace_s = past_due_grace_s
        self.deadline_s = deadline_s
        self._ids = itertools.count(1)
        self._prefix = f"{os.getpid():x}{int(time.time()) & 0xFFFFF:x}"

    async def check(self, req: RequestInfo) -> Decision:
        """Decide; never raises."""
        try:
            return await self._check(req)
        except Exception:
            log.error("check.internal_error", exc=True, method=req.method, path=req.path)
            return unavailable("internal_error", "tollhouse could not decide")

    async def _check(self, req: RequestInfo) -> Decision:
        snap = self.state.catalog
        principal = self.authn.authenticate(req.headers)
        if isinstance(principal, AuthnFailure):
            return self._authn_deny(principal)
        customer = self.lookup(snap, principal.customer)
        if isinstance(customer, Deny):
            return customer
        plan = snap.plan(customer.plan)
        refusal = self._refusal(customer)
        if refusal is not None:
            return self._with_limits(refusal, snap, customer, plan)
        if plan is None:
            return unavailable("unknown_plan", f"plan {customer.plan!r} is not in the catalog")
        feature = self._entitle(snap, customer, req)
        if isinstance(feature, Deny):
            return self._with_limits(feature, snap, customer, plan)
        meters = snap.config.features[feature].meters
        if not meters:  # a free feature (e.g. /v1/usage): no quota, nothing to bill
            return self._answer(
                customer, feature, "", None, headers=self._standing(snap, customer, plan)
            )
        return await self._charge(snap, customer, plan, feature, meters, req)

    async def _charge(
        self,
        snap: Catalog,
        cust: Subscriber,
        plan: PlanConfig,
        feature: str,
        meters: Sequence[str],
        req: RequestInfo,
    ) -> Decision:
        """Spend cap, then quota and rate limits, then prepaid credit; then record and answer."""
        capped = self.spend_caps.blocked(cust.id) if self.spend_caps is not None else None
        if capped is not None:
            return self._with_limits(self._capped(cust.id, capped), snap, cust, plan)
        admission: Admission | None = None
        if self.limiter is not None and self.limits_for is not None:
            admitted = await self._admit(
                self.limiter, self.limits_for(snap, cust, plan), cust, meters
            )
            if isinstance(admitted, Deny):
                return admitted
            admission = admitted
        credit: Spend | None = None
        prices = snap.credit_prices.get(cust.plan)
        if prices is not None:
            paid = await self._spend_credit(cust, prices, feature, meters)
            if isinstance(paid, Deny):
                self._undo(admission, None)
                return self._with_limits(paid, snap, cust, plan)
            credit = paid
        return await self._record_and_answer(snap, cust, feature, req, admission, credit)

    @staticmethod
    def _capped(cid: str, c: Capped) -> Deny:
        return Deny(
            402,
            "spend_cap_reached",
            "Payment required",
            f"spend this period reached the customer's cap of {c.cap} ({c.currency} minor units)",
            customer=cid,
            extra={"cap": c.cap, "spent": c.spent, "currency": c.currency},
        )

    async def _spend_credit(
        self, cust: Subscriber, prices: CreditPrices, feature: str, meters: Sequence[str]
    ) -> Spend | Deny | None:
        """Take the request's price from the prepaid balance: a Spend, None (allowed) or Deny."""
        if self.credits is None:
            return unavailable("credits_unavailable", "prepaid credit cannot be checked")
        now = self.clock()
        got = await self.credits.spend(
            cust.id, cust.credit_grants, prices.admission_costs(meters), feature, now
        )
        if not isinstance(got, Shortfall):
            return got
        if got.reason == "unavailable":
            return unavailable("credits_unavailable", "the credit counters are unreachable")
        if not prices.deny_when_exhausted:
            return None  # on_credit_exhausted: allow -- served, billed on the invoice
        return Deny(
            402,
            "credit_exhausted",
            "Payment required",
            "the prepaid credit balance is used up",
            customer=cust.id,
            extra={"balance": got.balance // MILLI, "currency": prices.currency},
        )

    def _standing(self, snap: Catalog, cust: Subscriber, plan: PlanConfig | None) -> Headers:
        """RateLimit headers for an answer that spends nothing (the customer's plan is known)."""
        if self.limiter is None or self.limits_for is None or plan is None:
            return ()
        return standing_headers(
            self.limiter, cust.id, self.limits_for(snap, cust, plan), self.clock()
        )

    def _with_limits(
        self, deny: Deny, snap: Catalog, cust: Subscriber, plan: PlanConfig | None
    ) -> Deny:
        """A 402 / 403 of a known customer also carries its RateLimit headers."""
        headers = self._standing(snap, cust, plan)
        return replace(deny, headers=deny.headers + headers) if headers else deny

    def _authn_deny(self, f: AuthnFailure) -> Deny:
        headers: tuple[tuple[str, str], ...] = ()
        if f.status == 401:
            headers = (("www-authenticate", self.authn.www_authenticate(f)),)
        elif f.status == 503:
            return unavailable(f.code, f.detail)
        title = "Unauthorized" if f.status == 401 else "Bad request"
        return Deny(f.status, f.code, title, f.detail, headers=headers)

    def identify(self, snap: Catalog, cid: str) -> Subscriber | Deny:
        """The customer entry (store, then config, then default plan), or why it is refused."""
        cust = self.lookup(snap, cid)
        if isinstance(cust, Deny):
            return cust
        refusal = self._refusal(cust)
        return cust if refusal is None else refusal

    def lookup(self, snap: Catalog, cid: str) -> Subscriber | Deny:
        """The customer entry (store, then config, then default plan), whatever its status."""
        cust = self.directory.customer(cid) if self.directory is not None else None
        if cust is None:
            cust = snap.customers.get(cid)
        if cust is None:
            default = snap.config.default_plan
            if default is None:
                return Deny(403, "unknown_customer", "Forbidden", "no subscription for caller")
            return Subscriber.on_default_plan(cid, default)
        return cust

    def _refusal(self, cust: Subscriber) -> Deny | None:
        """Why the subscription's status refuses service now (402 / 403), or None."""
        status = cust.status
        if status == "active":
            return None
        cid = cust.id
        if status == "suspended":
            return Deny(
                402,
                "payment_required",
                "Payment required",
                "the subscription is suspended",
                customer=cid,
            )
        if status == "cancelled":
            return Deny(
                403,
                "subscription_cancelled",
                "Forbidden",
                "the subscription is cancelled",
                customer=cid,
            )
        since = cust.status_since_s
        if (
            status == "past_due"
            and since is not None
            and self.clock() - since <= self.past_due_grace_s
        ):
            return None
        return Deny(
            402,
            "payment_required",
            "Payment required",
            "the subscription is past due",
            customer=cid,
        )

    def _entitle(self, snap: Catalog, cust: Subscriber, req: RequestInfo) -> str | Deny:
        candidates = snap.matcher.features_for(req.method, req.path)
        if not candidates:
            return Deny(
                403,
                "unknown_route",
                "Forbidden",
                f"no feature covers {req.method} {req.path}",
                customer=cust.id,
            )
        entitled = snap.plan_features.get(cust.plan, frozenset())
        feature = snap.matcher.first_entitled(candidates, entitled)
        if feature is None:
            return Deny(
                403,
                "not_entitled",
                "Forbidden",
                f"plan {cust.plan!r} does not include {candidates[0]!r}",
                customer=cust.id,
                extra={"feature": candidates[0]},
            )
        return feature

    async def _admit(
        self, limiter: Limiter, limits: Limits, cust: Subscriber, meters: Sequence[str]
    ) -> Admission | Deny:
        adm = await limiter.admit(cust.id, meters, limits, self.clock())
        if adm.allowed:
            return adm
        extra = {"limit": adm.limit}
        retry = (("retry-after", str(max(1, adm.retry_after_s))),)
        if adm.code == "counters_unavailable":
            return Deny(
                503,
                adm.code,
                "Service unavailable",
                "usage counters are unreachable",
                headers=retry + adm.headers,
                customer=cust.id,
                extra=extra,
            )
        detail = f"limit {adm.limit} reached"
        return Deny(
            429,
            adm.code or "quota_exceeded",
            "Too many requests",
            detail,
            headers=retry + adm.headers,
            customer=cust.id,
            extra=extra,
        )

    def _undo(self, adm: Admission | None, credit: Spend | None) -> None:
        """Give back what an admission took; its request is not let through."""
        if adm is not None and self.limiter is not None:
            self.limiter.release(adm)
        if credit is not None and self.credits is not None:
            self.credits.release(credit)

    async def _record_and_answer(
        self,
        snap: Catalog,
        cust: Subscriber,
        feature: str,
        req: RequestInfo,
        adm: Admission | None,
        credit: Spend | None = None,
    ) -> Decision:
        decision_id = f"{self._prefix}-{next(self._ids):x}"
        usage_id = ""
        if self.metering is not None:
            rec = self.metering.build_reservation(
                customer=cust.id,
                plan=cust.plan,
                feature=feature,
                method=req.method,
                path=req.path,
                request_id=req.request_id,
                decision_id=decision_id,
                degraded=bool(adm is not None and adm.degraded),
                units=snap.request_units.get(feature),
            )
            try:  # a hung disk must not hang Envoy: the spool fails the wait at the deadline
                await self.metering.reserve(rec, self.deadline_s)
            except asyncio.CancelledError:  # Envoy gave up on the Check: it never used an OK
                self._undo(adm, credit)
                raise
            except TimeoutError:
                self._undo(adm, credit)
                log.error("check.spool_timeout", customer=cust.id)
                return unavailable("deadline_exceeded", "usage could not be recorded in time")
            except Exception as e:  # SpoolError or anything below it: never admit unbillable
                self._undo(adm, credit)
                log.error("check.spool_failed", error=type(e).__name__, customer=cust.id)
                return unavailable("spool_unavailable", "usage cannot be recorded")
            usage_id = rec.usage_id
        return self._answer(cust, feature, usage_id, adm, decision_id)

    def _answer(
        self,
        cust: Subscriber,
        feature: str,
        usage_id: str,
        adm: Admission | None,
        decision_id: str = "",
        headers: Headers = (),
    ) -> Allow:
        decision_id = decision_id or f"{self._prefix}-{next(self._ids):x}"
        upstream = (
            (H_CUSTOMER, cust.id),
            (H_PLAN, cust.plan),
            (H_FEATURE, feature),
            (H_USAGE_ID, usage_id),
        )
        meta: dict[str, str | int | bool] = {
            "customer": cust.id,
            "plan": cust.plan,
            "feature": feature,
            "decision_id": decision_id,
            USAGE_ID_KEY: usage_id,
        }
        if adm is not None and adm.degraded:
            meta["degraded"] = True
        return Allow(
            customer=cust.id,
            plan=cust.plan,
            feature=feature,
            decision_id=decision_id,
            usage_id=usage_id,
            upstream_headers=upstream,
            response_headers=adm.headers if adm is not None else headers,
            metadata=meta,
        )
