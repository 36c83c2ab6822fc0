"""Verification keys of one issuer: a JWKS file, a JWKS URL or an HS shared secret.

Keys are loaded in the background, never on the request path. The request path only reads the
current immutable :class:`KeySnapshot` and, on an unknown ``kid``, asks for a refresh that is
single-flight and rate-limited by ``jwks_cooldown_s``. A key file (``jwks_file``,
``hs_secret_file``) is also watched: a change of its mtime or size reloads it within
``FILE_POLL_S``. A failed, timed-out or garbage load keeps the last good snapshot. Token header
fields jku / x5u / jwk / x5c are never consulted.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from jwt import PyJWK

from tollhouse.authn.metrics import JWKS_KEYS, JWKS_REFRESHES
from tollhouse.config import JwtIssuerConfig
from tollhouse.logs import get_logger

__all__ = ["JwksKeySet", "KeySnapshot", "VerificationKey", "parse_jwks"]

log = get_logger(__name__)

MAX_JWKS_BYTES = 1 << 20
MIN_HS_SECRET_BYTES = 32
FILE_POLL_S = 0.5  # how often a key file's mtime and size are looked at


class _HttpStatusError(Exception):
    """The JWKS URL answered something other than 200."""


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One public key (or the HS secret) as a ready-to-use object."""

    kid: str | None
    kty: str  # RSA | EC | OKP | oct
    crv: str | None
    alg: str | None  # the JWK's own "alg", when it states one
    key: Any  # a cryptography public key object, or bytes for oct
    thumb: str  # canonical JSON of the JWK, to notice removed or replaced keys


@dataclass(frozen=True, slots=True)
class KeySnapshot:
    """An immutable key set; a token without kid may use the only key of a one-key set."""

    by_kid: Mapping[str, VerificationKey]
    keys: tuple[VerificationKey, ...]
    any_kid: bool = False  # the HS secret: one key, whatever kid a token names

    def find(self, kid: str | None) -> VerificationKey | None:
        """Return the key for ``kid``, or None."""
        if kid is None or self.any_kid:
            return self.keys[0] if len(self.keys) == 1 else None
        return self.by_kid.get(kid)


def _key_from_jwk(jwk: Any) -> VerificationKey | str:
    """Build one key, or return why it is skipped."""
    if not isinstance(jwk, dict):
        return "not an object"
    if jwk.get("use", "sig") != "sig":
        return "use is not sig"
    if jwk.get("kty") == "oct":
        return "symmetric keys are not accepted from a JWKS"
    if "d" in jwk:
        return "private key material"
    try:
        parsed = PyJWK(jwk)
    except Exception as e:  # PyJWK raises several types for bad input
        return f"unusable key ({type(e).__name__})"
    kid = jwk.get("kid")
    alg = jwk.get("alg")
    crv = jwk.get("crv")
    return VerificationKey(
        kid=kid if isinstance(kid, str) and kid else None,
        kty=str(jwk["kty"]),
        crv=crv if isinstance(crv, str) else None,
        alg=alg if isinstance(alg, str) else None,
        key=parsed.key,
        thumb=json.dumps(jwk, sort_keys=True),
    )


def parse_jwks(raw: bytes | str, issuer: str = "") -> KeySnapshot:
    """Parse a JWKS document; bad keys are skipped, no usable key at all is a ValueError."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError("not JSON") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError("not a JWKS document")
    by_kid: dict[str, VerificationKey] = {}
    keys: list[VerificationKey] = []
    for i, jwk in enumerate(doc["keys"]):
        key = _key_from_jwk(jwk)
        if isinstance(key, str):
            log.warning("jwks.key_skipped", issuer=issuer, index=i, reason=key)
            continue
        if key.kid is not None:
            if key.kid in by_kid:
                log.warning("jwks.key_skipped", issuer=issuer, index=i, reason="duplicate kid")
                continue
            by_kid[key.kid] = key
        keys.append(key)
    if not keys:
        raise ValueError("no usable key")
    return KeySnapshot(by_kid, tuple(keys))


def _secret_snapshot(raw: bytes) -> KeySnapshot:
    secret = raw.rstrip(b"\r\n")
    if len(secret) < MIN_HS_SECRET_BYTES:
        raise ValueError(f"HS secret shorter than {MIN_HS_SECRET_BYTES} bytes")
    # The thumb tells a rotated secret from the old one (the token cache is then cleared).
    thumb = "hs-secret:" + hashlib.sha256(secret).hexdigest()
    key = VerificationKey(None, "oct", None, None, secret, thumb)
    return KeySnapshot({}, (key,), any_kid=True)


def _file_sig(path: Path) -> tuple[int, int] | None:
    """A file's (mtime_ns, size), or None when it cannot be looked at."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _read_if_changed(path: Path, last: tuple[int, int] | None) -> tuple[tuple[int, int], bytes]:
    st = path.stat()
    sig = (st.st_mtime_ns, st.st_size)
    if sig == last:
        return sig, b""
    return sig, path.read_bytes()


def source_settings(cfg: JwtIssuerConfig) -> tuple[Any, ...]:
    """Return the settings that define a key source; equal settings keep a loaded set."""
    return (
        cfg.issuer,
        cfg.jwks_file,
        cfg.jwks_uri,
        cfg.hs_secret_file,
        cfg.jwks_refresh_s,
        cfg.jwks_cooldown_s,
        cfg.jwks_timeout_s,
    )


