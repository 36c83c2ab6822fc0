"""Usage alerts (issue 15, item 2): thresholds evaluated off the hot path, events to the outbox."""

from tollhouse.alerts.quota import QuotaAlerts, crossing

__all__ = ["QuotaAlerts", "crossing"]
