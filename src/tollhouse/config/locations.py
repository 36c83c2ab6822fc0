"""Where data lives, parsed once: the meter URL as a frozen :class:`MeterLocation`.

``sqlite:///var/x.db`` is the file ``/var/x.db`` (``sqlite:///./x.db`` and ``sqlite:///../x.db``
are relative to the config file's folder); ``redis://`` and ``rediss://`` URLs name a Redis
server. Consumers read ``kind`` and ``path`` instead of re-parsing the string; ``display`` is the
URL with any password replaced by ``***``, for output and logs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["MeterLocation", "fix_url", "no_password", "sqlite_path"]

SQLITE_PREFIX = "sqlite:///"
REDIS_PREFIXES = ("redis://", "rediss://")
_PASSWORD = re.compile(r"^([a-z][a-z0-9+.\-]*://[^/@:]*):[^/]*@")


def no_password(url: str) -> str:
    """``redis://user:secret@host`` -> ``redis://user:***@host`` (URLs end up in the output)."""
    return _PASSWORD.sub(r"\1:***@", url)


def sqlite_path(url: str) -> Path:
    """The file of a ``sqlite:///...`` URL: ``sqlite:///var/x.db`` is ``/var/x.db``."""
    if not url.startswith(SQLITE_PREFIX) or len(url) == len(SQLITE_PREFIX):
        raise ValueError(f"not a sqlite:/// URL: {no_password(url)}")
    return Path(url[len("sqlite://") :])


def fix_url(url: str, base: Path) -> str:
    """``sqlite:///./x.db`` and ``sqlite:///../x.db`` are relative to the config file's folder."""
    rest = url[len(SQLITE_PREFIX) :]
    if url.startswith(SQLITE_PREFIX) and rest.startswith(("./", "../")):
        return "sqlite://" + str((base / rest).resolve())
    return url


@dataclass(frozen=True)
class MeterLocation:
    """The meter: a SQLite file (``path`` set) or a Redis stream (``url`` for the client)."""

    kind: Literal["sqlite", "redis"]
    url: str
    path: Path | None = None

    @classmethod
    def parse(cls, url: str) -> MeterLocation:
        """``sqlite:///path`` or ``redis://host:port/db``; anything else is a ValueError."""
        if url.startswith(SQLITE_PREFIX) and len(url) > len(SQLITE_PREFIX):
            return cls(kind="sqlite", url=url, path=sqlite_path(url))
        if url.startswith(REDIS_PREFIXES) and url not in REDIS_PREFIXES:
            return cls(kind="redis", url=url)
        raise ValueError("must be sqlite:///path or redis://host:port/db")

    @classmethod
    def sqlite(cls, path: Path | str) -> MeterLocation:
        """The SQLite meter in the file ``path``."""
        return cls.parse("sqlite://" + str(Path(path).absolute()))

    @property
    def display(self) -> str:
        """The URL for output: a password in it is ``***``."""
        return no_password(self.url)

    def sqlite_file(self) -> Path:
        """The meter's file; a ValueError on a Redis meter."""
        if self.path is None:
            raise ValueError(f"not a SQLite meter: {self.display}")
        return self.path

    def relative_to(self, base: Path) -> MeterLocation:
        """A ``sqlite:///./x.db`` or ``sqlite:///../x.db`` meter resolved against ``base``."""
        url = fix_url(self.url, base)
        return self if url == self.url else MeterLocation.parse(url)

    def __str__(self) -> str:
        return self.display