class JwksKeySet:
    """The keys of one issuer, kept fresh in the background."""

    def __init__(
        self,
        cfg: JwtIssuerConfig,
        *,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.settings = source_settings(cfg)
        self._clock = clock
        self._on_change = on_change
        self._snapshot: KeySnapshot | None = None
        self._file_sig: tuple[int, int] | None = None
        self._last_attempt = float("-inf")
        self._inflight: asyncio.Task[None] | None = None
        self._periodic: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None
        self.fetches = 0  # load attempts, for tests and debugging

    @property
    def ready(self) -> bool:
        """True once a key set has loaded."""
        return self._snapshot is not None

    @property
    def snapshot(self) -> KeySnapshot | None:
        """The current keys, or None before the first successful load."""
        return self._snapshot

    async def start(self) -> None:
        """Load once (bounded by ``jwks_timeout_s``), then refresh periodically."""
        loop = self._loop = asyncio.get_running_loop()
        await self.refresh()
        stopped = self._loop is not loop
        if not stopped and self.cfg.hs_secret_file is None and self._periodic is None:
            self._periodic = loop.create_task(self._refresh_forever())
        key_file = self._key_file
        if not stopped and key_file is not None and self._watcher is None:
            self._watcher = loop.create_task(self._watch_file(key_file))

    async def stop(self) -> None:
        """Cancel background work and close the HTTP session."""
        self._loop = None  # no refresh may be kicked off after this
        for task in (self._periodic, self._watcher, self._inflight):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._periodic = self._watcher = self._inflight = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def refresh(self) -> None:
        """Load now, or join the load already in flight (single-flight). Never raises."""
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.get_running_loop().create_task(self._load_once())
        await asyncio.shield(self._inflight)

    def request_refresh(self) -> None:
        """Ask for a background refresh (unknown kid); returns at once, never waits."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None and running is self._loop:
            self._kick()
        elif self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._loop.call_soon_threadsafe(self._kick)

    def _kick(self) -> None:
        if self._inflight is not None and not self._inflight.done():
            return
        if self._loop is None or self._clock() - self._last_attempt < self.cfg.jwks_cooldown_s:
            return
        self._inflight = self._loop.create_task(self._load_once())

    async def _refresh_forever(self) -> None:
        while True:
            delay = self.cfg.jwks_refresh_s
            if self._snapshot is None:
                delay = min(delay, max(self.cfg.jwks_cooldown_s, 1.0))
            await asyncio.sleep(delay)
            await self.refresh()

    @property
    def _key_file(self) -> Path | None:
        return self.cfg.jwks_file or self.cfg.hs_secret_file

    async def _watch_file(self, path: Path) -> None:
        """Reload as soon as the key file's mtime or size changes (or it vanishes or returns)."""
        last = await asyncio.to_thread(_file_sig, path)
        while True:
            await asyncio.sleep(FILE_POLL_S)
            sig = await asyncio.to_thread(_file_sig, path)
            if sig != last:
                last = sig
                await self.refresh()

    async def _load_once(self) -> None:
        self._last_attempt = self._clock()
        self.fetches += 1
        issuer = self.cfg.issuer
        try:
            async with asyncio.timeout(self.cfg.jwks_timeout_s):
                snap = await self._fetch()
        except TimeoutError:
            self._failed("timeout", "timed out")
        except ValueError as e:
            self._failed("invalid", str(e))
        except (aiohttp.ClientError, OSError, _HttpStatusError) as e:
            self._failed("error", _reason(e))
        except Exception as e:
            log.error("jwks.load_failed", exc=True, issuer=issuer)
            self._failed("error", type(e).__name__)
        else:
            if snap is None:
                JWKS_REFRESHES.labels(issuer, "unchanged").inc()
            else:
                self._install(snap)

    def _failed(self, result: str, reason: str) -> None:
        JWKS_REFRESHES.labels(self.cfg.issuer, result).inc()
        log.warning(
            "jwks.load_failed",
            issuer=self.cfg.issuer,
            result=result,
            reason=reason,
            keeping=len(self._snapshot.keys) if self._snapshot else 0,
        )

    def _install(self, snap: KeySnapshot) -> None:
        old = self._snapshot
        self._snapshot = snap
        JWKS_REFRESHES.labels(self.cfg.issuer, "ok").inc()
        JWKS_KEYS.labels(self.cfg.issuer).set(len(snap.keys))
        log.info("jwks.loaded", issuer=self.cfg.issuer, keys=len(snap.keys))
        removed = old is not None and {k.thumb for k in old.keys} - {k.thumb for k in snap.keys}
        if removed and self._on_change is not None:
            self._on_change()

    async def _fetch(self) -> KeySnapshot | None:
        """Return a new snapshot, or None when the source did not change."""
        cfg = self.cfg
        key_file = self._key_file
        if key_file is not None:
            sig, raw = await asyncio.to_thread(_read_if_changed, key_file, self._file_sig)
            if sig == self._file_sig:
                return None
            self._file_sig = sig
            if cfg.hs_secret_file is not None:
                return _secret_snapshot(raw)
            return parse_jwks(raw, cfg.issuer)
        assert cfg.jwks_uri is not None
        return parse_jwks(await self._get(cfg.jwks_uri), cfg.issuer)

    async def _get(self, url: str) -> bytes:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.cfg.jwks_timeout_s)
            )
        async with self._session.get(url, allow_redirects=False) as resp:
            if resp.status != 200:
                raise _HttpStatusError(f"HTTP {resp.status}")
            body = bytearray()
            async for chunk in resp.content.iter_chunked(65536):
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError("JWKS document too large")
            return bytes(body)


def _reason(e: BaseException) -> str:
    """What a failed load logs: the HTTP status, the file and its error, or the error type."""
    if isinstance(e, _HttpStatusError):
        return str(e)
    if isinstance(e, OSError) and not isinstance(e, aiohttp.ClientError) and e.filename:
        return f"{type(e).__name__}: {e.strerror}: {e.filename}"
    return type(e).__name__
