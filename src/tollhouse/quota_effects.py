"""What final usage records do to quotas: post-hoc units counted, voided units given back.

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
        return self._app.limits.for_customer(cust, plan)

    def post_hoc_usage(self, record: Any) -> None:
        """Bytes/tokens meters known only from the access log count against quotas."""
        limits = self._limits_of(record)
        if limits is None:
            return
        meters = self._app.state.catalog.config.meters
        for meter, units in record.units.items():
            if meters.get(meter) and meters[meter].source != "requests":
                self._app.limiter.add_usage(record.customer, meter, int(units), limits,
                                            self._app.clock())

    def refund_voided(self, record: Any) -> None:
        """A VOIDED reservation (never served) gives its request units back to the quota.

        Not a Check that gave up (``check_cancelled``): it released its own admission.
        """
        if record.response_flags == VOID_CHECK_CANCELLED:
            return
        limits = self._limits_of(record)
        feature = self._app.state.catalog.config.features.get(record.feature)
        if limits is None or feature is None:
            return
        self._app.limiter.refund(record.customer, feature.meters, limits,
                                 record.admitted_at_ms / 1000)

