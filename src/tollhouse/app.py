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
from tollhouse.config import Config, ConfigError, load_config
from tollhouse.entitlements import build_catalog
from tollhouse.envoy import authz
from tollhouse.envoy.http_server import HttpAuthzServer
from tollhouse.http import AdminHttp
from tollhouse.limits import LimitsBuilder, needs_limiter, refresh_quota_gauges
from tollhouse.listeners import ListenError, check_listeners
from tollhouse.logs import get_logger
from tollhouse.metrics import CONFIG_RELOADS, READY, set_config_version

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
        self.directory: Any = _open_directory(cfg)
        lookup = self.directory.api_key_customer if self.directory is not None else None
        self.authn = Authenticator(cfg.auth, clock=clock, key_lookup=lookup)
        self.limits = LimitsBuilder(self.state)
        self.limiter: Any = None
        if needs_limiter(cfg):
            from tollhouse.quota import open_limiter

            self.limiter = open_limiter(cfg.counters, clock=clock, instance=self.instance)
        self.metering: Any = None
        self.als: Any = None  # the access-log servicer, once started with metering on
        if cfg.metering.enabled:
            from tollhouse.metering import Metering

            self.metering = Metering(cfg, clock=clock, instance=self.instance)
            if self.limiter is not None:
                self.metering.on_confirmed = self._post_hoc_usage
        self.checker = Checker(
            self.state, self.authn, limiter=self.limiter, metering=self.metering,
            directory=self.directory, limits_for=self.limits.for_customer, clock=clock,
            past_due_grace_s=_past_due_grace(cfg), deadline_s=cfg.check_deadline_ms / 1000,
        )
        self.authz = authz.AuthorizationServicer(self.checker)
        self.authz_http: HttpAuthzServer | None = None
        if cfg.authz_http_listen is not None:
            self.authz_http = HttpAuthzServer(self.checker, cfg.authz_http, cfg.authz_http_listen)
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.http = AdminHttp(self)
        self._mtime = self._watched_mtime()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    @property
    def ready(self) -> bool:
        """Config, keys and entitlements are loaded."""
        dir_ok = self.directory is None or self.directory.ready
        return bool(self.authn.ready and dir_ok)

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
        return detail

    async def start(self) -> None:
        """Load keys and entitlements, then listen."""
        await self.authn.start()
        if self.directory is not None:
            await self.directory.start()
        if self.limiter is not None:
            await self.limiter.start()
        if self.metering is not None:
            await self.metering.start()
        self.server = grpc.aio.server(
            options=[("grpc.so_reuseport", 0), ("grpc.max_concurrent_streams", 1000)]
        )
        authz.add_to_server(self.authz, self.server)
        names = [AUTHZ_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME]
        if self.metering is not None:
            from tollhouse.envoy.als import AccessLogServicer
            from tollhouse.envoy.als import add_to_server as add_als

            self.als = AccessLogServicer(
                self.metering,
                usage_id_from_request_header=self.cfg.metering.usage_id_from_request_header,
            )
            add_als(self.als, self.server)
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
        self._tasks.append(asyncio.create_task(self._watch_config()))
        self._tasks.append(asyncio.create_task(self._watch_ready(names)))
        log.info("serve.started", listen=self.cfg.listen, admin=self.cfg.admin_listen,
                 authz_http=self.cfg.authz_http_listen, instance=self.instance,
                 config_version=self.state.catalog.version)

    async def _watch_ready(self, names: list[str]) -> None:
        """Health says SERVING only while ready (keys loaded, store synced)."""
        last: bool | None = None
        while not self._stopping.is_set():
            ok = self.ready
            if ok != last:
                status = (health_pb2.HealthCheckResponse.SERVING if ok
                          else health_pb2.HealthCheckResponse.NOT_SERVING)
                for name in ["", *names]:
                    await self.health.set(name, status)
                READY.set(1 if ok else 0)
                last = ok
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 0.2)

    async def _watch_config(self) -> None:
        """Hot reload: poll the file's mtime; a bad file keeps the old snapshot."""
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 0.5)
            mtime = self._watched_mtime()
            if mtime == self._mtime:
                continue
            self._mtime = mtime
            await self.reload()

    def _watched_mtime(self) -> tuple[float, float]:
        """The config file's mtime and that of the API keys file it names, if any."""
        keys_file = self.cfg.auth.api_keys.keys_file
        return _mtime(self.config_path), _mtime(keys_file) if keys_file else 0.0

    async def reload(self) -> bool:
        """Load the config file again and swap the snapshot atomically if it is valid."""
        try:
            cfg = await asyncio.to_thread(load_config, self.config_path, key_files=True)
            raw = await asyncio.to_thread(_read_bytes, self.config_path)
            catalog = build_catalog(cfg, raw)
        except ConfigError as e:
            CONFIG_RELOADS.labels("rejected").inc()
            log.error("config.reload_rejected", problems=e.problems[:20])
            return False
        except Exception as e:
            CONFIG_RELOADS.labels("rejected").inc()
            log.error("config.reload_failed", error=type(e).__name__)
            return False
        self.authn.reconfigure(cfg.auth)
        if self.metering is not None:
            self.metering.reconfigure(cfg)
        if self.als is not None:
            self.als.reconfigure(
                usage_id_from_request_header=cfg.metering.usage_id_from_request_header)
        await self._reconfigure_limiter(cfg)
        old = self.state.catalog.version
        self.cfg = cfg
        self.state.catalog = catalog
        CONFIG_RELOADS.labels("applied").inc()
        set_config_version(catalog.version)
        log.info("config.reloaded", old_version=old, version=catalog.version)
        return True

    async def _reconfigure_limiter(self, cfg: Config) -> None:
        """A reload that starts selling quotas or rate limits gets a limiter at once."""
        if cfg.counters != self.cfg.counters:
            log.warning("config.restart_needed", field="counters")
        if (cfg.authz_http_listen, cfg.authz_http) != (self.cfg.authz_http_listen,
                                                        self.cfg.authz_http):
            log.warning("config.restart_needed", field="authz_http")
        if self.limiter is not None or not needs_limiter(cfg):
            return
        from tollhouse.quota import open_limiter

        limiter = open_limiter(self.cfg.counters, clock=self.clock, instance=self.instance)
        await limiter.start()
        self.limiter = self.checker.limiter = limiter
        if self.metering is not None:
            self.metering.on_confirmed = self._post_hoc_usage

    def _post_hoc_usage(self, record: Any) -> None:
        """Bytes/tokens meters known only from the access log count against quotas."""
        snap = self.state.catalog
        cust = self.checker.identify(snap, record.customer)
        plan = snap.plan(getattr(cust, "plan", ""))
        if plan is None or not hasattr(cust, "plan"):
            return
        limits = self.limits.for_customer(cust, plan)
        for meter, units in record.units.items():
            if snap.config.meters.get(meter) and snap.config.meters[meter].source != "requests":
                self.limiter.add_usage(record.customer, meter, int(units), limits, self.clock())

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
        for comp in (self.metering, self.limiter, self.directory):
            if comp is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(comp.stop(), remaining)
        await self.authn.stop()
        log.info("serve.stopped", instance=self.instance)


def _open_directory(cfg: Config) -> Any:
    store = getattr(cfg, "store", None)
    if store is None:
        return None
    from tollhouse.store import Directory

    return Directory(store)


def _past_due_grace(cfg: Config) -> float:
    store = getattr(cfg, "store", None)
    return float(getattr(store, "past_due_grace_s", 7 * 86400))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


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
    await stop.wait()
    log.info("serve.draining", grace_s=cfg.shutdown_grace_s)
    await app.stop()
    return 0
