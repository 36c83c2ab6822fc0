"""The composition root's choices: which metering, store, outbox and alerts ``serve`` runs.

Each ``open_*`` reads the config and returns the component, or None when the config leaves it
out; :class:`tollhouse.app.App` starts and stops what they return. Imports are local, so a
process that never opens a component never loads its packages.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tollhouse.config import Config

__all__ = [
    "open_credit_alerts",
    "open_credits",
    "open_directory",
    "open_evaluators",
    "open_metering",
    "open_quota_alerts",
    "open_spend_alerts",
    "open_spend_caps",
    "open_unattributed",
    "open_webhooks",
    "past_due_grace",
]


def open_metering(config_path: Path, cfg: Config, clock: Callable[[], float], instance: str) -> Any:
    """The metering of this process: a front for the worker process, or all of it inline."""
    if cfg.metering.process == "worker":
        from tollhouse.metering.front import MeteringFront

        return MeteringFront(cfg, config_path=config_path, clock=clock, instance=instance)
    from functools import partial

    from tollhouse.envoy.als import entries_of
    from tollhouse.metering import Metering

    expand = partial(entries_of, usage_id_from_header=cfg.metering.usage_id_from_request_header)
    return Metering(cfg, clock=clock, instance=instance, expand=expand)


def open_directory(cfg: Config) -> Any:
    """The store's in-memory Directory, when the config has a ``store``."""
    store = getattr(cfg, "store", None)
    if store is None:
        return None
    from tollhouse.store import Directory

    return Directory(store)


def open_credits(cfg: Config, directory: Any, clock: Callable[[], float], instance: str) -> Any:
    """The prepaid credit book, whenever there is a store (a reload may add a prepaid plan).

    Spend is flushed to the store through a connection of its own; counters are shared through
    Redis when ``counters`` is a Redis URL, else kept in this process.
    """
    store = getattr(cfg, "store", None)
    if store is None or directory is None:
        return None
    from tollhouse.credits import CreditBook, open_counters
    from tollhouse.store import StoreService, connect_backend

    service = StoreService(connect_backend(store.url), clock=clock)

    async def flush(deltas: Any) -> None:
        await service.add_consumed(deltas)

    counters = open_counters(cfg.counters, clock=clock, instance=instance)
    return CreditBook(
        counters,
        clock=clock,
        seed=directory.credit_seed,
        flush=flush,
        on_stop=service.backend.close,
    )


def open_webhooks(cfg: Config, clock: Callable[[], float], instance: str) -> Any:
    """The webhook outbox and delivery loop, when there is a store and delivery is enabled."""
    store = getattr(cfg, "store", None)
    if store is None or not cfg.webhooks.enabled:
        return None
    from tollhouse.webhooks.runner import WebhookRunner

    return WebhookRunner(store.url, cfg.webhooks, clock=clock, owner=instance)


def past_due_grace(cfg: Config) -> float:
    """Seconds a ``past_due`` customer is still served (``store.past_due_grace_s``; 7 days)."""
    store = getattr(cfg, "store", None)
    return float(getattr(store, "past_due_grace_s", 7 * 86400))


def open_quota_alerts(
    cfg: Config,
    *,
    limiter: Any,
    webhooks: Any,
    checker: Any,
    catalog: Callable[[], Any],
    limits_for: Callable[[Any, Any], Any],
    clock: Callable[[], float],
) -> Any:
    """The quota alert evaluator, when thresholds, counters and the outbox are all there."""
    if not cfg.alerts.any_quota or limiter is None or webhooks is None:
        return None
    from tollhouse.alerts import QuotaAlerts
    from tollhouse.decision import Deny

    def resolve(cid: str) -> tuple[Any, Any] | None:
        snap = catalog()
        cust = checker.lookup(snap, cid)
        return None if isinstance(cust, Deny) else (cust, snap.plan(cust.plan))

    return QuotaAlerts(
        cfg.alerts,
        limiter=limiter,
        resolve=resolve,
        limits_for=limits_for,
        emit=webhooks.emit,
        clock=clock,
    )


def open_spend_caps(cfg: Config, app: Any) -> Any:
    """The spend-cap evaluator, whenever there is a store (customers set caps themselves)."""
    if getattr(cfg, "store", None) is None or app.directory is None:
        return None
    from tollhouse.credits.spend_caps import SpendCaps
    from tollhouse.usage_http import spend_lookup

    emit = app.webhooks.emit if app.webhooks is not None else None
    return SpendCaps(app.directory, spend_lookup(app), emit=emit)


def open_credit_alerts(cfg: Config, app: Any) -> Any:
    """The credit alert evaluator, when there are credits and an outbox to emit to."""
    if app.credits is None or app.webhooks is None:
        return None
    from tollhouse.alerts import CreditAlerts

    return CreditAlerts(
        cfg.alerts,
        book=app.credits,
        directory=app.directory,
        emit=app.webhooks.emit,
        clock=app.clock,
    )


def open_unattributed(app: Any) -> Any:
    """The ``usage.unattributed`` reporter, wired to metering, when there is an outbox."""
    if app.metering is None or app.webhooks is None:
        return None
    from tollhouse.alerts import UnattributedUsage

    reporter = UnattributedUsage(emit=app.webhooks.emit, instance=app.instance, clock=app.clock)
    app.metering.on_orphans = reporter.add
    return reporter


def open_spend_alerts(cfg: Config, app: Any) -> Any:
    """The spend threshold evaluator, when thresholds, counters and the outbox are all there."""
    if not cfg.alerts.any_spend or app.limiter is None or app.webhooks is None:
        return None
    from tollhouse.alerts import SpendAlerts
    from tollhouse.decision import Deny
    from tollhouse.usage_http import spend_lookup

    def plan_of(cid: str) -> str | None:
        cust = app.checker.lookup(app.state.catalog, cid)
        return None if isinstance(cust, Deny) else str(cust.plan)

    return SpendAlerts(
        cfg.alerts,
        customers=app.limiter.customer_ids,
        plan_of=plan_of,
        lookup=spend_lookup(app),
        emit=app.webhooks.emit,
    )


def open_evaluators(app: Any) -> list[Any]:
    """Every evaluator ``serve`` runs off the hot path (each has ``run(stop_event)``)."""
    quota = open_quota_alerts(
        app.cfg,
        limiter=app.limiter,
        webhooks=app.webhooks,
        checker=app.checker,
        catalog=lambda: app.state.catalog,
        # a background round: the catalog of the moment (the next round sees a reload)
        limits_for=lambda cust, plan: app.limits.for_customer(app.state.catalog, cust, plan),
        clock=app.clock,
    )
    found = [
        quota,
        app.spend_caps,
        open_credit_alerts(app.cfg, app),
        open_spend_alerts(app.cfg, app),
        open_unattributed(app),
    ]
    return [e for e in found if e is not None]
