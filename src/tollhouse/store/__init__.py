"""The entitlement store: customers, subscriptions, API key hashes, overrides, top-ups, audit."""

from tollhouse.store.backend import StoreUnavailable, connect_backend
from tollhouse.store.directory import Directory
from tollhouse.store.models import (
    STATUSES,
    ApiKeyInfo,
    AuditEntry,
    Customer,
    IssuedKey,
    PlanChangeRecord,
    ServiceError,
    TopUpRecord,
    period_start,
)
from tollhouse.store.schema import SCHEMA_VERSION, SchemaError, migrate, open_store
from tollhouse.store.service import StoreService, hash_key

__all__ = [
    "SCHEMA_VERSION",
    "STATUSES",
    "ApiKeyInfo",
    "AuditEntry",
    "Customer",
    "Directory",
    "IssuedKey",
    "PlanChangeRecord",
    "SchemaError",
    "ServiceError",
    "StoreService",
    "StoreUnavailable",
    "TopUpRecord",
    "connect_backend",
    "hash_key",
    "migrate",
    "open_store",
    "period_start",
]
