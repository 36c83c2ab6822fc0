"""Usage alerts (issue 15, item 2): thresholds evaluated off the hot path, events to the outbox."""

from tollhouse.alerts.credit import CreditAlerts, credit_threshold
from tollhouse.alerts.quota import QuotaAlerts, crossing
from tollhouse.alerts.unattributed import UnattributedUsage

__all__ = ["CreditAlerts", "QuotaAlerts", "UnattributedUsage", "credit_threshold", "crossing"]
