"""Every configured listener is probed before anything else is opened.

``serve`` binds five kinds of listener (ext_authz gRPC, admin, metrics, usage, HTTP ext_authz).
Binding is the last step of start-up, after the spool, the store and the counters are opened,
so a port in use used to surface as a traceback with files already created.
:func:`check_listeners` binds and closes a socket on each address first, the way the servers
themselves bind (``SO_REUSEADDR``, so a restart is not refused for connections still in
TIME_WAIT).
"""

from __future__ import annotations

import errno
import socket

from tollhouse.config import Config
from tollhouse.config.runtime import LISTENERS

__all__ = ["LISTENERS", "ListenError", "check_listeners"]
_FATAL = {errno.EADDRINUSE, errno.EACCES}


class ListenError(OSError):
    """A configured address cannot be listened on: which setting, which address, why."""

    def __init__(self, setting: str, address: str, reason: str) -> None:
        self.setting = setting
        self.address = address
        self.reason = reason
        super().__init__(f"cannot listen on {address} ({setting}): {reason}")


def check_listeners(cfg: Config) -> None:
    """Raise :class:`ListenError` for the first configured address already in use (or denied)."""
    for setting in LISTENERS:
        address = getattr(cfg, setting)
        if address is not None:
            _probe(setting, address)


def _probe(setting: str, address: str) -> None:
    host, _, port = address.rpartition(":")
    try:
        infos = socket.getaddrinfo(
            host, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as e:
        raise ListenError(setting, address, f"cannot resolve {host!r} ({e.strerror})") from None
    for family, kind, proto, _, sockaddr in infos:
        try:
            sock = socket.socket(family, kind, proto)
        except OSError:
            continue  # e.g. no IPv6 on this host: the server skips that family too
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(sockaddr)
                sock.listen(1)
            except OSError as e:
                if e.errno in _FATAL:
                    raise ListenError(setting, address, e.strerror or str(e)) from None
