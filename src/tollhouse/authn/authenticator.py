"""The Authenticator: headers in, a Principal or an AuthnFailure out, on every request.

``authenticate`` is synchronous and does no I/O: a cache hit is one SHA-256, one dict lookup and
an exp check. Key loading runs in background tasks started by :meth:`Authenticator.start`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from tollhouse.authn.api_keys import ApiKeyVerifier
from tollhouse.authn.cache import TokenCache
from tollhouse.authn.credentials import (
    ApiKeyCredential,
    BearerCredential,
    NoCredentials,
    extract_credentials,
)
from tollhouse.authn.jwks import JwksKeySet, source_settings
from tollhouse.authn.jwt import IssuerPolicy, JwtVerifier
from tollhouse.authn.metrics import JWKS_KEYS
from tollhouse.authn.outcome import (
    AuthnFailure,
    Principal,
    ambiguous,
    keys_unavailable,
    missing_credentials,
)
from tollhouse.config import AuthConfig
from tollhouse.logs import get_logger

__all__ = ["Authenticator"]

log = get_logger(__name__)

_INTERNAL = keys_unavailable("authentication temporarily unavailable")
_STOP_TIMEOUT_S = 5.0


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Authenticator:
    """Authenticate requests by JWT (per-issuer JWKS) or API key."""

    def __init__(
        self,
        auth: AuthConfig,
        *,
        clock: Callable[[], float] = time.time,
        key_lookup: Callable[[str], str | None] | None = None,
    ) -> None:
        self._clock = clock
        self._key_lookup = key_lookup
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._keysets: dict[str, JwksKeySet] = {}
        self._cache = TokenCache(auth.token_cache_size, clock)
        self._auth = auth
        self._jwt = JwtVerifier({})
        self._api = ApiKeyVerifier(auth.api_keys, key_lookup)
        self._install(auth)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Load key files and fetch JWKS URLs (each bounded by its timeout); start refreshes."""
        self._loop = asyncio.get_running_loop()
        await asyncio.gather(*(ks.start() for ks in self._keysets.values()))

    async def stop(self) -> None:
        """Stop every refresh task and close HTTP sessions."""
        if self._tasks:  # key sets started or stopped by reconfigure
            await asyncio.wait(list(self._tasks), timeout=_STOP_TIMEOUT_S)
        self._loop = None
        await asyncio.gather(*(ks.stop() for ks in self._keysets.values()))

    @property
    def ready(self) -> bool:
        """True when every issuer has a loaded key set (no issuers configured: True)."""
        return all(ks.ready for ks in self._keysets.values())

    @property
    def config(self) -> AuthConfig:
        """The AuthConfig in force."""
        return self._auth

    def reconfigure(self, auth: AuthConfig) -> None:
        """Hot reload: keep key sets whose source settings did not change; start/stop others."""
        self._install(auth)
        self._cache = TokenCache(auth.token_cache_size, self._clock)
        self._auth = auth

    def _install(self, auth: AuthConfig) -> None:
        old = self._keysets
        keysets: dict[str, JwksKeySet] = {}
        started: list[JwksKeySet] = []
        for cfg in auth.jwt:
            ks = old.get(cfg.issuer)
            if ks is None or ks.settings != source_settings(cfg):
                ks = JwksKeySet(cfg, clock=self._clock, on_change=self._keys_changed)
                started.append(ks)
            keysets[cfg.issuer] = ks
        kept = {id(ks) for ks in keysets.values()}
        stopped = [ks for ks in old.values() if id(ks) not in kept]
        for issuer in old.keys() - keysets.keys():
            JWKS_KEYS.labels(issuer).set(0)
        self._jwt = JwtVerifier({c.issuer: IssuerPolicy(c, keysets[c.issuer]) for c in auth.jwt})
        self._api = ApiKeyVerifier(auth.api_keys, self._key_lookup)
        self._keysets = keysets
        if self._loop is not None:
            for ks in started:
                self._spawn(ks.start())
            for ks in stopped:
                self._spawn(ks.stop())
        if started or stopped:
            log.info(
                "authn.reconfigured",
                started=len(started),
                stopped=len(stopped),
                issuers=len(keysets),
            )

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        loop = self._loop
        if loop is None:  # not started: start() will start every key set
            coro.close()
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            task = loop.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            asyncio.run_coroutine_threadsafe(coro, loop)

    def _keys_changed(self) -> None:
        """Forget cached verdicts: a key they may rest on was removed or replaced."""
        self._cache.clear()

    # -- the request path ----------------------------------------------------------------------

    def authenticate(self, headers: Mapping[str, str]) -> Principal | AuthnFailure:
        """Return who the caller is, or why not; synchronous, no I/O, never raises."""
        try:
            creds = extract_credentials(headers, self._auth.api_keys.header)
            if isinstance(creds, BearerCredential):
                return self._bearer(creds.token)
            if isinstance(creds, ApiKeyCredential):
                return self._api.verify(creds.key)
            if isinstance(creds, NoCredentials):
                return missing_credentials(creds.detail)
            return ambiguous(creds.detail)
        except Exception:
            log.error("authn.internal_error", exc=True)
            return _INTERNAL

    def _bearer(self, token: str) -> Principal | AuthnFailure:
        cache = self._cache
        key = cache.key(token)
        hit = cache.get(key)
        if hit is not None:
            return hit
        result = self._jwt.verify(token, self._clock())
        if isinstance(result, Principal):
            cache.put(key, result)
        return result

    def www_authenticate(self, failure: AuthnFailure) -> str:
        """Build the WWW-Authenticate value (RFC 6750); no error params when nothing was sent."""
        value = f"Bearer realm={_quote(self._auth.realm)}"
        if failure.bearer_error:
            value += f", error={_quote(failure.bearer_error)}"
            value += f", error_description={_quote(failure.detail)}"
        return value
