"""What final usage records do to quotas and credit: post-hoc units counted, voided ones given back.

The metering hooks (``on_confirmed`` / ``on_voided``) of either metering mode call these, on the
event loop of the process that holds the limiter.
"""

from __future__ import annotations

from typing import Any

__all__ = ["VOID_CHECK_CANCELLED", "QuotaEffects"]

VOID_CHECK_CANCELLED = "check_cancelled"  # the reason metering's spool gives a Check's own void


class QuotaEffects:
    """Applies final records to the app's limiter, on its current snapshot."""

    def __init__(self, app: Any) -> None:
        self._app = app

    def _limits_of(self, record: Any) -> Any:
        """The customer's limits now, or None (unknown customer or plan)."""
        snap = self._app.state.catalog
        cust = self._app.checker.identify(snap, record.customer)
        plan = snap.plan(getattr(cust, "plan", ""))
        if plan is None or not hasattr(cust, "plan"):
            return None
        return self._app.limits.for_customer(snap, cust, plan)

    def post_hoc_usage(self, record: Any) -> None:
        """Bytes/tokens meters known only from the access log count against quotas and credit."""
        meters = self._app.state.catalog.config.meters
        post_hoc = [
            (m, int(u))
            for m, u in record.units.items()
            if meters.get(m) and meters[m].source != "requests"
        ]
        if not post_hoc:
            return
        limits = self._limits_of(record) if self._app.limiter is not None else None
        for meter, units in post_hoc if limits is not None else ():
            self._app.limiter.add_usage(record.customer, meter, units, limits, self._app.clock())
        prepaid = self._prepaid(record)
        if prepaid is not None:
            grants, prices = prepaid
            for meter, units in post_hoc:
                self._app.credits.charge(
                    grants, meter, record.feature, prices.cost(meter, units), self._app.clock()
                )

    def _prepaid(self, record: Any) -> tuple[Any, Any] | None:
        """The customer's grants and its prepaid plan's prices, if it is on one."""
        if self._app.credits is None:
            return None
        snap = self._app.state.catalog
        cust = self._app.checker.identify(snap, record.customer)
        prices = snap.credit_prices.get(getattr(cust, "plan", ""))
        return None if prices is None else (getattr(cust, "credit_grants", ()), prices)

    def refund_voided(self, record: Any) -> None:
        """A VOIDED reservation (never served) gives its request units back to the quota.

        Not a Check that gave up (``check_cancelled``): it released its own admission.
        """
        if record.response_flags == VOID_CHECK_CANCELLED:
            return
        feature = self._app.state.catalog.config.features.get(record.feature)
        if feature is None:
            return
        limits = self._limits_of(record) if self._app.limiter is not None else None
        if limits is not None:
            self._app.limiter.refund(
                record.customer, feature.meters, limits, record.admitted_at_ms / 1000
            )
        prepaid = self._prepaid(record)
        if prepaid is not None:
            grants, prices = prepaid
            for meter, cost in prices.admission_costs(feature.meters).items():
                self._app.credits.refund(grants, meter, record.feature, cost, self._app.clock())
