"""The composition root: the one place that wires everything together.

Config, authn, entitlements, quotas, metering, the entitlement store and the servers meet here;
everything else receives what it needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tollhouse.authn import Authenticator
from tollhouse.check import Checker, State
from tollhouse.components import (
    open_credits,
    open_directory,
    open_evaluators,
    open_metering,
    open_spend_caps,
    open_webhooks,
    past_due_grace,
)
from tollhouse.config import Config, ConfigError, counters_file, load_config
from tollhouse.config.reload import START_ONLY, SettledFiles, keep_start_only, restart_needed
from tollhouse.entitlements import build_catalog
from tollhouse.envoy import authz
from tollhouse.envoy.http_server import HttpAuthzServer
from tollhouse.gctune import tune_after_start
from tollhouse.http import AdminHttp
from tollhouse.limits import LimitsBuilder, needs_limiter, refresh_quota_gauges
from tollhouse.listeners import ListenError, check_listeners
from tollhouse.logs import get_logger
from tollhouse.metrics import (
    CONFIG_REJECTED,
    CONFIG_RELOADS,
    CONFIG_RESTART_NEEDED,
    READY,
    SPOOL_WRITABLE,
    set_config_version,
)
from tollhouse.quota_effects import QuotaEffects

__all__ = ["App", "serve"]

log = get_logger(__name__)
AUTHZ_SERVICE = "envoy.service.auth.v3.Authorization"
ALS_SERVICE = "envoy.service.accesslog.v3.AccessLogService"


class App:
    """A running tollhouse sidecar."""

    def __init__(self, config_path: Path, cfg: Config, *, clock: Callable[[], float] = time.time):
        self.config_path = config_path
        self.cfg = cfg
        self.clock = clock
        self.instance = cfg.instance or f"{socket.gethostname()}-{os.getpid()}"
        self.state = State(build_catalog(cfg, _read_bytes(config_path)))
        set_config_version(self.state.catalog.version)
        self.directory: Any = open_directory(cfg)
        lookup = self.directory.api_key_customer if self.directory is not None else None
        self.authn = Authenticator(cfg.auth, clock=clock, key_lookup=lookup)
        self.limits = LimitsBuilder()
        self.limiter: Any = None
        if needs_limiter(cfg):
            from tollhouse.quota import open_limiter

            self.limiter = open_limiter(
                cfg.counters, clock=clock, instance=self.instance, counters_file=counters_file(cfg)
            )
        self.metering: Any = None
        self.als: Any = None  # the access-log servicer, once started with metering on
        if cfg.metering.enabled:
            self.metering = open_metering(config_path, cfg, clock, self.instance)
        self.webhooks: Any = open_webhooks(cfg, clock, self.instance)
        self.credits: Any = open_credits(cfg, self.directory, clock, self.instance)
        self.spend_caps: Any = open_spend_caps(cfg, self)
        self.checker = Checker(
            self.state,
            self.authn,
            limiter=self.limiter,
            metering=self.metering,
            credits=self.credits,
            spend_caps=self.spend_caps,
            directory=self.directory,
            limits_for=self.limits.for_customer,
            clock=clock,
            past_due_grace_s=past_due_grace(cfg),
            deadline_s=cfg.check_deadline_ms / 1000,
        )
        self.authz = authz.AuthorizationServicer(self.checker)
        self.authz_http: HttpAuthzServer | None = None
        if cfg.authz_http_listen is not None:
            self.authz_http = HttpAuthzServer(self.checker, cfg.authz_http, cfg.authz_http_listen)
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.http = AdminHttp(self)
        self._files = SettledFiles(
            self._watched_files, lambda: self.cfg.reload_settle_s, clock=time.monotonic
        )
        self._restart_flags: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    @property
    def ready(self) -> bool:
        """Config, keys and entitlements are loaded, and the spool (if metering) can write."""
        dir_ok = self.directory is None or self.directory.ready
        spool = self.spool_health()
        return bool(self.authn.ready and dir_ok and (spool is None or spool.ok))

    def spool_health(self) -> Any:
        """The metering fact log's write health (``ok``, ``error``, ...), None without metering."""
        # The fact log: the worker's front writes it (``writer``), inline metering its ``spool``.
        owner = getattr(self.metering, "writer", None) or getattr(self.metering, "spool", None)
        return getattr(getattr(owner, "log", None), "health", None)

    def refresh_metrics(self) -> None:
        """Bring gauges that are otherwise updated by requests up to date (before a scrape)."""
        if self.limiter is None:
            return
        try:
            refresh_quota_gauges(self.limiter, self.clock())
        except Exception:  # a scrape still answers with what the gauges last held
            log.error("metrics.refresh_failed", exc=True)

    def ready_detail(self) -> dict[str, object]:
        """What /readyz reports."""
        detail: dict[str, object] = {
            "ready": self.ready,
            "keys_loaded": self.authn.ready,
            "config_version": self.state.catalog.version,
            "instance": self.instance,
        }
        if self.directory is not None:
            detail["store"] = self.directory.status_detail()
        status = getattr(self.metering, "status", None)
        if status is not None:
            detail["metering"] = status()
        spool = self.spool_health()
        if spool is not None:
            detail["spool"] = spool.detail()
        if self.webhooks is not None:
            detail["webhooks"] = self.webhooks.status()
        if self._restart_flags:
            detail["restart_needed"] = sorted(self._restart_flags)
        return detail

    async def start(self) -> None:
        """Load keys and entitlements, then listen."""
        await self.authn.start()
        if self.directory is not None:
            await self.directory.start()
        if self.limiter is not None:
            await self.limiter.start()
        if self.credits is not None:
            await self.credits.start()
        if self.metering is not None:
            await self.metering.start()
            self._wire_quota_hooks()
        self.server = grpc.aio.server(
            options=[("grpc.so_reuseport", 0), ("grpc.max_concurrent_streams", 1000)]
        )
        authz.add_to_server(self.authz, self.server)
        names = [AUTHZ_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME]
        if self.metering is not None:
            self._add_access_log(self.server)
            names.append(ALS_SERVICE)
        for name in ["", *names]:  # NOT_SERVING until _watch_ready has seen everything loaded
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(names, self.server)
        try:
            bound = self.server.add_insecure_port(self.cfg.listen)
        except RuntimeError:  # grpc's "Failed to bind": taken since check_listeners ran
            bound = 0
        if bound == 0:
            raise ListenError("listen", self.cfg.listen, "address already in use")
        await self.server.start()
        if self.authz_http is not None:
            await self.authz_http.start()
        await self.http.start()
        if self.webhooks is not None:
            await self.webhooks.start()
        for evaluator in open_evaluators(self):  # alerts and spend caps, off the hot path
            self._tasks.append(asyncio.create_task(evaluator.run(self._stopping)))
        self._tasks.append(asyncio.create_task(self._watch_config()))
        self._tasks.append(asyncio.create_task(self._watch_ready(names)))
        log.info(
            "serve.started",
            listen=self.cfg.listen,
            admin=self.cfg.admin_listen,
            metrics=self.cfg.metrics_listen or self.cfg.admin_listen,
            authz_http=self.cfg.authz_http_listen,
            instance=self.instance,
            config_version=self.state.catalog.version,
        )

    def _add_access_log(self, server: grpc.aio.Server) -> None:
        """The access-log service: handed to the worker undecoded, or ingested here (inline)."""
        from tollhouse.envoy import als

        if self.cfg.metering.process == "worker":
            als.add_hand_off_to_server(als.AccessLogHandOff(self.metering.access_log), server)
            return
        self.als = als.AccessLogServicer(
            self.metering,
            usage_id_from_request_header=self.cfg.metering.usage_id_from_request_header,
        )
        als.add_to_server(self.als, server)

    async def _watch_ready(self, names: list[str]) -> None:
        """Health says SERVING only while ready (keys loaded, store synced)."""
        last: bool | None = None
        while not self._stopping.is_set():
            ok = self.ready
            if ok != last:
                status = (
                    health_pb2.HealthCheckResponse.SERVING
                    if ok
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                for name in ["", *names]:
                    await self.health.set(name, status)
                READY.set(1 if ok else 0)
                last = ok
            spool = self.spool_health()
            if spool is not None:
                SPOOL_WRITABLE.set(1 if spool.ok else 0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 0.2)

    async def _watch_config(self) -> None:
        """Hot reload: a changed file is applied once unchanged for ``reload_settle_s``."""
        while not self._stopping.is_set():
            poll_s = min(0.5, max(self.cfg.reload_settle_s / 4, 0.05))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), poll_s)
            was_pending = self._files.pending
            due = await asyncio.to_thread(self._files.poll)
            if self._files.pending and not was_pending:
                log.info("config.change_seen", settle_s=self.cfg.reload_settle_s)
            if due:
                await self.reload()

    def _watched_files(self) -> list[Path]:
        """The config file and the API keys file it names, if any."""
        keys_file = self.cfg.auth.api_keys.keys_file
        return [self.config_path, *([keys_file] if keys_file else [])]

    async def reload(self) -> bool:
        """Load the config file again and swap the snapshot atomically if it is valid.

        Refused (the old config kept, logged, counted) when it does not validate, or when it
        drops a plan that entitlement-store customers are on. Start-only keys keep their running
        value and are reported as ``restart_needed``.
        """
        try:
            new = await asyncio.to_thread(load_config, self.config_path, key_files=True)
            raw = await asyncio.to_thread(_read_bytes, self.config_path)
            cfg = keep_start_only(self.cfg, new)
            catalog = build_catalog(cfg, raw)
        except ConfigError as e:
            return self._rejected("invalid", e.problems)
        except Exception as e:
            return self._rejected("error", [("(file)", type(e).__name__)])
        in_use = await self._plans_in_use(cfg)
        if in_use:
            return self._rejected("plan_in_use", in_use)
        self._report_restart_needed(restart_needed(self.cfg, new))
        limiter = await self._new_limiter(cfg)  # the last await: nothing is swapped before it
        # From here on no await: a Check sees the old config or the new one, never a mix.
        self.authn.reconfigure(cfg.auth)
        if self.metering is not None:
            self.metering.reconfigure(cfg)
        if self.als is not None:
            self.als.reconfigure(
                usage_id_from_request_header=cfg.metering.usage_id_from_request_header
            )
        if limiter is not None:
            self.limiter = self.checker.limiter = limiter
            self._wire_quota_hooks()
        old = self.state.catalog.version
        self.cfg = cfg
        self.state.catalog = catalog
        CONFIG_RELOADS.labels("applied").inc()
        set_config_version(catalog.version)
        log.info("config.reloaded", old_version=old, version=catalog.version)
        return True

    def _rejected(self, reason: str, problems: list[tuple[str, str]]) -> bool:
        CONFIG_RELOADS.labels("rejected").inc()
        CONFIG_REJECTED.labels(reason).inc()
        event = "config.reload_failed" if reason == "error" else "config.reload_rejected"
        log.error(
            event,
            reason=reason,
            problems="; ".join(f"{path}: {msg}" for path, msg in problems[:20]),
        )
        return False

    async def _plans_in_use(self, cfg: Config) -> list[tuple[str, str]]:
        """Problems for plans the reload removes that store customers are still on."""
        removed = set(self.cfg.plans) - set(cfg.plans)
        if not removed or self.directory is None:
            return []
        if not self.directory.ready:
            log.warning(
                "config.plan_check_skipped",
                reason="entitlement store not loaded",
                removed=sorted(removed),
            )
            return []
        from tollhouse.store.plan_use import plan_problems

        on = await self.directory.customers_on(removed)
        return plan_problems(on, "removed by this reload")

    def _report_restart_needed(self, fields: list[str]) -> None:
        """Log and expose the start-only keys the file changes; clear those it changes back."""
        for key in START_ONLY:
            if key in fields:
                CONFIG_RESTART_NEEDED.labels(key).set(1)
            elif key in self._restart_flags:
                CONFIG_RESTART_NEEDED.labels(key).set(0)
        if fields:
            log.warning(
                "config.restart_needed",
                fields=",".join(fields),
                detail="read only at start: the running value stays until a restart",
            )
        self._restart_flags = set(fields)

    async def _new_limiter(self, cfg: Config) -> Any:
        """A started limiter for a reload that starts selling quotas or rate limits, else None."""
        if self.limiter is not None or not needs_limiter(cfg):
            return None
        from tollhouse.quota import open_limiter

        limiter = open_limiter(
            self.cfg.counters,
            clock=self.clock,
            instance=self.instance,
            counters_file=counters_file(self.cfg),
        )
        await limiter.start()
        return limiter

    def _wire_quota_hooks(self) -> None:
        """Final records feed the limiter from after the spool's replay on.

        The hooks saw the replayed records before the restart, and the counters kept that.
        """
        if self.metering is not None and (self.limiter is not None or self.credits is not None):
            effects = QuotaEffects(self)
            self.metering.on_confirmed = effects.post_hoc_usage
            self.metering.on_voided = effects.refund_voided

    async def stop(self) -> None:
        """Drain: stop accepting, finish in-flight checks, flush metering, within the grace."""
        grace = self.cfg.shutdown_grace_s
        deadline = time.monotonic() + grace
        self._stopping.set()
        await self.health.enter_graceful_shutdown()
        READY.set(0)
        if self.server is not None:
            stopper = asyncio.create_task(self.server.stop(grace))
            if self.authz_http is not None:
                await self.authz_http.stop(max(0.0, deadline - time.monotonic()))
            while self.authz.in_flight and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.01)  # polling a counter the servicer owns; cheap
            # Give Envoy's access logger one flush interval to deliver what it buffered.
            await asyncio.sleep(min(0.3, max(0.0, deadline - time.monotonic())))
            await self.server.stop(0)
            await stopper
        await self.http.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        remaining = max(0.5, deadline - time.monotonic())
        if self.metering is not None:  # its own budget, so a worker is never cut off mid-drain
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self.metering.stop(max(0.5, remaining - 1.5)), remaining + 1.0
                )
        if self.webhooks is not None:
            with contextlib.suppress(Exception):
                await self.webhooks.stop(min(5.0, remaining))
        for comp in (self.limiter, self.credits, self.directory):  # credits: after the last ALS
            if comp is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(comp.stop(), remaining)
        await self.authn.stop()
        log.info("serve.stopped", instance=self.instance)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


async def serve(config_path: Path) -> int:
    """Run until SIGTERM/SIGINT; return the exit code."""
    cfg = load_config(config_path, key_files=True)
    check_listeners(cfg)  # a port in use stops us before the spool or the store is opened
    app = App(config_path, cfg)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.start()
    tune_after_start()
    await stop.wait()
    log.info("serve.draining", grace_s=cfg.shutdown_grace_s)
    await app.stop()
    return 0
