"""Usage alerts, evaluated off the hot path: quota, credit, spend, unattributed usage."""

from tollhouse.alerts.credit import CreditAlerts, credit_threshold
from tollhouse.alerts.quota import QuotaAlerts, crossing
from tollhouse.alerts.spend import SpendAlerts
from tollhouse.alerts.unattributed import UnattributedUsage

__all__ = [
    "CreditAlerts",
    "QuotaAlerts",
    "SpendAlerts",
    "UnattributedUsage",
    "credit_threshold",
    "crossing",
]
